"""Property tests: conv2d and pooling backward over hundreds of random configurations (float64).

Every configuration checks both formulations of the convolution gradients, impl="conv" (the
lax.conv_general_dilated rules) and impl="gemm" (one GEMM per kernel offset); impl="auto" picks
one of the two per gradient.

References: the NumPy oracle in tests/reference.py for every configuration, and `jax.vjp` of the
forward for every configuration except those where XLA:CPU (jaxlib 0.10.x) aborts the process when
it compiles the gradient (`fast.traps.xla_may_abort`: an axis with kernel 2, stride 2, dilation 1;
tests/test_xla_traps.py runs those against finite differences in a subprocess). Avoiding them here
keeps one bad compile from killing the whole test run; the oracle still checks them.
"""

import itertools

import jax
import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from jaxcnn import _geometry, backward, fast, forward

from helpers import assert_close
from reference import conv2d, conv2d_grads, max_pool_grad, pool_windows, scatter_windows

RTOL = 1e-9


def _padding(draw, eff):
    """One of the contract's padding forms; explicit pads are small compared to the kernel."""
    kind = draw(st.sampled_from(["VALID", "SAME", "int", "pair", "explicit"]))
    if kind in ("VALID", "SAME"):
        return kind
    small = st.integers(0, 2)
    if kind == "int":
        return draw(small)
    if kind == "pair":
        return (draw(small), draw(small))
    return ((draw(small), draw(small)), (draw(small), draw(small)))


@st.composite
def conv_configs(draw):
    kind = draw(st.sampled_from(["groups1", "groups1", "groups2", "depthwise"]))
    if kind == "groups1":
        groups, c_in, c_out = 1, draw(st.integers(1, 6)), draw(st.integers(1, 6))
    elif kind == "groups2":
        groups, c_in, c_out = 2, 2 * draw(st.integers(1, 3)), 2 * draw(st.integers(1, 3))
    else:
        c_in = draw(st.integers(1, 3))
        groups, c_out = c_in, c_in * draw(st.integers(1, 2))
    k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    eff = [(kk - 1) * d + 1 for kk, d in zip(k, dilation)]
    padding = _padding(draw, eff)
    # the smallest input the kernel fits (with the widest explicit padding), up to 7 rows more
    hw = [draw(st.integers(max(1, e - 4), e + 7)) for e in eff]
    n = draw(st.integers(1, 3))
    try:
        _geometry.conv("c", np.empty((n, *hw, c_in)), np.empty((*k, c_in // groups, c_out)),
                     stride, padding, dilation, groups)
    except ValueError:
        hw = [e + draw(st.integers(0, 3)) for e in eff]  # too small for this padding: grow it
        if padding != "SAME":
            padding = "VALID"
    return dict(x=(n, *hw, c_in), w=(*k, c_in // groups, c_out),
                kw=dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


def _unread(win: _geometry.Window, axis: int) -> np.ndarray:
    """Input rows (along `axis`) that no output position reads."""
    (lo, _), h = win.pads[axis], win.in_hw[axis]
    read = np.zeros(h, bool)
    for o, m in itertools.product(range(win.out_hw[axis]), range(win.size[axis])):
        r = o * win.stride[axis] + m * win.dilation[axis] - lo
        if 0 <= r < h:
            read[r] = True
    return ~read


@settings(max_examples=320)
@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_conv2d_backward_sweep(cfg, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(cfg["x"]), rng.standard_normal(cfg["w"])
    kw = cfg["kw"]
    g = _geometry.conv("conv2d", x, w, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    dy = rng.standard_normal(g.out_shape)
    # both formulations in one compiled program: the default convolutions and the GEMMs
    by_impl, y_gemm = jax.jit(lambda dy, x, w: (
        {impl: backward.conv2d(dy, x, w, **kw, impl=impl) for impl in ("conv", "gemm")},
        forward.conv2d(x, w, **kw, impl="gemm")))(dy, x, w)
    assert_close(y_gemm, conv2d(x, w, g.win.stride, g.win.pads, g.win.dilation, g.groups), RTOL,
                 "forward gemm vs NumPy oracle")
    ref = conv2d_grads(dy, x, w, g.win.stride, g.win.pads, g.win.dilation, g.groups)
    for impl, grads in by_impl.items():
        for name, got, want in zip(("dx", "dw", "db"), grads, ref):
            assert_close(got, want, RTOL, f"{impl} {name} vs NumPy oracle")

    if fast.traps.xla_may_abort(g.win):
        event("XLA trap configuration: jax.vjp skipped, oracle only")
    else:
        _, pullback = jax.vjp(lambda x, w: forward.conv2d(x, w, **kw), x, w)
        auto = jax.jit(pullback)(dy)
        for impl, grads in by_impl.items():
            for name, got, want in zip(("dx", "dw"), grads, auto):
                assert_close(got, want, RTOL, f"{impl} {name} vs jax.vjp")

    for axis in (0, 1):
        unread = _unread(g.win, axis)
        if unread.any():
            event("input rows the stride skips")
            for impl, (dx, _, _) in by_impl.items():
                skipped = np.take(np.asarray(dx), np.flatnonzero(unread), axis=axis + 1)
                assert not skipped.any(), f"{impl}: rows never read must get exactly zero"


@st.composite
def pool_configs(draw):
    window = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    kind = draw(st.sampled_from(["VALID", "SAME", "explicit"]))
    padding = kind if kind != "explicit" else tuple(
        (draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))) for k in window)
    if draw(st.integers(0, 5)) == 0:  # >= 8192 elements: XLA:CPU switches kernels by size
        shape = (draw(st.integers(1, 2)), 64, 128, 1)
    else:
        shape = (draw(st.integers(1, 3)), draw(st.integers(3, 9)), draw(st.integers(3, 9)),
                 draw(st.integers(1, 3)))
    return shape, dict(window=window, stride=stride, padding=padding)


def _pool_oracle(op, dy, x, win):
    if op == "max_pool":
        return max_pool_grad(dy, x, win.size, win.stride, win.pads)
    k = win.size[0] * win.size[1]
    if op == "avg_pool":
        return scatter_windows(np.broadcast_to(dy / k, (k, *dy.shape)), x.shape, win.size,
                               win.stride, win.pads)
    y = np.sqrt((pool_windows(x, win.size, win.stride, win.pads, 0.0) ** 2).sum(0))
    share = np.where(y > 0, dy / np.where(y > 0, y, 1), 0)
    return x * scatter_windows(np.broadcast_to(share, (k, *dy.shape)), x.shape, win.size,
                               win.stride, win.pads)


@settings(max_examples=150)
@given(cfg=pool_configs(), op=st.sampled_from(["max_pool", "avg_pool", "l2_pool"]),
       seed=st.integers(0, 2**16))
def test_pool_backward_sweep(cfg, op, seed):
    shape, kw = cfg
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    win = _geometry.pool(op, x, kw["window"], kw["stride"], kw["padding"])
    dy = rng.standard_normal((shape[0], *win.out_hw, shape[3]))
    dx = jax.jit(lambda dy, x: getattr(backward, op)(dy, x, **kw))(dy, x)
    _, pullback = jax.vjp(lambda x: getattr(forward, op)(x, **kw), x)
    assert_close(dx, jax.jit(pullback)(dy)[0], RTOL, f"{op} vs jax.vjp")
    assert_close(dx, _pool_oracle(op, dy, x, win), RTOL, f"{op} vs NumPy oracle")
    if x.size >= 8192:
        event("large input")
