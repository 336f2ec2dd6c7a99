"""Training: optimiser/scheduler set-up, checkpoints, frozen-stem feature cache and the loop."""
