"""Ops that only rearrange: flatten."""

from __future__ import annotations

import jax

from jaxcnn import _geometry

Array = jax.Array

__all__ = ["flatten"]


def flatten(x: Array) -> Array:
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...), row-major (the worked example's `F = Flatten(P1)`).

    Args:
      x: (N, d1, d2, ...), any dtype.

    Returns:
      (N, d1 * d2 * ...).
    """
    return x.reshape(_geometry.flatten("flatten", x))
