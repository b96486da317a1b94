"""Training: the loop (:mod:`~xformer.train.loop`) and the components it delegates to: the schedule and its
clock, the batches, the optimizer, the parallel wrapping of the model, the checkpointer (checkpoints full
and sharded), metrics, the run directory, fine-tuning parameter groups."""
