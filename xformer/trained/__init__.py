"""What is done with a trained model: load it (:func:`xformer.load`), start a new model from it
(``model.init``), evaluate it, score it zero-shot."""
