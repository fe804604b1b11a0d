"""Ops that only rearrange: flatten, and nearest-neighbour upsampling (which copies)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcnn import _geometry

Array = jax.Array

__all__ = ["flatten", "upsample_nearest"]


def flatten(x: Array) -> Array:
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...), row-major (the worked example's `F = Flatten(P1)`).

    Args:
      x: (N, d1, d2, ...), any dtype.

    Returns:
      (N, d1 * d2 * ...).
    """
    return x.reshape(_geometry.flatten("flatten", x))


def upsample_nearest(x: Array, *, scale: int | tuple[int, ...] = 2) -> Array:
    """Nearest-neighbour upsampling: `y[n, i, j, c] = x[n, i // s_h, j // s_w, c]`, each element
    repeated s times along every spatial axis (torch's `F.interpolate(mode="nearest")` with an
    integer scale factor).

    Written as a broadcast of x (N, H, 1, W, 1, C) to (N, H, s_h, W, s_w, C), merged back to
    (N, H * s_h, W * s_w, C); likewise on 1 and 3 spatial axes.

    Args:
      x: (N, *spatial, C) with 1, 2 or 3 spatial axes.
      scale: int >= 1 (every axis), or a tuple of one int >= 1 per spatial axis.

    Returns:
      y: (N, *(size * scale), C).
    """
    factors, out_shape = _geometry.upsample("upsample_nearest", x, scale)
    n, *sizes, c = x.shape
    expanded = x.reshape(n, *(d for size in sizes for d in (size, 1)), c)
    blocks = (n, *(d for size, s in zip(sizes, factors) for d in (size, s)), c)
    return jnp.broadcast_to(expanded, blocks).reshape(out_shape)
