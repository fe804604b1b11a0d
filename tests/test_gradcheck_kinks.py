"""Finite differences across kinks, and `compare`'s floor.

A central difference whose two steps straddle a kink (a ReLU input changing sign, a max pool's
winner moving) mixes two pieces' slopes: it measures no gradient, and a right rule read against
it fails (`jaxcnn gradcheck --model resnet20` did, on 4 of 520 coordinates). Such coordinates are
found from the layers' decisions (`Layer.decisions`) and not evaluated, and gradcheck counts them;
one step off the kink is evaluated as before. The mask is a function of the forward pass alone,
so no sabotaged backward rule can move it, and finite differences alone still catch one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import _geometry, backward, forward
from jaxcnn.backward import pool as pool_rules
from jaxcnn.nn import grads, models
from jaxcnn.nn.layers import (
    Conv2D,
    Dense,
    Flatten,
    LeakyReLU,
    MaxPool,
    ReLU,
)
from jaxcnn.nn.network import BINARY, Network
from jaxcnn.tools import gradcheck

EPS = 1e-6  # finite_difference_grad's default step
X = jnp.asarray([[0.1, 1.0], [2.0, -1.5]]).reshape(1, 2, 2, 1)
Y = jnp.asarray([1.0])
DENSE = {"w": jnp.asarray([[0.5], [-0.3], [0.8], [0.2]]), "b": jnp.asarray([0.1])}


def _net(name: str, middle) -> Network:
    """x (2, 2, 1) -> conv 1x1, one filter -> `middle` -> flatten -> dense 1 (binary head)."""
    return Network(name, [Conv2D(1, 1, name="conv"), *middle, Flatten(), Dense(1, name="dense")],
                   (2, 2, 1), BINARY)


def relu_case(offset: float):
    """The ReLU net with conv w = 1 and b chosen so that the first unit's pre-activation
    0.1 w + b is `offset`; the other three sit at 0.9, 1.9 and -1.6."""
    m = _net("kink_relu", [ReLU(name="relu")])
    params = {"conv": {"w": jnp.ones((1, 1, 1, 1)), "b": jnp.asarray([offset - 0.1])},
              "dense": DENSE}
    return m, params


def pool_case(w: float):
    """The max-pool net (one 2x2 window over w x + b): for w > 0 the window's winner is x's
    largest element (2.0 at offset 2), for w < 0 its smallest (-1.5 at offset 3)."""
    m = _net("kink_pool", [MaxPool(2, name="pool")])
    params = {"conv": {"w": jnp.full((1, 1, 1, 1), w), "b": jnp.asarray([0.3])},
              "dense": {"w": jnp.asarray([[0.7]]), "b": jnp.asarray([0.1])}}
    return m, params


def fd(m, params, **kw):
    return grads.finite_difference_grad(m, params, X, Y, max_per_leaf=8, return_mask=True, **kw)


# ----------------------------------------------------------------------------- kinks
@pytest.mark.parametrize("case, straddling, kink_leaf", [
    (relu_case, 0.5 * EPS, "['conv']['b']"),   # b +- eps moves the first unit across 0
    (pool_case, 0.5 * EPS, "['conv']['w']"),   # w +- eps flips the window's winner
], ids=["relu", "max_pool"])
def test_a_coordinate_straddling_a_kink_is_not_evaluated_and_counted(case, straddling,
                                                                     kink_leaf):
    m, params = case(straddling)
    values, evaluated = fd(m, params)
    _, manual = grads.manual_grad(m, params, X, Y)
    paths = grads._paths(params)
    masked = {p for p, e in zip(paths, jax.tree.leaves(evaluated)) if not e.all()}
    assert masked == {kink_leaf}  # the other parameters move no decision: all evaluated
    assert all(np.isnan(v[~e]).all() and np.isfinite(v[e]).all()
               for v, e in zip(jax.tree.leaves(values), jax.tree.leaves(evaluated)))
    # what the mask keeps out: evaluated anyway, the quotient mixes two slopes and fails
    everything, all_true = fd(m, params, skip_kinks=False)
    assert all(e.all() for e in jax.tree.leaves(all_true))
    rows = {r.path: r for r in grads.compare(manual, everything)}
    assert rows[kink_leaf].max_rel > 1e-2
    # gradcheck's count: one kink, in that leaf; the leaf (one coordinate drawn, or the whole
    # 1x1 kernel) has nothing left to compare, so it rests on autodiff, and the table says so
    vs_fd, kinks = gradcheck._vs_fd(m, params, manual, X, Y, 8, 0, {})
    assert dict(zip(paths, kinks)) == {p: int(p == kink_leaf) for p in paths}
    _, auto = grads.autodiff_grad(m, params, X, Y)
    rows = gradcheck._leaf_rows(grads.compare(manual, auto), vs_fd, 1e-9, 1e-6, kinks)
    assert all(r.ok for r in rows)
    assert [r.path for r in rows if r.rel_fd is None] == [kink_leaf]
    table = gradcheck.format_table(rows, "header", "float64", 8)
    drawn = sum(min(p.size, 8) for p in jax.tree.leaves(params))
    assert f"kinks: 1 of the {drawn} finite-difference coordinates drawn were not evaluated" \
        in table
    assert "1 leaf with every coordinate drawn at a kink: checked against autodiff only" in table
    assert table.splitlines()[-1].startswith("PASS")


@pytest.mark.parametrize("case", [relu_case, pool_case], ids=["relu", "max_pool"])
def test_a_coordinate_off_the_kink_is_evaluated(case):
    """Three steps from the kink: every coordinate is evaluated, and equals the rule."""
    m, params = case(3 * EPS)
    values, evaluated = fd(m, params)
    assert all(e.all() for e in jax.tree.leaves(evaluated))
    _, manual = grads.manual_grad(m, params, X, Y)
    rows = grads.compare(manual, values, mask=evaluated)
    assert all(r.within(1e-6) for r in rows), rows
    _, kinks = gradcheck._vs_fd(m, params, manual, X, Y, 8, 0, {})
    assert kinks == [0, 0, 0, 0]


@pytest.mark.parametrize("case, rule", [
    (relu_case, "relu"), (relu_case, "conv2d"), (pool_case, "max_pool"), (pool_case, "dense"),
], ids=["relu", "conv2d", "max_pool", "dense"])
def test_the_mask_hides_no_sabotage(case, rule):
    """A rule scaled by 1 + 1e-4 (100 times the finite-difference tolerance) at a point with a
    kink: the mask is the same as for the real rule (it comes from the forward pass), and
    finite differences alone, autodiff ignored, fail the manual gradient."""
    m, params = case(0.5 * EPS)
    values, evaluated = fd(m, params)
    with gradcheck.sabotaged(rule, 1 + 1e-4) as calls:
        wrong = case(0.5 * EPS)[0]  # built inside: layers without params take their rule then
        _, manual = grads.manual_grad(wrong, params, X, Y)
        _, evaluated_wrong = fd(wrong, params)
    assert calls[0] > 0
    assert jax.tree.all(jax.tree.map(np.array_equal, evaluated, evaluated_wrong))
    rows = grads.compare(manual, values, mask=evaluated)
    assert any(r.finite and not r.within(1e-6) for r in rows), rows


def test_finite_differences_compile_one_program(monkeypatch):
    """All leaves' coordinates in one traced (so one compiled) program."""
    real, traces = grads._differences, []

    def counted(*args, **kw):
        traces.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(grads, "_differences", counted)
    m, params = relu_case(3 * EPS)
    grads.finite_difference_grad(m, params, X, Y, max_per_leaf=2)
    assert len(traces) == 1 and len(jax.tree.leaves(params)) == 4


@pytest.mark.parametrize("shape, window, stride, padding", [
    ((2, 6, 6, 3), 2, None, "VALID"),              # tiling 2x2/2
    ((2, 7, 5, 2), 3, 2, 1),                       # overlapping, padded
    ((1, 5, 4, 4, 2), 2, 1, "SAME"),               # 3 spatial axes
], ids=["tiles", "overlap-pad", "3d"])
def test_max_pool_winners_route_as_the_rule_and_jax_grad(shape, window, stride, padding):
    """The winners gradcheck compares are the elements dy reaches: with many ties (x in
    {0, 1, 2}), dy scattered to `winner_index` equals jax.grad's routing (the first maximum in
    row-major window order) and backward.max_pool's (by its taps here: windows <= 9)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.integers(0, 3, shape), jnp.float64)
    opts = dict(window=window, stride=stride, padding=padding)
    y, vjp = jax.vjp(lambda v: forward.max_pool(v, **opts), x)
    dy = jnp.asarray(rng.standard_normal(y.shape))
    win = _geometry.pool_nd("max_pool", x, window, stride, padding)
    index = pool_rules.winner_index(x, **opts)
    assert index.shape == y.shape and index.dtype == jnp.int32
    n, c = x.shape[0], x.shape[-1]
    padded = tuple(h + lo + hi for h, (lo, hi) in zip(x.shape[1:-1], win.pads))
    flat = np.zeros((n, int(np.prod(padded)), c))
    np.add.at(flat, (np.arange(n)[:, None, None], np.asarray(index).reshape(n, -1, c),
                     np.arange(c)[None, None, :]), np.asarray(dy).reshape(n, -1, c))
    routed = flat.reshape(n, *padded, c)[(slice(None),
                                           *(slice(lo, lo + h) for h, (lo, _) in
                                             zip(x.shape[1:-1], win.pads)), slice(None))]
    # overlapping windows add in another order: equal to rounding, a wrong winner would be O(1)
    np.testing.assert_allclose(routed, vjp(dy)[0], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(routed, backward.max_pool(dy, x, **opts), rtol=1e-13, atol=1e-13)


def test_every_layer_with_a_kink_reports_it_inside_blocks():
    """The decisions of a network gather those of nested blocks, read off shapes only
    (resnet20: 19 ReLUs, 18 of them inside Residual and Serial blocks; unet: 10 ReLUs and two
    2x2 pools, one winner index each, inside SkipConcat)."""
    for name, relus, pools in (("resnet20", 19, 0), ("unet", 10, 2), ("seed", 1, 1)):
        m = models.get(name)
        x = jax.ShapeDtypeStruct((1, *m.input_shape), jnp.float32)
        params = jax.eval_shape(m.init, jax.random.key(0))
        ds = jax.eval_shape(lambda p, v, m=m: grads.decisions(m, p, m.forward(p, v)), params, x)
        assert len(ds) == relus + pools, name
        assert sum(d.dtype == jnp.bool_ for d in ds) == relus
        assert sum(d.dtype == jnp.int32 for d in ds) == pools


def test_leaky_relu_decides_as_its_rule():
    """LeakyReLU's slope switches at x >= 0 (its rule's test), a smooth layer decides nothing."""
    x = jnp.asarray([[-1.0, 0.0, 2.0]])
    (d,) = LeakyReLU(0.1).decisions({}, x, None)
    np.testing.assert_array_equal(d, [[False, True, True]])
    assert Flatten().decisions is None and Dense(2).decisions is None


# ----------------------------------------------------------------------------- compare's floor
def test_a_structurally_zero_leaf_passes_beside_a_large_one():
    """A bias before BatchNorm: rounding on both sides (~1e-17) reads as relative error ~1 on
    its own scale, and as ~1e-15 against the floor."""
    a = {"big": np.array([1.0, -2.0, 0.5]), "zero": np.array([3e-17, -1e-17])}
    b = {"big": np.array([1.0, -2.0, 0.5]), "zero": np.array([-2e-17, 2e-17])}
    rows = {r.path: r for r in grads.compare(a, b)}
    assert rows["['zero']"].within(1e-9) and rows["['zero']"].max_rel < 1e-14
    assert rows["['zero']"].max_abs == pytest.approx(5e-17)
    (_, zero) = grads.compare(a, b, floor=0.0)  # on its own scale: the old reading
    assert zero.max_rel > 1 and not zero.within(1e-9)


def test_a_wrong_small_leaf_still_fails():
    """A leaf at 1e-4 of the largest gradient, off by 1e-3 of itself: 1e-7 of the floor's
    scale, far outside the float64 tolerance; and a leaf above the floor keeps its own scale."""
    a = {"big": np.array([1.0, -2.0]), "small": np.array([2e-4 * (1 + 1e-3), 1e-4])}
    b = {"big": np.array([1.0, -2.0]), "small": np.array([2e-4, 1e-4])}
    (_, small) = grads.compare(a, b)
    assert small.max_rel == pytest.approx(2e-7 / (1e-2 * 2.0)) and not small.within(1e-9)
    a["small"], b["small"] = np.array([0.5 * (1 + 1e-8)]), np.array([0.5])
    (_, small) = grads.compare(a, b)
    assert small.max_rel == pytest.approx(1e-8) and not small.within(1e-9)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_the_floor_passes_no_non_finite_value(bad):
    a = {"big": np.array([1.0, 2.0]), "zero": np.array([0.0, bad])}
    b = {"big": np.array([1.0, 2.0]), "zero": np.array([0.0, 0.0])}
    rows = {r.path: r for r in grads.compare(a, b)}
    assert not rows["['zero']"].finite and rows["['zero']"].max_rel == np.inf
    rows = {r.path: r for r in grads.compare(b, a)}   # in the reference: its max is no scale
    assert not rows["['zero']"].finite and rows["['big']"].within(0.0)
    (row,) = grads.compare({"g": np.array([1.0])}, {"g": np.array([np.nan])},
                           mask={"g": np.array([False])})
    assert row.compared == 0 and not row.finite


@pytest.mark.parametrize("floor", [-0.1, 1.5, np.nan, "1e-2"])
def test_a_bad_floor_is_refused(floor):
    with pytest.raises(ValueError, match="floor"):
        grads.compare({"g": np.array([1.0])}, {"g": np.array([1.0])}, floor=floor)
