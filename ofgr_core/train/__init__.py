"""Training: the loop as an event generator, checkpoints, distributed helpers."""
