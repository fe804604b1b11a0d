"""The precision every product of the forward ops and the backward rules runs at."""

from __future__ import annotations

from typing import Any

import jax
from jax import lax

HIGHEST = lax.Precision.HIGHEST


def precision_of(precision: Any) -> Any:
    """The precision a product runs at: `precision` when given; else `None` (JAX's configured
    default) inside `jax.default_matmul_precision(...)`; else `lax.Precision.HIGHEST`.

    Read at trace time, like JAX's own setting, so a jitted step traced inside
    `jax.default_matmul_precision("default")` runs its products (and their transposes, for
    `jax.grad`) at that precision: TF32 on recent NVIDIA GPUs, unchanged float32 on CPUs.
    """
    if precision is not None:
        return precision
    return None if jax.config.jax_default_matmul_precision is not None else HIGHEST
