"""The normalisation layers: BatchNorm (batch statistics), GroupNorm and LayerNorm (each
example's own); `jaxcnn.nn.layers` describes the protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn import _geometry, forward
from jaxcnn.backward.norm import group_normalized, layer_normalized, normalized
from jaxcnn.forward.norm import group_normalize, layer_normalize, normalize
from jaxcnn.nn import ghost
from jaxcnn.nn.layer import Layer, reweighted


def BatchNorm(*, momentum: float = 0.9, eps: float = 1e-5, name: str = "batchnorm") -> Layer:
    """Batch normalization over every axis but the channels.

    Training normalises with the batch's statistics (and backpropagates through them) and
    updates the running averages `new = momentum * old + (1 - momentum) * batch` (biased batch
    variance, as flax); evaluation normalises with the running averages.
    params: {"gamma": (C,), "beta": (C,)}; state: {"mean": (C,), "var": (C,)}.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"BatchNorm {name!r}: momentum must be in [0, 1); got {momentum}")

    def initial_state(c, dtype):
        return {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}

    def init(key, in_shape, dtype):
        c = in_shape[-1]
        params = {"gamma": jnp.ones((c,), dtype), "beta": jnp.zeros((c,), dtype)}
        return in_shape, params, initial_state(c, dtype)

    def apply(params, state, x, *, train=False, key=None, axis_name=None):
        _geometry.batch_norm(f"BatchNorm {name!r}", x, params["gamma"], params["beta"], None,
                             None)
        state = state or initial_state(x.shape[-1], x.dtype)
        if train:  # the batch's statistics: computed once, kept for the running averages
            mean, var = forward.moments(x, axis_name=axis_name)
            state = {"mean": momentum * state["mean"] + (1 - momentum) * mean,
                     "var": momentum * state["var"] + (1 - momentum) * var}
        else:
            mean, var = state["mean"], state["var"]
        y, x_hat, inv_sigma = normalize(x, params["gamma"], params["beta"], mean, var, eps)
        return y, state, {"x_hat": x_hat, "inv_sigma": inv_sigma, "train": train,
                          "axis_name": axis_name}

    def backward_(dy, params, x, residual):
        # residual: the forward's x_hat and 1/sigma, whether they were batch statistics, and
        # the device axis they span
        dx, dgamma, dbeta = normalized(dy, residual["x_hat"], residual["inv_sigma"],
                                       params["gamma"], training=residual["train"],
                                       axis_name=residual["axis_name"])
        return dx, {"gamma": dgamma, "beta": dbeta}

    def norms(g, params, x, residual, method):
        if residual["train"]:
            raise ValueError(f"BatchNorm {name!r}: in training mode it mixes the examples of a "
                             f"batch, so no example has a gradient of its own; use GroupNorm or "
                             f"LayerNorm, or evaluation mode (train=False)")
        return (backward_(g, params, x, residual)[0], ghost.affine(g, residual["x_hat"]),
                reweighted(backward_, g, params, x, residual))

    return Layer(name, init, apply, backward_,
                 {"kind": "BatchNorm", "momentum": momentum, "eps": eps}, norms=norms,
                 mixes_examples=True)


def _per_example_norm(kind: str, name: str, eps: float, check: Callable, fwd: Callable,
                      bwd: Callable, **opts: Any) -> Layer:
    """A normalisation with per-channel gamma and beta whose statistics are each example's own
    (no batch statistics, no state; training and evaluation alike): `check(label, x, gamma,
    beta, *opts, eps)` (`jaxcnn._geometry`), `fwd(x, gamma, beta, *opts, eps) -> (y, x_hat,
    inv_sigma)` (`jaxcnn.forward.norm`), `bwd(dy, x_hat, inv_sigma, gamma, **opts) -> (dx,
    dgamma, dbeta)` (`jaxcnn.backward.norm`); the residual keeps x_hat and 1/sigma, so backward
    recomputes nothing."""
    label = f"{kind} {name!r}"

    def init(key, in_shape, dtype):
        c = in_shape[-1]
        params = {"gamma": jnp.ones((c,), dtype), "beta": jnp.zeros((c,), dtype)}
        check(label, jax.ShapeDtypeStruct((1, *in_shape), dtype), params["gamma"],
              params["beta"], *opts.values(), eps)
        return in_shape, params, {}

    def apply(params, state, x, *, train=False, key=None, axis_name=None):
        check(label, x, params["gamma"], params["beta"], *opts.values(), eps)
        y, x_hat, inv_sigma = fwd(x, params["gamma"], params["beta"], *opts.values(), eps)
        return y, state, {"x_hat": x_hat, "inv_sigma": inv_sigma}

    def backward_(dy, params, x, residual):
        dx, dgamma, dbeta = bwd(dy, residual["x_hat"], residual["inv_sigma"], params["gamma"],
                                **opts)
        return dx, {"gamma": dgamma, "beta": dbeta}

    def norms(g, params, x, residual, method):
        return (backward_(g, params, x, residual)[0], ghost.affine(g, residual["x_hat"]),
                reweighted(backward_, g, params, x, residual))

    return Layer(name, init, apply, backward_, {"kind": kind, **opts, "eps": eps}, norms=norms)


def GroupNorm(groups: int, *, eps: float = 1e-5, name: str = "groupnorm") -> Layer:
    """Group normalization (Wu & He 2018): the C channels in `groups` consecutive groups, each
    (example, group) normalised over its spatial positions and channels, M = H * W * C / G
    elements: `y = gamma * (x - mu) / sqrt(var + eps) + beta` (`forward.group_norm`).

    Each example is normalised on its own, so unlike BatchNorm it neither mixes the examples of
    a batch nor keeps running averages: per-example gradients (DP-SGD) stay per example, and
    training and evaluation compute the same thing. With x_hat, sigma per (example, group) and
    dx_hat = gamma * dy: dx = (1/sigma) (dx_hat - mean(dx_hat) - x_hat mean(dx_hat x_hat)),
    the means over each group's M elements; dgamma = sum dy x_hat, dbeta = sum dy.

    Args:
      groups: an int >= 1 dividing the input's channels (1: LayerNorm over H, W and C; C:
        InstanceNorm).
      eps: added to the variance.
      name: the layer's name.

    Returns:
      A Layer (..., C) -> (..., C) with params {"gamma": (C,), "beta": (C,)} and no state.
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"GroupNorm {name!r}: groups must be an int >= 1; got {groups!r}")
    return _per_example_norm("GroupNorm", name, eps, _geometry.group_norm, group_normalize,
                             group_normalized, groups=groups)


def LayerNorm(*, eps: float = 1e-5, name: str = "layernorm") -> Layer:
    """Layer normalization over the channel axis (torch's `F.layer_norm(x, (C,))` channels-last):
    at every position of every example, `y = gamma * (x - mu) / sqrt(var + eps) + beta` with mu
    and var over its C channels (`forward.layer_norm`). The rule is GroupNorm's with the means
    over the C channels of one position.

    Args:
      eps: added to the variance; name: the layer's name.

    Returns:
      A Layer (..., C) -> (..., C) with params {"gamma": (C,), "beta": (C,)} and no state.
    """
    return _per_example_norm("LayerNorm", name, eps, _geometry.layer_norm, layer_normalize,
                             layer_normalized)
