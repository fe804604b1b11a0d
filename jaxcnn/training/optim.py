"""Optimizers by name: optax transforms behind one factory for the CLI and the run loop."""

from __future__ import annotations

import optax

OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "cosine")


def make_optimizer(name: str, lr: float, *, clip: float | None = None,
                   schedule: str = "constant", total_steps: int | None = None,
                   momentum: float = 0.9) -> optax.GradientTransformation:
    """An optax optimizer by name, optionally behind gradient clipping by global norm.

    sgd:      F_new = F_old - lr * dL/dF  (the overview's update, `optax.sgd(lr)`)
    momentum: v = momentum * v + dL/dF;  F_new = F_old - lr * v
    adam:     `optax.adam(lr)`
    schedule: "constant" lr, or "cosine": lr * (1 + cos(pi * step / total_steps)) / 2.
    clip:     g <- g * min(1, clip / ||g||_2) over all parameters first (the overview's remedy
              for exploding gradients, `optax.clip_by_global_norm`).

    Args:
      name: one of `OPTIMIZERS`; lr: > 0; clip: > 0 or None; schedule: one of `SCHEDULES`;
      total_steps: the cosine schedule's length; momentum: the momentum coefficient.

    Returns:
      the optax GradientTransformation.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"the learning rate must be > 0; got {lr}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 (a maximum global gradient norm); got {clip}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    rate = lr if schedule == "constant" else optax.cosine_decay_schedule(lr, total_steps or 1)
    opt = {"sgd": lambda: optax.sgd(rate), "momentum": lambda: optax.sgd(rate, momentum=momentum),
           "adam": lambda: optax.adam(rate)}[name]()
    return opt if clip is None else optax.chain(optax.clip_by_global_norm(clip), opt)
