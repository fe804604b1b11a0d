"""Max-pool backward with large windows (issue 23, item 14).

`backward.max_pool` takes, past `PAIRWISE_MAX` window elements, the by-index formulation (the
winner's flat index, found one spatial axis at a time, then a scatter-add) where the taps would
make its program grow with the window: it must route exactly as `jax.vjp` of
`forward.max_pool` (ties to the first maximum in row-major window order, padding never chosen)
and as the taps (a window holding a NaN routes nothing). Here both formulations are called
directly on every window size. Its cost is measured by `jaxcnn.tools.bench_pool`, not timed here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import _geometry, backward, forward
from jaxcnn.backward import pool as pool_rules
from jaxcnn.tools import bench_pool

CASES = [  # (x shape, window, stride, padding)
    ((2, 7, 3), 3, 1, "SAME"),
    ((2, 9, 2), 4, 2, "VALID"),
    ((2, 6, 7, 3), 2, None, "VALID"),
    ((2, 7, 7, 2), 3, 1, "SAME"),
    ((1, 9, 8, 2), (4, 3), (2, 1), ((1, 2), (0, 2))),
    ((1, 8, 8, 1), 8, 1, "SAME"),
    ((2, 5, 6, 4, 2), (2, 3, 2), (1, 2, 1), "SAME"),
]


def _tie_heavy(rng, shape):
    """Values in {0, 1, 2} (every window ties), a few -inf."""
    x = rng.integers(0, 3, shape).astype(np.float32)
    x[rng.random(shape) < 0.1] = -np.inf
    return x


def max_pool_by_index(dy, x, *, window, stride=None, padding="VALID"):
    """The by-index formulation on any window (the rule takes it past PAIRWISE_MAX only)."""
    return pool_rules._max_pool_by_index(dy, x, _geometry.pool_nd("max_pool", x, window, stride,
                                                                  padding))


@pytest.mark.parametrize("shape, window, stride, padding", CASES)
def test_by_index_routes_exactly_as_jax_vjp_and_the_rule(shape, window, stride, padding):
    rng = np.random.default_rng(len(shape) + np.prod(shape))
    kw = dict(window=window, stride=stride, padding=padding)
    x = _tie_heavy(rng, shape)
    dy = rng.standard_normal(forward.max_pool(x, **kw).shape).astype(np.float32)
    got = np.asarray(max_pool_by_index(dy, x, **kw))
    want = jax.vjp(lambda x: forward.max_pool(x, **kw), x)[1](dy)[0]
    np.testing.assert_array_equal(got, want)  # bit for bit: the same winners, the same sums
    np.testing.assert_allclose(got, backward.max_pool(dy, x, **kw), rtol=1e-6, atol=1e-6)


def test_by_index_a_window_holding_nan_routes_nothing():
    x = np.random.default_rng(0).standard_normal((1, 6, 6, 2)).astype(np.float32)
    x[0, 1, 1, 0] = np.nan  # in the windows (0..1, 0..1) of channel 0, stride 1
    dy = np.ones((1, 5, 5, 2), np.float32)
    got = np.asarray(max_pool_by_index(dy, x, window=2, stride=1))
    np.testing.assert_array_equal(got, backward.max_pool(dy, x, window=2, stride=1))
    assert got[0, :3, :3, 0].sum() < 9 and got[..., 1].sum() == 25  # NaN windows: nothing


def test_by_index_under_jit_and_vmap():
    rng = np.random.default_rng(1)
    x = _tie_heavy(rng, (3, 8, 8, 2))
    kw = dict(window=5, stride=1, padding="SAME")
    dy = rng.standard_normal(x.shape).astype(np.float32)
    eager = np.asarray(max_pool_by_index(dy, x, **kw))
    jitted = jax.jit(lambda d, v: max_pool_by_index(d, v, **kw))(dy, x)
    mapped = jax.vmap(lambda d, v: max_pool_by_index(d[None], v[None], **kw)[0])(dy, x)
    np.testing.assert_array_equal(jitted, eager)
    np.testing.assert_array_equal(mapped, eager)


def test_the_rule_takes_by_index_past_pairwise_max(monkeypatch):
    """Past PAIRWISE_MAX elements the rule is the by-index formulation, below it the taps; its
    argument checks hold on both paths."""
    rng = np.random.default_rng(2)
    x = _tie_heavy(rng, (2, 9, 9, 2))
    calls: list[str] = []
    for name in ("_max_pool_by_taps", "_max_pool_by_index"):
        real = getattr(pool_rules, name)
        monkeypatch.setattr(pool_rules, name,
                            lambda *a, real=real, name=name: calls.append(name) or real(*a))
    for window in (3, 4):
        dy = rng.standard_normal(forward.max_pool(x, window=window, stride=1).shape, np.float32)
        calls.clear()
        backward.max_pool(dy, x, window=window, stride=1)
        assert calls == (["_max_pool_by_taps"] if window * window <= pool_rules.PAIRWISE_MAX
                         else ["_max_pool_by_index"])
    with pytest.raises(ValueError, match=r"backward\.max_pool: dy has shape"):
        backward.max_pool(jnp.ones((1, 3, 3, 1)), jnp.ones((1, 8, 8, 1)), window=4)


def test_bench_pool_reports_every_variant():
    result = bench_pool.run((2, 3), shape=(1, 6, 6, 2), rounds=1)
    text = bench_pool.to_markdown(result)
    for w in result["windows"]:
        assert set(w["variants"]) == {"jax.vjp", "taps", "by_index"}
        assert w["variants"]["by_index"]["max_abs_diff_vs_vjp"] == 0.0
        assert all(v["compile_s"] > 0 and v["median_ms"] > 0 for v in w["variants"].values())
    assert text.count("| 3x3 |") == 3 and "compile s" in text
    with pytest.raises(ValueError, match="windows must be ints >= 1"):
        bench_pool.run((0,))
