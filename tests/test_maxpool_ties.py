"""Max-pool ties: manual routing equals jax.grad's exactly (the first maximum in row-major order).

Ties are the rule, not the exception: after ReLU whole windows are zero, and integer-valued or
quantised inputs repeat values. The gradients compared here are sums of integers, so every
correct routing gives bit-identical results; `assert_array_equal` demands exactly that.
"""

import itertools

import jax
import numpy as np
import pytest

from jaxcnn import _geometry, backward, forward
from jaxcnn.backward import pool as pool_rules

from reference import max_pool_grad

CONFIGS = [
    dict(window=2),
    dict(window=2, stride=1),                                   # overlapping: routes accumulate
    dict(window=3, stride=2, padding="SAME"),
    dict(window=(3, 2), stride=(1, 2), padding=((1, 2), (0, 1))),
    dict(window=3, stride=1, padding=1),
]


def _inputs(kind, rng, shape):
    if kind == "after-relu":      # most windows all zero, a few positive values
        return np.maximum(rng.standard_normal(shape) - 1.0, 0.0)
    if kind == "all-zero":
        return np.zeros(shape)
    if kind == "integers":        # values 0..2: ties in most windows
        return rng.integers(0, 3, shape).astype(np.float64)
    return np.full(shape, -3.0)   # "constant-negative": every window one big tie


@pytest.mark.parametrize("kind", ["after-relu", "all-zero", "integers", "constant-negative"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_ties_route_exactly_as_jax_grad(kind, cfg):
    rng = np.random.default_rng(0)
    x = _inputs(kind, rng, (2, 7, 8, 3))
    win = _geometry.pool("max_pool", x, cfg["window"], cfg.get("stride"),
                         cfg.get("padding", "VALID"))
    dy = rng.integers(-4, 5, (2, *win.out_hw, 3)).astype(np.float64)
    manual = jax.jit(lambda dy, x: backward.max_pool(dy, x, **cfg))(dy, x)
    _, pullback = jax.vjp(lambda x: forward.max_pool(x, **cfg), x)
    np.testing.assert_array_equal(manual, jax.jit(pullback)(dy)[0])
    np.testing.assert_array_equal(manual, max_pool_grad(dy, x, win.size, win.stride, win.pads))


def test_tie_goes_to_first_in_row_major_order():
    """One 2x2 window of equal values: all of dy lands on its top-left element."""
    x = np.ones((1, 2, 2, 1))
    dx = backward.max_pool(np.array([[[[5.0]]]]), x, window=2)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[5.0, 0.0], [0.0, 0.0]])
    # the second-ranked position wins once the first is smaller
    for i, j in itertools.product(range(2), range(2)):
        x = np.zeros((1, 2, 2, 1))
        x[0, i, j, 0] = 1.0
        dx = backward.max_pool(np.array([[[[1.0]]]]), x, window=2)
        assert dx[0, i, j, 0] == 1.0 and dx.sum() == 1.0


LARGE = [  # windows past pool_rules.PAIRWISE_MAX elements: the by-index formulation
    ((2, 9, 9, 2), dict(window=4, stride=1)),
    ((2, 10, 10, 2), dict(window=5, stride=2, padding=2)),
    ((2, 16, 3), dict(window=(11,), stride=(3,))),
    ((1, 5, 5, 5, 2), dict(window=3, stride=1, padding=1)),
]


@pytest.mark.parametrize("kind", ["after-relu", "integers", "constant-negative"])
@pytest.mark.parametrize("shape,kw", LARGE, ids=lambda v: str(v))
def test_large_windows_route_exactly_as_jax_grad(shape, kw, kind):
    rng = np.random.default_rng(1)
    x = _inputs(kind, rng, shape)
    dy_shape = forward.max_pool(x, **kw).shape
    assert np.prod(_geometry.pool_nd("max_pool", x, kw["window"], kw.get("stride"),
                                     kw.get("padding", "VALID")).size) > pool_rules.PAIRWISE_MAX
    dy = rng.integers(-4, 5, dy_shape).astype(np.float64)
    manual = jax.jit(lambda dy, x: backward.max_pool(dy, x, **kw))(dy, x)
    _, pullback = jax.vjp(lambda x: forward.max_pool(x, **kw), x)
    np.testing.assert_array_equal(manual, jax.jit(pullback)(dy)[0])


@pytest.mark.parametrize("kind", ["after-relu", "integers", "constant-negative", "normal"])
@pytest.mark.parametrize("cfg", CONFIGS + [kw for _, kw in LARGE[:2]],
                         ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_taps_and_by_index_route_alike(kind, cfg):
    """The two formulations of the rule (the taps up to PAIRWISE_MAX elements, one reduction
    and a scatter beyond) route every window alike, ties included, on any window size: integer
    dy makes every sum exact, so they must be equal to the bit."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 9, 8, 3)) if kind == "normal" else _inputs(kind, rng, (2, 9, 8, 3))
    win = _geometry.pool_nd("max_pool", x, cfg["window"], cfg.get("stride"),
                            cfg.get("padding", "VALID"))
    dy = rng.integers(-4, 5, (2, *win.out_hw, 3)).astype(np.float64)
    by_taps = pool_rules._max_pool_by_taps(dy, x, win)
    by_index = pool_rules._max_pool_by_index(dy, x, win)
    np.testing.assert_array_equal(by_taps, by_index)


@pytest.mark.parametrize("k", [4, 16])
def test_a_window_holding_nan_routes_nothing(k):
    """The convention (both formulations: k = 4 by taps, 16 by index): no element of a window
    holding a NaN is its maximum, so its dy goes nowhere; the other windows route as usual.
    jax.grad differs here: XLA's select-and-scatter scans the window with `>=`, which a NaN
    breaks, and routes dy to some element beside it (the last assertion records that)."""
    side = int(np.sqrt(k))
    x = np.arange(2 * side * side * 1, dtype=np.float64).reshape(1, 2 * side, side, 1)
    x[0, 1, 0, 0] = np.nan  # in the first window only
    dy = np.array([5.0, 7.0]).reshape(1, 2, 1, 1)
    dx = np.asarray(backward.max_pool(dy, x, window=side))
    assert dx[0, :side].sum() == 0.0
    assert dx[0, side:].sum() == 7.0 and dx[0, -1, -1, 0] == 7.0
    _, pullback = jax.vjp(lambda x: forward.max_pool(x, window=side), x)
    assert np.asarray(pullback(dy)[0])[0, :side].sum() == 5.0  # jax.grad routes it somewhere
