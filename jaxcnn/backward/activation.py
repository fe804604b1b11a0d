"""The rules of `jaxcnn/forward/activation.py`: each the local derivative times dy."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcnn import _geometry
from jaxcnn.backward._upstream import upstream

Array = jax.Array

__all__ = ["leaky_relu", "relu", "sigmoid", "softmax", "tanh"]


def _check(fn: str, dy: Array, x: Array) -> None:
    _geometry.array(fn, "x", x)
    upstream(fn, dy, x, tuple(x.shape), "x")


def relu(dy: Array, x: Array) -> Array:
    """`dx = dy * (x > 0)`: ReLU passes the gradient where it was active (0 at 0, as jax.nn).

    The worked example's `dZ1 = dA1 * (Z1 > 0)`. `x` may as well be the output `relu(x)`, which
    is > 0 at exactly the same places (micrograd's `(out.data > 0) * out.grad`).

    Args:
      dy, x: the same shape. Returns: dx, that shape.
    """
    _check("backward.relu", dy, x)
    return jnp.where(x > 0, dy, 0)


def leaky_relu(dy: Array, x: Array, negative_slope: float = 0.01) -> Array:
    """`dx = dy` where `x >= 0`, else `negative_slope * dy`. dy, x: the same shape."""
    _check("backward.leaky_relu", dy, x)
    return jnp.where(x >= 0, dy, negative_slope * dy)


def sigmoid(dy: Array, x: Array) -> Array:
    """`dx = dy * s * (1 - s)` with `s = sigmoid(x)` (the worked example's `dA2/dZ2`).

    Args:
      dy, x: the same shape. Returns: dx, that shape.
    """
    _check("backward.sigmoid", dy, x)
    s = jax.nn.sigmoid(x)
    return dy * s * (1 - s)


def tanh(dy: Array, x: Array) -> Array:
    """`dx = dy * (1 - t^2)` with `t = tanh(x)`. dy, x: the same shape."""
    _check("backward.tanh", dy, x)
    t = jnp.tanh(x)
    return dy * (1 - t * t)


def softmax(dy: Array, x: Array, axis: int = -1) -> Array:
    """`dx = s * (dy - sum(dy * s))` along `axis`, with `s = softmax(x)`: the Jacobian
    `diag(s) - s s^T` applied to dy. dy, x: the same shape."""
    _check("backward.softmax", dy, x)
    s = jax.nn.softmax(x, axis=axis)
    return s * (dy - jnp.sum(dy * s, axis=axis, keepdims=True))
