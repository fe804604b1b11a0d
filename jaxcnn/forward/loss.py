"""Losses: on probabilities, on logits (fused, exact and stable), and squared error.

Each returns a scalar. The classification losses are means over the batch; `mse` is the sum the
general derivation writes, `E = 1/2 sum (t - y)^2`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcnn import _geometry

Array = jax.Array

__all__ = ["binary_cross_entropy", "mse", "sigmoid_binary_cross_entropy",
           "softmax_cross_entropy"]


def binary_cross_entropy(p: Array, y: Array) -> Array:
    """Binary cross-entropy on probabilities, mean over the batch (the worked example's loss):

    `L = -1/N sum_n [y_n log p_n + (1 - y_n) log(1 - p_n)]`. Prefer
    `sigmoid_binary_cross_entropy` on logits: it is exact where p rounds to 0 or 1.

    Args:
      p: (N,) or (N, 1) probabilities.
      y: (N,) labels in [0, 1].

    Returns:
      L, a scalar.
    """
    _geometry.binary_labels("binary_cross_entropy", p, y, "p")
    p = p.reshape(y.shape)
    return -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log1p(-p))


def sigmoid_binary_cross_entropy(z: Array, y: Array) -> Array:
    """`binary_cross_entropy(sigmoid(z), y)` computed stably from logits, mean over the batch:

    `L = 1/N sum_n [max(z, 0) - z y + log(1 + exp(-|z|))]`.

    Args:
      z: (N,) or (N, 1) logits.
      y: (N,) labels in [0, 1].

    Returns:
      L, a scalar.
    """
    _geometry.binary_labels("sigmoid_binary_cross_entropy", z, y, "z")
    z = z.reshape(y.shape)
    return jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))))


def softmax_cross_entropy(z: Array, y: Array) -> Array:
    """Softmax cross-entropy on logits, mean over the batch (`L = -sum y log y_hat`):

    `L = -1/N sum_n sum_k y_nk log softmax(z_n)_k`.

    Args:
      z: (N, K) logits.
      y: (N,) int class ids, or (N, K) one-hot rows (or any distributions).

    Returns:
      L, a scalar.
    """
    target = _geometry.class_targets("softmax_cross_entropy", z, y)
    return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(z, axis=-1), axis=-1))


def mse(y_pred: Array, t: Array) -> Array:
    """Squared error as the general derivation writes it: `E = 1/2 sum_p (t_p - y_p)^2`, a sum.

    Args:
      y_pred, t: the same shape, any rank.

    Returns:
      E, a scalar.
    """
    _geometry.targets("mse", y_pred, t)
    return 0.5 * jnp.sum((t - y_pred) ** 2)
