"""`jaxcnn gradcheck`: a model's manual gradients against jax.grad and finite differences.

A proof tool that cannot pass a wrong answer: a row passes only when every value it involves is
finite (the loss, the manual, autodiff and finite-difference gradients) and within tolerance;
`sabotage` runs the check with a deliberately wrong rule, to see it fail. Nor can it fail a right
one: a finite-difference coordinate whose +-h steps straddle a kink (a ReLU's sign or a max
pool's winner changes between them) measures no gradient, so it is not evaluated, and counted.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _bounds, backward
from jaxcnn.nn import grads, lookup
from jaxcnn.nn.grads import TOLERANCES  # (vs autodiff, vs finite differences) per dtype
from jaxcnn.nn.network import LAYOUTS

# the rules `sabotage` can break: every function of jaxcnn.backward that returns gradients
RULES = tuple(name for name in backward.__all__ if name != "moments")
SABOTAGE_FACTOR = 10  # a sabotaged rule is off by this many times the tolerance vs autodiff
# The largest --batch: a check needs a few examples (4 by default), not a data set, and every
# finite-difference coordinate drawn (8 per leaf by default) runs two float64 forward passes of
# the whole batch. Past it, or past the device's memory, it is refused before anything is built.
MAX_BATCH = 1024


class LeafCheck(NamedTuple):
    path: str                 # "loss", or a parameter leaf's path such as "['conv']['w']"
    shape: tuple[int, ...]
    rel_autodiff: float       # max |manual - autodiff| / max |autodiff|; inf if non-finite
    rel_fd: float | None      # max |manual - fd| / max |fd| over the coordinates evaluated
    cosine: float | None      # cosine(manual, autodiff); None for the loss
    finite: bool              # every value involved is finite (and something was compared)
    ok: bool                  # finite and within both tolerances
    kinks: int | None = None  # finite-difference coordinates drawn but not evaluated: at kinks


def _count(name: str, flag: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise TypeError(f"gradcheck: {name} ({flag}) must be an int; got {value!r}")
    if value < minimum:
        raise ValueError(f"gradcheck: {name} ({flag}) must be >= {minimum}; got {value}")
    return int(value)


@contextlib.contextmanager
def sabotaged(rule: str | None, factor: float) -> Iterator[list[int]]:
    """Within the block, `jaxcnn.backward.<rule>` returns every gradient times `factor` (the
    loss heads and the layers with parameters look their rules up there at each call, the
    layers without take theirs when built: build the model inside the block); yields a
    one-element list counting the calls. Restored on exit. rule None: nothing changes."""
    calls = [0]
    if rule is None:
        yield calls
        return
    real = getattr(backward, rule)

    def wrong(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        return jax.tree.map(lambda g: g * factor, real(*args, **kw))

    setattr(backward, rule, wrong)
    try:
        yield calls
    finally:
        setattr(backward, rule, real)


def gradcheck(name: str, dtype: str = "float64", batch: int = 4, seed: int = 0,
              train: bool = False, fd_per_leaf: int = 8, jitter: float = 0.05,
              sabotage: str | None = None) -> tuple[list[LeafCheck], str]:
    """Manual vs `jax.grad` (and vs central differences, float64 only) on the loss and every
    parameter leaf of model `name` for a random batch.

    The check point is `model.init` plus `jitter * N(0, 1)` on every leaf (see `_check_point`).

    Args:
      name: a registered model (`models.MODELS`) or "module.path:function" (`nn.lookup`).
      dtype: "float64" (vs autodiff and finite differences) or "float32" (vs autodiff only).
      batch: examples in the random batch (>= 1); seed: of params, batch and dropout (>= 0).
      train: training mode (batch-statistics BatchNorm, Dropout with one fixed key).
      fd_per_leaf: finite-difference coordinates drawn per leaf (>= 1).
      jitter: the standard deviation of the offsets added to init (finite, >= 0).
      sabotage: None, or a rule of `jaxcnn.backward` (one of `RULES`, e.g. "conv2d") whose
        gradients are scaled by 1 + SABOTAGE_FACTOR * the tolerance vs autodiff while the
        manual gradient is computed: a self-test, the check must then fail.

    Returns:
      (rows, header): the "loss" row then one row per parameter leaf, and the lines describing
      the run. Every row must be `ok` for the check to pass.

    Raises:
      ValueError / TypeError: a bad argument (naming it), an unknown model, or a sabotaged rule
        the model never calls.
    """
    batch, fd_per_leaf, seed = _check_args(dtype, batch, fd_per_leaf, seed, jitter, sabotage)
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    model = lookup.model(name)
    _bounds.batch("gradcheck", "batch (--batch)", batch, [model.input_shape, *model.shapes],
                  jnp.dtype(dtype).itemsize, MAX_BATCH, _CAP, copies=2)  # manual and autodiff
    tol_ad, tol_fd = TOLERANCES[dtype]
    params, state, x, y, k_drop = _check_point(model, jnp.dtype(dtype), batch, seed, jitter)
    key = k_drop if train else None  # one dropout key for all three gradients
    kw: dict[str, Any] = {"state": state, "train": train, "key": key}
    # compiled once each: far faster than op-by-op dispatch on the bigger models
    factor = 1 + SABOTAGE_FACTOR * tol_ad
    with sabotaged(sabotage, factor) as calls:
        # built inside the block: a layer without parameters takes its rule when it is built
        wrong = model if sabotage is None else lookup.model(name)
        loss_m, manual = jax.jit(partial(grads.manual_grad, wrong, train=train))(
            params, x, y, state=state, key=key)
    if sabotage is not None and not calls[0]:
        raise ValueError(f"gradcheck: sabotage={sabotage!r}: {model.name} never calls "
                         f"jaxcnn.backward.{sabotage}, so sabotaging it would change nothing")
    loss_a, auto = jax.jit(partial(grads.autodiff_grad, model, train=train))(
        params, x, y, state=state, key=key)
    vs_fd, kinks = [None] * len(jax.tree.leaves(params)), None
    if tol_fd is not None:
        vs_fd, kinks = _vs_fd(model, params, manual, x, y, fd_per_leaf, seed, kw)
    rows = [_loss_row(float(loss_m), float(loss_a), tol_ad),
            *_leaf_rows(grads.compare(manual, auto), vs_fd, tol_ad, tol_fd, kinks)]
    header = _header(model, params, dtype, batch, seed, train, jitter, float(loss_m),
                     float(loss_a), sabotage, factor)
    return rows, header


def _vs_fd(model: Any, params: Any, manual: Any, x: Any, y: Any, fd_per_leaf: int, seed: int,
           kw: dict) -> tuple[list, list[int]]:
    """Manual against central differences on `fd_per_leaf` random coordinates per leaf: one
    `LeafDiff` per leaf (over the coordinates evaluated), and per leaf how many of the drawn
    coordinates were not evaluated because their steps straddle a kink."""
    fd, evaluated = grads.finite_difference_grad(model, params, x, y, max_per_leaf=fd_per_leaf,
                                                 seed=seed, return_mask=True, **kw)
    kinks = [min(p.size, fd_per_leaf) - int(e.sum())
             for p, e in zip(jax.tree.leaves(params), jax.tree.leaves(evaluated))]
    return list(grads.compare(manual, fd, mask=evaluated)), kinks


def _check_args(dtype: Any, batch: Any, fd_per_leaf: Any, seed: Any, jitter: Any,
                sabotage: Any) -> tuple[int, int, int]:
    """gradcheck's argument checks, each naming its flag; returns batch, fd_per_leaf, seed."""
    if dtype not in TOLERANCES:
        raise ValueError(f"gradcheck: dtype (--dtype) must be one of {', '.join(TOLERANCES)}; "
                         f"got {dtype!r}")
    counts = (_count("batch", "--batch", batch, 1),
              _count("fd_per_leaf", "--fd-per-leaf", fd_per_leaf, 1),
              _count("seed", "--seed", seed, 0))
    if not isinstance(jitter, int | float | np.floating) or isinstance(jitter, bool):
        raise TypeError(f"gradcheck: jitter (--jitter) must be a number; got {jitter!r}")
    if not (np.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"gradcheck: jitter (--jitter) must be a finite number >= 0 (a "
                         f"standard deviation); got {jitter}")
    if counts[0] > MAX_BATCH:
        raise ValueError(f"gradcheck: batch (--batch) {counts[0]:,} is past the cap of "
                         f"{MAX_BATCH:,} ({_CAP})")
    if sabotage is not None and sabotage not in RULES:
        raise ValueError(f"gradcheck: sabotage must be a rule of jaxcnn.backward, one of "
                         f"{', '.join(RULES)}; got {sabotage!r}")
    return counts


_CAP = "gradcheck.MAX_BATCH: a check needs a few examples, and each finite difference runs two " \
    "forward passes of the whole batch"


def _check_point(model: Any, dt: Any, batch: int, seed: int, jitter: float) -> tuple:
    """(params = init + jitter N(0, 1), state, x, y, dropout key) for the model, from `seed`.

    Why jitter: at init the biases are exactly 0, so a ReLU whose receptive field is all zeros
    (padding, or an upstream ReLU's zeros) sits exactly on its kink, where central differences
    see slope 1/2 and both the manual rule and jax.grad take 0 (seen on deep-digits' depthwise3
    bias). jitter=0 checks init as is.
    """
    k_params, k_drop = jax.random.split(jax.random.key(seed))
    rng = np.random.default_rng(seed)  # NumPy for the rest: no XLA compile per shape
    params, state = model.init(k_params, dt), model.init_state(dt)
    params = jax.tree.map(lambda p: p + jnp.asarray(jitter * rng.standard_normal(p.shape), dt),
                          params)
    x = jnp.asarray(rng.standard_normal((batch, *model.input_shape)), dt)
    y = jnp.asarray(model.head.random_labels(rng, batch, model.output_shape, dt))
    return params, state, x, y, k_drop


def _batch_shape(dims: tuple[int, ...]) -> str:
    """(N, 32, 32, 1) for dims (32, 32, 1), (N,) for ()."""
    return "(" + ", ".join(["N", *map(str, dims)]) + ("" if dims else ",") + ")"


def _header(model: Any, params: Any, dtype: str, batch: int, seed: int, train: bool,
            jitter: float, loss_m: float, loss_a: float, sabotage: str | None,
            factor: float) -> str:
    """The lines describing a gradcheck run: the model, its input and labels of any rank (e.g.
    "input x (N, 128, 1), layout (N, W, C)"; "labels y (N, 32, 32) holding int class ids in
    [0, 3)" for a per-pixel head), the run's options and both losses."""
    layout = LAYOUTS.get(len(model.input_shape), "(N, ...)")
    labels = model.head.label_shape(batch, model.output_shape)[1:]
    header = (f"gradcheck of {model.name} ({model.head.name}, "
              f"{model.num_params(params):,} parameters)\n"
              f"input x {_batch_shape(model.input_shape)}, layout {layout}; labels y "
              f"{_batch_shape(labels)} holding {model.head.labels(model.num_classes)}\n"
              f"{dtype}, batch {batch}, seed {seed}, "
              f"{'train=True (fixed dropout key)' if train else 'train=False'}, "
              f"params = init + {jitter:g} N(0, 1)\n"
              f"loss: manual {loss_m:.12g}, autodiff {loss_a:.12g}")
    if sabotage is not None:
        header += (f"\nsabotage={sabotage!r}: jaxcnn.backward.{sabotage} returns its gradients "
                   f"times 1 + {factor - 1:.0e}: this check must FAIL")
    return header


def _leaf_rows(vs_ad: list, vs_fd: list, tol_ad: float, tol_fd: float | None,
               kinks: list[int] | None = None) -> list:
    """One `LeafCheck` per leaf from its comparisons with autodiff and finite differences (and
    the count of its finite-difference coordinates at kinks). A leaf whose every drawn
    coordinate sits at a kink (a one-element bias on one) has no finite-difference check: it
    rests on autodiff, its rel vs fin.diff None; a non-finite manual value still fails it."""
    rows = []
    for r, rf, k in zip(vs_ad, vs_fd, kinks or [None] * len(vs_ad)):
        if rf is not None and rf.compared == 0 and rf.nonfinite == 0 and k:
            rf = None  # nothing to compare: every coordinate drawn is at a kink
        finite = r.finite and (rf is None or rf.finite)
        ok = r.within(tol_ad) and (rf is None or rf.within(tol_fd or 0.0))
        rows.append(LeafCheck(r.path, r.shape, r.max_rel, None if rf is None else rf.max_rel,
                              r.cosine, finite, ok, k))
    return rows


def _loss_row(manual: float, autodiff: float, tol: float) -> LeafCheck:
    """The two losses: both finite and within `tol` of each other (relative)."""
    finite = bool(np.isfinite(manual) and np.isfinite(autodiff))
    rel = abs(manual - autodiff) / max(abs(autodiff), 1e-30) if finite else np.inf
    return LeafCheck("loss", (), rel, None, None, finite, finite and rel <= tol)


def _rel(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}" if np.isfinite(v) else "non-finite"


def _kink_lines(rows: list[LeafCheck], fd_per_leaf: int) -> list[str]:
    """How many finite-difference coordinates were evaluated, and how many not (at kinks)."""
    counted = [r for r in rows if r.kinks is not None]
    if not counted:
        return []
    drawn = sum(min(math.prod(r.shape), fd_per_leaf) for r in counted)
    kinks = sum(r.kinks for r in counted)
    lines = [f"kinks: {kinks} of the {drawn} finite-difference coordinates drawn were not "
             f"evaluated, their +-h",
             "  steps straddling a kink (a ReLU's sign or a max pool's winner differs between "
             "p - h and p + h)"]
    if every := sum(1 for r in counted if r.kinks and r.rel_fd is None):
        lines.append(f"  {every} {'leaf' if every == 1 else 'leaves'} with every coordinate "
                     f"drawn at a kink: checked against autodiff only")
    return lines


def format_table(rows: list[LeafCheck], header: str, dtype: str, fd_per_leaf: int) -> str:
    """The table, the tolerances and a PASS/FAIL line naming every failing row.

    Args:
      rows, header: as `gradcheck` returns them; dtype, fd_per_leaf: the run's.

    Returns:
      The text; its last line starts with PASS only when there are rows and every one is ok.
    """
    tol_ad, tol_fd = TOLERANCES[dtype]
    # columns as wide as the longest path and shape (nested blocks: a U-Net's paths run to 60)
    wp = max([22, *(len(r.path) for r in rows)])
    ws = max([15, *(len(str(r.shape)) for r in rows)])
    lines = [header, "", f"{'parameter':{wp}} {'shape':>{ws}} {'rel vs autodiff':>16} "
                         f"{'rel vs fin.diff':>16} {'kinks':>6} {'cosine':>10}"]
    for r in rows:
        cosine = "-" if r.cosine is None else f"{r.cosine:10.7f}"
        verdict = "ok" if r.ok else "FAIL" if r.finite else "FAIL (non-finite)"
        kinks = "-" if r.kinks is None else str(r.kinks)
        lines.append(f"{r.path:{wp}} {r.shape!s:>{ws}} {_rel(r.rel_autodiff):>16} "
                     f"{_rel(r.rel_fd):>16} {kinks:>6} {cosine:>10}  {verdict}")
    fd_tol = "no finite differences in float32" if tol_fd is None else \
        f"<= {tol_fd:.0e} vs finite differences ({fd_per_leaf} random coordinates per leaf)"
    lines += ["", f"rel = max |manual - ref| / max(max |ref| of the leaf, {grads.REL_FLOOR:.0e} "
                  f"max |ref| of all leaves); tolerances:",
              f"  <= {tol_ad:.0e} vs autodiff (jax.grad), {fd_tol};",
              "  any NaN or infinite value (loss, manual, autodiff, finite differences) fails",
              *_kink_lines(rows, fd_per_leaf)]
    bad = [r.path for r in rows if not r.ok]
    if bad or not rows:
        lines.append(f"FAIL: {len(bad)} of {len(rows)} checks out of tolerance: "
                     f"{', '.join(bad)}" if rows else "FAIL: nothing was checked")
    else:
        lines.append(f"PASS: the loss and all {len(rows) - 1} parameter leaves within tolerance")
    return "\n".join(lines)
