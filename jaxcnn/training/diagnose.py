"""When a run must stop: the manual vs autodiff check on a first batch, and the diagnosis of a
non-finite step (which layer broke)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn.nn import grads
from jaxcnn.nn.network import Network


class TrainingStoppedError(RuntimeError):
    """The run stopped for a reason the user must see (divergence, a failed gradient check)."""



def check_gradients(model: Network, params: Any, state: Any, x: Any, y: Any, key: Any,
                    dtype: str) -> float:
    """Manual vs autodiff on one batch (training mode, same dropout key); raises
    TrainingStoppedError beyond tolerance (float64 1e-9, float32 1e-4, relative to each leaf's
    largest entry).

    Returns:
      the largest relative difference over the leaves.
    """
    kw = dict(state=state, train=True, key=key)
    _, g_manual = jax.jit(lambda p: grads.manual_grad(model, p, x, y, **kw))(params)
    _, g_auto = jax.jit(lambda p: grads.autodiff_grad(model, p, x, y, **kw))(params)
    rows = grads.compare(g_manual, g_auto)
    tol = grads.TOLERANCES[dtype][0]  # the manual vs autodiff bound of `jaxcnn gradcheck`
    worst = max(rows, key=lambda r: r.max_rel)
    if not worst.max_rel <= tol:
        how = ("is not finite" if not worst.finite
               else f"max rel diff {worst.max_rel:.2e} > {tol:.0e}")
        raise TrainingStoppedError(
            f"--check-grads: manual and autodiff gradients differ on the first batch: "
            f"{worst.path} {how}")
    return worst.max_rel


def diagnose(model: Network, m: dict, params: Any, state: Any, x: Any) -> str:
    """Which layer broke: the first non-finite gradient in backprop order (from the loss towards
    the input), else the first layer whose output overflows, else whose parameters did.

    params and state are the ones the failing step returned, which are the ones that produced
    it (a non-finite step keeps them). The forward runs with XLA's convolutions (`impl="conv"`):
    the products of `impl="auto"` may spread one channel's inf to its neighbours as NaN."""
    norms = m["layer_grad_norms"]
    for layer in reversed(model.layers):
        if layer.name in norms and not math.isfinite(float(norms[layer.name])):
            return (f"the first non-finite gradient in backprop order is that of layer "
                    f"{layer.name!r}")
    acts = model.with_impl("conv").forward(params, x, state=state).activations[1:]
    for layer, y in zip(model.layers, acts):
        if not bool(jnp.isfinite(y).all()):
            return f"the gradients are finite; layer {layer.name!r} is the first whose output " \
                   f"is not"
    for layer in model.layers:
        if not all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(params.get(layer.name))):
            return f"layer {layer.name!r} has non-finite parameters"
    return "every layer's gradient, output and parameters are finite: the loss itself overflowed"
