"""Training with the hand-written gradients.

    optim         optimizers by name (optax)
    steps         jitted train and eval steps, manual or autodiff, and their shared update
    per_example   per-example gradients under vmap
    parallel      data-parallel steps over a device mesh (shard_map)
    run           `TrainConfig` and `fit`, the run loop behind `jaxcnn train`
    dp            DP-SGD: Poisson sampling, the noisy clipped step, privacy accounting
    curvature     Hessian-vector products and the GGN diagonal through the manual gradient
    data          datasets (NumPy only, never a download), batching; synthetic, idx, cifar:
                  the generated sets and the readers of files you already have
    checkpoint    atomic checkpoints; rundir: a run's directory, its lock and resume checks
    safefiles     regular files only, bounded .npy headers; picklescan: CIFAR pickles checked
                  opcode by opcode before anything is unpickled
    plots         the figures of a run
"""
