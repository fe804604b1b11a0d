"""`jaxcnn explain`: one convolution's or pooling's backward rule, derived with its own numbers.

For learners and for JAX users. `explain_conv` / `explain_pool` build a JSON-ready dict from the
geometry the ops check (`jaxcnn._geometry`) and the parameters the conv rules pass to
`lax.conv_general_dilated` (`backward.conv.dx_conv_params`, `dw_conv_params`). `check` holds the
rule to `jax.vjp` of the forward (where XLA would abort that, to a NumPy loop and central
differences), the numbers worked out here to the rule's, and the dX / dW convolutions (a pool's
routing) recomputed from the explanation's numbers to the rule's result: a wrong number fails.

The module is over 400 lines because the explanation, its check and its text read one dict
whose layout they share; split up, each part would reach into the others' private fields.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import textwrap
from typing import Any

import jax
import numpy as np
from jax import lax

from jaxcnn import _geometry, backward, forward
from jaxcnn.backward import conv as conv_rules
from jaxcnn.backward import pool as pool_rules

CONV_OPS = ("conv2d", "convolve2d")
POOL_OPS = ("max_pool", "avg_pool", "l2_pool")
TOL, FD_TOL = 1e-9, 1e-6  # the largest relative error a pass allows; central differences
# What the check may compute with: it builds real float64 arrays and loops over the window offsets
# in Python (the NumPy references; the pool rules unroll one tap per offset), so a configuration
# past these is refused (ValueError naming the flags) before anything is allocated.
MAX_ELEMENTS = 2**22    # per array (x, padded x, w, y): 32 MiB of float64
MAX_OFFSETS = 1024      # kernel or window offsets (kh kw; a conv's times groups): a 32x32 window
MAX_TAPS = 2**24        # a pool's offsets x output elements: the NumPy reference holds every tap
MAX_MACS = 2**30        # a conv's multiply-adds, |y| kh kw C_in / groups: each check repeats them
ROUTING = {
    "max_pool": "each window's dy goes to its maximum, the rest get zero; on ties the first "
                "maximum in row-major window order takes it all (as XLA's select-and-scatter, "
                "hence jax.grad); the -inf padding is never chosen",
    "avg_pool": "each input gets dy / count from every window covering it",
    "l2_pool": "y = sqrt(sum x^2): dx_i = x_i * (sum of dy / y over the windows covering i); a "
               "window with y = 0 passes nothing",
}


# ----------------------------------------------------------------------------- the explanation
def explain_conv(op: str, input_hwc: tuple[int, int, int], kernel_hw: tuple[int, int],
                 filters: int, stride: Any = 1, padding: _geometry.Padding = "VALID",
                 dilation: Any = 1, groups: int = 1, batch: int = 2) -> dict[str, Any]:
    """The derivation of `backward.<op>` (conv2d or convolve2d) for one configuration.

    Args:
      op: "conv2d" or "convolve2d"; input_hwc: (H, W, C_in); kernel_hw: (kh, kw);
      filters: C_out; stride, padding, dilation, groups: as `forward.conv2d`; batch: N.

    Returns:
      a JSON-ready dict: config, shapes, geometry (the Window's numbers), axes (the derivation
      per axis), dx_conv / dw_conv ({"params": the rule's conv keywords, ...}), trap.
    """
    (h, wd, c), (kh, kw) = input_hwc, kernel_hw
    x = jax.ShapeDtypeStruct((batch, h, wd, c), np.float64)
    w = jax.ShapeDtypeStruct((kh, kw, c // max(groups, 1), filters), np.float64)
    _sizes(op, {"x": x.shape, "w": w.shape})
    g = _geometry.conv(op, x, w, stride, padding, dilation, groups)  # the library's own errors
    _sizes(op, {"padded x": _padded(x.shape, g.win), "y": g.out_shape},
           offsets=kh * kw * g.groups, macs=math.prod(g.out_shape) * kh * kw * c // g.groups)
    dxp, dwp = conv_rules.dx_conv_params(g), conv_rules.dw_conv_params(g)
    spread_apart = bool(dxp.pop("spread_apart"))
    d = _common(op, "conv", g.win, padding, x.shape, g.out_shape)
    d["config"].update(kernel=[kh, kw], filters=filters, groups=g.groups)
    d["shapes"]["w"] = list(w.shape)
    d["dx_conv"] = dict(params=_jsonable(dxp), kernel=dict(
        before=list(w.shape), after=[kh, kw, c, filters // g.groups],
        how=f"C_out split into (G, C_out/G) = ({g.groups}, {filters // g.groups}), G moved before "
            f"C_in/G, read as HWOI: in/out channels swapped, group j's output block its input "
            f"block; " + ("no flip: rot180 undoes the forward's" if op == "convolve2d" else
                          "then rot180: both spatial axes flipped")))
    d["dw_conv"] = dict(params=_jsonable(dwp))
    axes = [a for a, k, s, dl in zip("HW", g.win.size, g.win.stride, g.win.dilation)
            if k == 2 and s == 2 and dl == 1]
    d["trap"] = dict(applies=spread_apart, axes=axes, note=(
        f"applies: axis {', '.join(axes)} has kernel 2, stride 2, dilation 1, and XLA may abort "
        f"the process on the lhs-dilated dX convolution (jax.grad of the forward too); so the "
        f"rule spreads dy (interior padding s - 1) and pads it apart from the convolution, "
        f"behind lax.optimization_barrier, then runs a stride-1 VALID one: the same sum. The "
        f"check uses a NumPy loop and central differences, not jax.vjp" if spread_apart
        else "does not apply (no axis with kernel 2, stride 2, dilation 1)"),
        measured_on=conv_rules.fast.traps.MEASURED_ON)  # through the rule that imports fast
    return d


def explain_pool(op: str, input_hwc: tuple[int, int, int], window: Any, stride: Any = None,
                 padding: _geometry.Padding = "VALID", count_include_pad: bool = True,
                 batch: int = 2) -> dict[str, Any]:
    """The derivation of `backward.<op>` (max_pool, avg_pool, l2_pool) for one configuration.

    Args:
      op: the pool; input_hwc: (H, W, C); window, stride (None: = window), padding,
      count_include_pad (avg_pool only): as `forward.avg_pool`; batch: N.

    Returns:
      a JSON-ready dict: config, shapes, geometry, axes, window_area, counts (avg_pool only),
      tiles, by_taps (max_pool: whether the rule decides among the taps), overlap (per axis),
      routing.
    """
    h, wd, c = input_hwc
    _sizes(op, {"x": (batch, h, wd, c)})
    win = _geometry.pool(op, jax.ShapeDtypeStruct((batch, h, wd, c), np.float64), window,
                         stride, padding)
    y_size = batch * math.prod(win.out_hw) * c
    _sizes(op, {"padded x": _padded((batch, h, wd, c), win), "y": (batch, *win.out_hw, c)},
           offsets=math.prod(win.size), taps=math.prod(win.size) * y_size)
    d = _common(op, "pool", win, padding, (batch, h, wd, c), (batch, *win.out_hw, c))
    d["config"]["window"] = list(win.size)
    d["window_area"] = win.size[0] * win.size[1]
    if op == "avg_pool":
        d["config"]["count_include_pad"] = count_include_pad
        d["counts"] = _geometry.window_counts(win, count_include_pad)[0, :, :, 0].tolist()
    d["tiles"] = win.stride == win.size and all(lo == hi == 0 for lo, hi in win.pads)
    d["by_taps"] = op != "max_pool" or pool_rules.by_taps(win)  # the rule's own choice
    d["overlap"] = [s < k for s, k in zip(win.stride, win.size)]
    d["routing"] = ROUTING[op]
    return d


FLAGS = {"x": "--batch or --input", "padded x": "--padding", "w": "--kernel or --filters",
         "y": "--batch, --input, --filters or --stride"}


def _sizes(op: str, shapes: dict[str, tuple[int, ...]], offsets: int = 0, taps: int = 0,
           macs: int = 0) -> None:
    """Refuse a configuration whose check would compute past `MAX_ELEMENTS` (per array),
    `MAX_OFFSETS`, `MAX_TAPS` or `MAX_MACS`, before anything is allocated.

    Args:
      op: the op explained; shapes: {name in FLAGS: the array's shape}; offsets: the window (or
        kernel, times groups) offsets; taps: a pool's offsets x output elements; macs: a conv's
        multiply-adds.

    Raises:
      ValueError: naming the flags that set it, quoting the count and the bound.
    """
    for name, shape in shapes.items():
        if math.prod(shape) > MAX_ELEMENTS:
            raise ValueError(f"explain {op}: {name} {tuple(shape)} would hold "
                             f"{math.prod(shape):,} elements; the check computes on real "
                             f"float64 arrays of at most {MAX_ELEMENTS:,} (explain.MAX_ELEMENTS): "
                             f"lower {FLAGS[name]}")
    for what, count, bound, name, flags in (
            ("window offsets", offsets, MAX_OFFSETS, "MAX_OFFSETS", "--kernel, --window, --groups"),
            ("tap elements (offsets x outputs)", taps, MAX_TAPS, "MAX_TAPS", "--window, --batch"),
            ("multiply-adds", macs, MAX_MACS, "MAX_MACS", "--batch, --input, --filters")):
        if count > bound:
            raise ValueError(f"explain {op}: the check would take {count:,} {what}; at most "
                             f"{bound:,} (explain.{name}): lower {flags}")


def _padded(x_shape: tuple[int, ...], win: _geometry.Window) -> tuple[int, ...]:
    """(N, H + lo + hi, W + lo + hi, C): the padded copy of x the NumPy references make."""
    return (x_shape[0], *(n + lo + hi for n, (lo, hi) in zip(x_shape[1:3], win.pads)), x_shape[3])


def _common(op: str, kind: str, win: _geometry.Window, padding: Any, x_shape: tuple[int, ...],
            y_shape: tuple[int, ...]) -> dict[str, Any]:
    return dict(
        op=op, kind=kind,
        config=dict(input=list(x_shape[1:]), stride=list(win.stride), padding=_jsonable(padding),
                    dilation=list(win.dilation), batch=x_shape[0]),
        shapes=dict(x=list(x_shape), y=list(y_shape)),
        geometry=dict(pads=_jsonable(win.pads), k_eff=list(win.eff), out_hw=list(win.out_hw),
                      spread=list(win.spread)),
        axes=[_axis(i, win, padding, kind == "conv") for i in range(2)])


def _axis(i: int, win: _geometry.Window, padding: Any, conv: bool) -> dict[str, Any]:
    """One axis's derivation, its numbers worked out here (`check` holds them to the rule's)."""
    a, n, k, s, dl = "HW"[i], win.in_hw[i], win.size[i], win.stride[i], win.dilation[i]
    e = (k - 1) * dl + 1
    how, (lo, hi) = _resolve_pad(i, padding, n, e, s)
    o = (n + lo + hi - e) // s + 1
    o_s = (o - 1) * s + 1
    ax = dict(axis=a, size=n, k=k, s=s, d=dl, k_eff=e, lo=lo, hi=hi, O=o, O_s=o_s, padding=how,
              formulas=[f"k_eff = (k - 1) * d + 1 = ({k} - 1) * {dl} + 1 = {e}",
                        f"O = ({a} + lo + hi - k_eff) // s + 1 = ({n} + {lo} + {hi} - {e}) // "
                        f"{s} + 1 = {o}",
                        f"O_s = (O - 1) * s + 1 = ({o} - 1) * {s} + 1 = {o_s}"],
              unread=_unread(n, k, s, dl, lo, o))
    if conv:
        ax["dx_pad"], ax["dw_pad"] = [e - 1 - lo, n - o_s + lo], [lo, o_s - n + e - 1 - lo]
        ax["dx_pad_formula"] = (f"(k_eff - 1 - lo, {a} - O_s + lo) = ({e} - 1 - {lo}, {n} - "
                                f"{o_s} + {lo}) = ({e - 1 - lo}, {n - o_s + lo})")
        ax["dw_pad_formula"] = (f"(lo, O_s - {a} + k_eff - 1 - lo) = ({lo}, {o_s} - {n} + {e} "
                                f"- 1 - {lo}) = ({lo}, {o_s - n + e - 1 - lo})")
        ax["dw_cropped"] = list(range(n + ax["dw_pad"][1], n))  # a negative high pad crops
    return ax


def _unread(n: int, k: int, s: int, dl: int, lo: int, o: int) -> list[int]:
    """The rows of [0, n) that no window reads, by arithmetic in O(n + k), never the O(O k) set.

    Offset m reads rows `a + i s` (a = m d - lo, i < O): one run of a residue class mod s. With
    the rows laid out as (class c < s, q) for row c + q s, each offset adds +1 at its first q and
    -1 past its last in its class's row of a difference array; a row no run covers is unread.
    """
    classes, per = min(s, n), -(-n // s)
    cover = np.zeros((classes, per + 1), np.int64)
    for m in range(k):
        a = m * dl - lo
        first = a if a >= 0 else a + -(a // s) * s   # the first row >= 0 of the run
        if n - 1 < a:
            break  # the runs only start later with m
        last = a + min(o - 1, (n - 1 - a) // s) * s   # the last row < n of the run
        if first <= last:
            cover[first % s, first // s] += 1
            cover[first % s, last // s + 1] -= 1
    covered = np.cumsum(cover, axis=1)[:, :per] > 0
    rows = np.arange(classes)[:, None] + np.arange(per)[None, :] * s
    return sorted(rows[~covered & (rows < n)].tolist())


def _resolve_pad(i: int, padding: Any, n: int, e: int, s: int) -> tuple[str, tuple[int, int]]:
    """How `padding` resolves on axis i, in words and numbers (as `_geometry.padding` does)."""
    if isinstance(padding, str) and padding.upper() == "SAME":
        total = max((-(-n // s) - 1) * s + e - n, 0)
        return (f"SAME (lax.padtype_to_pads with the dilated kernel): total = max((ceil({n} / "
                f"{s}) - 1) * {s} + k_eff {e} - {n}, 0) = {total}, lo = total // 2, hi = total "
                f"- lo"), (total // 2, total - total // 2)
    if isinstance(padding, str):
        return "VALID: none", (0, 0)
    if isinstance(padding, int):
        return f"int {padding}: on both sides of both axes", (padding, padding)
    p = padding[i]
    if isinstance(p, int):
        return f"pair {tuple(padding)}: {p} on both sides of this axis (as torch)", (p, p)
    return f"explicit {_tuples(padding)}: ((top, bottom), (left, right))", (p[0], p[1])


def _jsonable(v: Any) -> Any:
    """Tuples to lists and NumPy ints to ints, recursively: what JSON gives back."""
    return json.loads(json.dumps(v, default=int))


def _tuples(v: Any) -> Any:
    """Lists (from JSON) back to tuples, recursively (dict values included)."""
    if isinstance(v, dict):
        return {k: _tuples(u) for k, u in v.items()}
    return tuple(_tuples(u) for u in v) if isinstance(v, list | tuple) else v


# ----------------------------------------------------------------------------- the check
def check(d: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Check the rule and the explanation `d` on random float64 data (x64 on inside).

    Args:
      d: from `explain_conv` / `explain_pool`: its numbers are what gets recomputed.
      seed: of the data (`np.random.default_rng`).

    Returns:
      dict(dtype, seed, reference (what the rule is held to), items [{name, err, tol, ok}], ok).
    """
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        items, reference = (_check_conv if d["kind"] == "conv" else _check_pool)(d, rng)
    return dict(dtype="float64", seed=seed, reference=reference, items=items,
                ok=all(i["ok"] for i in items))


def _item(name: str, got: Any, want: Any, tol: float = TOL) -> dict[str, Any]:
    """max |got - want| / max |want| against `tol`; a shape mismatch (or an error) fails."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return dict(name=name, err=None, tol=tol, ok=False, note=f"got {got}"
                    if got.dtype.kind == "U" else f"shape {got.shape}, expected {want.shape}")
    err = float(np.abs(got - want).max(initial=0) / max(np.abs(want).max(initial=0), 1e-300))
    return dict(name=name, err=err, tol=tol, ok=bool(err <= tol))


def _consistency(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The numbers worked out per axis against the Window's and the rule's, exactly."""
    geo, axes = d["geometry"], d["axes"]
    pairs = [("pads", [[a["lo"], a["hi"]] for a in axes], geo["pads"]),
             ("k_eff, O, O_s", [[a["k_eff"], a["O"], a["O_s"]] for a in axes],
              [list(t) for t in zip(geo["k_eff"], geo["out_hw"], geo["spread"])])]
    if d["kind"] == "conv":
        pairs += [(f"d{w} pads", [a[f"d{w.lower()}_pad"] for a in axes],
                   d[f"d{w.lower()}_conv"]["params"]["padding"]) for w in "XW"]
    return [dict(name=f"{what} worked out above = the rule's", err=None, tol=0, ok=mine == rule,
                 note="" if mine == rule else f"{mine} != {rule}") for what, mine, rule in pairs]


def _check_conv(d: dict[str, Any], rng: np.random.Generator) -> tuple[list, str]:
    c, shapes = d["config"], d["shapes"]
    kw = dict(stride=tuple(c["stride"]), padding=_tuples(c["padding"]),
              dilation=tuple(c["dilation"]), groups=c["groups"])
    x, w, dy = (rng.standard_normal(shapes[k]) for k in ("x", "w", "y"))
    fwd = getattr(forward, d["op"])
    rule = [np.asarray(a) for a in getattr(backward, d["op"])(dy, x, w, **kw)]
    items = _consistency(d)
    if d["trap"]["applies"]:  # jax.vjp would abort the process: never call it here
        reference, ref = "a NumPy loop over the kernel offsets", _np_conv_grads(dy, x, w, d)
        loss = lambda x, w: float((fwd(x, w, **kw) * dy).sum())  # noqa: E731
        for k in range(2):  # bilinear: central differences are exact up to rounding
            vx, vw, eps = rng.standard_normal(x.shape), rng.standard_normal(w.shape), 1e-3
            fd = (loss(x + eps * vx, w + eps * vw) - loss(x - eps * vx, w - eps * vw)) / (2 * eps)
            items.append(_item(f"central difference along random direction {k + 1} vs the rule",
                               np.vdot(rule[0], vx) + np.vdot(rule[1], vw), fd, FD_TOL))
    else:
        reference = f"jax.vjp of forward.{d['op']}"
        b = np.zeros(shapes["w"][3])
        ref = jax.vjp(lambda x, w, b: fwd(x, w, b, **kw), x, w, b)[1](dy)
    items += [_item(f"{name}: the rule vs {reference}", got, want)
              for name, got, want in zip(("dx", "dw", "db"), rule, ref)]
    items += [_item(f"the {name} convolution recomputed from the parameters above vs the rule",
                    got, want) for name, got, want in zip(("dX", "dW"),
                                                         _recompute_conv(d, x, w, dy), rule)]
    return items, reference


def _recompute_conv(d: dict[str, Any], x: np.ndarray, w: np.ndarray, dy: np.ndarray) -> list:
    """dx and dw by `lax.conv_general_dilated` from the explanation's own parameters (in the
    trap case the dX one with the spread done apart first); an error is returned as a string."""
    pdx, pdw, groups = _tuples(d["dx_conv"]["params"]), _tuples(d["dw_conv"]["params"]), \
        d["config"]["groups"]
    kh, kw, c_in_g, c_out = w.shape
    w = w[::-1, ::-1] if d["op"] == "convolve2d" else w  # the kernel the correlation sees
    kernel = (w.reshape(kh, kw, c_in_g, groups, c_out // groups).transpose(0, 1, 3, 2, 4)
              .reshape(d["dx_conv"]["kernel"]["after"])[::-1, ::-1])
    try:
        if d["trap"]["applies"]:
            cfg = [(0, 0, 0), *((lo, hi, s - 1) for (lo, hi), s in
                                zip(pdx["padding"], pdx["lhs_dilation"])), (0, 0, 0)]
            spread, kernel = lax.optimization_barrier((lax.pad(dy, 0.0, cfg), kernel))
            dx = lax.conv_general_dilated(spread, kernel,
                                          **{**pdx, "padding": "VALID", "lhs_dilation": None})
        else:
            dx = lax.conv_general_dilated(dy, kernel, **pdx)
        dw = lax.conv_general_dilated(x, dy, **pdw)
    except (ValueError, TypeError) as e:  # parameters that do not even make a convolution
        return [f"error: {e}"] * 2
    return [dx, dw[::-1, ::-1] if d["op"] == "convolve2d" else dw]


def _np_conv_grads(dy: np.ndarray, x: np.ndarray, w: np.ndarray, d: dict[str, Any]) -> list:
    """(dx, dw, db) by the adjoint of the forward's sum, one kernel offset at a time, in NumPy."""
    flip, c, pads = d["op"] == "convolve2d", d["config"], d["geometry"]["pads"]
    w = w[::-1, ::-1] if flip else w
    (sh, sw), (dh, dw_), groups = c["stride"], c["dilation"], c["groups"]
    (_, h, wd, _), (_, oh, ow, c_out), c_in_g = x.shape, dy.shape, w.shape[2]
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for m, p, j in itertools.product(range(w.shape[0]), range(w.shape[1]), range(groups)):
        r, q = slice(m * dh, m * dh + (oh - 1) * sh + 1, sh), slice(p * dw_, p * dw_ + (ow - 1)
                                                                    * sw + 1, sw)
        ci, co = slice(j * c_in_g, (j + 1) * c_in_g), slice(j * c_out // groups,
                                                             (j + 1) * c_out // groups)
        dxp[:, r, q, ci] += dy[..., co] @ w[m, p, :, co].T
        dw[m, p, :, co] += np.einsum("nijc,nijo->co", xp[:, r, q, ci], dy[..., co])
    (t, _), (left, _) = pads
    return [dxp[:, t:t + h, left:left + wd], dw[::-1, ::-1] if flip else dw, dy.sum((0, 1, 2))]


def _check_pool(d: dict[str, Any], rng: np.random.Generator) -> tuple[list, str]:
    op, c = d["op"], d["config"]
    kw: dict[str, Any] = dict(window=tuple(c["window"]), stride=tuple(c["stride"]),
                              padding=_tuples(c["padding"]))
    if op == "avg_pool":
        kw["count_include_pad"] = c["count_include_pad"]
    # max_pool: values in {0, 1, 2}, so that windows tie and the tie rule is exercised
    x = (rng.integers(0, 3, d["shapes"]["x"]).astype(np.float64) if op == "max_pool"
         else rng.standard_normal(d["shapes"]["x"]))
    dy = rng.standard_normal(d["shapes"]["y"])
    dx = getattr(backward, op)(dy, x, **kw)
    ref = jax.vjp(lambda x: getattr(forward, op)(x, **kw), x)[1](dy)[0]
    return [*_consistency(d), _item(f"dx: the rule vs jax.vjp of forward.{op}", dx, ref),
            _item("dx routed by a NumPy loop from the numbers above vs the rule",
                  _np_pool_dx(d, dy, x), dx)], f"jax.vjp of forward.{op}"


def _np_pool_dx(d: dict[str, Any], dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The pool's dx from the explanation's window, stride, pads and counts, in NumPy."""
    (kh, kw), (sh, sw), pads = d["config"]["window"], d["config"]["stride"], d["geometry"]["pads"]
    op, (_, oh, ow, _), (_, h, w, _) = d["op"], dy.shape, x.shape
    xp = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-np.inf if op == "max_pool" else 0)
    at = [(slice(m, m + (oh - 1) * sh + 1, sh), slice(p, p + (ow - 1) * sw + 1, sw))
          for m, p in itertools.product(range(kh), range(kw))]  # row-major window order
    taps = [xp[:, r, q] for r, q in at]
    if op == "max_pool":
        y, taken, routed = np.max(taps, axis=0), np.zeros(dy.shape, bool), []
        for t in taps:
            routed.append(np.where((t == y) & ~taken, dy, 0.0))
            taken |= t == y
    elif op == "avg_pool":
        routed = [dy / np.asarray(d["counts"])[None, :, :, None]] * len(taps)
    else:
        y = np.sqrt(np.sum(np.square(taps), axis=0))
        routed = [np.where(y > 0, dy / np.where(y > 0, y, 1), 0.0) * t for t in taps]
    dxp = np.zeros_like(xp)
    for (r, q), v in zip(at, routed):
        dxp[:, r, q] += v
    (t, _), (left, _) = pads
    return dxp[:, t:t + h, left:left + w]


# ----------------------------------------------------------------------------- the text
def format_text(d: dict[str, Any]) -> str:
    """The explanation for a terminal.

    Args:
      d: from `explain_conv` / `explain_pool`, with d["check"] (printed too) or without.

    Returns:
      the text, lines of at most 100 characters.
    """
    c, conv = d["config"], d["kind"] == "conv"
    what = f"w {tuple(d['shapes']['w'])} HWIO, groups {c['groups']}" if conv else \
        f"window {tuple(c['window'])}"
    out = _wrap(f"jaxcnn explain {d['op']}: x {tuple(d['shapes']['x'])} NHWC, {what}, stride "
                f"{tuple(c['stride'])}, padding {_tuples(c['padding'])!r}"
                + (f", dilation {tuple(c['dilation'])}" if conv else "")
                + f" -> y {tuple(d['shapes']['y'])}", 0)
    for a in d["axes"]:
        dil = f", dilation {a['d']}" if conv else ""
        out += ["", f"Axis {a['axis']} ({'rows' if a['axis'] == 'H' else 'columns'}): size "
                f"{a['size']}, {'kernel' if conv else 'window'} {a['k']}, stride {a['s']}{dil}",
                *_wrap(f"padding {a['padding']} -> (lo, hi) = ({a['lo']}, {a['hi']})", 2),
                *(f"  {f}" for f in a["formulas"]),
                f"  never read by any window (so dx is exactly zero there): {_ids(a['unread'])}"]
    out += _conv_text(d) if conv else _pool_text(d)
    return "\n".join(out + (_check_text(d["check"]) if "check" in d else []))


def _conv_text(d: dict[str, Any]) -> list[str]:
    px, pw, k, t = d["dx_conv"]["params"], d["dw_conv"]["params"], d["dx_conv"]["kernel"], _tuples
    crop = {a["axis"]: f"; negative: crops input {'rows' if a['axis'] == 'H' else 'columns'} "
            f"{_ids(a['dw_cropped'])}, which no window reads" for a in d["axes"] if a["dw_cropped"]}
    dx = [f"lhs_dilation {t(px['lhs_dilation'])} = s (dy spread over the stride grid, s - 1 "
          f"zeros apart), rhs_dilation {t(px['rhs_dilation'])} = d, window_strides "
          f"{t(px['window_strides'])}",
          *(f"padding {a['axis']}: {a['dx_pad_formula']}" + ("; a negative pad crops spread dy "
            "that only meets padding" if min(a["dx_pad"]) < 0 else "") for a in d["axes"]),
          f"kernel {t(k['before'])} -> {t(k['after'])}: {k['how']}",
          f"padding={t(px['padding'])}, dimension_numbers={t(px['dimension_numbers'])}, "
          f"feature_group_count={px['feature_group_count']}",
          f"XLA abort trap ({d['trap']['measured_on']}): {d['trap']['note']}"]
    dw = [f"window_strides {t(pw['window_strides'])} = d, rhs_dilation {t(pw['rhs_dilation'])} "
          f"= s (dy's taps s apart)",
          *(f"padding {a['axis']}: {a['dw_pad_formula']}{crop.get(a['axis'], '')}"
            for a in d["axes"]),
          f"padding={t(pw['padding'])}, dimension_numbers={t(pw['dimension_numbers'])} (x's "
          f"channels as the batch, N contracted with dy's N, out (kh, kw, C_in/G, C_out)), "
          f"batch_group_count={pw['batch_group_count']} (x's channel block j meets dy's block j)"
          + ("; then rot180" if d["op"] == "convolve2d" else "")]
    kernel = "w" if d["op"] == "convolve2d" else "rot180(w)"  # convolve2d: rot180(rot180(w))
    return ["", f"dX = conv_general_dilated(dy, {kernel} with in/out channels swapped, ...)",
            *(ln for text in dx for ln in _wrap(text, 2)), "",
            "dW = conv_general_dilated(x, dy, ...): x correlated with dy as the kernel",
            *(ln for text in dw for ln in _wrap(text, 2)), "", "db = dy summed over N, H, W"]


def _pool_text(d: dict[str, Any]) -> list[str]:
    out = ["", f"Windows: area {d['window_area']}"]
    if "counts" in d:
        out += _wrap(f"count_include_pad={d['config']['count_include_pad']}: each window "
                     f"passes dy / count, counts {d['counts']}", 2)
    out += [f"  {a['axis']}: stride {a['s']} " + (f"< window {a['k']}: windows overlap, and "
            f"their contributions add" if over else f">= window {a['k']}: no overlap")
            for a, over in zip(d["axes"], d["overlap"])]
    out += _wrap(("the windows tile the input (stride = window, no padding): each element is "
                  "read by at most one window. " if d["tiles"] else "the windows do not tile. ")
                 + _pool_rule_text(d), 2)
    return out + _wrap(f"routing: {d['routing']}", 2)


def _pool_rule_text(d: dict[str, Any]) -> str:
    """How the rule of this pool, at this window, computes dx (`backward.pool`'s own routing)."""
    if d["op"] != "max_pool":
        return ("The rule reads each window offset's strided tap and sums the interior-padded "
                "spreads of dy's shares, offset by offset")
    if d["by_taps"]:
        return ("The rule reads each window offset's strided tap, decides the winner among the "
                "taps, and sums the interior-padded spreads, offset by offset")
    return (f"The window holds more than {pool_rules.PAIRWISE_MAX} elements: the rule finds "
            f"each window's winner by one reduction over (value, index) pairs and adds dy there")


def _check_text(chk: dict[str, Any]) -> list[str]:
    out = ["", f"Check ({chk['dtype']} random data, seed {chk['seed']}):"]
    for i in chk["items"]:
        how = f"{i['err']:.1e} <= {i['tol']:.0e}" if i["err"] is not None else \
            i.get("note") or "equal"
        out += _wrap(f"{'ok  ' if i['ok'] else 'FAIL'}  {i['name']}: {how}", 2)
    bad = sum(not i["ok"] for i in chk["items"])
    return [*out, f"{f'{bad} check(s) FAILED' if bad else 'every check passed'} "
            f"({len(chk['items'])} in all)"]


def _wrap(text: str, indent: int) -> list[str]:
    return textwrap.wrap(text, 100, initial_indent=" " * indent,
                         subsequent_indent=" " * (indent + 4), break_on_hyphens=False)


def _ids(rows: list[int]) -> str:
    return ", ".join(map(str, rows)) if rows else "none"


# ----------------------------------------------------------------------------- the command
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare `jaxcnn explain`'s options on `p`."""
    p.add_argument("op", choices=CONV_OPS + POOL_OPS, help="the op whose rule to explain")
    p.add_argument("--input", required=True, metavar="HxWxC", help="one image, e.g. 7x7x3")
    p.add_argument("--kernel", metavar="KHxKW", help="conv: kernel size, e.g. 3x3 or 3")
    p.add_argument("--filters", type=int, metavar="C_OUT", help="conv: output channels")
    p.add_argument("--groups", type=int, default=1, help="conv: groups (C_in: depthwise)")
    p.add_argument("--dilation", default="1", metavar="D", help="conv: int or DHxDW")
    p.add_argument("--window", metavar="KHxKW", help="pools: window size, e.g. 2x2 or 2")
    p.add_argument("--stride", metavar="S", help="int or SHxSW (default 1; pools: the window)")
    p.add_argument("--padding", default="VALID",
                   help="VALID, SAME, P, PH,PW (each on both sides) or TOP,BOTTOM,LEFT,RIGHT")
    p.add_argument("--exclude-pad", action="store_true",
                   help="avg_pool: divide by the real elements (count_include_pad=False)")
    p.add_argument("--batch", type=int, default=2, help="images in the numeric check")
    p.add_argument("--seed", type=int, default=0, help="seed of the check's random data")
    p.add_argument("--json", action="store_true", help="print it all as one JSON object")


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone `jaxcnn explain` parser (`jaxcnn` itself registers `add_arguments`)."""
    p = argparse.ArgumentParser(prog="jaxcnn explain", description=__doc__.splitlines()[0])
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Explain, check, print (text or --json).

    Returns:
      0 when every check passes, 1 when one fails; bad input raises ValueError (exit 2).
    """
    try:
        d = _explain_args(args)
    except TypeError as e:  # the library's TypeErrors are bad input too
        raise ValueError(str(e)) from None
    d["check"] = check(d, args.seed)
    d["ok"] = d["check"]["ok"]
    print(json.dumps(d, indent=1) if args.json else format_text(d))
    return 0 if d["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    """`jaxcnn explain ARGV...` with the CLI's exit statuses (2: bad input, one stderr line)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error argparse reported (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        return run(args)
    except ValueError as e:
        print(f"jaxcnn explain: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def _explain_args(args: argparse.Namespace) -> dict[str, Any]:
    op, hwc, padding = args.op, parse_dims("--input", args.input, 3), parse_padding(args.padding)
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1; got {args.batch}")
    stride = None if args.stride is None else parse_dims("--stride", args.stride, 2)
    if op in CONV_OPS:
        if args.kernel is None or args.filters is None or args.window is not None:
            raise ValueError(f"{op} takes --kernel KHxKW and --filters C_OUT (not --window)")
        if args.filters < 1:
            raise ValueError(f"--filters must be >= 1; got {args.filters}")
        return explain_conv(op, hwc, parse_dims("--kernel", args.kernel, 2), args.filters,
                            stride or 1, padding, parse_dims("--dilation", args.dilation, 2),
                            args.groups, args.batch)
    if args.window is None or args.kernel or args.filters or args.groups != 1 \
            or args.dilation != "1":
        raise ValueError(f"{op} takes --window KHxKW (not --kernel, --filters, --groups, "
                         f"--dilation)")
    return explain_pool(op, hwc, parse_dims("--window", args.window, 2), stride, padding,
                        not args.exclude_pad, args.batch)


def parse_dims(flag: str, text: str, n: int) -> tuple[int, ...]:
    """'7x7x3' -> (7, 7, 3): n positive ints joined by x (or commas); with n = 2 one int means
    both. Raises ValueError naming `flag` otherwise."""
    try:
        vals = [int(v) for v in text.lower().replace(",", "x").split("x")]
    except ValueError:
        vals = []
    vals = vals * 2 if n == 2 and len(vals) == 1 else vals
    if len(vals) != n or min(vals) < 1:
        want = "HxWxC, three positive ints (e.g. 7x7x3)" if n == 3 else \
            "a positive int or HxW (e.g. 3 or 3x2)"
        raise ValueError(f"{flag} must be {want}; got {text!r}")
    return tuple(vals)


def parse_padding(text: str) -> _geometry.Padding:
    """--padding: VALID, SAME, P, PH,PW or TOP,BOTTOM,LEFT,RIGHT (brackets ignored, so
    "((1, 2), (0, 1))" reads as 1,2,0,1); ValueError otherwise."""
    if text.strip().upper() in ("VALID", "SAME"):
        return text.strip().upper()
    try:
        v = [int(p) for p in text.translate(str.maketrans("", "", "()[] ")).split(",")]
    except ValueError:
        v = []
    if len(v) not in (1, 2, 4):
        raise ValueError(f"--padding must be VALID, SAME, an int P, PH,PW or "
                         f"TOP,BOTTOM,LEFT,RIGHT; got {text!r}")
    return v[0] if len(v) == 1 else tuple(v) if len(v) == 2 else ((v[0], v[1]), (v[2], v[3]))
