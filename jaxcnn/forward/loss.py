"""Losses: on probabilities, on logits (fused, exact and stable), and squared error.

Each returns a scalar. The classification losses are means over the batch; `mse` is the sum the
general derivation writes, `E = 1/2 sum (t - y)^2`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcnn import _geometry

Array = jax.Array

__all__ = ["binary_cross_entropy", "mse", "pixel_sigmoid_binary_cross_entropy",
           "pixel_softmax_cross_entropy", "sigmoid_binary_cross_entropy",
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


def _softplus(z: Array) -> Array:
    """`log(1 + exp(z)) = max(z, 0) + log(1 + exp(-|z|))`, as `jax.nn.softplus` (logaddexp).

    Not written as that max/abs sum: jax.grad of it at z = 0 exactly is 0.5 - 0.5 = 0 (jnp.abs'
    taken as 1 there, jnp.maximum's tie split in half; jax 0.10.2), not sigmoid(0) = 1/2, and an
    exact 0 logit is common (a transposed convolution of ReLU zeros with a zero bias); logaddexp's
    rule gives 1/2. tests/test_losses_pixel.py checks autodiff at z = 0 against the rule.
    """
    return jnp.logaddexp(z, 0.0)


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
    return jnp.mean(_softplus(z) - z * y)


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


def pixel_softmax_cross_entropy(z: Array, y: Array) -> Array:
    """Per-position softmax cross-entropy (segmentation): each example's loss l_n is the mean
    over its P positions, L the mean of l_n over the batch:

    `L = 1/N sum_n 1/P sum_p -log softmax(z_np)_{y_np}`, which is `softmax_cross_entropy` on
    the N P rows of z (every example has the same P positions).

    Args:
      z: (N, *S, K) logits, at least one spatial axis, e.g. (N, H, W, K).
      y: (N, *S) int class ids in [0, K).

    Returns:
      L, a scalar.
    """
    k = _geometry.pixel_labels("pixel_softmax_cross_entropy", z, y, binary=False)
    return -jnp.mean(jnp.sum(jax.nn.one_hot(y, k, dtype=z.dtype)
                             * jax.nn.log_softmax(z, axis=-1), axis=-1))


def pixel_sigmoid_binary_cross_entropy(z: Array, y: Array) -> Array:
    """Per-position sigmoid binary cross-entropy (a binary mask): `sigmoid_binary_cross_entropy`
    at every position, the mean over the positions and the batch:

    `L = 1/(N P) sum_{n, p} [max(z, 0) - z y + log(1 + exp(-|z|))]`.

    Args:
      z: (N, *S, 1) or (N, *S) logits.
      y: (N, *S) labels in [0, 1].

    Returns:
      L, a scalar.
    """
    _geometry.pixel_labels("pixel_sigmoid_binary_cross_entropy", z, y, binary=True)
    z = z.reshape(y.shape)
    return jnp.mean(_softplus(z) - z * y)


def mse(y_pred: Array, t: Array) -> Array:
    """Squared error as the general derivation writes it: `E = 1/2 sum_p (t_p - y_p)^2`, a sum.

    Args:
      y_pred, t: the same shape, any rank.

    Returns:
      E, a scalar.
    """
    _geometry.targets("mse", y_pred, t)
    return 0.5 * jnp.sum((t - y_pred) ** 2)
