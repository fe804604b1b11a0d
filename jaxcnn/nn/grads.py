"""Whole-network gradients three ways, and a comparison of any two.

    value_and_grad           (params, x, y, ...) -> (loss, grads, (state, logits)), by hand or
                             by jax.grad: the one path every gradient of a network takes
    manual_grad              the hand-written backward pass (`Network.backprop`)
    autodiff_grad            `jax.value_and_grad(model.loss)`
    finite_difference_grad   central differences in float64, coordinate by coordinate, one
                             compiled program; the coordinates whose steps straddle a kink
                             (`decisions`: ReLU signs, max-pool winners) not evaluated
    compare                  per-leaf max abs / max rel difference (relative to the leaf, or
                             to REL_FLOOR of the tree's largest gradient) and cosine similarity;
                             a non-finite value or an empty comparison fails, never passes
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.nn.mode import by_mode
from jaxcnn.nn.network import Network, Params, State

Array = jax.Array
GRADS = ("manual", "autodiff")
# Bounds on max |manual - reference| / max |reference| per leaf: (vs autodiff, vs central
# differences). float64: both sums agree to rounding (1e-9 leaves three orders of headroom over
# what the tests see); differences of 1e-6 steps carry O(eps^2) truncation and 1e-10 rounding.
# float32: 1e-4 is ~1000 ulps of accumulated reordering over a deep net; no finite differences.
TOLERANCES = {"float64": (1e-9, 1e-6), "float32": (1e-4, None)}
# `compare`'s floor, a fraction of the tree's largest reference gradient: a structurally zero
# leaf holds rounding, ~1e-16 of that in float64, up to 2e-7 in float32 (measured), ~1e-10 of the
# loss in central differences; measured against 1e-2 of it, all pass the tolerances above.
REL_FLOOR = 1e-2


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

    train: a bool, or a traced boolean scalar (`jaxcnn.nn.mode.by_mode`: both modes compiled).
    """
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {', '.join(GRADS)}; got {grad!r}")

    def mean(v: Any) -> Any:
        return v if axis_name is None else lax.pmean(v, axis_name)

    def manual_in(train, params, x, y, state, key):  # train a Python bool
        loss, trace = model.loss_and_trace(params, x, y, state=state, train=train, key=key,
                                           axis_name=axis_name)
        g, _ = model.backprop(params, trace, y)
        return mean(loss), mean(g), (trace.state, trace.activations[-1])

    def autodiff_in(train, params, x, y, state, key):  # train a Python bool
        # before jax.grad sees them: its own error for a bad leaf would name no path
        model.check_input(x)
        model.check_params(params, x.dtype)

        def loss(p):
            value, aux = model.loss_and_aux(p, x, y, state=state, train=train, key=key,
                                            axis_name=axis_name)
            return mean(value), aux

        (value, aux), g = jax.value_and_grad(loss, has_aux=True)(params)
        return value, g, aux

    one_mode = manual_in if grad == "manual" else autodiff_in

    def vg(params, x, y, *, state=None, train=False, key=None):
        return by_mode("value_and_grad", train,
                       lambda t: one_mode(t, params, x, y, state, key))

    return vg


def manual_grad(model: Network, params: Params, x: Array, y: Array, *,
                state: State | None = None, train: bool = False,
                key: Array | None = None) -> tuple[Array, Params]:
    """(loss, dL/dparams) by the hand-written backward pass.

    Under `jax.jit(jaxcnn.manual_grad, static_argnums=0)` every other argument may be traced;
    a traced `train` compiles both modes (`jaxcnn.nn.mode.by_mode`), and training mode then
    needs `key` for a model with Dropout: add `static_argnames="train"` to compile one mode.

    Args:
      model, params: a `Network` and its parameters.
      x: (N, H, W, C); y: (N,) labels.
      state: BatchNorm's running averages (None: the initial ones).
      train: batch-statistics BatchNorm and active Dropout (with `key`): a bool, or a boolean
        scalar array (traced under jit).
      key: the Dropout key in training mode.

    Returns:
      (the mean loss over the batch, grads with params' structure).

    Raises:
      TypeError: train is not a boolean scalar. ValueError: train is traced and training mode
        cannot be traced (Dropout with no key).
    """
    vg = value_and_grad(model, "manual")
    return by_mode("manual_grad", train, lambda t: vg(params, x, y, state=state, train=t,
                                                      key=key)[:2])


def autodiff_grad(model: Network, params: Params, x: Array, y: Array, *,
                  state: State | None = None, train: bool = False,
                  key: Array | None = None) -> tuple[Array, Params]:
    """(loss, dL/dparams) by `jax.value_and_grad(model.loss)`; arguments (train traced or
    not), jit form and errors as `manual_grad`: x (N, H, W, C), y (N,); the grads have the
    shapes of params."""
    vg = value_and_grad(model, "autodiff")
    return by_mode("autodiff_grad", train, lambda t: vg(params, x, y, state=state, train=t,
                                                        key=key)[:2])


def finite_difference_grad(model: Network, params: Params, x: Array, y: Array, *,
                           eps: float = 1e-6, max_per_leaf: int | None = None, seed: int = 0,
                           return_mask: bool = False, skip_kinks: bool = True,
                           **kw: Any) -> Params | tuple[Params, Params]:
    """Central differences `(L(p + eps e_i) - L(p - eps e_i)) / (2 eps)`, in float64.

    Every coordinate of every leaf, or `min(size, max_per_leaf)` drawn at random per leaf, in
    ONE compiled program (`lax.map` over the flattened params' coordinates). A coordinate whose
    steps straddle a kink is not evaluated: where a layer decides differently at p + eps e_i
    and p - eps e_i (`decisions`: a ReLU input changes sign, a max pool's winner moves), the
    quotient mixes two pieces' slopes and measures no gradient. The decisions come from the
    forward pass only, so no backward rule, right or wrong, moves them; a non-finite quotient
    is always kept, so a NaN loss stays visible.

    The coordinates not evaluated (not drawn, or at a kink) hold NaN, which a NaN result of an
    evaluated coordinate also is: to tell them apart, ask for `return_mask=True` and pass the
    mask to `compare(..., mask=evaluated)`, which then fails any non-finite evaluated
    coordinate. A leaf's drawn coordinates at kinks: `min(size, max_per_leaf) - evaluated.sum()`.

    Args:
      model, params: a `Network` and its parameters, float64 (`jax_enable_x64`).
      x, y: the batch; eps: the step (> 0); seed: of the coordinates drawn.
      max_per_leaf: None for every coordinate, else the number drawn per leaf (>= 1).
      return_mask: also return which coordinates were evaluated.
      skip_kinks: False evaluates the coordinates at kinks too.
      **kw: as `manual_grad` (use the same dropout key, so the loss is one function of params).

    Returns:
      The differences with params' structure (NumPy float64), or, with `return_mask`,
      (differences, evaluated): evaluated a pytree of bool arrays of the same structure and
      shapes, True where a coordinate was evaluated.
    """
    step = _check_fd_args(model, params, x, eps, max_per_leaf)
    leaves, treedef = jax.tree.flatten(params)
    sizes = [leaf.size for leaf in leaves]
    rng = np.random.default_rng(seed)
    coords = [np.arange(n) if max_per_leaf is None or n <= max_per_leaf else
              np.sort(rng.choice(n, max_per_leaf, replace=False)) for n in sizes]
    starts = np.cumsum([0, *sizes[:-1]])
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    values, crossed = jax.jit(partial(_differences, model, unravel, step, kw))(
        flat, jnp.asarray(np.concatenate([s + c for s, c in zip(starts, coords)])), x, y)
    values, crossed = np.asarray(values, np.float64), np.asarray(crossed) & skip_kinks
    cuts = np.cumsum([len(c) for c in coords])[:-1]
    out, masks = [], []
    for leaf, c, v, e in zip(leaves, coords, np.split(values, cuts),
                             np.split(~crossed | ~np.isfinite(values), cuts)):
        fd, mask = np.full(leaf.size, np.nan), np.zeros(leaf.size, bool)
        fd[c[e]], mask[c[e]] = v[e], True
        out.append(fd.reshape(leaf.shape))
        masks.append(mask.reshape(leaf.shape))
    fd_tree = jax.tree.unflatten(treedef, out)
    return (fd_tree, jax.tree.unflatten(treedef, masks)) if return_mask else fd_tree


def decisions(model: Network, params: Params, trace: Any) -> list[Array]:
    """Every layer's decisions (`Layer.decisions`: ReLU signs, max-pool winners' indices, nested
    blocks' included) on a trace of `model.forward(params, ...)`, in layer order: a list of
    arrays (N, ...). Equal lists at two points: the network is one smooth piece between."""
    return [d for layer, x, r in zip(model.layers, trace.activations, trace.residuals)
            if layer.decisions is not None
            for d in layer.decisions(params.get(layer.name, {}), x, r)]


def _differences(model: Network, unravel: Callable, step: float, kw: dict, flat: Array,
                 coords: Array, x: Array, y: Array) -> tuple[Array, Array]:
    """For each flat coordinate j (coords (M,)): the central difference (M,) and whether some
    decision differs between flat + step e_j and flat - step e_j (M,) bool."""

    def at(p: Array) -> tuple[Array, list[Array]]:
        q = unravel(p)
        loss, trace = model.loss_and_trace(q, x, y, **kw)
        return loss, decisions(model, q, trace)

    def one(j: Array) -> tuple[Array, Array]:
        (plus, d_plus), (minus, d_minus) = at(flat.at[j].add(step)), at(flat.at[j].add(-step))
        crossed = jnp.zeros((), bool)
        for a, b in zip(d_plus, d_minus):
            crossed = crossed | jnp.any(a != b)
        return (plus - minus) / (2 * step), crossed

    return lax.map(one, coords)


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
    max_rel: float   # max |a - b| / max(max |b|, floor * the tree's max |b|, 1e-30)
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


def compare(a: Any, b: Any, *, mask: Any = None, floor: float = REL_FLOOR) -> list[LeafDiff]:
    """Per-leaf differences between two gradient pytrees of one structure, `b` the reference.

    The relative difference of a leaf is `max |a - b| / max(max |b| over the leaf, floor *
    max |b| over all leaves)` (entries compared only): relative to the leaf's own scale, but
    never to less than `floor` of the largest gradient of the tree. Without that floor a leaf
    that is zero by structure (a bias before BatchNorm: rounding, ~1e-17, on both sides) reads
    as a relative difference of order 1. `floor=0` measures every leaf on its own scale.

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
      floor: in [0, 1]; the fraction of the tree's largest |b| below which a leaf's scale is
        not taken (`REL_FLOOR`, 1e-2, by default).

    Returns:
      One `LeafDiff` per leaf, in the trees' leaf order.

    Raises:
      ValueError: the trees (or the mask) differ in structure or in a leaf's shape, there
        is nothing to compare (no leaves), or floor is not in [0, 1]. TypeError: a mask leaf
        is not boolean.
    """
    fn = "compare"
    if not (isinstance(floor, int | float | np.floating) and 0 <= floor <= 1):
        raise ValueError(f"{fn}: floor must be a number in [0, 1]; got {floor!r}")
    _same_structure(fn, a, b, "a", "b")
    leaves = jax.tree_util.tree_leaves_with_path(a)
    if not leaves:
        raise ValueError(f"{fn}: nothing to compare: a and b have no leaves")
    if mask is None:
        masks: list[Any] = [None] * len(leaves)
    else:
        _same_structure(fn, b, mask, "b", "mask")
        masks = jax.tree.leaves(mask)
    checked = []
    for (path, la), lb, lm in zip(leaves, jax.tree.leaves(b), masks):
        key = jax.tree_util.keystr(path)
        la, lb = np.asarray(la, np.float64), np.asarray(lb, np.float64)
        if la.shape != lb.shape:
            raise ValueError(f"{fn}: {key} has shape {la.shape} in a but {lb.shape} in b")
        checked.append((key, la, lb, _leaf_mask(fn, key, lm, lb.shape)))
    # the tree's largest |b| over the finite entries compared (a non-finite leaf fails anyway)
    top = max(float(np.abs(lb[m & np.isfinite(lb)]).max(initial=0.0))
              for _, _, lb, m in checked)
    return [_leaf_diff(key, la, lb, m, floor * top) for key, la, lb, m in checked]


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


def _leaf_diff(key: str, la: np.ndarray, lb: np.ndarray, m: np.ndarray,
               least: float) -> LeafDiff:
    """One leaf's `LeafDiff` over the entries `m` selects (float64 arrays of one shape); its
    relative difference is taken against max(max |b| over them, least)."""
    bad = ~np.isfinite(la) | (m & ~np.isfinite(lb))
    compared, nonfinite = int(m.sum()), int(bad.sum())
    if compared == 0 or nonfinite:
        return LeafDiff(key, la.shape, np.inf, np.inf, np.nan, compared, nonfinite)
    va, vb = la[m], lb[m]
    diff = float(np.abs(va - vb).max())
    scale = float(np.abs(vb).max())
    norm = float(np.linalg.norm(va) * np.linalg.norm(vb))
    rel = diff / max(scale, least, 1e-30)
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
