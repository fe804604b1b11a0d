"""Training with the hand-written gradients.

    optim         optimizers by name (optax)
    steps         jitted train and eval steps, manual or autodiff, and their shared update
    per_example   per-example gradients under vmap
    parallel      data-parallel steps over a device mesh (shard_map)
    run           `TrainConfig` and `fit`, the run loop behind `jaxcnn train`
    data          datasets (NumPy only, never a download), batching
    checkpoint    atomic checkpoints
    plots         the figures of a run
"""
