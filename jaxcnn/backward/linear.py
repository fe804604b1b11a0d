"""The rule of `jaxcnn/forward/linear.py`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn import _geometry
from jaxcnn._precision import precision_of
from jaxcnn.backward._upstream import upstream

Array = jax.Array

__all__ = ["dense"]


def dense(dy: Array, x: Array, w: Array, *,
          precision: Any = None) -> tuple[Array, Array, Array]:
    """Gradients of `y = x @ w + b` (the worked example's `dW2 = F^T dZ2`, `dB2 = sum(dZ2)`).

    `dx = dy w^T`, `dw = x^T dy`, `db = sum_n dy`.

    Args:
      dy: (N, D_out); x: (N, D_in); w: (D_in, D_out).

    Returns:
      (dx (N, D_in), dw (D_in, D_out), db (D_out,)).
    """
    _geometry.dense("backward.dense", x, w, None)
    upstream("backward.dense", dy, x, (x.shape[0], w.shape[1]), "the forward output")
    precision = precision_of(precision)
    return (jnp.matmul(dy, w.T, precision=precision), jnp.matmul(x.T, dy, precision=precision),
            jnp.sum(dy, axis=0))
