"""conv_transpose1d / 2d / 3d: torch's transposed convolutions, channels-last, and their rules.

Held to a NumPy oracle written from the definition (the scatter-add `y[i*s + m*d - p] += x[i] *
w[m]`, cropped to torch's output size), to `jax.vjp` of the forward (float64) except where
`fast.traps.xla_may_abort` says XLA may abort the process (then the oracle only), to central
differences, under jit / vmap, in float32, and to the contract's identity: conv_transpose2d(dy,
w, padding=p) is backward.conv2d's dx.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_conv_nd import _blocks, _offsets

from jaxcnn import _geometry, backward, fast, forward

from helpers import assert_close, assert_directional_differences, forward_rule_vjp

RTOL = 1e-9


# ----------------------------------------------------------------------------- NumPy oracle
def _full(x_sp, k, stride, output_padding, dilation):
    """The uncropped scatter target per axis: (H - 1) * s + (k - 1) * d + 1 + output_padding."""
    return [(h - 1) * s + (kk - 1) * d + 1 + op
            for h, kk, s, d, op in zip(x_sp, k, stride, dilation, output_padding)]


def _crop(x_sp, k, stride, padding, output_padding, dilation):
    """torch's output: O = (H - 1) * s - 2 * p + d * (k - 1) + output_padding + 1, from p on."""
    out = [f - 2 * p for f, p in zip(_full(x_sp, k, stride, output_padding, dilation), padding)]
    return (slice(None), *(slice(p, p + o) for p, o in zip(padding, out)))


def _scatter_tap(offs, stride, dilation, x_sp):
    """The uncropped output rows i*s + m*d that input rows i reach at kernel offset offs."""
    return (slice(None), *(slice(m * d, m * d + (h - 1) * s + 1, s)
                           for m, s, d, h in zip(offs, stride, dilation, x_sp)))


def conv_transpose_oracle(x, w, stride, padding, output_padding, dilation, groups):
    """y[n, i*s + m*d - p, o] += x[n, i, c] * w[m, o, c] (per group), cropped as torch does."""
    n = x.ndim - 2
    k, (c_out_g, c_in), x_sp = w.shape[:n], w.shape[n:], x.shape[1:-1]
    y = np.zeros((x.shape[0], *_full(x_sp, k, stride, output_padding, dilation),
                  c_out_g * groups))
    for offs in _offsets(k):
        tap = _scatter_tap(offs, stride, dilation, x_sp)
        for ci, co in _blocks(groups, c_in // groups, c_out_g):
            y[(*tap, co)] += x[..., ci] @ w[offs][:, ci].T
    return y[_crop(x_sp, k, stride, padding, output_padding, dilation)]


def conv_transpose_oracle_grads(dy, x, w, stride, padding, output_padding, dilation, groups):
    """(dx, dw, db) of `conv_transpose_oracle`: the adjoint of the same scatter (a gather)."""
    n = x.ndim - 2
    k, (c_out_g, c_in), x_sp = w.shape[:n], w.shape[n:], x.shape[1:-1]
    dy_full = np.zeros((x.shape[0], *_full(x_sp, k, stride, output_padding, dilation),
                        dy.shape[-1]))
    dy_full[_crop(x_sp, k, stride, padding, output_padding, dilation)] = dy
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for offs in _offsets(k):
        patch = dy_full[_scatter_tap(offs, stride, dilation, x_sp)]
        for ci, co in _blocks(groups, c_in // groups, c_out_g):
            dx[..., ci] += patch[..., co] @ w[offs][:, ci]
            dw[offs][:, ci] += patch[..., co].reshape(-1, c_out_g).T @ x[..., ci].reshape(
                -1, c_in // groups)
    return dx, dw, dy.sum(tuple(range(n + 1)))


def unreached(x_sp, out, k, stride, padding, dilation, axis):
    """Input rows (along `axis`) none of whose outputs i*s + m*d - p survive the crop: their dx
    must be exactly zero."""
    s, d, p = stride[axis], dilation[axis], padding[axis]
    return np.array([all(not 0 <= i * s + m * d - p < out[axis] for m in range(k[axis]))
                     for i in range(x_sp[axis])])


def test_oracle_is_the_dx_of_the_2d_conv_oracle():
    """The scatter-add oracle against tests/reference.py's conv2d dx, padding p, stride 2."""
    from reference import conv2d_grads
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 8, 7, 4)), rng.standard_normal((3, 2, 2, 6))
    dy = rng.standard_normal((2, 4, 4, 6))  # the conv2d output for x, pads 1 / 1, stride 2
    want = conv2d_grads(dy, x, w, (2, 2), ((1, 1), (1, 1)), (1, 2), 2)[0]
    got = conv_transpose_oracle(dy, w, (2, 2), (1, 1), (1, 0), (1, 2), 2)
    np.testing.assert_allclose(got, want, rtol=1e-13)


# ----------------------------------------------------------------------------- the sweep
def _option(draw, values):
    """An option as an int (when every axis agrees, sometimes) or a tuple of one per axis."""
    if len(set(values)) == 1 and draw(st.booleans()):
        return values[0]
    return tuple(values)


@st.composite
def transpose_configs(draw):
    n = draw(st.sampled_from([1, 2, 2, 3]))
    kind = draw(st.sampled_from(["groups1", "groups1", "groups2", "depthwise"]))
    if kind == "groups1":
        groups, c_in, c_out = 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    elif kind == "groups2":
        groups, c_in, c_out = 2, 2 * draw(st.integers(1, 2)), 2 * draw(st.integers(1, 2))
    else:
        c_in = draw(st.integers(1, 3))
        groups, c_out = c_in, c_in * draw(st.integers(1, 2))
    k_max, s_max, d_max, h_max = {1: (4, 3, 3, 6), 2: (3, 3, 3, 4), 3: (3, 2, 2, 3)}[n]
    k = [draw(st.integers(1, k_max)) for _ in range(n)]
    s = [draw(st.integers(1, s_max)) for _ in range(n)]
    d = [draw(st.integers(1, d_max)) for _ in range(n)]
    if n == 2 and draw(st.integers(0, 5)) == 0:  # an axis on which XLA may abort (3-D: often)
        k[0], s[0], d[0] = 2, 2, 1
    op = [draw(st.integers(0, max(si, di) - 1)) for si, di in zip(s, d)]
    sizes = [draw(st.integers(1, h_max)) for _ in range(n)]
    uncropped = _full(sizes, k, s, op, d)
    p = [min(draw(st.integers(0, 2)), (f - 1) // 2) for f in uncropped]  # every O >= 1
    return dict(n=n, x=(draw(st.integers(1, 2)), *sizes, c_in), w=(*k, c_out // groups, c_in),
                kw=dict(stride=_option(draw, s), padding=_option(draw, p),
                        output_padding=_option(draw, op), dilation=_option(draw, d),
                        groups=groups),
                resolved=(tuple(s), tuple(p), tuple(op), tuple(d), groups))


def _checked(n, kw, with_vjp):
    """One compiled program per configuration: forward, the rule, and jax.vjp of the forward."""
    op = f"conv_transpose{n}d"
    return forward_rule_vjp(getattr(forward, op), getattr(backward, op), kw, with_vjp)


@settings(max_examples=160)
@given(cfg=transpose_configs(), seed=st.integers(0, 2**16))
def test_conv_transpose_sweep(cfg, seed):
    n, kw, resolved = cfg["n"], cfg["kw"], cfg["resolved"]
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(cfg["x"]), rng.standard_normal(cfg["w"])
    b = rng.standard_normal(cfg["w"][-2] * kw["groups"])
    t = _geometry.conv_transpose("t", x, w, kw["stride"], kw["padding"], kw["output_padding"],
                                 kw["dilation"], kw["groups"], spatial=n)
    dy = rng.standard_normal(t.out_shape)
    trap = fast.traps.xla_may_abort(t.conv.win)
    event(f"conv_transpose{n}d" + (": XLA trap configuration, oracle only" if trap else ""))
    if any(resolved[2]):
        event("output_padding > 0")
    out = _checked(n, kw, not trap)(dy, x, w, b)
    assert out["y"].shape == t.out_shape
    assert_close(out["y"], conv_transpose_oracle(x, w, *resolved) + b, RTOL, "forward vs oracle")
    for name, got, want in zip(("dx", "dw", "db"), out["rule"],
                               conv_transpose_oracle_grads(dy, x, w, *resolved)):
        assert_close(got, want, RTOL, f"{name} vs NumPy oracle")
    if not trap:
        for name, got, want in zip(("dx", "dw", "db"), out["rule"], out["vjp"]):
            assert_close(got, want, RTOL, f"{name} vs jax.vjp")
    stride, padding, _, dilation, _ = resolved
    for axis in range(n):
        rows = np.flatnonzero(unreached(x.shape[1:-1], t.out_shape[1:-1], w.shape[:n], stride,
                                        padding, dilation, axis))
        if rows.size:
            event("input rows whose outputs the padding crops")
            assert not np.take(np.asarray(out["rule"][0]), rows, axis=axis + 1).any()


# ----------------------------------------------------------------------------- the identity
IDENTITY = [  # conv2d options (stride, padding p, dilation, groups), kernel
    ((2, 2), (1, 1), (1, 1), 1, (3, 3)),
    ((3, 2), (0, 2), (1, 2), 2, (2, 3)),
    ((2, 3), (2, 0), (2, 1), 4, (3, 2)),
    ((2, 2), (0, 1), (1, 1), 1, (2, 2)),  # the XLA trap configuration: kernel 2, stride 2
]


@pytest.mark.parametrize("stride, padding, dilation, groups, k", IDENTITY)
def test_conv_transpose2d_is_the_dx_of_conv2d(stride, padding, dilation, groups, k):
    """For every input size H the stride maps to one O, output_padding = (H + 2p - k_eff) mod s
    recovers H, and then conv_transpose2d(dy, w, padding=p) is backward.conv2d's dx. With x and
    dy exchanged, the transposed rule gives conv2d's forward (its dx) and conv2d's dw (its dw)."""
    rng = np.random.default_rng(0)
    eff = [(kk - 1) * d + 1 for kk, d in zip(k, dilation)]
    o = (3, 3)
    w = rng.standard_normal((*k, 4 // groups, 4))
    conv_kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    for h in zip(*[range((oo - 1) * s + e - 2 * p, oo * s + e - 2 * p)
                   for oo, s, e, p in zip(o, stride, eff, padding)]):
        x = rng.standard_normal((2, *h, 4))
        dy = rng.standard_normal((2, *o, 4))
        op = tuple((hh + 2 * p - e) % s for hh, p, e, s in zip(h, padding, eff, stride))
        t_kw = dict(conv_kw, output_padding=op)
        dx, dw, _ = backward.conv2d(dy, x, w, **conv_kw)
        assert_close(forward.conv_transpose2d(dy, w, **t_kw), dx, RTOL, f"H={h}: y vs conv dx")
        t_dx, t_dw, _ = backward.conv_transpose2d(x, dy, w, **t_kw)
        assert_close(t_dx, forward.conv2d(x, w, **conv_kw), RTOL, f"H={h}: dx vs conv forward")
        assert_close(t_dw, dw, RTOL, f"H={h}: dw vs conv dw")


@pytest.mark.parametrize("n", [1, 3])
def test_conv_transpose_is_the_dx_of_conv_on_1_and_3_axes(n):
    rng = np.random.default_rng(n)
    k, kw = (3, 2, 2)[:n], dict(stride=(2, 3, 2)[:n], padding=(1, 0, 1)[:n],
                                dilation=(1, 1, 2)[:n], groups=2)
    x = rng.standard_normal((1, *(7, 6, 5)[:n], 4))
    w = rng.standard_normal((*k, 2, 6))
    y = getattr(forward, f"conv{n}d")(x, w, **kw)
    dy = rng.standard_normal(y.shape)
    g = _geometry.conv("c", x, w, kw["stride"], kw["padding"], kw["dilation"], 2, spatial=n)
    op = tuple(h + 2 * p - e - (o - 1) * s for h, p, e, o, s in zip(
        g.win.in_hw, kw["padding"], g.win.eff, g.win.out_hw, kw["stride"]))
    dx = getattr(backward, f"conv{n}d")(dy, x, w, **kw)[0]
    got = getattr(forward, f"conv_transpose{n}d")(dy, w, **kw, output_padding=op)
    assert_close(got, dx, RTOL, f"conv_transpose{n}d vs conv{n}d's dx")


# ----------------------------------------------------------------------------- fixed configurations
FIXED = {
    "1d": (1, (2, 5, 4), (3, 3, 4), dict(stride=2, padding=1, output_padding=1, groups=2)),
    "2d": (2, (2, 3, 4, 2), (3, 2, 3, 2), dict(stride=(2, 3), padding=(1, 0),
                                               output_padding=(1, 2), dilation=(1, 2))),
    "2d-trap": (2, (1, 3, 3, 3), (2, 3, 2, 3), dict(stride=2, padding=(0, 1), groups=1)),
    "3d": (3, (1, 3, 2, 3, 2), (2, 3, 2, 2, 2), dict(stride=(2, 1, 2), padding=(0, 1, 1),
                                                     output_padding=(1, 0, 0))),
    "3d-depthwise": (3, (2, 2, 3, 2, 3), (3, 2, 2, 2, 3),
                     dict(stride=(1, 2, 2), padding=1, dilation=(2, 1, 1), groups=3)),
}


def _case(name, dtype=np.float64):
    n, xs, ws, kw = FIXED[name]
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[-2] * kw.get("groups", 1)).astype(dtype)
    y = getattr(forward, f"conv_transpose{n}d")(x, w, b, **kw)
    return n, kw, x, w, b, rng.standard_normal(y.shape).astype(dtype)


@pytest.mark.parametrize("name", FIXED)
def test_rule_equals_vjp_eager_jit_vmap(name):
    """The rule equals jax.vjp of the forward eagerly, under jit, vmap and jit(vmap) (the trap
    configuration too: the forward spreads x apart from its convolution, and the vjp of that
    form is plain convolutions)."""
    n, kw, x, w, b, dy = _case(name)
    fwd, bwd = getattr(forward, f"conv_transpose{n}d"), getattr(backward, f"conv_transpose{n}d")

    def both(dy, x, w, b):
        return bwd(dy, x, w, **kw), jax.vjp(lambda x, w, b: fwd(x, w, b, **kw), x, w, b)[1](dy)

    def per_example(dy, x, w, b):
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
    n, kw, x, w, b, dy = _case(name)
    fwd = jax.jit(lambda x, w, b: getattr(forward, f"conv_transpose{n}d")(x, w, b, **kw))
    grads = getattr(backward, f"conv_transpose{n}d")(dy, x, w, **kw)
    assert_directional_differences(fwd, (x, w, b), grads, dy, what=name)


@pytest.mark.parametrize("name", FIXED)
def test_float32_against_float64(name):
    """float32 in, float32 out, within 1e-5 of float64: each entry sums at most
    3*2*2*2 (kernel) * 3 (channels) = 72 products (HIGHEST precision), worst-case rounding
    ~72 * 2^-24 ~ 4e-6 of the largest term, no larger than the arrays' largest entries."""
    n, kw, x, w, b, dy = _case(name)
    fwd, bwd = getattr(forward, f"conv_transpose{n}d"), getattr(backward, f"conv_transpose{n}d")
    want = (fwd(x, w, b, **kw), *bwd(dy, x, w, **kw))
    lo = [a.astype(np.float32) for a in (x, w, b, dy)]
    got = (fwd(*lo[:3], **kw), *bwd(lo[3], *lo[:2], **kw))
    for what, a, c in zip(("y", "dx", "dw", "db"), got, want):
        assert a.dtype == jnp.float32, what
        assert_close(a, c, 1e-5, f"{name} float32 {what}")


# ----------------------------------------------------------------------------- bad input
x1, w1 = np.zeros((2, 5, 4)), np.zeros((3, 2, 4))
x2, w2 = np.zeros((2, 4, 4, 3)), np.zeros((3, 3, 2, 3))
CT1, CT2, CT3 = forward.conv_transpose1d, forward.conv_transpose2d, forward.conv_transpose3d
CASES = [
    ("x-rank", lambda: CT1(x2, w1), ValueError,
     "conv_transpose1d: x must be a 3-D array (N, W, C); got shape (2, 4, 4, 3)"),
    ("w-rank", lambda: CT3(np.zeros((1, 2, 2, 2, 4)), w2), ValueError,
     "conv_transpose3d: w must be a 5-D array (kd, kh, kw, C_out // groups, C_in) (DHWIO)"),
    ("channels", lambda: CT2(x2, np.zeros((3, 3, 2, 4))), ValueError,
     "conv_transpose2d: x has 3 channels but w expects 4 (w.shape[3], the channels of the "
     "convolution's output)"),
    ("groups-divide", lambda: CT2(x2, w2, groups=2), ValueError,
     "conv_transpose2d: groups=2 must divide the 3 input channels of x (w.shape[3])"),
    ("groups-zero", lambda: CT1(x1, w1, groups=0), ValueError, "groups must be >= 1; got 0"),
    ("output-padding-stride", lambda: CT2(x2, w2, stride=2, output_padding=2), ValueError,
     "conv_transpose2d: output_padding must be smaller than the stride or the dilation on every "
     "axis; got output_padding (2, 2), stride (2, 2), dilation (1, 1)"),
    ("output-padding-stride-1", lambda: CT1(x1, w1, output_padding=1), ValueError,
     "output_padding must be smaller than the stride or the dilation"),
    ("output-padding-negative", lambda: CT1(x1, w1, stride=2, output_padding=-1), ValueError,
     "conv_transpose1d: output_padding must be >= 0 on every axis; got (-1,)"),
    ("1d-stride-pair", lambda: CT1(x1, w1, stride=(2, 2)), TypeError,
     "conv_transpose1d: stride must be an int or a tuple of 1 int (w,), one per spatial axis"),
    ("1d-output-padding-pair", lambda: CT1(x1, w1, stride=2, output_padding=(0, 1)), TypeError,
     "conv_transpose1d: output_padding must be an int or a tuple of 1 int (w,)"),
    ("1d-padding-pair", lambda: CT1(x1, w1, padding=(1, 1)), TypeError,
     "conv_transpose1d: padding must be an int or a tuple of 1 int (w,)"),
    ("padding-string", lambda: CT2(x2, w2, padding="SAME"), TypeError,
     "conv_transpose2d: padding must be an int or a tuple of 2 ints, symmetric per axis"),
    ("padding-negative", lambda: CT2(x2, w2, padding=(1, -1)), ValueError,
     "conv_transpose2d: padding must be >= 0 on both axes; got (1, -1)"),
    ("output-empty", lambda: CT1(np.zeros((1, 1, 4)), w1, padding=2), ValueError,
     "conv_transpose1d: the output would have spatial size (-1,) (input (1,), padding (2,))"),
    ("3d-dilation-pair", lambda: CT3(np.zeros((1, 2, 2, 2, 3)), np.zeros((1, 1, 1, 2, 3)),
                                     dilation=(1, 2)), TypeError,
     "conv_transpose3d: dilation must be an int or a tuple of 3 ints (d, h, w)"),
    ("bias", lambda: CT2(x2, w2, np.zeros(3)), ValueError,
     "conv_transpose2d: b has shape (3,) but one bias per output channel of w has shape (2,)"),
    ("dtype-mix", lambda: CT2(x2.astype(np.float32), w2), TypeError, "x is float32, w is float64"),
    ("dy-shape", lambda: backward.conv_transpose2d(np.zeros((2, 5, 5, 2)), x2, w2), ValueError,
     "backward.conv_transpose2d: dy has shape (2, 5, 5, 2) but the forward output has shape "
     "(2, 6, 6, 2)"),
]


@pytest.mark.parametrize("fn, exc, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(fn, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        fn()


def test_output_padding_up_to_the_dilation_is_allowed():
    """torch's rule: output_padding < max(stride, dilation), so stride 1 with dilation 2 takes 1."""
    rng = np.random.default_rng(0)
    y = CT1(rng.standard_normal(x1.shape), rng.standard_normal(w1.shape), dilation=2,
            output_padding=1)
    assert y.shape == (2, (5 - 1) + 2 * (3 - 1) + 1 + 1, 2)
    assert not np.asarray(y[:, -1]).any()  # the added row: reached by no x element, no bias


def test_errors_come_from_python_under_jit_too():
    with pytest.raises(ValueError, match=re.escape("output_padding must be smaller")):
        jax.jit(lambda x, w: CT2(x, w, stride=2, output_padding=3))(jnp.asarray(x2),
                                                                    jnp.asarray(w2))
