"""Forward ops against independent NumPy formulas, and the shape arithmetic of the seeds."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn import _geometry, forward

from helpers import assert_close
from reference import conv2d as conv_oracle
from reference import pool_windows

rng = np.random.default_rng(0)


def test_seed_shapes():
    """6x6 -> conv 3x3 -> 4x4 -> max pool 2x2/2 -> 2x2 -> flatten -> 4 (seed 000)."""
    x = rng.standard_normal((1, 6, 6, 1))
    z1 = forward.conv2d(x, rng.standard_normal((3, 3, 1, 1)), np.zeros(1))
    p1 = forward.max_pool(forward.relu(z1))
    assert z1.shape == (1, 4, 4, 1) and p1.shape == (1, 2, 2, 1)
    assert forward.flatten(p1).shape == (1, 4)


@pytest.mark.parametrize("kw", [
    dict(stride=1, padding="VALID", dilation=1, groups=1),
    dict(stride=(2, 3), padding="SAME", dilation=(1, 2), groups=1),
    dict(stride=2, padding=((2, 0), (1, 3)), dilation=2, groups=2),
    dict(stride=1, padding=(1, 2), dilation=1, groups=4),
])
def test_conv2d_matches_oracle(kw):
    x, w = rng.standard_normal((2, 9, 10, 4)), rng.standard_normal((3, 2, 4 // kw["groups"], 4))
    g = _geometry.conv("conv2d", x, w, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    y = forward.conv2d(x, w, **kw)
    assert_close(y, conv_oracle(x, w, g.win.stride, g.win.pads, g.win.dilation, g.groups), 1e-12)


def test_padding_forms():
    x = np.zeros((1, 7, 8, 1))
    pads = lambda p, k=(3, 3), s=(1, 1): _geometry.window("t", (7, 8), k, s, (1, 1), p).pads
    assert pads("VALID") == ((0, 0), (0, 0))
    assert pads("same") == ((1, 1), (1, 1))
    assert pads("SAME", (4, 4), (2, 2)) == ((1, 2), (1, 1))  # as XLA: the extra row goes below
    assert pads(2) == ((2, 2), (2, 2))
    assert pads((1, 2)) == ((1, 1), (2, 2))  # (a, b): a on H, b on W, as torch reads it
    assert pads(((1, 0), (0, 2))) == ((1, 0), (0, 2))
    y = forward.conv2d(x, np.zeros((3, 3, 1, 1)), stride=2, padding="SAME")
    assert y.shape == (1, 4, 4, 1)  # ceil(7 / 2), ceil(8 / 2)


def test_convolve2d_is_true_convolution():
    """Convolving a unit impulse reproduces the kernel; cross-correlating it gives it rotated."""
    impulse = np.zeros((1, 5, 5, 1))
    impulse[0, 2, 2, 0] = 1.0
    w = rng.standard_normal((3, 3, 1, 1))
    conv = forward.convolve2d(impulse, w, padding=1)[0, 1:4, 1:4, 0]
    corr = forward.conv2d(impulse, w, padding=1)[0, 1:4, 1:4, 0]
    np.testing.assert_allclose(conv, w[:, :, 0, 0], atol=1e-15)
    np.testing.assert_allclose(corr, w[::-1, ::-1, 0, 0], atol=1e-15)


def test_dense_and_flatten():
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal(2)
    assert_close(forward.dense(x, w, b), x @ w + b, 1e-14)
    x4 = rng.standard_normal((2, 3, 4, 5))
    np.testing.assert_array_equal(forward.flatten(x4), x4.reshape(2, 60))


@pytest.mark.parametrize("kw", [dict(window=2), dict(window=3, stride=2, padding="SAME"),
                                dict(window=(2, 3), stride=1, padding=((1, 0), (2, 1)))])
def test_pools_match_oracle(kw):
    x = rng.standard_normal((2, 7, 8, 3))
    win = _geometry.pool("p", x, kw["window"], kw.get("stride"), kw.get("padding", "VALID"))
    windows = lambda fill: pool_windows(x, win.size, win.stride, win.pads, fill)
    area = win.size[0] * win.size[1]
    assert_close(forward.max_pool(x, **kw), windows(-np.inf).max(0), 1e-15)
    assert_close(forward.avg_pool(x, **kw), windows(0.0).sum(0) / area, 1e-14)
    real = pool_windows(np.ones_like(x), win.size, win.stride, win.pads, 0.0).sum(0)
    assert_close(forward.avg_pool(x, **kw, count_include_pad=False),
                 windows(0.0).sum(0) / real, 1e-14)
    assert_close(forward.l2_pool(x, **kw), np.sqrt((windows(0.0) ** 2).sum(0)), 1e-14)


def test_l2_pool_all_zero_window():
    """y = 0 where a window is all zeros, and jax.grad there is 0, not NaN."""
    x = np.zeros((1, 4, 4, 1))
    x[0, 0, 0, 0] = 3.0
    assert forward.l2_pool(x)[0, 1, 1, 0] == 0.0
    g = jax.grad(lambda x: forward.l2_pool(x).sum())(x)
    assert np.isfinite(g).all() and g[0, 0, 0, 0] == 1.0


def test_activations():
    x = np.linspace(-3, 3, 13).reshape(1, 13)
    np.testing.assert_allclose(forward.relu(x), np.maximum(x, 0))
    np.testing.assert_allclose(forward.leaky_relu(x, 0.1), np.where(x >= 0, x, 0.1 * x))
    np.testing.assert_allclose(forward.sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-15)
    np.testing.assert_allclose(forward.tanh(x), np.tanh(x), rtol=1e-15)
    s = forward.softmax(np.stack([x[0], 2 * x[0]]))
    np.testing.assert_allclose(s.sum(-1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(s[0], np.exp(x[0]) / np.exp(x[0]).sum(), rtol=1e-14)


def test_losses():
    p, y = np.array([0.9, 0.2, 0.6]), np.array([1.0, 0.0, 0.0])
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert_close(forward.binary_cross_entropy(p, y), bce, 1e-15)
    z = np.log(p / (1 - p))
    assert_close(forward.sigmoid_binary_cross_entropy(z[:, None], y), bce, 1e-14)
    # stable where the probability form overflows: log(1 + e^-100) ~ e^-100, not inf
    assert np.isfinite(forward.sigmoid_binary_cross_entropy(np.array([100.0, -100.0]),
                                                            np.array([0.0, 1.0])))
    logits = rng.standard_normal((4, 3))
    labels = np.array([2, 0, 1, 1])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -np.mean(logp[np.arange(4), labels])
    assert_close(forward.softmax_cross_entropy(logits, labels), ce, 1e-14)
    assert_close(forward.softmax_cross_entropy(logits, np.eye(3)[labels]), ce, 1e-14)
    t = rng.standard_normal((4, 3))
    assert_close(forward.mse(logits, t), 0.5 * ((t - logits) ** 2).sum(), 1e-14)


def test_dtype_is_preserved():
    for dtype in (jnp.float32, jnp.float64, jnp.bfloat16):
        x, w = jnp.ones((1, 5, 5, 2), dtype), jnp.ones((3, 3, 2, 2), dtype)
        assert forward.conv2d(x, w).dtype == dtype
        assert forward.max_pool(x).dtype == dtype and forward.avg_pool(x).dtype == dtype
        assert forward.l2_pool(x).dtype == dtype and forward.sigmoid(x).dtype == dtype


# ----------------------------------------------------------------------------- precision
def _precisions(fn, *args) -> set[str]:
    """The precision attributes of every product in `fn`'s jaxpr."""
    import re
    return set(re.findall(r"precision=\(?(Precision\.\w+|None)", str(jax.make_jaxpr(fn)(*args))))


def test_products_run_at_highest_unless_told_otherwise():
    from jaxcnn import backward
    x, w = jnp.ones((2, 5, 5, 2)), jnp.ones((3, 3, 2, 3))
    dy = jnp.ones((2, 3, 3, 3))
    xd, wd, dyd = jnp.ones((2, 4)), jnp.ones((4, 3)), jnp.ones((2, 3))
    calls = [(forward.conv2d, x, w), (backward.conv2d, dy, x, w),
             (forward.dense, xd, wd), (backward.dense, dyd, xd, wd)]
    for fn, *args in calls:
        assert _precisions(fn, *args) == {"Precision.HIGHEST"}
        with jax.default_matmul_precision("default"):
            assert _precisions(fn, *args) == {"Precision.DEFAULT"}
        with jax.default_matmul_precision("default"):  # an explicit precision still wins
            high = functools.partial(fn, precision=lax.Precision.HIGH)
            assert _precisions(high, *args) == {"Precision.HIGH"}
