"""Trainer components: metrics, optimizers + LR schedule, checkpointing, run logging."""
