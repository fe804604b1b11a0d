"""Whole-network gradients three ways, and a comparison of any two.

    manual_grad      the hand-written backward pass (`Network.backprop`)
    autodiff_grad    `jax.value_and_grad(model.loss)`
    finite_difference_grad   central differences in float64, coordinate by coordinate
    compare          per-leaf max abs / max rel difference and cosine similarity
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.network import Network, Params, State

Array = jax.Array


def manual_value_and_grad(model: Network, params: Params, x: Array, y: Array, *,
                          state: State | None = None, train: bool = False,
                          key: Array | None = None, axis_name: str | None = None,
                          impl: str = "conv") -> tuple[Array, Params, tuple[State, Array]]:
    """(loss, grads, (new state, logits)) by the hand-written backward pass; `impl` is the
    formulation of the convolutions and their gradients ("conv", "gemm" or "auto")."""
    model.check_labels(x, y)
    trace = model.forward(params, x, state=state, train=train, key=key, axis_name=axis_name,
                          impl=impl)
    logits = trace.activations[-1]
    grads, _ = model.backprop(params, trace, y, impl=impl)
    return model.head.loss(logits, y), grads, (trace.state, logits)


def manual_grad(model: Network, params: Params, x: Array, y: Array,
                **kw: Any) -> tuple[Array, Params]:
    """(loss, dL/dparams) by the hand-written backward pass. x: (N, H, W, C); y: (N,).

    Keywords as `Network.forward`: state, train, key (Dropout's key in training); and impl.
    """
    loss, grads, _ = manual_value_and_grad(model, params, x, y, **kw)
    return loss, grads


def autodiff_grad(model: Network, params: Params, x: Array, y: Array,
                  **kw: Any) -> tuple[Array, Params]:
    """(loss, dL/dparams) by `jax.value_and_grad(model.loss)`; same arguments as manual_grad."""
    return jax.value_and_grad(model.loss)(params, x, y, **kw)


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
