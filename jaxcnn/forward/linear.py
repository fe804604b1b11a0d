"""The fully connected layer."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn import _geometry
from jaxcnn._precision import precision_of

Array = jax.Array

__all__ = ["dense"]


def dense(x: Array, w: Array, b: Array | None = None, *, precision: Any = None) -> Array:
    """Fully connected layer `y = x @ w + b` (the worked example's `Z2 = F W2 + B2`).

    Args:
      x: (N, D_in).
      w: (D_in, D_out).
      b: optional (D_out,).
      precision: of the product (see `jaxcnn._precision.precision_of`).

    Returns:
      y: (N, D_out).
    """
    _geometry.dense("dense", x, w, b)
    y = jnp.matmul(x, w, precision=precision_of(precision))
    return y if b is None else y + b
