"""Pooling on 1, 2 and 3 spatial axes: x (N, L, C), (N, H, W, C), (N, D, H, W, C).

Each rule (max, average both ways, L2) is held to `jax.vjp` of its forward (float64, rel 1e-9),
to central differences (1e-6) and to an n-d NumPy oracle written here (explicit window slices, no
XLA). Max pool's tie rule (the first maximum in row-major window order takes all of dy, as XLA's
select-and-scatter) is checked exactly on inputs full of ties; its finite differences use inputs
whose values are far apart, so that no perturbation changes a window's winner.
"""

from __future__ import annotations

import itertools
import re
import zlib

import jax
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from jax import lax

from jaxcnn import _geometry, _window, backward, forward

from helpers import assert_close, central_difference_vjp, rel_err

RTOL, FD_TOL = 1e-9, 1e-6
OPS = ["max_pool", "avg_pool", "avg_pool_real", "l2_pool"]  # avg_pool_real: count_include_pad=False


def _op(name: str, kw: dict) -> tuple[str, dict]:
    """The library name and keywords of an entry of OPS."""
    if name == "avg_pool_real":
        return "avg_pool", {**kw, "count_include_pad": False}
    return name, kw


# ----------------------------------------------------------------------------- the oracle
def _offsets_slices(win: _geometry.Window) -> list[tuple[slice, ...]]:
    """For every window offset, row-major: the padded-input slice it reads, one per axis."""
    per_axis = [[slice(m, m + (o - 1) * s + 1, s) for m in range(k)]
                for k, s, o in zip(win.size, win.stride, win.out_hw)]
    return list(itertools.product(*per_axis))


def windows(x: np.ndarray, win: _geometry.Window, fill: float) -> np.ndarray:
    """Every window element of the padded x: (K, N, *O, C), K = prod(window), row-major."""
    xp = np.pad(x, ((0, 0), *win.pads, (0, 0)), constant_values=fill)
    return np.stack([xp[(slice(None), *t, slice(None))] for t in _offsets_slices(win)])


def scatter(v: np.ndarray, x_shape: tuple[int, ...], win: _geometry.Window) -> np.ndarray:
    """The adjoint of `windows`: add v (K, N, *O, C) back onto x's grid, cropping the padding."""
    padded = [n + lo + hi for n, (lo, hi) in zip(x_shape[1:-1], win.pads)]
    out = np.zeros((x_shape[0], *padded, x_shape[-1]), v.dtype)
    for k, t in enumerate(_offsets_slices(win)):
        out[(slice(None), *t, slice(None))] += v[k]
    crop = tuple(slice(lo, lo + n) for n, (lo, _) in zip(x_shape[1:-1], win.pads))
    return out[(slice(None), *crop, slice(None))]


def oracle(name: str, dy: np.ndarray, x: np.ndarray, win: _geometry.Window):
    """(y, dx) of OPS[name] by explicit sums over the window elements."""
    k = int(np.prod(win.size))
    if name == "max_pool":
        w = windows(x, win, -np.inf)
        first = np.argmax(w, axis=0)  # the first maximum in row-major window order
        routed = (np.arange(k).reshape(-1, *(1,) * dy.ndim) == first) * dy
        return w.max(0), scatter(routed, x.shape, win)
    if name == "l2_pool":
        y = np.sqrt((windows(x, win, 0.0) ** 2).sum(0))
        share = np.where(y > 0, dy / np.where(y > 0, y, 1), 0)
        return y, x * scatter(np.broadcast_to(share, (k, *dy.shape)), x.shape, win)
    count = windows(np.ones_like(x), win, 0.0).sum(0) if name == "avg_pool_real" else k
    y = windows(x, win, 0.0).sum(0) / count
    return y, scatter(np.broadcast_to(dy / count, (k, *dy.shape)), x.shape, win)


# ----------------------------------------------------------------------------- helpers
def _geometry_of(x: np.ndarray, kw: dict) -> _geometry.Window:
    return _geometry.pool_nd("p", x, kw.get("window", 2), kw.get("stride"),
                             kw.get("padding", "VALID"))


def _rule_and_vjp(name: str, kw: dict):
    """One compiled program: (manual dx, jax.vjp's dx) for (dy, x)."""
    op, kw = _op(name, kw)

    def both(dy, x):
        _, pullback = jax.vjp(lambda x: getattr(forward, op)(x, **kw), x)
        return getattr(backward, op)(dy, x, **kw), pullback(dy)[0]
    return jax.jit(both)


def _distinct(rng, shape) -> np.ndarray:
    """Values 0.05 apart in random order: no window has a near-tie for finite differences."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.05 - 1.0


# (shape, options) per number of spatial axes; the 2-D ones are a regression of the old path
GRAD_CASES = {
    "1d-tiles": ((2, 8, 3), dict(window=2)),
    "1d-overlap-same": ((2, 9, 2), dict(window=3, stride=2, padding="SAME")),
    "1d-explicit": ((1, 7, 2), dict(window=(3,), stride=(1,), padding=((2, 1),))),
    "2d-tiles": ((2, 6, 6, 2), dict(window=2)),
    "2d-overlap": ((1, 6, 7, 2), dict(window=(3, 2), stride=(1, 2), padding=((1, 2), (0, 1)))),
    "3d-tiles": ((2, 4, 4, 4, 2), dict(window=2)),
    "3d-overlap-pad": ((1, 5, 4, 6, 2), dict(window=(2, 3, 2), stride=(1, 2, 2),
                                              padding=((1, 0), (1, 1), (0, 1)))),
    "3d-same": ((1, 5, 5, 3, 1), dict(window=3, stride=2, padding="SAME")),
}


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("case", GRAD_CASES)
def test_rule_equals_vjp_oracle_and_central_differences(case, name):
    shape, kw = GRAD_CASES[case]
    rng = np.random.default_rng(zlib.crc32(f"{case}-{name}".encode()))
    x = _distinct(rng, shape) if name == "max_pool" else rng.standard_normal(shape)
    win = _geometry_of(x, kw)
    dy = rng.standard_normal((shape[0], *win.out_hw, shape[-1]))
    manual, auto = _rule_and_vjp(name, kw)(dy, x)
    assert_close(manual, auto, RTOL, f"{name} vs jax.vjp")
    y_ref, dx_ref = oracle(name, dy, x, win)
    op, okw = _op(name, kw)
    assert_close(getattr(forward, op)(x, **okw), y_ref, 1e-13, f"{name} forward vs oracle")
    assert_close(manual, dx_ref, RTOL, f"{name} vs NumPy oracle")
    f = jax.jit(lambda x: getattr(forward, op)(x, **okw))
    checks = central_difference_vjp(f, (x,), dy, 0)
    fd = [d for d, _ in checks]
    assert rel_err([np.vdot(manual, v) for _, v in checks], fd) <= FD_TOL, name


# ----------------------------------------------------------------------------- ties
TIE_CASES = {
    "1d-tiles": ((3, 12, 2), dict(window=3)),
    "1d-overlap": ((3, 11, 2), dict(window=3, stride=1, padding=1)),
    "1d-same": ((2, 10, 3), dict(window=(4,), stride=(3,), padding="SAME")),
    "2d-overlap": ((2, 7, 8, 2), dict(window=3, stride=1, padding=1)),
    "3d-tiles": ((2, 4, 6, 4, 2), dict(window=2)),
    "3d-overlap": ((2, 5, 4, 5, 2), dict(window=(3, 2, 2), stride=(1, 1, 2),
                                         padding=((1, 1), (0, 1), (1, 0)))),
}


@pytest.mark.parametrize("kind", ["integers", "all-zero", "constant-negative"])
@pytest.mark.parametrize("case", TIE_CASES)
def test_max_pool_ties_route_exactly_as_jax_grad(case, kind):
    """Values from {0, 1, 2} (or one constant): the routed sums of integer dy are exact, so every
    correct routing is bit-identical to select-and-scatter's."""
    shape, kw = TIE_CASES[case]
    rng = np.random.default_rng(1)
    x = {"integers": rng.integers(0, 3, shape).astype(np.float64),
         "all-zero": np.zeros(shape), "constant-negative": np.full(shape, -3.0)}[kind]
    win = _geometry_of(x, kw)
    dy = rng.integers(-4, 5, (shape[0], *win.out_hw, shape[-1])).astype(np.float64)
    manual, auto = _rule_and_vjp("max_pool", kw)(dy, x)
    np.testing.assert_array_equal(manual, auto)
    np.testing.assert_array_equal(manual, oracle("max_pool", dy, x, win)[1])
    grad = jax.grad(lambda x: (forward.max_pool(x, **kw) * dy).sum())(x)
    np.testing.assert_array_equal(manual, grad)


@pytest.mark.parametrize("shape", [(1, 2, 1), (1, 2, 2, 2, 1)])
def test_tie_goes_to_the_first_element_in_row_major_order(shape):
    x = np.ones(shape)
    dy = np.full((1, *(1,) * (len(shape) - 2), 1), 5.0)
    dx = np.asarray(backward.max_pool(dy, x, window=2))
    assert dx.flat[0] == 5.0 and dx.sum() == 5.0
    for i in range(x.size):  # the only positive element wins, wherever it is
        x = np.zeros(shape)
        x.flat[i] = 1.0
        dx = np.asarray(backward.max_pool(dy, x, window=2))
        assert dx.flat[i] == 5.0 and dx.sum() == 5.0


# ----------------------------------------------------------------------------- by hand
def test_overlapping_windows_add():
    dy = np.array([1.0, 2.0]).reshape(1, 2, 1)
    x = np.array([0.0, 5.0, 0.0]).reshape(1, 3, 1)  # both windows of 2 pick the middle
    np.testing.assert_array_equal(backward.max_pool(dy, x, window=2, stride=1)[0, :, 0], [0, 3, 0])
    np.testing.assert_array_equal(backward.avg_pool(dy, x, window=2, stride=1)[0, :, 0],
                                  [0.5, 1.5, 1.0])
    x3 = np.zeros((1, 3, 3, 3, 1))
    x3[0, 1, 1, 1, 0] = 1.0  # the centre is in all 8 windows of 2x2x2, stride 1
    dy3 = np.arange(1.0, 9.0).reshape(1, 2, 2, 2, 1)
    dx3 = np.asarray(backward.max_pool(dy3, x3, window=2, stride=1))
    assert dx3[0, 1, 1, 1, 0] == dy3.sum() and dx3.sum() == dy3.sum()


def test_count_include_pad_both_ways():
    x = np.ones((1, 4, 1))  # window 3, padding 1: windows hold 2, 3, 3, 2 real elements
    kw = dict(window=3, stride=1, padding=1)
    np.testing.assert_allclose(forward.avg_pool(x, **kw)[0, :, 0], [2 / 3, 1, 1, 2 / 3])
    np.testing.assert_allclose(forward.avg_pool(x, **kw, count_include_pad=False)[0, :, 0], 1)
    dy = np.ones((1, 4, 1))
    np.testing.assert_allclose(backward.avg_pool(dy, x, **kw)[0, :, 0], [2 / 3, 1, 1, 2 / 3])
    np.testing.assert_allclose(backward.avg_pool(dy, x, **kw, count_include_pad=False)[0, :, 0],
                               [1 / 2 + 1 / 3, 1 / 2 + 2 / 3, 1 / 2 + 2 / 3, 1 / 2 + 1 / 3])
    x3 = np.ones((1, 2, 2, 2, 1))  # window 2, stride 1, padding 1: a corner window holds one
    kw3 = dict(window=2, stride=1, padding=1)
    y3 = np.asarray(forward.avg_pool(x3, **kw3))
    assert y3.shape == (1, 3, 3, 3, 1) and y3[0, 0, 0, 0, 0] == 1 / 8 and y3[0, 1, 1, 1, 0] == 1
    np.testing.assert_array_equal(forward.avg_pool(x3, **kw3, count_include_pad=False), 1.0)


PADDING_FORMS = {  # each form, and the explicit pads it means
    1: [(1, ((1, 1),)), ((2,), ((2, 2),)), (((0, 2),), ((0, 2),)), ("VALID", ((0, 0),))],
    3: [(1, ((1, 1),) * 3), ((1, 0, 2), ((1, 1), (0, 0), (2, 2))),
        (((0, 1), (2, 0), (1, 2)), ((0, 1), (2, 0), (1, 2))), ("valid", ((0, 0),) * 3)],
}


@pytest.mark.parametrize("n", [1, 3])
def test_padding_forms(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((2, *(7, 5, 6)[:n], 2))
    for name in ("max_pool", "avg_pool", "l2_pool"):
        for form, pads in PADDING_FORMS[n]:
            kw = dict(window=3, stride=2, padding=form)
            assert _geometry_of(x, kw).pads == pads
            np.testing.assert_array_equal(getattr(forward, name)(x, **kw),
                                          getattr(forward, name)(x, **{**kw, "padding": pads}))
        same = _geometry_of(x, dict(window=3, stride=2, padding="SAME")).pads
        assert same == tuple(tuple(p) for p in lax.padtype_to_pads(x.shape[1:-1], (3,) * n,
                                                                    (2,) * n, "SAME"))
        assert _geometry_of(x, dict(window=3, stride=2, padding="SAME")).out_hw == tuple(
            -(-s // 2) for s in x.shape[1:-1])


# ----------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("shape, kw", [((3, 2, 9, 2), dict(window=3, stride=2, padding=1)),
                                       ((3, 1, 4, 5, 4, 2), dict(window=2, stride=(1, 2, 2)))],
                         ids=["1d", "3d"])
def test_rules_under_jit_and_vmap(shape, kw):
    """A leading axis vmapped away: each example is an (N, *spatial, C) batch of its own."""
    rng = np.random.default_rng(4)
    xs = rng.integers(0, 3, shape).astype(np.float64)  # ties too: routing must not change
    win = _geometry_of(xs[0], kw)
    dys = rng.standard_normal((shape[0], shape[1], *win.out_hw, shape[-1]))
    for name in OPS:
        op, okw = _op(name, kw)
        rule = lambda dy, x, op=op, okw=okw: getattr(backward, op)(dy, x, **okw)
        looped = np.stack([rule(dy, x) for dy, x in zip(dys, xs)])
        batched = jax.jit(jax.vmap(rule))(dys, xs)
        if name == "max_pool":  # sums of routed dy in one order: the same bits
            np.testing.assert_array_equal(batched, looped)
        assert_close(batched, looped, 1e-15, f"{name} jit(vmap)")
        assert_close(jax.vmap(jax.jit(rule))(dys, xs), looped, 1e-15, f"{name} vmap(jit)")
        pullback = lambda dy, x, op=op, okw=okw: jax.vjp(
            lambda x: getattr(forward, op)(x, **okw), x)[1](dy)[0]
        assert_close(looped, jax.jit(jax.vmap(pullback))(dys, xs), RTOL, f"{name} vmap vjp")


def test_rules_never_use_base_dilation_on_any_rank():
    """openxla/xla#48714: no pooling rule may build on reduce_window's base_dilation."""
    for shape, kw in [((2, 64, 1), dict(window=(2,), stride=(3,))),
                      ((1, 8, 16, 8, 1), dict(window=(2, 1, 2), stride=(2, 2, 1)))]:
        x = np.zeros(shape, np.float32)
        for op in ("max_pool", "avg_pool", "l2_pool"):
            dy = np.zeros(np.shape(getattr(forward, op)(x, **kw)), np.float32)
            rule = lambda dy, x, op=op, kw=kw: getattr(backward, op)(dy, x, **kw)
            jaxpr = jax.make_jaxpr(rule)(dy, x)
            for eqn in jaxpr.jaxpr.eqns:
                dilation = eqn.params.get("base_dilation")
                assert dilation is None or set(dilation) == {1}, f"{op}: {eqn}"


def test_window_taps_keep_the_2d_call_form():
    """`tap(xp, m, p, win)` / `spread(v, m, p, win)` (the 2-D form jaxcnn.fast.products uses)
    are `tap(xp, *offset, win)` with a 2-entry offset; a wrong-length offset is refused."""
    x = np.arange(2 * 7 * 6 * 3, dtype=np.float64).reshape(2, 7, 6, 3)
    win = _geometry.pool("p", x, (3, 2), (2, 1), ((1, 0), (0, 1)))
    xp = np.pad(x, ((0, 0), (1, 0), (0, 1), (0, 0)))
    assert _window.offsets(win) == [(m, p) for m in range(3) for p in range(2)]
    np.testing.assert_array_equal(_window.tap(xp, 2, 1, win), xp[:, 2:2 + 5:2, 1:1 + 6, :])
    v = np.ones((2, *win.out_hw, 3))
    assert _window.spread(v, 0, 1, win).shape == x.shape
    with pytest.raises(TypeError, match=re.escape("_window.tap: got the offset (1,)")):
        _window.tap(xp, 1, win)


# ----------------------------------------------------------------------------- the sweep
@st.composite
def nd_configs(draw):
    n = draw(st.sampled_from([1, 3]))
    window = tuple(draw(st.integers(1, 3)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
    kind = draw(st.sampled_from(["VALID", "SAME", "int", "per-axis", "explicit"]))
    below = [st.integers(0, k - 1) for k in window]  # every pad smaller than its window
    padding = {"VALID": "VALID", "SAME": "SAME",
               "int": draw(st.integers(0, min(window) - 1)),
               "per-axis": tuple(draw(b) for b in below),
               "explicit": tuple((draw(b), draw(b)) for b in below)}[kind]
    sizes = tuple(draw(st.integers(k, k + (6 if n == 1 else 3))) for k in window)
    batch, channels = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kw = dict(window=draw(st.sampled_from([window, window[0]])) if len(set(window)) == 1
              else window, stride=stride, padding=padding)
    return (batch, *sizes, channels), kw


@settings(max_examples=80)
@given(cfg=nd_configs(), name=st.sampled_from(OPS), seed=st.integers(0, 2**16))
def test_nd_pool_sweep(cfg, name, seed):
    shape, kw = cfg
    rng = np.random.default_rng(seed)
    exact = name == "max_pool" and seed % 2 == 0  # values from {0, 1, 2}: ties everywhere
    x = rng.integers(0, 3, shape).astype(np.float64) if exact else rng.standard_normal(shape)
    win = _geometry_of(x, kw)
    dy = rng.standard_normal((shape[0], *win.out_hw, shape[-1]))
    if exact:
        dy = np.round(dy * 3)  # integer dy: every correct routing sums to the same bits
    manual, auto = _rule_and_vjp(name, kw)(dy, x)
    y_ref, dx_ref = oracle(name, dy, x, win)
    op, okw = _op(name, kw)
    assert_close(getattr(forward, op)(x, **okw), y_ref, 1e-13, f"{name} forward vs oracle")
    if exact:
        event("max pool with ties: exact")
        np.testing.assert_array_equal(manual, auto)
        np.testing.assert_array_equal(manual, dx_ref)
    else:
        assert_close(manual, auto, RTOL, f"{name} vs jax.vjp")
        assert_close(manual, dx_ref, RTOL, f"{name} vs NumPy oracle")
    event(f"{len(shape) - 2} spatial axes")


@pytest.mark.parametrize("shape, kw", [((1, 8192, 1), dict(window=3, stride=2, padding=1)),
                                       ((1, 16, 32, 16, 1), dict(window=(2, 1, 2), stride=2))],
                         ids=["1d", "3d"])
def test_large_inputs(shape, kw):
    """>= 8192 elements, where XLA:CPU switches reduce_window kernels (openxla/xla#48714)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape)
    win = _geometry_of(x, kw)
    dy = rng.standard_normal((shape[0], *win.out_hw, shape[-1]))
    for name in OPS:
        manual, auto = _rule_and_vjp(name, kw)(dy, x)
        assert_close(manual, auto, RTOL, f"{name} vs jax.vjp")
        assert_close(manual, oracle(name, dy, x, win)[1], RTOL, f"{name} vs NumPy oracle")


# ----------------------------------------------------------------------------- bad input
x1, x3 = np.zeros((2, 6, 3)), np.zeros((1, 3, 4, 4, 2))
BAD = [
    ("rank-2", lambda: forward.max_pool(np.zeros((6, 3))), ValueError,
     "max_pool: x must be (N, *spatial, C) with 1, 2 or 3 spatial axes (rank 3 to 5); "
     "got shape (6, 3)"),
    ("rank-6", lambda: backward.avg_pool(np.zeros((1, 1, 1, 1, 1, 1)), np.zeros((1,) * 6)),
     ValueError, "backward.avg_pool: x must be (N, *spatial, C) with 1, 2 or 3 spatial axes"),
    ("1d-window-pair", lambda: forward.max_pool(x1, window=(2, 2)), TypeError,
     "max_pool: window must be an int or a tuple of 1 int"),
    ("1d-stride-pair", lambda: forward.avg_pool(x1, stride=(1, 1)), TypeError,
     "avg_pool: stride must be an int or a tuple of 1 int"),
    ("1d-padding-pair", lambda: forward.l2_pool(x1, padding=(1, 1)), TypeError,
     "l2_pool: padding must be"),
    ("3d-window-pair", lambda: forward.max_pool(x3, window=(2, 2)), TypeError,
     "max_pool: window must be an int or a tuple of 3 ints"),
    ("1d-pad-ge-window", lambda: forward.l2_pool(x1, window=2, padding=2), ValueError,
     "l2_pool: padding ((2, 2),) must be smaller than the window (2,)"),
    ("3d-pad-ge-window", lambda: backward.max_pool(x3, x3, window=3, stride=1,
                                                   padding=((0, 0), (0, 3), (0, 0))),
     ValueError, "backward.max_pool: padding ((0, 0), (0, 3), (0, 0)) must be smaller than the "
     "window (3, 3, 3)"),
    ("3d-window-too-big", lambda: forward.max_pool(x3, window=4), ValueError,
     "max_pool: the window spans (4, 4, 4) but the padded input is only (3, 4, 4)"),
    ("1d-window-too-big", lambda: forward.avg_pool(x1, window=(8,), padding=((1, 0),)),
     ValueError, "avg_pool: the window spans (8,) but the padded input is only (7,)"),
    ("1d-stride-zero", lambda: forward.max_pool(x1, stride=0), ValueError,
     "max_pool: stride must be >= 1"),
    ("1d-padding-negative", lambda: forward.max_pool(x1, padding=-1), ValueError,
     "max_pool: padding must be >= 0"),
    ("3d-padding-string", lambda: forward.max_pool(x3, padding="FULL"), ValueError,
     "max_pool: padding must be"),
    ("1d-dy-shape", lambda: backward.max_pool(np.zeros((2, 2, 3)), x1), ValueError,
     "backward.max_pool: dy has shape (2, 2, 3) but the forward output has shape (2, 3, 3)"),
    ("3d-int-dtype", lambda: forward.avg_pool(x3.astype(np.int32)), TypeError,
     "avg_pool: x must have a floating-point dtype"),
    # rank 4 keeps the 2-D messages word for word
    ("2d-window-type", lambda: forward.max_pool(np.zeros((2, 6, 6, 3)), window=(2, 2, 2)),
     TypeError, "max_pool: window must be an int or a pair of ints (h, w); got (2, 2, 2)"),
    ("2d-pad-ge-window", lambda: forward.l2_pool(np.zeros((2, 6, 6, 3)), padding=2), ValueError,
     "l2_pool: padding ((2, 2), (2, 2)) must be smaller than the window (2, 2)"),
    ("2d-window-too-big", lambda: forward.max_pool(np.zeros((2, 6, 6, 3)), window=7), ValueError,
     "max_pool: the window spans (7, 7) but the padded input is only (6, 6)"),
]


@pytest.mark.parametrize("fn, exc, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_names_the_argument(fn, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        fn()


def test_bad_input_fails_the_same_under_jit():
    with pytest.raises(TypeError, match=re.escape("window must be an int or a tuple of 1 int")):
        jax.jit(lambda x: forward.max_pool(x, window=(2, 2)))(x1)
    with pytest.raises(ValueError, match=re.escape("dy has shape (2, 2, 3)")):
        jax.jit(lambda dy, x: backward.avg_pool(dy, x))(np.zeros((2, 2, 3)), x1)
