"""Whole-network gradients three ways, and a comparison of any two.

    value_and_grad           (params, x, y, ...) -> (loss, grads, (state, logits)), by hand or
                             by jax.grad: the one path every gradient of a network takes
    manual_grad              the hand-written backward pass (`Network.backprop`)
    autodiff_grad            `jax.value_and_grad(model.loss)`
    finite_difference_grad   central differences in float64, coordinate by coordinate
    compare                  per-leaf max abs / max rel difference and cosine similarity
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.nn.network import Network, Params, State

Array = jax.Array
GRADS = ("manual", "autodiff")
# Bounds on max |manual - reference| / max |reference| per leaf: (vs autodiff, vs central
# differences). float64: both sums agree to rounding (1e-9 leaves three orders of headroom over
# what the tests see); differences of 1e-6 steps carry O(eps^2) truncation and 1e-10 rounding.
# float32: 1e-4 is ~1000 ulps of accumulated reordering over a deep net; no finite differences.
TOLERANCES = {"float64": (1e-9, 1e-6), "float32": (1e-4, None)}


def value_and_grad(model: Network, grad: str = "manual", *,
                   axis_name: str | None = None) -> Callable[..., tuple[Array, Params, Any]]:
    """`f(params, x, y, *, state=None, train=False, key=None) -> (loss, grads, (state, logits))`.

    grad: "manual" runs the forward trace and `model.backprop`; "autodiff" is
    `jax.value_and_grad(model.loss_and_aux, has_aux=True)`. x: (N, H, W, C), y: (N,).

    axis_name: inside `jax.shard_map` over a batch split along that mesh axis, both return the
    global batch's mean loss and its gradient. Manual: each device backprops its shard (the
    BatchNorm rules average their statistics over the axis), then `lax.pmean` averages the
    gradients. Autodiff: the gradient of `pmean(local loss)`. Why not of the local loss: inside
    `shard_map` (with its default `check_vma=True`) JAX knows that params are replicated and
    transposes their implicit broadcast into a `psum`, so the gradient of the local loss is
    already summed over devices, D times the global gradient.
    """
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {', '.join(GRADS)}; got {grad!r}")

    def mean(v: Any) -> Any:
        return v if axis_name is None else lax.pmean(v, axis_name)

    def manual(params, x, y, *, state=None, train=False, key=None):
        loss, trace = model.loss_and_trace(params, x, y, state=state, train=train, key=key,
                                           axis_name=axis_name)
        g, _ = model.backprop(params, trace, y)
        return mean(loss), mean(g), (trace.state, trace.activations[-1])

    def autodiff(params, x, y, *, state=None, train=False, key=None):
        def loss(p):
            value, aux = model.loss_and_aux(p, x, y, state=state, train=train, key=key,
                                            axis_name=axis_name)
            return mean(value), aux

        (value, aux), g = jax.value_and_grad(loss, has_aux=True)(params)
        return value, g, aux

    return manual if grad == "manual" else autodiff


def manual_grad(model: Network, params: Params, x: Array, y: Array, *,
                state: State | None = None, train: bool = False,
                key: Array | None = None) -> tuple[Array, Params]:
    """(loss, dL/dparams) by the hand-written backward pass.

    Args:
      model, params: a `Network` and its parameters.
      x: (N, H, W, C); y: (N,) labels.
      state: BatchNorm's running averages (None: the initial ones).
      train: batch-statistics BatchNorm and active Dropout (with `key`).

    Returns:
      (the mean loss over the batch, grads with params' structure).
    """
    loss, g, _ = value_and_grad(model, "manual")(params, x, y, state=state, train=train, key=key)
    return loss, g


def autodiff_grad(model: Network, params: Params, x: Array, y: Array, *,
                  state: State | None = None, train: bool = False,
                  key: Array | None = None) -> tuple[Array, Params]:
    """(loss, dL/dparams) by `jax.value_and_grad(model.loss)`; arguments as `manual_grad`."""
    loss, g, _ = value_and_grad(model, "autodiff")(params, x, y, state=state, train=train,
                                                   key=key)
    return loss, g
def finite_difference_grad(model: Network, params: Params, x: Array, y: Array, *,
                           eps: float = 1e-6, max_per_leaf: int | None = None, seed: int = 0,
                           **kw: Any) -> Params:
    """Central differences `(L(p + eps e_i) - L(p - eps e_i)) / (2 eps)`, in float64.

    Every coordinate of every leaf, or at most `max_per_leaf` coordinates drawn at random per
    leaf; coordinates not evaluated are NaN. Params must be float64 (`jax_enable_x64`).
    Keywords as `manual_grad` (use the same dropout key, so the loss is one function of params).
    """
    leaves, treedef = jax.tree.flatten(params)
    if any(leaf.dtype != jnp.float64 for leaf in leaves):
        raise TypeError("finite_difference_grad needs float64 params: enable jax_enable_x64 and "
                        "init the model with dtype=jnp.float64")
    rng = np.random.default_rng(seed)

    def loss_at(flat_leaves):
        return model.loss(jax.tree.unflatten(treedef, flat_leaves), x, y, **kw)

    # one compiled function per leaf, mapped over the coordinates to perturb
    def leaf_fd(i, coords):
        def two_sided(j):
            e = jnp.zeros(leaves[i].size, leaves[i].dtype).at[j].set(eps)
            plus, minus = list(leaves), list(leaves)
            plus[i] = leaves[i] + e.reshape(leaves[i].shape)
            minus[i] = leaves[i] - e.reshape(leaves[i].shape)
            return (loss_at(plus) - loss_at(minus)) / (2 * eps)
        return jax.lax.map(two_sided, coords)

    out = []
    for i, leaf in enumerate(leaves):
        n = leaf.size
        coords = np.arange(n) if max_per_leaf is None or n <= max_per_leaf else \
            np.sort(rng.choice(n, max_per_leaf, replace=False))
        fd = np.full(n, np.nan)
        fd[coords] = np.asarray(jax.jit(leaf_fd, static_argnums=0)(i, coords))
        out.append(fd.reshape(leaf.shape))
    return jax.tree.unflatten(treedef, out)


class LeafDiff(NamedTuple):
    path: str
    shape: tuple[int, ...]
    max_abs: float   # max |a - b|
    max_rel: float   # max |a - b| / max(max |b|, 1e-30)
    cosine: float    # <a, b> / (|a| |b|)


def compare(a: Any, b: Any) -> list[LeafDiff]:
    """Per-leaf differences between two gradient pytrees of the same structure, `b` the
    reference. NaN entries of `b` (coordinates a finite-difference pass skipped) are ignored."""
    rows = []
    for (path, la), lb in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        la, lb = np.asarray(la, np.float64), np.asarray(lb, np.float64)
        if la.shape != lb.shape:
            raise ValueError(f"compare: {jax.tree_util.keystr(path)} has shape {la.shape} in a "
                             f"but {lb.shape} in b")
        mask = ~np.isnan(lb)
        va, vb = la[mask], lb[mask]
        diff = float(np.abs(va - vb).max(initial=0.0))
        scale = float(np.abs(vb).max(initial=0.0))
        norm = float(np.linalg.norm(va) * np.linalg.norm(vb))
        rows.append(LeafDiff(jax.tree_util.keystr(path), la.shape, diff, diff / max(scale, 1e-30),
                             float(np.dot(va, vb) / norm) if norm > 0 else float(diff == 0)))
    return rows


def format_table(rows: list[LeafDiff], title: str = "") -> str:
    """`compare`'s rows as an aligned text table."""
    lines = [title] if title else []
    lines.append(f"{'parameter':28} {'shape':>16} {'max abs diff':>13} {'max rel diff':>13} "
                 f"{'cosine':>10}")
    lines += [f"{r.path:28} {r.shape!s:>16} {r.max_abs:13.3e} {r.max_rel:13.3e} {r.cosine:10.7f}"
              for r in rows]
    return "\n".join(lines)
