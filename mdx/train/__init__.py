"""Training: TrainState, pure steps, device mesh, Orbax checkpoints, the host loop."""
