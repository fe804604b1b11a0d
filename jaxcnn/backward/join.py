"""The rules of `jaxcnn/forward/join.py`: a sum hands dy to both branches, a concatenation
splits it between them."""

from __future__ import annotations

import jax

from jaxcnn import _geometry
from jaxcnn.backward._upstream import upstream

Array = jax.Array

__all__ = ["add", "concat"]


def add(dy: Array, a: Array, b: Array) -> tuple[Array, Array]:
    """Gradient of `forward.add`: `y = a + b` has `dy/da = dy/db = I`, so `da = db = dy`
    (the residual path and the branch each get the whole upstream gradient).

    Args:
      dy: a's shape; a, b: as the forward.

    Returns:
      (da, db), each a's shape.
    """
    _geometry.join("backward.add", a, b, along_channels=False)
    upstream("backward.add", dy, a, tuple(a.shape), "the forward output")
    return dy, dy


def concat(dy: Array, a: Array, b: Array) -> tuple[Array, Array]:
    """Gradient of `forward.concat`: each input gets its own channels of dy,
    `da = dy[..., :C_a]`, `db = dy[..., C_a:]`.

    Args:
      dy: (N, ..., C_a + C_b); a, b: as the forward.

    Returns:
      (da (a's shape), db (b's shape)).
    """
    _geometry.join("backward.concat", a, b, along_channels=True)
    c_a = a.shape[-1]
    upstream("backward.concat", dy, a, (*a.shape[:-1], c_a + b.shape[-1]), "the forward output")
    return dy[..., :c_a], dy[..., c_a:]
