"""The rules of `jaxcnn/forward/loss.py`.

Losses take the upstream scalar `dl` (1.0 for the loss itself) and return the gradient of the
prediction only: labels are data, not parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcnn import _geometry
from jaxcnn.backward._upstream import scalar

Array = jax.Array

__all__ = ["binary_cross_entropy", "mse", "pixel_sigmoid_binary_cross_entropy",
           "pixel_softmax_cross_entropy", "sigmoid_binary_cross_entropy",
           "softmax_cross_entropy"]


def binary_cross_entropy(dl: Array | float, p: Array, y: Array) -> Array:
    """`dL/dp = dl * (p - y) / (p (1 - p)) / N` for the batch-mean BCE on probabilities.

    Args:
      dl: scalar; p: (N,) or (N, 1); y: (N,).

    Returns:
      dp with p's shape.
    """
    _geometry.binary_labels("backward.binary_cross_entropy", p, y, "p")
    dl = scalar("backward.binary_cross_entropy", dl, p)
    pf = p.reshape(y.shape)
    return (dl * (pf - y) / (pf * (1 - pf)) / y.shape[0]).reshape(p.shape)


def sigmoid_binary_cross_entropy(dl: Array | float, z: Array, y: Array) -> Array:
    """`dL/dz = dl * (sigmoid(z) - y) / N`: the worked example's `dZ2 = A2 - Y`, batch-averaged.

    Args:
      dl: scalar; z: (N,) or (N, 1) logits; y: (N,).

    Returns:
      dz with z's shape.
    """
    _geometry.binary_labels("backward.sigmoid_binary_cross_entropy", z, y, "z")
    dl = scalar("backward.sigmoid_binary_cross_entropy", dl, z)
    a = jax.nn.sigmoid(z.reshape(y.shape))
    return (dl * (a - y) / y.shape[0]).reshape(z.shape)


def softmax_cross_entropy(dl: Array | float, z: Array, y: Array) -> Array:
    """`dL/dz = dl * (softmax(z) * sum_k(y) - y) / N`, which is `softmax(z) - onehot(y)` for
    one-hot or integer labels.

    Args:
      dl: scalar; z: (N, K); y: (N,) int or (N, K).

    Returns:
      dz (N, K).
    """
    target = _geometry.class_targets("backward.softmax_cross_entropy", z, y)
    dl = scalar("backward.softmax_cross_entropy", dl, z)
    s = jax.nn.softmax(z, axis=-1)
    return dl * (s * jnp.sum(target, axis=-1, keepdims=True) - target) / z.shape[0]


def pixel_softmax_cross_entropy(dl: Array | float, z: Array, y: Array) -> Array:
    """`dL/dz = dl * (softmax(z) - onehot(y)) / (N P)`: the softmax rule at every position, the
    mean over N examples of P positions each dividing by both.

    Args:
      dl: scalar; z: (N, *S, K) logits; y: (N, *S) int class ids.

    Returns:
      dz (N, *S, K).
    """
    k = _geometry.pixel_labels("backward.pixel_softmax_cross_entropy", z, y, binary=False)
    dl = scalar("backward.pixel_softmax_cross_entropy", dl, z)
    rows = y.size  # N P
    return dl * (jax.nn.softmax(z, axis=-1) - jax.nn.one_hot(y, k, dtype=z.dtype)) / rows


def pixel_sigmoid_binary_cross_entropy(dl: Array | float, z: Array, y: Array) -> Array:
    """`dL/dz = dl * (sigmoid(z) - y) / (N P)` at every position (the worked example's
    `A2 - Y`, averaged over positions and batch).

    Args:
      dl: scalar; z: (N, *S, 1) or (N, *S) logits; y: (N, *S).

    Returns:
      dz with z's shape.
    """
    _geometry.pixel_labels("backward.pixel_sigmoid_binary_cross_entropy", z, y, binary=True)
    dl = scalar("backward.pixel_sigmoid_binary_cross_entropy", dl, z)
    a = jax.nn.sigmoid(z.reshape(y.shape))
    return (dl * (a - y) / y.size).reshape(z.shape)


def mse(dl: Array | float, y_pred: Array, t: Array) -> Array:
    """`dE/dy = dl * (y - t)` for `E = 1/2 sum (t - y)^2`.

    Args:
      dl: scalar; y_pred, t: the same shape.

    Returns:
      dy with y_pred's shape.
    """
    _geometry.targets("backward.mse", y_pred, t)
    return scalar("backward.mse", dl, y_pred) * (y_pred - t)
