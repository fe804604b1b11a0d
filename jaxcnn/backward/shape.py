"""The rule of `jaxcnn/forward/shape.py`."""

from __future__ import annotations

import jax

from jaxcnn import _geometry
from jaxcnn.backward._upstream import upstream

Array = jax.Array

__all__ = ["flatten"]


def flatten(dy: Array, x: Array) -> Array:
    """Flatten has no parameters; its gradient is dy reshaped back: `dP1 = reshape(dF)`.

    Args:
      dy: (N, d1 * d2 * ...); x: (N, d1, d2, ...).

    Returns:
      dx: x's shape.
    """
    out_shape = _geometry.flatten("backward.flatten", x)
    upstream("backward.flatten", dy, x, out_shape, "the forward output")
    return dy.reshape(x.shape)
