"""The rules of `jaxcnn/forward/norm.py`.

With x_hat = (x - mean) / sigma over the M elements of a channel, `dbeta = sum dy`,
`dgamma = sum dy x_hat`, and in training (statistics that depend on x)

    dx = (1/sigma) (dx_hat - mean(dx_hat) - x_hat mean(dx_hat x_hat)),   dx_hat = gamma dy.

`normalized` is that rule given x_hat and 1/sigma, which a layer keeps from its forward pass.

Group and layer norm take the same rule over their own slices (`standardized`): the M elements of
one example's group (spatial axes and the group's C // G channels), or of one position's C
channels. There gamma varies inside a slice, so dx_hat = gamma dy is formed before the two means
(batch norm's rule takes gamma out of them, constant over its slice); dgamma and dbeta are still
sums over every axis but the channels, N included.

Data parallel (`axis_name`, equal shards of a global batch, each device holding the gradient of
its own shard's mean loss): the statistics and the two means in dx are averaged over the
devices, which is the global rule scaled as the local losses are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _geometry
from jaxcnn.backward._upstream import upstream
from jaxcnn.forward.norm import group_axes, group_normalize, grouped, layer_normalize
from jaxcnn.forward.norm import moments as moments_forward

Array = jax.Array

__all__ = ["batch_norm", "group_norm", "layer_norm", "moments"]


def _pmean(v: Array, axis_name: str | None) -> Array:
    return v if axis_name is None else lax.pmean(v, axis_name)


def moments(dmean: Array, dvar: Array, x: Array, *,
            axis_name: str | None = None) -> Array:
    """Gradient of `forward.moments`: `mean = (1/M) sum x`, `var = (1/M) sum (x - mean)^2` give

        dx = (dmean + 2 dvar (x - mean)) / M

    (the term through the mean inside var vanishes: `sum (x - mean) = 0`).

    Args:
      dmean, dvar: (C,), the upstream gradients of the two outputs.
      x: (N, ..., C); axis_name: as the forward.

    Returns:
      dx: x's shape.
    """
    _geometry.array("backward.moments", "x", x)
    for v in (dmean, dvar):
        upstream("backward.moments", v, x, (x.shape[-1],), "one value per channel of x")
    mean, _ = moments_forward(x, axis_name=axis_name)
    m = x.size // x.shape[-1]
    return (_pmean(dmean, axis_name) + 2 * _pmean(dvar, axis_name) * (x - mean)) / m


def normalized(dy: Array, x_hat: Array, inv_sigma: Array, gamma: Array, *, training: bool,
               axis_name: str | None = None) -> tuple[Array, Array, Array]:
    """(dx, dgamma, dbeta) of `y = gamma x_hat + beta` given the forward's x_hat (N, ..., C)
    and inv_sigma (C,); `training`: whether the statistics came from x itself. Unchecked."""
    axes = tuple(range(x_hat.ndim - 1))
    dbeta = jnp.sum(dy, axes)
    dgamma = jnp.sum(dy * x_hat, axes)
    if not training:
        return gamma * inv_sigma * dy, dgamma, dbeta
    m = x_hat.size // x_hat.shape[-1]
    sum_dy, sum_dy_xhat = _pmean(dbeta, axis_name), _pmean(dgamma, axis_name)
    dx = gamma * inv_sigma / m * (m * dy - sum_dy - x_hat * sum_dy_xhat)
    return dx, dgamma, dbeta


def batch_norm(dy: Array, x: Array, gamma: Array, beta: Array, mean: Array | None = None,
               var: Array | None = None, *, eps: float = 1e-5,
               axis_name: str | None = None) -> tuple[Array, Array, Array]:
    """Gradients of `forward.batch_norm`.

    With `x_hat = (x - mu) / sigma`, `sigma = sqrt(var + eps)` and sums over the M = N*H*W
    elements of each channel: `dbeta = sum dy`, `dgamma = sum dy * x_hat`, and

      training (batch statistics, which depend on x):
          dx = gamma / (M sigma) * (M dy - sum dy - x_hat * sum(dy * x_hat));
      evaluation (running averages, constants): dx = gamma * dy / sigma.

    mean and var are running statistics, not parameters: no gradient is returned for them.

    Args:
      dy: x's shape; x, gamma, beta, mean, var and the options: as the forward.

    Returns:
      (dx (x's shape), dgamma (C,), dbeta (C,)).
    """
    _geometry.batch_norm("backward.batch_norm", x, gamma, beta, mean, var)
    upstream("backward.batch_norm", dy, x, tuple(x.shape), "x")
    training = mean is None
    if training:
        mean, var = moments_forward(x, axis_name=axis_name)
    inv_sigma = lax.rsqrt(var + eps)
    return normalized(dy, (x - mean) * inv_sigma, inv_sigma, gamma, training=training,
                      axis_name=axis_name)


def standardized(dx_hat: Array, x_hat: Array, inv_sigma: Array,
                 axes: tuple[int, ...]) -> Array:
    """dx of `x_hat = (x - mean_A x) * inv_sigma` (statistics of x itself, per slice over `axes`)
    given `dx_hat = dL/dx_hat`:

        dx = inv_sigma (dx_hat - mean_A(dx_hat) - x_hat mean_A(dx_hat x_hat)).

    x_hat, dx_hat: one shape; inv_sigma: with size-1 `axes`, broadcasting against them. Unchecked.
    """
    mean_dx_hat = jnp.mean(dx_hat, axes, keepdims=True)
    mean_dx_hat_x_hat = jnp.mean(dx_hat * x_hat, axes, keepdims=True)
    return inv_sigma * (dx_hat - mean_dx_hat - x_hat * mean_dx_hat_x_hat)


def _affine(dy: Array, x_hat: Array) -> tuple[Array, Array]:
    """(dgamma, dbeta) of `y = gamma x_hat + beta`, gamma and beta per channel: (C,) each."""
    axes = tuple(range(dy.ndim - 1))
    return jnp.sum(dy * x_hat, axes), jnp.sum(dy, axes)


def group_normalized(dy: Array, x_hat: Array, inv_sigma: Array, gamma: Array, *,
                     groups: int) -> tuple[Array, Array, Array]:
    """(dx, dgamma, dbeta) of group norm given `forward.norm.group_normalize`'s x_hat
    (N, ..., C) and inv_sigma (N, 1, ..., 1, G, 1). Unchecked."""
    x_hat_g = grouped(x_hat, groups)
    dx = standardized(grouped(gamma * dy, groups), x_hat_g, inv_sigma, group_axes(x_hat_g.ndim))
    return (dx.reshape(dy.shape), *_affine(dy, x_hat))


def group_norm(dy: Array, x: Array, gamma: Array, beta: Array, *, groups: int,
               eps: float = 1e-5) -> tuple[Array, Array, Array]:
    """Gradients of `forward.group_norm`.

    With `x_hat = (x - mu) / sigma`, mu and sigma per example and group over its M = S * C / G
    elements (S spatial positions), and `dx_hat = gamma * dy`:

        dx = (1/sigma) (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)),

    the means over each (example, group) slice; `dgamma = sum dy * x_hat`, `dbeta = sum dy`,
    sums over every axis but the channels.

    Args:
      dy: x's shape; x, gamma, beta, groups, eps: as the forward.

    Returns:
      (dx (x's shape), dgamma (C,), dbeta (C,)).
    """
    _geometry.group_norm("backward.group_norm", x, gamma, beta, groups, eps)
    upstream("backward.group_norm", dy, x, tuple(x.shape), "x")
    _, x_hat, inv_sigma = group_normalize(x, gamma, beta, groups, eps)
    return group_normalized(dy, x_hat, inv_sigma, gamma, groups=groups)


def layer_normalized(dy: Array, x_hat: Array, inv_sigma: Array,
                     gamma: Array) -> tuple[Array, Array, Array]:
    """(dx, dgamma, dbeta) of layer norm given `forward.norm.layer_normalize`'s x_hat (N, ..., C)
    and inv_sigma (N, ..., 1). Unchecked."""
    dx = standardized(gamma * dy, x_hat, inv_sigma, (x_hat.ndim - 1,))
    return (dx, *_affine(dy, x_hat))


def layer_norm(dy: Array, x: Array, gamma: Array, beta: Array, *,
               eps: float = 1e-5) -> tuple[Array, Array, Array]:
    """Gradients of `forward.layer_norm`.

    With `x_hat = (x - mu) / sigma`, mu and sigma over the C channels at each position, and
    `dx_hat = gamma * dy`:

        dx = (1/sigma) (dx_hat - mean_c(dx_hat) - x_hat * mean_c(dx_hat * x_hat)),

    the means over the channel axis; `dgamma = sum dy * x_hat`, `dbeta = sum dy`, sums over every
    axis but the channels.

    Args:
      dy: x's shape; x, gamma, beta, eps: as the forward.

    Returns:
      (dx (x's shape), dgamma (C,), dbeta (C,)).
    """
    _geometry.layer_norm("backward.layer_norm", x, gamma, beta, eps)
    upstream("backward.layer_norm", dy, x, tuple(x.shape), "x")
    _, x_hat, inv_sigma = layer_normalize(x, gamma, beta, eps)
    return layer_normalized(dy, x_hat, inv_sigma, gamma)
