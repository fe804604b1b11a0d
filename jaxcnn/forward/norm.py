"""Normalisation: batch statistics (`moments`) and batch normalisation.

`normalize` is the shared core that also returns what the backward rule needs (x_hat and
1/sigma), so that a layer computes the statistics once and its backward recomputes nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _geometry

Array = jax.Array

__all__ = ["batch_norm", "moments"]


def _mean(x: Array, axes: tuple[int, ...], axis_name: str | None) -> Array:
    """The mean over `axes`, and over the devices of a mapped `axis_name` (equal shards)."""
    m = jnp.mean(x, axes)
    return m if axis_name is None else lax.pmean(m, axis_name)


def moments(x: Array, *, axis_name: str | None = None) -> tuple[Array, Array]:
    """Per-channel mean and (biased) variance over every axis but the last.

    `mean = (1/M) sum x`, `var = (1/M) sum (x - mean)^2`, sums over the M = N*H*W elements of a
    channel. With `axis_name` (inside shard_map / pmap), over the whole global batch.

    Args:
      x: (N, ..., C).

    Returns:
      (mean, var), each (C,).
    """
    _geometry.array("moments", "x", x)
    axes = tuple(range(x.ndim - 1))
    mean = _mean(x, axes, axis_name)
    return mean, _mean(jnp.square(x - mean), axes, axis_name)


def normalize(x: Array, gamma: Array, beta: Array, mean: Array, var: Array,
              eps: float) -> tuple[Array, Array, Array]:
    """`(y, x_hat, inv_sigma)` with `x_hat = (x - mean) / sqrt(var + eps)`, `y = gamma x_hat +
    beta`: x (N, ..., C); gamma, beta, mean, var, inv_sigma (C,). Unchecked."""
    inv_sigma = lax.rsqrt(var + eps)
    x_hat = (x - mean) * inv_sigma
    return gamma * x_hat + beta, x_hat, inv_sigma


def batch_norm(x: Array, gamma: Array, beta: Array, mean: Array | None = None,
               var: Array | None = None, *, eps: float = 1e-5,
               axis_name: str | None = None) -> Array:
    """Batch normalization: `y = gamma * (x - mu) / sqrt(var + eps) + beta`, per channel.

    Training: mean and var None, so mu and var are the batch's own statistics over N (and H, W),
    and the gradient flows through them. Evaluation: the given running averages, as constants.

    Args:
      x: (N, ..., C).
      gamma, beta: (C,).
      mean, var: (C,) running statistics (evaluation), or both None (training).
      eps: added to the variance.
      axis_name: in training, take the statistics of the global batch sharded over this mapped
        axis.

    Returns:
      y: x's shape.
    """
    _geometry.batch_norm("batch_norm", x, gamma, beta, mean, var)
    if mean is None:
        mean, var = moments(x, axis_name=axis_name)
    return normalize(x, gamma, beta, mean, var, eps)[0]
