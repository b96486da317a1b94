"""Training: the loop (:mod:`~xformer.train.loop`) and the components it delegates to (checkpoints full and
sharded, metrics, the run directory, fine-tuning parameter groups)."""
