"""The rules of `jaxcnn/forward/shape.py`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcnn import _geometry
from jaxcnn.backward._upstream import upstream

Array = jax.Array

__all__ = ["flatten", "upsample_nearest"]


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


def upsample_nearest(dy: Array, x: Array, *, scale: int | tuple[int, ...] = 2) -> Array:
    """Gradient of `forward.upsample_nearest`: every output in the s_h x s_w block of an input
    copies it, so `dx[n, i, j, c] = sum_{a < s_h, b < s_w} dy[n, i*s_h + a, j*s_w + b, c]`, dy
    summed over each block (the adjoint of the broadcast: a sum over the broadcast axes).

    Args:
      dy: (N, *(size * scale), C); x: (N, *spatial, C); scale: as the forward.

    Returns:
      dx: x's shape.
    """
    factors, out_shape = _geometry.upsample("backward.upsample_nearest", x, scale)
    upstream("backward.upsample_nearest", dy, x, out_shape, "the forward output")
    n, *sizes, c = x.shape
    blocks = dy.reshape(n, *(d for size, s in zip(sizes, factors) for d in (size, s)), c)
    return jnp.sum(blocks, tuple(range(2, 2 * len(sizes) + 1, 2)))
