"""Joins: ops that merge two branches of a network, a residual sum (`add`) and a channel
concatenation (`concat`, a U-Net's skip connection)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcnn import _geometry

Array = jax.Array

__all__ = ["add", "concat"]


def add(a: Array, b: Array) -> Array:
    """The residual join: `y = a + b`, elementwise (a ResNet's `F(x) + x`).

    Args:
      a, b: floating arrays of one shape and dtype, e.g. (N, H, W, C).

    Returns:
      y: a's shape.
    """
    _geometry.join("add", a, b, along_channels=False)
    return a + b


def concat(a: Array, b: Array) -> Array:
    """Channel concatenation: `y[..., :C_a] = a`, `y[..., C_a:] = b` (a U-Net's skip joined to
    the upsampled path).

    Args:
      a: (N, ..., C_a); b: (N, ..., C_b), the same N and spatial sizes and dtype.

    Returns:
      y: (N, ..., C_a + C_b).
    """
    _geometry.join("concat", a, b, along_channels=True)
    return jnp.concatenate([a, b], axis=-1)
