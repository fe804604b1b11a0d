"""Normalisation: batch statistics (`moments`), batch, group and layer normalisation.

`normalize` is the shared core that also returns what the backward rule needs (x_hat and
1/sigma), so that a layer computes the statistics once and its backward recomputes nothing.
The three norms differ only in the axes their statistics reduce: batch norm over N and the
spatial axes (per channel), group norm over the spatial axes and the channels of a group (per
example and group), layer norm over the channels (per example and position).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _geometry

Array = jax.Array

__all__ = ["batch_norm", "group_norm", "layer_norm", "moments"]


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
    beta`: x (N, ..., C); gamma, beta, mean, var, inv_sigma (C,), or any shapes that broadcast
    against x (group and layer norm). Unchecked."""
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


def grouped(x: Array, groups: int) -> Array:
    """x (..., C) viewed as (..., G, C // G), G = groups: each group's channels on the last axis
    (group g holds channels g * C // G to (g + 1) * C // G - 1, as torch groups them)."""
    return x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)


def standardize(x: Array, gamma: Array, beta: Array, axes: tuple[int, ...],
                eps: float) -> tuple[Array, Array, Array]:
    """`normalize` with the statistics of x itself, per slice over `axes` (kept as size-1 axes):
    `mean = mean_A x`, `var = mean_A (x - mean)^2` (biased). Unchecked."""
    mean = jnp.mean(x, axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axes, keepdims=True)
    return normalize(x, gamma, beta, mean, var, eps)


def group_axes(ndim: int) -> tuple[int, ...]:
    """The axes group norm reduces in the grouped view (N, *spatial, G, C // G) of rank `ndim`:
    the spatial axes and the channels of a group."""
    return (*range(1, ndim - 2), ndim - 1)


def group_normalize(x: Array, gamma: Array, beta: Array, groups: int,
                    eps: float) -> tuple[Array, Array, Array]:
    """Group norm's `(y, x_hat, inv_sigma)`: y, x_hat x's shape (N, ..., C); inv_sigma
    (N, 1, ..., 1, G, 1), one per example and group, broadcasting against `grouped(x, groups)`.
    Unchecked."""
    xg = grouped(x, groups)
    y, x_hat, inv_sigma = standardize(xg, grouped(gamma, groups), grouped(beta, groups),
                                      group_axes(xg.ndim), eps)
    return y.reshape(x.shape), x_hat.reshape(x.shape), inv_sigma


def group_norm(x: Array, gamma: Array, beta: Array, *, groups: int,
               eps: float = 1e-5) -> Array:
    """Group normalization: `y = gamma * (x - mu) / sqrt(var + eps) + beta`, with mu and var
    per example and group of channels.

    The C channels are split into `groups` consecutive groups of C // groups; the statistics of
    each (example, group) are taken over the spatial axes and the group's channels, M = S * C / G
    elements for S spatial positions (biased variance, as torch's `F.group_norm`). gamma and beta
    are per channel. groups = 1 normalises each example over all its elements; groups = C is
    instance norm. No batch statistics: each example is normalised on its own, in training and
    evaluation alike.

    Args:
      x: (N, ..., C), e.g. (N, H, W, C).
      gamma, beta: (C,).
      groups: an int >= 1 that divides C.
      eps: added to the variance.

    Returns:
      y: x's shape.
    """
    _geometry.group_norm("group_norm", x, gamma, beta, groups, eps)
    return group_normalize(x, gamma, beta, groups, eps)[0]


def layer_normalize(x: Array, gamma: Array, beta: Array,
                    eps: float) -> tuple[Array, Array, Array]:
    """Layer norm's `(y, x_hat, inv_sigma)`: y, x_hat x's shape (N, ..., C); inv_sigma
    (N, ..., 1), one per position. Unchecked."""
    return standardize(x, gamma, beta, (x.ndim - 1,), eps)


def layer_norm(x: Array, gamma: Array, beta: Array, *, eps: float = 1e-5) -> Array:
    """Layer normalization over the channel axis: `y = gamma * (x - mu) / sqrt(var + eps) + beta`,
    with mu and var over the C channels of each example at each position.

    Torch's `F.layer_norm(x, (C,))` on channels-last x (biased variance); gamma and beta are per
    channel.

    Args:
      x: (N, ..., C), e.g. (N, H, W, C) or (N, D).
      gamma, beta: (C,).
      eps: added to the variance.

    Returns:
      y: x's shape.
    """
    _geometry.layer_norm("layer_norm", x, gamma, beta, eps)
    return layer_normalize(x, gamma, beta, eps)[0]
