"""conv1d and conv3d: conv2d's rule on 1 and 3 spatial axes, held to a NumPy oracle, jax.vjp and
central differences (float64), under jit / vmap, in float32, and on bad input.

References: the n-axis NumPy oracle below (explicit sums over kernel offsets, no XLA) for every
configuration, and `jax.vjp` of the forward wherever XLA can compile it: not where
`fast.traps.xla_may_abort` says the process may die (an axis with kernel 2, stride 2,
dilation 1 on a 3-D convolution; 1-D convolutions measured never to abort), so that one bad
compile cannot kill the test run. `test_3d_trap_in_a_subprocess` runs one such configuration
where an abort kills only a child process.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from jaxcnn import _geometry, backward, fast, forward

from helpers import assert_close, assert_directional_differences, forward_rule_vjp, run_child

RTOL = 1e-9
HERE = Path(__file__).parent


# ----------------------------------------------------------------------------- NumPy oracle
def _offsets(k):
    return itertools.product(*(range(kk) for kk in k))


def _tap(offs, stride, dilation, out):
    """The padded-input slice kernel offset `offs` reads at every output, one per axis."""
    return (slice(None), *(slice(m * d, m * d + (o - 1) * s + 1, s)
                           for m, s, d, o in zip(offs, stride, dilation, out)))


def _blocks(groups, c_a, c_b):
    return [(slice(g * c_a, (g + 1) * c_a), slice(g * c_b, (g + 1) * c_b)) for g in range(groups)]


def conv_oracle(x, w, stride, pads, dilation, groups):
    """y[n, *i, o] = sum x_pad[n, *(i*s + m*d), c] w[*m, c, o] on any number of axes, grouped."""
    n = w.ndim - 2
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    k, (c_in_g, c_out) = w.shape[:n], w.shape[n:]
    out = [(xp.shape[1 + a] - (k[a] - 1) * dilation[a] - 1) // stride[a] + 1 for a in range(n)]
    y = np.zeros((x.shape[0], *out, c_out))
    for offs in _offsets(k):
        patch = xp[_tap(offs, stride, dilation, out)]
        for ci, co in _blocks(groups, c_in_g, c_out // groups):
            y[..., co] += patch[..., ci] @ w[offs][:, co]
    return y


def conv_oracle_grads(dy, x, w, stride, pads, dilation, groups):
    """(dx, dw, db) of `conv_oracle`: the adjoint of the same sums, scattered tap by tap."""
    n = w.ndim - 2
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    k, (c_in_g, c_out), out = w.shape[:n], w.shape[n:], dy.shape[1:-1]
    for offs in _offsets(k):
        tap = _tap(offs, stride, dilation, out)
        patch = xp[tap]
        for ci, co in _blocks(groups, c_in_g, c_out // groups):
            dxp[(*tap, ci)] += dy[..., co] @ w[offs][:, co].T
            dw[offs][:, co] += patch[..., ci].reshape(-1, c_in_g).T @ dy[..., co].reshape(
                -1, c_out // groups)
    crop = (slice(None), *(slice(lo, lo + h) for (lo, _), h in zip(pads, x.shape[1:-1])))
    return dxp[crop], dw, dy.sum(tuple(range(n + 1)))


def unread(win: _geometry.Window, axis: int) -> np.ndarray:
    """Input rows (along spatial `axis`) that no output position reads."""
    (lo, _), h = win.pads[axis], win.in_hw[axis]
    read = np.zeros(h, bool)
    for o, m in itertools.product(range(win.out_hw[axis]), range(win.size[axis])):
        r = o * win.stride[axis] + m * win.dilation[axis] - lo
        if 0 <= r < h:
            read[r] = True
    return ~read


def assert_unread_rows_zero(dx, win, what):
    for axis in range(len(win.size)):
        rows = np.flatnonzero(unread(win, axis))
        if rows.size:
            event("input rows the stride skips")
            assert not np.take(np.asarray(dx), rows, axis=axis + 1).any(), (
                f"{what}: rows never read must get exactly zero dx")


def test_oracle_matches_conv2d_oracle_on_two_axes():
    """The n-axis oracle, on two axes, is the 2-D oracle of tests/reference.py."""
    from reference import conv2d, conv2d_grads
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 7, 6, 4)), rng.standard_normal((3, 2, 2, 4))
    args = ((2, 1), ((1, 0), (2, 1)), (1, 2), 2)
    y = conv_oracle(x, w, *args)
    np.testing.assert_allclose(y, conv2d(x, w, *args), rtol=1e-13)
    dy = rng.standard_normal(y.shape)
    for a, b in zip(conv_oracle_grads(dy, x, w, *args), conv2d_grads(dy, x, w, *args)):
        np.testing.assert_allclose(a, b, rtol=1e-13)


# ----------------------------------------------------------------------------- the sweep
def _padding(draw, n):
    kind = draw(st.sampled_from(["VALID", "SAME", "int", "tuple", "explicit"]))
    small = st.integers(0, 2)
    if kind in ("VALID", "SAME"):
        return kind
    if kind == "int":
        return draw(small)
    if kind == "tuple":
        return tuple(draw(small) for _ in range(n))
    return tuple((draw(small), draw(small)) for _ in range(n))


@st.composite
def nd_configs(draw):
    n = draw(st.sampled_from([1, 3]))
    kind = draw(st.sampled_from(["groups1", "groups1", "groups2", "depthwise"]))
    if kind == "groups1":
        groups, c_in, c_out = 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    elif kind == "groups2":
        groups, c_in, c_out = 2, 2 * draw(st.integers(1, 2)), 2 * draw(st.integers(1, 2))
    else:
        c_in = draw(st.integers(1, 3))
        groups, c_out = c_in, c_in * draw(st.integers(1, 2))
    k_max, d_max, room = (5, 3, 7) if n == 1 else (3, 2, 2)  # 3-D: spatial sizes <= 7
    k = tuple(draw(st.integers(1, k_max)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, d_max)) for _ in range(n))
    if n == 3 and draw(st.integers(0, 5)) == 0:  # often enough: an axis on which XLA may abort
        k, stride, dilation = (2, *k[1:]), (2, *stride[1:]), (1, *dilation[1:])
    eff = [(kk - 1) * d + 1 for kk, d in zip(k, dilation)]
    padding = _padding(draw, n)
    sizes = [draw(st.integers(max(1, e - 4), e + room)) for e in eff]
    batch = draw(st.integers(1, 2))
    try:
        _geometry.conv("c", np.empty((batch, *sizes, c_in)), np.empty((*k, c_in // groups, c_out)),
                       stride, padding, dilation, groups, spatial=n)
    except ValueError:
        sizes = [e + draw(st.integers(0, 2)) for e in eff]  # too small for this padding
        padding = padding if padding == "SAME" else "VALID"
    return dict(n=n, x=(batch, *sizes, c_in), w=(*k, c_in // groups, c_out),
                kw=dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


def _checked(n, kw, with_vjp):
    """One compiled program per configuration: forward, the rule, and jax.vjp of the forward."""
    return forward_rule_vjp(getattr(forward, f"conv{n}d"), getattr(backward, f"conv{n}d"), kw,
                            with_vjp)


@settings(max_examples=160)
@given(cfg=nd_configs(), seed=st.integers(0, 2**16))
def test_conv_nd_backward_sweep(cfg, seed):
    n, kw = cfg["n"], cfg["kw"]
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(cfg["x"]), rng.standard_normal(cfg["w"])
    b = rng.standard_normal(cfg["w"][-1])
    g = _geometry.conv("c", x, w, kw["stride"], kw["padding"], kw["dilation"], kw["groups"],
                       spatial=n)
    dy = rng.standard_normal(g.out_shape)
    trap = fast.traps.xla_may_abort(g.win)
    event(f"conv{n}d" + (": XLA trap configuration, oracle only" if trap else ""))
    out = _checked(n, kw, not trap)(dy, x, w, b)
    oracle = (g.win.stride, g.win.pads, g.win.dilation, g.groups)
    assert_close(out["y"], conv_oracle(x, w, *oracle) + b, RTOL, "forward vs NumPy oracle")
    for name, got, want in zip(("dx", "dw", "db"), out["rule"],
                               conv_oracle_grads(dy, x, w, *oracle)):
        assert_close(got, want, RTOL, f"{name} vs NumPy oracle")
    if not trap:
        for name, got, want in zip(("dx", "dw", "db"), out["rule"], out["vjp"]):
            assert_close(got, want, RTOL, f"{name} vs jax.vjp")
    assert_unread_rows_zero(out["rule"][0], g.win, f"conv{n}d")


# ----------------------------------------------------------------------------- fixed configurations
FIXED = {  # op: (x, w, options): strided, padded, dilated, grouped, depthwise
    "conv1d-strided": (1, (2, 9, 3), (3, 3, 4), dict(stride=2, padding="SAME")),
    "conv1d-grouped": (1, (2, 8, 4), (2, 2, 4), dict(stride=(3,), padding=((2, 0),),
                                                     dilation=2, groups=2)),
    "conv3d-strided": (3, (2, 5, 6, 5, 2), (3, 2, 3, 2, 3), dict(stride=(2, 1, 2), padding=1)),
    "conv3d-depthwise": (3, (1, 6, 5, 7, 3), (2, 3, 2, 1, 6),
                         dict(stride=(1, 2, 3), padding=((1, 0), (0, 2), (1, 1)),
                              dilation=(2, 1, 1), groups=3)),
}


def _case(name, dtype=np.float64, seed=0):
    n, xs, ws, kw = FIXED[name]
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in (xs, ws, ws[-1:]))
    y = getattr(forward, f"conv{n}d")(x, w, b, **kw)
    return n, kw, x, w, b, rng.standard_normal(y.shape).astype(dtype)


@pytest.mark.parametrize("name", FIXED)
def test_rule_equals_vjp_eager_jit_vmap(name):
    """The rule equals jax.vjp of the forward eagerly, under jit, vmap and jit(vmap)."""
    n, kw, x, w, b, dy = _case(name)
    fwd, bwd = getattr(forward, f"conv{n}d"), getattr(backward, f"conv{n}d")

    def both(dy, x, w, b):
        return bwd(dy, x, w, **kw), jax.vjp(lambda x, w, b: fwd(x, w, b, **kw), x, w, b)[1](dy)

    def per_example(dy, x, w, b):  # one example per call: N = 1 inside vmap
        return both(dy[None], x[None], w, b)

    in_axes = (0, 0, None, None)
    for how, f in [("eager", both), ("jit", jax.jit(both)),
                   ("vmap", jax.vmap(per_example, in_axes)),
                   ("jit(vmap)", jax.jit(jax.vmap(per_example, in_axes)))]:
        rule, ref = f(dy, x, w, b)
        for what, got, want in zip(("dx", "dw", "db"), rule, ref):
            assert_close(got, want, RTOL, f"{name} {how}: {what} vs jax.vjp")


@pytest.mark.parametrize("name", FIXED)
def test_rule_matches_central_differences(name):
    """<dy, y(theta + eps v) - y(theta - eps v)> / (2 eps) = <grads, v>: exact up to rounding,
    the forward being bilinear in (x, w) plus b."""
    n, kw, x, w, b, dy = _case(name)
    fwd = jax.jit(lambda x, w, b: getattr(forward, f"conv{n}d")(x, w, b, **kw))
    grads = getattr(backward, f"conv{n}d")(dy, x, w, **kw)
    assert_directional_differences(fwd, (x, w, b), grads, dy, what=name)


@pytest.mark.parametrize("name", FIXED)
def test_float32_against_float64(name):
    """float32 in, float32 out, within 1e-5 of float64. Each output or gradient entry is a sum
    of K <= 3*2*3*2*2 = 72 products of standard normals (products at HIGHEST precision), and
    summation's worst-case rounding is about K * 2^-24 ~ 4e-6 of the largest term, which is
    itself no larger than the arrays' largest entries here; observed errors are ~1e-7."""
    n, kw, x, w, b, dy = _case(name)
    fwd, bwd = getattr(forward, f"conv{n}d"), getattr(backward, f"conv{n}d")
    want = (fwd(x, w, b, **kw), *bwd(dy, x, w, **kw))
    lo = [a.astype(np.float32) for a in (x, w, b, dy)]
    got = (fwd(*lo[:3], **kw), *bwd(lo[3], *lo[:2], **kw))
    for what, a, c in zip(("y", "dx", "dw", "db"), got, want):
        assert a.dtype == jnp.float32, what
        assert_close(a, c, 1e-5, f"{name} float32 {what}")


def test_impl_is_checked_and_every_impl_is_the_xla_form():
    """fast/ is 2-D: on 1 and 3 axes "gemm" and "auto" run the XLA convolutions (the same
    numbers, bit for bit), and a bad impl is still refused."""
    for name in ("conv1d-strided", "conv3d-strided"):
        n, kw, x, w, b, dy = _case(name)
        fwd, bwd = getattr(forward, f"conv{n}d"), getattr(backward, f"conv{n}d")
        ref = (fwd(x, w, b, **kw), *bwd(dy, x, w, **kw))
        for impl in ("gemm", "auto"):
            got = (fwd(x, w, b, **kw, impl=impl), *bwd(dy, x, w, **kw, impl=impl))
            for a, c in zip(got, ref):
                np.testing.assert_array_equal(a, c)


def test_conv2d_geometry_is_the_n_axis_geometry_on_two_axes():
    """conv2d's checks and the n-axis ones agree: the same Window for every padding form."""
    x, w = np.zeros((1, 7, 8, 2)), np.zeros((3, 2, 2, 4))
    for p in ("VALID", "SAME", 1, (1, 2), ((1, 0), (2, 1))):
        g = _geometry.conv("c", x, w, (2, 1), p, (1, 2), 1)
        assert _geometry.window("c", (7, 8), (3, 2), (2, 1), (1, 2), p) == g.win
        assert _geometry.padding_n("c", p, (7, 8), g.win.eff, (2, 1)) == g.win.pads


def test_3d_dx_spreads_dy_first_where_that_measured_faster():
    """On 3 axes with a stride and >= 4 channels of dy per group, dx spreads dy explicitly
    (`forward.conv.spread_is_faster`): the same sums as the lhs-dilated form and as jax.vjp."""
    from jaxcnn.forward import conv as conv_module
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 6, 5, 7, 2)), rng.standard_normal((3, 2, 3, 2, 4))
    kw = dict(stride=(2, 1, 3), padding=((1, 0), (0, 1), (2, 1)), dilation=(1, 2, 1))
    g = _geometry.conv("c", x, w, kw["stride"], kw["padding"], kw["dilation"], 1, spatial=3)
    params = conv_module.dx_conv_params(g)
    assert params["spread_apart"] and not fast.traps.xla_may_abort(g.win)
    dy = rng.standard_normal(g.out_shape)
    lhs = conv_module.dx_conv(dy, w, g, None, dict(params, spread_apart=False))
    rule = backward.conv3d(dy, x, w, **kw)[0]
    _, pullback = jax.vjp(lambda x: forward.conv3d(x, w, **kw), x)
    assert_close(rule, lhs, RTOL, "spread vs lhs-dilated")
    assert_close(rule, pullback(dy)[0], RTOL, "spread vs jax.vjp")


# ----------------------------------------------------------------------------- the XLA trap
def test_trap_predicate_is_keyed_to_the_measured_rank():
    """kernel 2, stride 2, dilation 1 on an axis: flagged for 2-D and 3-D convolutions, never
    for 1-D ones (none of 500 such 1-D configurations aborted; `fast.traps.xla_may_abort`)."""
    def flagged(n, k, s, d):
        g = _geometry.conv("c", np.zeros((1, *(9,) * n, 1)), np.zeros((*k, 1, 1)), s, "VALID", d,
                           1, spatial=n)
        return fast.traps.xla_may_abort(g.win)
    assert not flagged(1, (2,), 2, 1) and not flagged(1, (3,), 2, 1)
    assert flagged(3, (2, 3, 3), (2, 1, 1), 1) and flagged(3, (3, 3, 2), (1, 1, 2), (2, 2, 1))
    assert not flagged(3, (2, 2, 2), 2, 2) and not flagged(3, (2, 3, 3), (3, 1, 1), 1)
    assert flagged(2, (2, 3), (2, 1), 1) and not flagged(2, (2, 3), (1, 1), 1)


TRAP_3D = dict(x=[3, 4, 2, 9, 1], w=[2, 3, 4, 1, 1], stride=[2, 3, 1], dilation=[1, 1, 2],
               padding=[[1, 1], [2, 2], [1, 0]])  # one of the 14 of 300 that aborted
_CHILD = """
import json, sys
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
from jaxcnn import backward, forward
from test_conv_nd import conv_oracle_grads
c = json.loads(sys.argv[2])
kw = dict(stride=tuple(c["stride"]), padding=tuple(map(tuple, c["padding"])),
          dilation=tuple(c["dilation"]))
rng = np.random.default_rng(0)
x, w = rng.standard_normal(c["x"]), rng.standard_normal(c["w"])
dy = rng.standard_normal(forward.conv3d(x, w, **kw).shape)
if sys.argv[1] == "grad":
    jax.jit(jax.grad(lambda x, w: (forward.conv3d(x, w, **kw) * dy).sum(), (0, 1)))(x, w)
else:
    dx, dw, _ = jax.jit(lambda dy, x, w: backward.conv3d(dy, x, w, **kw))(dy, x, w)
    rx, rw, _ = conv_oracle_grads(dy, x, w, kw["stride"], kw["padding"], kw["dilation"], 1)
    print(json.dumps(max(float(abs(a - r).max() / abs(r).max()) for a, r in ((dx, rx), (dw, rw)))))
"""


def _child(mode):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    return run_child([sys.executable, "-c", _CHILD, mode, json.dumps(TRAP_3D)], env=env,
                     capture_output=True, text=True)


def test_3d_trap_in_a_subprocess():
    """A 3-D configuration on which jax.grad of the forward aborts the process on this jaxlib;
    the rule (dy spread apart from the convolution) survives it and matches the oracle."""
    manual = _child("manual")
    assert manual.returncode == 0, manual.stderr[-2000:]
    assert float(manual.stdout.strip().splitlines()[-1]) <= RTOL
    grad = _child("grad")
    assert grad.returncode == -signal.SIGABRT and "Check failed" in grad.stderr, (
        f"jax.grad no longer aborts on a 3-D kernel-2 stride-2 axis (rc {grad.returncode}): "
        f"re-measure fast.traps.xla_may_abort")


# ----------------------------------------------------------------------------- bad input
x1, w1 = np.zeros((2, 8, 3)), np.zeros((3, 3, 4))
x3, w3 = np.zeros((1, 5, 5, 5, 4)), np.zeros((2, 2, 2, 2, 6))
CASES = [
    ("1d-x-rank", lambda: forward.conv1d(x1[None], w1), ValueError,
     "conv1d: x must be a 3-D array (N, W, C); got shape (1, 2, 8, 3)"),
    ("1d-w-rank", lambda: forward.conv1d(x1, w1[None]), ValueError,
     "conv1d: w must be a 3-D array (kw, C_in // groups, C_out) (WIO)"),
    ("1d-channels", lambda: forward.conv1d(x1, np.zeros((3, 2, 4))), ValueError,
     "conv1d: x has 3 channels but w expects 2 (w.shape[1] * groups = 2 * 1)"),
    ("1d-stride-pair", lambda: forward.conv1d(x1, w1, stride=(1, 2)), TypeError,
     "conv1d: stride must be an int or a tuple of 1 int (w,)"),
    ("1d-padding-pair", lambda: forward.conv1d(x1, w1, padding=(1, 2)), TypeError,
     "conv1d: padding must be \"VALID\", \"SAME\", an int p, (p,) or ((lo, hi),)"),
    ("1d-dilation-zero", lambda: forward.conv1d(x1, w1, dilation=(0,)), ValueError,
     "conv1d: dilation must be >= 1 on every axis; got (0,)"),
    ("1d-too-big", lambda: forward.conv1d(x1, np.zeros((9, 3, 4))), ValueError,
     "conv1d: the kernel spans (9,) but the padded input is only (8,)"),
    ("1d-impl", lambda: forward.conv1d(x1, w1, impl="fast"), ValueError,
     "conv1d: impl must be one of conv, gemm, auto; got 'fast'"),
    ("1d-dy-shape", lambda: backward.conv1d(np.zeros((2, 5, 4)), x1, w1), ValueError,
     "backward.conv1d: dy has shape (2, 5, 4) but the forward output has shape (2, 6, 4)"),
    ("3d-x-rank", lambda: forward.conv3d(x3[0], w3), ValueError,
     "conv3d: x must be a 5-D array (N, D, H, W, C)"),
    ("3d-channels", lambda: forward.conv3d(x3, np.zeros((2, 2, 2, 3, 6))), ValueError,
     "conv3d: x has 4 channels but w expects 3 (w.shape[3] * groups = 3 * 1)"),
    ("3d-groups-cout", lambda: forward.conv3d(x3, np.zeros((2, 2, 2, 2, 3)), groups=2),
     ValueError, "conv3d: groups=2 must divide the 3 output channels of w (w.shape[4])"),
    ("3d-groups-cin", lambda: forward.conv3d(x3, np.zeros((2, 2, 2, 1, 6)), groups=3),
     ValueError, "conv3d: groups=3 must divide the 4 input channels of x"),
    ("3d-stride-pair", lambda: forward.conv3d(x3, w3, stride=(1, 2), groups=2), TypeError,
     "conv3d: stride must be an int or a tuple of 3 ints (d, h, w)"),
    ("3d-padding-negative", lambda: forward.conv3d(x3, w3, padding=(1, -1, 0), groups=2),
     ValueError, "conv3d: padding must be >= 0"),
    ("3d-bias", lambda: forward.conv3d(x3, w3, np.zeros(4), groups=2), ValueError,
     "conv3d: b has shape (4,) but one bias per output channel of w has shape (6,)"),
    ("3d-impl", lambda: backward.conv3d(np.zeros((1, 4, 4, 4, 6)), x3, w3, groups=2,
                                        impl="im2col"), ValueError,
     "backward.conv3d: impl must be one of conv, gemm, auto; got 'im2col'"),
]


@pytest.mark.parametrize("fn, exc, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(fn, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        fn()


def test_errors_come_from_python_under_jit_too():
    with pytest.raises(ValueError, match=re.escape("x has 3 channels but w expects 2")):
        jax.jit(forward.conv1d)(jnp.asarray(x1), jnp.zeros((3, 2, 4)))
