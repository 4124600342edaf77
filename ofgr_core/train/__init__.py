"""Training: the loop as an event generator, fit strategies, optimizers and schedules, the numerical guard,
distributed helpers (checkpoints are run-folder files: ``ofgr_core.runs.checkpoint``)."""
