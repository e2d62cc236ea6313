"""Training loop, optimiser, schedules, checkpoints and metrics."""
