"""Whole-network gradients three ways, and a comparison of any two.

    value_and_grad           (params, x, y, ...) -> (loss, grads, (state, logits)), by hand or
                             by jax.grad: the one path every gradient of a network takes
    manual_grad              the hand-written backward pass (`Network.backprop`)
    autodiff_grad            `jax.value_and_grad(model.loss)`
    finite_difference_grad   central differences in float64, coordinate by coordinate
    compare                  per-leaf max abs / max rel difference and cosine similarity;
                             a non-finite value or an empty comparison fails, never passes
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
        # before jax.grad sees them: its own error for a bad leaf would name no path
        model.check_input(x)
        model.check_params(params, x.dtype)

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
    """(loss, dL/dparams) by `jax.value_and_grad(model.loss)`; arguments as `manual_grad`:
    x (N, H, W, C), y (N,); the grads have the shapes of params."""
    loss, g, _ = value_and_grad(model, "autodiff")(params, x, y, state=state, train=train,
                                                   key=key)
    return loss, g


def finite_difference_grad(model: Network, params: Params, x: Array, y: Array, *,
                           eps: float = 1e-6, max_per_leaf: int | None = None, seed: int = 0,
                           return_mask: bool = False,
                           **kw: Any) -> Params | tuple[Params, Params]:
    """Central differences `(L(p + eps e_i) - L(p - eps e_i)) / (2 eps)`, in float64.

    Every coordinate of every leaf, or at most `max_per_leaf` coordinates drawn at random per
    leaf. The coordinates not evaluated hold NaN, which a NaN result of an evaluated coordinate
    (a NaN loss) also is: to tell them apart, ask for `return_mask=True` and pass the mask to
    `compare(..., mask=evaluated)`, which then fails any non-finite evaluated coordinate.

    Args:
      model, params: a `Network` and its parameters, float64 (`jax_enable_x64`).
      x, y: the batch; eps: the step (> 0); seed: of the coordinates drawn.
      max_per_leaf: None for every coordinate, else the number drawn per leaf (>= 1).
      return_mask: also return which coordinates were evaluated.
      **kw: as `manual_grad` (use the same dropout key, so the loss is one function of params).

    Returns:
      The differences with params' structure (NumPy float64), or, with `return_mask`,
      (differences, evaluated): evaluated a pytree of bool arrays of the same structure and
      shapes, True where a coordinate was evaluated.
    """
    step = _check_fd_args(model, params, x, eps, max_per_leaf)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)

    def loss_at(flat_leaves):
        return model.loss(jax.tree.unflatten(treedef, flat_leaves), x, y, **kw)

    # one compiled function per leaf, mapped over the coordinates to perturb
    def leaf_fd(i, coords):
        def two_sided(j):
            e = jnp.zeros(leaves[i].size, leaves[i].dtype).at[j].set(step)
            plus, minus = list(leaves), list(leaves)
            plus[i] = leaves[i] + e.reshape(leaves[i].shape)
            minus[i] = leaves[i] - e.reshape(leaves[i].shape)
            return (loss_at(plus) - loss_at(minus)) / (2 * step)
        return jax.lax.map(two_sided, coords)

    out, masks = [], []
    for i, leaf in enumerate(leaves):
        n = leaf.size
        coords = np.arange(n) if max_per_leaf is None or n <= max_per_leaf else \
            np.sort(rng.choice(n, max_per_leaf, replace=False))
        fd, evaluated = np.full(n, np.nan), np.zeros(n, bool)
        fd[coords] = np.asarray(jax.jit(leaf_fd, static_argnums=0)(i, coords))
        evaluated[coords] = True
        out.append(fd.reshape(leaf.shape))
        masks.append(evaluated.reshape(leaf.shape))
    fd_tree = jax.tree.unflatten(treedef, out)
    return (fd_tree, jax.tree.unflatten(treedef, masks)) if return_mask else fd_tree


def _check_fd_args(model: Network, params: Params, x: Array, eps: Any,
                   max_per_leaf: Any) -> float:
    """finite_difference_grad's checks; returns the step as a float."""
    fn = "finite_difference_grad"
    try:
        step = float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: eps must be a number; got {type(eps).__name__}") from None
    if not (np.isfinite(step) and step > 0):
        raise ValueError(f"{fn}: eps must be a finite step > 0; got {eps!r}")
    if max_per_leaf is not None and (not isinstance(max_per_leaf, int | np.integer)
                                     or isinstance(max_per_leaf, bool) or max_per_leaf < 1):
        raise ValueError(f"{fn}: max_per_leaf must be None (every coordinate) or an int >= 1; "
                         f"got {max_per_leaf!r}")
    model.check_input(x)
    model.check_params(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if leaf.dtype != jnp.float64:
            raise TypeError(f"{fn} needs float64 params (enable jax_enable_x64 and init the model "
                            f"with dtype=jnp.float64); params{jax.tree_util.keystr(path)} is "
                            f"{leaf.dtype}")
    return step


class LeafDiff(NamedTuple):
    """One leaf of `compare`: how far `a` is from the reference `b`.

    A leaf with a non-finite entry (in a anywhere, in b where compared) or with nothing
    compared is not `finite`: its max_abs and max_rel are inf (never NaN, so that
    `max(rows, key=lambda r: r.max_rel)` picks it and `r.max_rel <= tol` is false) and its
    cosine NaN.
    """

    path: str
    shape: tuple[int, ...]
    max_abs: float   # max |a - b| over the entries compared
    max_rel: float   # max |a - b| / max(max |b|, 1e-30)
    cosine: float    # <a, b> / (|a| |b|) over the entries compared
    compared: int    # how many entries were compared (the mask's count, else the leaf's size)
    nonfinite: int   # entries where a, or b (where compared), is NaN or infinite

    @property
    def finite(self) -> bool:
        """Something was compared and every value involved is finite."""
        return self.compared > 0 and self.nonfinite == 0

    def within(self, tol: float) -> bool:
        """The leaf is finite and its max_rel is <= tol."""
        return self.finite and self.max_rel <= tol


def _paths(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _same_structure(fn: str, a: Any, b: Any, name_a: str, name_b: str) -> None:
    if jax.tree.structure(a) == jax.tree.structure(b):
        return
    pa, pb = _paths(a), _paths(b)
    only_a = [p for p in pa if p not in pb]
    only_b = [p for p in pb if p not in pa]
    detail = "; ".join(part for part in (
        f"only in {name_a}: {', '.join(only_a)}" if only_a else "",
        f"only in {name_b}: {', '.join(only_b)}" if only_b else "") if part) or \
        f"{jax.tree.structure(a)} vs {jax.tree.structure(b)}"
    raise ValueError(f"{fn}: {name_a} and {name_b} differ in structure ({detail})")


def compare(a: Any, b: Any, *, mask: Any = None) -> list[LeafDiff]:
    """Per-leaf differences between two gradient pytrees of one structure, `b` the reference.

    A proof tool must not pass a wrong answer, so nothing is skipped silently: a NaN or
    infinite value in `a` (anywhere) or in `b` (where compared) makes that leaf non-finite
    (`LeafDiff.finite` False, max_rel inf), whether or not the other side has it too; so
    does a leaf with nothing compared. Coordinates that a sampled finite-difference pass did
    not evaluate are excluded only by an explicit `mask` (see `finite_difference_grad`'s
    `return_mask`), never by being NaN.

    Args:
      a: the gradient checked (e.g. the manual one).
      b: the reference, the same structure and leaf shapes.
      mask: None (compare every entry) or a pytree of bool arrays of b's structure and shapes,
        True where b was evaluated.

    Returns:
      One `LeafDiff` per leaf, in the trees' leaf order.

    Raises:
      ValueError: the trees (or the mask) differ in structure or in a leaf's shape, or there
        is nothing to compare (no leaves). TypeError: a mask leaf is not boolean.
    """
    fn = "compare"
    _same_structure(fn, a, b, "a", "b")
    leaves = jax.tree_util.tree_leaves_with_path(a)
    if not leaves:
        raise ValueError(f"{fn}: nothing to compare: a and b have no leaves")
    if mask is None:
        masks: list[Any] = [None] * len(leaves)
    else:
        _same_structure(fn, b, mask, "b", "mask")
        masks = jax.tree.leaves(mask)
    rows = []
    for (path, la), lb, lm in zip(leaves, jax.tree.leaves(b), masks):
        key = jax.tree_util.keystr(path)
        la, lb = np.asarray(la, np.float64), np.asarray(lb, np.float64)
        if la.shape != lb.shape:
            raise ValueError(f"{fn}: {key} has shape {la.shape} in a but {lb.shape} in b")
        rows.append(_leaf_diff(key, la, lb, _leaf_mask(fn, key, lm, lb.shape)))
    return rows


def _leaf_mask(fn: str, key: str, lm: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A mask leaf checked (bool, b's shape), or all True for no mask."""
    if lm is None:
        return np.ones(shape, bool)
    m = np.asarray(lm)
    if m.dtype != bool:
        raise TypeError(f"{fn}: mask{key} must be a bool array (True where b was evaluated); "
                        f"got {m.dtype}")
    if m.shape != shape:
        raise ValueError(f"{fn}: mask{key} has shape {m.shape} but b{key} has {shape}")
    return m


def _leaf_diff(key: str, la: np.ndarray, lb: np.ndarray, m: np.ndarray) -> LeafDiff:
    """One leaf's `LeafDiff` over the entries `m` selects (float64 arrays of one shape)."""
    bad = ~np.isfinite(la) | (m & ~np.isfinite(lb))
    compared, nonfinite = int(m.sum()), int(bad.sum())
    if compared == 0 or nonfinite:
        return LeafDiff(key, la.shape, np.inf, np.inf, np.nan, compared, nonfinite)
    va, vb = la[m], lb[m]
    diff = float(np.abs(va - vb).max())
    scale = float(np.abs(vb).max())
    norm = float(np.linalg.norm(va) * np.linalg.norm(vb))
    rel = diff / max(scale, 1e-30)
    cosine = float(np.dot(va, vb) / norm) if norm > 0 else float(diff == 0)
    if not (np.isfinite(diff) and np.isfinite(rel)):  # finite entries whose difference overflows
        diff = rel = np.inf
    return LeafDiff(key, la.shape, diff, rel, cosine, compared, 0)


def format_table(rows: list[LeafDiff], title: str = "") -> str:
    """`compare`'s rows as an aligned text table; a non-finite leaf says so."""
    lines = [title] if title else []
    lines.append(f"{'parameter':28} {'shape':>16} {'max abs diff':>13} {'max rel diff':>13} "
                 f"{'cosine':>10}")
    for r in rows:
        note = "" if r.finite else \
            "  nothing compared" if r.compared == 0 else f"  non-finite ({r.nonfinite})"
        lines.append(f"{r.path:28} {r.shape!s:>16} {r.max_abs:13.3e} {r.max_rel:13.3e} "
                     f"{r.cosine:10.7f}{note}")
    return "\n".join(lines)
