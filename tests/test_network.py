"""Whole networks: the manual backward pass equals jax.grad and finite differences (float64)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models
from jaxcnn.nn import grads, layers
from jaxcnn.nn.network import BINARY, Network
from jaxcnn.tools import worked_example

MODELS = {"seed_cnn": models.seed_cnn, "lenet5": models.lenet5, "deep_cnn": models.deep_cnn}
KEY = jax.random.key(42)  # the dropout key, shared by manual, autodiff and finite differences


@functools.cache
def model(name):
    return MODELS[name]()


def batch(m: Network, n: int, seed_: int = 1):
    x = jax.random.normal(jax.random.key(seed_), (n, *m.input_shape), jnp.float64)
    if m.head is BINARY:
        y = jnp.asarray(np.arange(n) % 2, jnp.float64)
    else:
        y = jnp.asarray(np.arange(n) * 7 % m.num_classes, jnp.int32)
    return x, y


@functools.cache
def jitted(name, train, which):
    """One compiled gradient function per (model, mode, method), reused across batch sizes."""
    m = model(name)
    fn = grads.manual_grad if which == "manual" else grads.autodiff_grad

    def run(params, state, x, y):
        return fn(m, params, x, y, state=state, train=train, key=KEY)

    return jax.jit(run)


def params_and_state(name):
    m = model(name)
    return m.init(jax.random.key(0), jnp.float64), m.init_state(jnp.float64)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("n", [1, 32])
@pytest.mark.parametrize("name", MODELS)
def test_manual_equals_autodiff(name, n, train):
    m = model(name)
    params, state = params_and_state(name)
    x, y = batch(m, n)
    loss_m, g_m = jitted(name, train, "manual")(params, state, x, y)
    loss_a, g_a = jitted(name, train, "autodiff")(params, state, x, y)
    assert jax.tree.structure(g_m) == jax.tree.structure(params)
    np.testing.assert_allclose(loss_m, loss_a, rtol=1e-14)
    for row in grads.compare(g_m, g_a):
        assert row.max_rel <= 1e-9, row


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", MODELS)
def test_manual_matches_finite_differences(name, train):
    """Central differences on every coordinate of the seed net, and on 6 random coordinates of
    every leaf of the bigger nets; error relative to the leaf's largest gradient entry.

    Zero-initialised biases put many pre-activations exactly on ReLU's kink (an all-zero window
    plus a zero bias is exactly 0), where a central difference sees half a slope; small random
    offsets on every parameter move them off it.
    """
    m = model(name)
    params, state = params_and_state(name)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(5)
    params = jax.tree.unflatten(treedef, [p + 0.05 * rng.standard_normal(p.shape) for p in leaves])
    x, y = batch(m, 2)
    kw = dict(state=state, train=train, key=KEY)
    _, g = grads.manual_grad(m, params, x, y, **kw)
    fd, evaluated = grads.finite_difference_grad(
        m, params, x, y, eps=1e-6, max_per_leaf=None if name == "seed_cnn" else 6,
        return_mask=True, **kw)
    for (path, gl), fl, sampled in zip(jax.tree_util.tree_leaves_with_path(g),
                                       jax.tree.leaves(fd), jax.tree.leaves(evaluated)):
        gl, fl = np.asarray(gl), np.asarray(fl)
        assert sampled.any() and np.isfinite(fl[sampled]).all(), jax.tree_util.keystr(path)
        err = np.abs(gl[sampled] - fl[sampled]).max() / np.abs(gl).max()
        assert err <= 1e-6, (jax.tree_util.keystr(path), err)


def test_seed_cnn_has_15_parameters_shaped_as_the_contract():
    params = models.seed_cnn().init(jax.random.key(0))
    shapes = jax.tree.map(lambda a: a.shape, params)
    assert shapes == {"conv": {"w": (3, 3, 1, 1), "b": (1,)}, "dense": {"w": (4, 1), "b": (1,)}}
    assert sum(a.size for a in jax.tree.leaves(params)) == 15
    assert models.seed_cnn().num_params(params) == 15


def test_seed_activations_are_kept():
    m = models.seed_cnn()
    trace = m.forward(m.init(jax.random.key(0)), jnp.zeros((2, 6, 6, 1), jnp.float32))
    # X, Z1, A1, P1, F, Z2 (A2 = sigmoid(Z2) is the head's)
    assert [a.shape for a in trace.activations] == [
        (2, 6, 6, 1), (2, 4, 4, 1), (2, 4, 4, 1), (2, 2, 2, 1), (2, 4), (2, 1)]


@pytest.mark.parametrize("n", [1, 5])
def test_seed_equation_by_equation(n):
    """worked_example.seed_backward's every intermediate equals the generic backprop's deltas and
    jax.grad's; its parameter gradients equal manual_grad and autodiff_grad."""
    m = models.seed_cnn()
    params = m.init(jax.random.key(3), jnp.float64)
    x, y = batch(m, n, seed_=4)
    fwd = worked_example.seed_forward(params, x, y)
    mine = worked_example.seed_backward(params, fwd, y)
    auto = worked_example.seed_autodiff(params, fwd, y)
    for k in mine:
        np.testing.assert_allclose(mine[k], auto[k], rtol=1e-9, atol=1e-15, err_msg=k)
    trace = m.forward(params, x)
    for name, act in zip(["X", "Z1", "A1", "P1", "F", "Z2"], trace.activations):
        np.testing.assert_array_equal(fwd[name], act)
    generic, deltas = m.backprop(params, trace, y)
    for name, delta in zip(["dZ1", "dA1", "dP1", "dF", "dZ2"], deltas[1:]):
        np.testing.assert_allclose(mine[name], delta, rtol=1e-12, atol=1e-16, err_msg=name)
    for g in (generic, grads.autodiff_grad(m, params, x, y)[1]):
        for row in grads.compare(worked_example.seed_grads(mine), g):
            assert row.max_rel <= 1e-9, row


def test_state_is_apart_from_params_and_updates_only_in_training():
    m = model("deep_cnn")
    params, state = params_and_state("deep_cnn")
    assert set(state) == {"bn1", "bn2", "bn4"} and not set(state) & {"mean", "var"}
    assert all(set(p) == {"gamma", "beta"} for k, p in params.items() if k.startswith("bn"))
    x, y = batch(m, 4)
    _, (s_eval, _) = m.loss_and_aux(params, x, y, state=state)
    _, (s_train, _) = m.loss_and_aux(params, x, y, state=state, train=True, key=KEY)
    jax.tree.map(np.testing.assert_array_equal, s_eval, state)
    assert not np.allclose(s_train["bn1"]["mean"], state["bn1"]["mean"])


def test_dropout_drops_at_rate_and_is_identity_in_evaluation():
    layer = layers.Dropout(0.25)
    x = jnp.ones((200, 50))
    y, _, keep = layer.apply({}, {}, x, train=True, key=jax.random.key(0))
    assert abs(float(1 - keep.mean()) - 0.25) < 0.01
    np.testing.assert_allclose(y[keep], 1 / 0.75)
    y_eval, _, none = layer.apply({}, {}, x, train=False)
    assert none is None and (y_eval == x).all()


NET_ERRORS = [
    ("seed", (2, 8, 8, 1), None, "seed_cnn expects images of shape (N, 6, 6, 1) (N, H, W, C); "
                                 "got x with shape (2, 8, 8, 1)"),
    ("lenet5", (2, 28, 28, 3), None, "lenet5 expects images of shape (N, 28, 28, 1)"),
    ("lenet5", (28, 28, 1), None, "lenet5 expects images of shape (N, 28, 28, 1)"),
    ("seed", (2, 6, 6, 1), np.zeros(3), "seed_cnn expects y of shape (2,) holding 0./1. float "
                                        "labels; got shape (3,) float64"),
    ("seed", (2, 6, 6, 1), np.array([0.0, 2.0]), "seed_cnn expects y holding 0./1. float labels; "
                                                  "got values in [0.0, 2.0]"),
    ("lenet5", (2, 28, 28, 1), np.array([1, 10]), "lenet5 expects y holding int class ids in "
                                                  "[0, 10); got values in [1, 10]"),
    ("lenet5", (2, 28, 28, 1), np.array([1.0, 2.0]), "lenet5 expects y of shape (2,) holding int "
                                                     "class ids in [0, 10); got shape (2,) float"),
]


@pytest.mark.parametrize("name, x_shape, y, message", NET_ERRORS)
def test_network_bad_input_names_the_expected_input(name, x_shape, y, message):
    m = models.get(name)
    params = m.init(jax.random.key(0), jnp.float64)
    x = np.zeros(x_shape)
    with pytest.raises(ValueError, match=re.escape(message)):
        if y is None:
            m.apply(params, x)
        else:
            grads.manual_grad(m, params, x, y)


def test_layer_construction_errors():
    with pytest.raises(ValueError, match="Dropout 'dropout': rate is the drop probability"):
        layers.Dropout(1.0)
    with pytest.raises(ValueError, match="Put a Flatten layer before it"):
        Network("bad", [layers.Conv2D(2), layers.Dense(3)], (6, 6, 1), BINARY)
    with pytest.raises(ValueError, match="conv2d: the kernel spans"):
        Network("bad", [layers.Conv2D(2, 7)], (6, 6, 1), BINARY)
    with pytest.raises(ValueError, match="unknown model 'nosuch'; choose one of seed, lenet5"):
        models.get("nosuch")
    with pytest.raises(ValueError, match="Dropout 'dropout': training needs a PRNG key"):
        m = model("deep_cnn")
        m.forward(m.init(jax.random.key(0)), jnp.zeros((2, 28, 28, 1), jnp.float32), train=True)
