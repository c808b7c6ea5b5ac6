"""Training: the generic sharded, resumable loop, its state, checkpoints and preemption."""
