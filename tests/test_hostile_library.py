"""Hostile input across the library: every bad argument raises ValueError or TypeError with a
message that names the argument (or the path inside params) and what it needs, never a bare
KeyError, AttributeError or a silently wrong answer."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import bridge
from jaxcnn.nn import grads, layers, models
from jaxcnn.nn.network import BINARY, SOFTMAX, Network
from jaxcnn.tools import gradcheck

NAN = float("nan")
SEED = models.seed_cnn()
PARAMS = SEED.init(jax.random.key(0), jnp.float64)
X = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 6, 1)))
Y = jnp.asarray([0.0, 1.0])


def _with(layer: str, **leaves):
    """PARAMS with `layer`'s leaves replaced (a value None drops the leaf)."""
    entry = {**PARAMS[layer], **leaves}
    return {**PARAMS, layer: {k: v for k, v in entry.items() if v is not None}}


def _raises(exc, fragments, fn, *args, **kw):
    """fn(*args, **kw) raises exactly `exc` with every fragment in its message."""
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    assert type(info.value) is exc, info.value
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ----------------------------------------------------------------------------- params
BAD_PARAMS = [
    ("conv-without-b", _with("conv", b=None), ValueError,
     ["seed_cnn", "params['conv']['b']", "missing", "(1,)"]),
    ("extra-leaf", _with("conv", extra=jnp.zeros(3)), ValueError,
     ["params['conv']['extra']", "layer 'conv'", "'b', 'w'"]),
    ("5x5-kernel", _with("conv", w=jnp.zeros((5, 5, 1, 1))), ValueError,
     ["seed_cnn: params['conv']['w'] has shape (5, 5, 1, 1) but the layer needs (3, 3, 1, 1)"]),
    ("dense-transposed", _with("dense", w=jnp.zeros((1, 4))), ValueError,
     ["params['dense']['w'] has shape (1, 4) but the layer needs (4, 1)"]),
    ("extra-layer", {**PARAMS, "conv2": PARAMS["conv"]}, ValueError,
     ["params['conv2']", "no layer", "'conv', 'dense'"]),
    ("params-for-relu", {**PARAMS, "relu": {}}, ValueError,
     ["params['relu']", "layer 'relu' (ReLU) has no parameters"]),
    ("missing-layer", {"conv": PARAMS["conv"]}, ValueError,
     ["params['dense']", "missing", "(4, 1)"]),
    ("list-of-params", [PARAMS], TypeError, ["seed_cnn", "params must be a dict", "list"]),
    ("layer-entry-a-tuple", {**PARAMS, "conv": (PARAMS["conv"]["w"], PARAMS["conv"]["b"])},
     TypeError, ["params['conv'] must be a dict", "tuple"]),
    ("leaf-a-list", _with("dense", b=[0.0]), TypeError,
     ["params['dense']['b'] must be an array", "list"]),
    ("leaf-int", _with("dense", b=jnp.zeros(1, jnp.int32)), TypeError,
     ["params['dense']['b']", "floating", "int32"]),
    ("leaf-float32", _with("dense", w=jnp.zeros((4, 1), jnp.float32)), TypeError,
     ["params['dense']['w']", "float32", "float64", "x"]),
]


@pytest.mark.parametrize("params, exc, fragments", [c[1:] for c in BAD_PARAMS],
                         ids=[c[0] for c in BAD_PARAMS])
@pytest.mark.parametrize("path", ["manual", "autodiff", "forward", "check_params"])
def test_malformed_params_are_refused_on_every_path(path, params, exc, fragments):
    call = {"manual": lambda: grads.manual_grad(SEED, params, X, Y),
            "autodiff": lambda: grads.autodiff_grad(SEED, params, X, Y),
            "forward": lambda: SEED.apply(params, X),
            "check_params": lambda: SEED.check_params(params, X.dtype)}[path]
    _raises(exc, fragments, call)


def test_malformed_params_are_refused_under_jit_and_through_the_bridge():
    bad = _with("conv", b=None)
    fragments = ["params['conv']['b']", "missing"]
    _raises(ValueError, fragments, jax.jit(lambda p: grads.manual_grad(SEED, p, X, Y)), bad)
    _raises(ValueError, fragments, jax.jit(jax.grad(bridge.bridge(SEED).loss)), bad, X, Y)
    _raises(ValueError, ["params['conv']['w'] has shape (5, 5, 1, 1)"],
            jax.jit(SEED.apply), _with("conv", w=jnp.zeros((5, 5, 1, 1))), X)


def test_well_formed_params_pass_check_params_in_any_float_dtype():
    SEED.check_params(PARAMS)
    SEED.check_params(SEED.init(jax.random.key(1), jnp.float32), jnp.float32)
    SEED.check_params(jax.eval_shape(lambda: PARAMS))  # shapes and dtypes are all it reads
    _, g = grads.manual_grad(SEED, PARAMS, X, Y)
    assert jax.tree.structure(g) == jax.tree.structure(PARAMS)


def test_bad_state_names_the_layer_and_leaf():
    net = Network("bn_net", [layers.Conv2D(2, name="conv"), layers.BatchNorm(name="bn"),
                             layers.Flatten(), layers.Dense(1)], (6, 6, 1), BINARY)
    params = net.init(jax.random.key(0), jnp.float64)
    state = net.init_state(jnp.float64)
    net.check_state(state, jnp.float64)
    net.check_state({}, jnp.float64)  # no state: every layer starts from its initial one
    _raises(ValueError, ["state['bn']['var']", "missing"], net.apply, params, X,
            state={"bn": {"mean": state["bn"]["mean"]}})
    _raises(ValueError, ["state['bn']['mean'] has shape (3,) but the layer needs (2,)"],
            net.apply, params, X, state={"bn": {**state["bn"], "mean": jnp.zeros(3)}})
    _raises(ValueError, ["state['conv']", "no state"], net.apply, params, X,
            state={**state, "conv": {}})
    _raises(TypeError, ["state must be a dict", "list"], net.apply, params, X, state=[state])


# ----------------------------------------------------------------------------- inputs and labels
@pytest.mark.parametrize("x, exc, fragments", [
    (np.zeros((2, 6, 6)), ValueError, ["seed_cnn", "x with shape (2, 6, 6)", "(N, 6, 6, 1)"]),
    (np.zeros((2, 6, 6, 3)), ValueError, ["x with shape (2, 6, 6, 3)"]),
    (np.zeros((2, 6, 6, 1)).tolist(), TypeError, ["x must be a JAX or NumPy array", "list"]),
    (np.zeros((2, 6, 6, 1), np.int32), TypeError, ["x must have a floating-point dtype"]),
], ids=["rank-3", "three-channels", "list", "int"])
def test_bad_images(x, exc, fragments):
    _raises(exc, fragments, grads.manual_grad, SEED, PARAMS, x, Y)


@pytest.mark.parametrize("y, exc, fragments", [
    (np.array([0.0, NAN]), ValueError, ["seed_cnn", "y", "NaN", "index 1"]),
    (np.array([NAN, NAN]), ValueError, ["y", "NaN", "index 0"]),
    (np.array([0.0, np.inf]), ValueError, ["y", "inf", "index 1"]),
    (np.array([0.0, 2.0]), ValueError, ["y holding 0./1. float labels", "[0.0, 2.0]"]),
    (np.array([0.0, -0.5]), ValueError, ["y holding", "[-0.5, 0.0]"]),
    (np.array([0, 1]), ValueError, ["y of shape (2,)", "int64"]),
    (np.array([0.0, 1.0, 1.0]), ValueError, ["y of shape (2,)", "got shape (3,)"]),
    ([0.0, 1.0], TypeError, ["y", "array", "list"]),
], ids=["nan", "all-nan", "inf", "two", "negative", "int", "too-many", "list"])
def test_bad_binary_labels(y, exc, fragments):
    _raises(exc, fragments, grads.manual_grad, SEED, PARAMS, X, y)
    _raises(exc, fragments, SEED.check_labels, X, y)


def test_check_labels_names_x_when_x_is_not_an_array():
    _raises(TypeError, ["seed_cnn", "x must be a JAX or NumPy array", "list"],
            SEED.check_labels, [[0.0]], Y)


def test_out_of_range_class_ids_are_refused_eagerly():
    net = Network("tiny_softmax", [layers.Flatten(), layers.Dense(3)], (6, 6, 1), SOFTMAX)
    _raises(ValueError, ["tiny_softmax", "y holding int class ids in [0, 3)", "[1, 3]"],
            net.check_labels, X, np.array([1, 3]))
    _raises(ValueError, ["y holding int class ids", "[-1, 0]"],
            net.check_labels, X, np.array([-1, 0]))
    # under jit (documented in check_labels): such an example adds 0 yet counts in the mean
    params = net.init(jax.random.key(0), jnp.float64)
    alone = float(net.loss(params, X[:1], np.array([1])))
    for bad in (3, -1):
        np.testing.assert_allclose(jax.jit(net.loss)(params, X, np.array([1, bad])), alone / 2,
                                   rtol=1e-12)


def test_labels_under_jit_are_checked_for_shape_and_dtype_only():
    """What `check_labels` documents: under jit the values are not checked, so an out-of-range
    binary label gives a finite (wrong) loss and a NaN label a NaN loss; eagerly both raise."""
    loss = jax.jit(SEED.loss)
    good = float(loss(PARAMS, X, Y))
    wrong = float(loss(PARAMS, X, jnp.asarray([0.0, 2.0])))
    assert np.isfinite(wrong) and wrong != good
    assert np.isnan(float(loss(PARAMS, X, jnp.asarray([0.0, NAN]))))
    _raises(ValueError, ["y of shape (2,)"], loss, PARAMS, X, jnp.asarray([0.0, 1.0, 1.0]))
    for y in ([0.0, 2.0], [0.0, NAN]):
        _raises(ValueError, ["y"], SEED.loss, PARAMS, X, jnp.asarray(y))


# ----------------------------------------------------------------------------- compare, fd
@pytest.mark.parametrize("a, b, mask, exc, fragments", [
    ({"w": np.zeros(2)}, {"v": np.zeros(2)}, None, ValueError,
     ["compare", "structure", "['w']", "['v']"]),
    ({"w": np.zeros(2)}, {"w": np.zeros(3)}, None, ValueError,
     ["compare", "['w']", "(2,)", "(3,)"]),
    ({}, {}, None, ValueError, ["compare", "nothing to compare"]),
    ({"w": np.zeros(2)}, {"w": np.zeros(2)}, {"w": np.ones(3, bool)}, ValueError,
     ["compare", "mask['w']", "(3,)", "(2,)"]),
    ({"w": np.zeros(2)}, {"w": np.zeros(2)}, {"w": np.ones(2)}, TypeError,
     ["compare", "mask['w']", "bool", "float64"]),
    ({"w": np.zeros(2)}, {"w": np.zeros(2)}, {"v": np.ones(2, bool)}, ValueError,
     ["compare", "mask", "structure"]),
], ids=["keys", "shape", "empty", "mask-shape", "mask-dtype", "mask-keys"])
def test_bad_compare_arguments(a, b, mask, exc, fragments):
    _raises(exc, fragments, grads.compare, a, b, mask=mask)


@pytest.mark.parametrize("params, kw, exc, fragments", [
    (SEED.init(jax.random.key(0), jnp.float32), {}, TypeError,
     ["finite_difference_grad", "params", "float64", "['conv']['b'] is float32"]),
    (PARAMS, {"max_per_leaf": 0}, ValueError, ["finite_difference_grad", "max_per_leaf", "0"]),
    (PARAMS, {"eps": 0.0}, ValueError, ["finite_difference_grad", "eps", "0.0"]),
    (PARAMS, {"eps": NAN}, ValueError, ["finite_difference_grad", "eps", "nan"]),
    (_with("conv", b=None), {}, ValueError, ["params['conv']['b']", "missing"]),
], ids=["float32", "max-per-leaf-0", "eps-0", "eps-nan", "missing-leaf"])
def test_bad_finite_difference_arguments(params, kw, exc, fragments):
    _raises(exc, fragments, grads.finite_difference_grad, SEED, params, X, Y, **kw)


# ----------------------------------------------------------------------------- tools, registry
@pytest.mark.parametrize("kw, exc, fragments", [
    ({"name": "nosuch"}, ValueError, ["unknown model 'nosuch'", "seed"]),
    ({"dtype": "float16"}, ValueError, ["dtype", "float16", "float64"]),
    ({"batch": 0}, ValueError, ["batch", "--batch", ">= 1", "0"]),
    ({"batch": 2.5}, TypeError, ["batch", "int", "2.5"]),
    ({"fd_per_leaf": 0}, ValueError, ["fd_per_leaf", "--fd-per-leaf", ">= 1"]),
    ({"jitter": -0.1}, ValueError, ["jitter", "--jitter", ">= 0", "-0.1"]),
    ({"jitter": NAN}, ValueError, ["jitter", "finite", "nan"]),
    ({"sabotage": "nosuch"}, ValueError, ["sabotage", "nosuch", "conv2d"]),
    ({"sabotage": "batch_norm"}, ValueError, ["sabotage", "seed_cnn", "batch_norm", "never"]),
], ids=["model", "dtype", "batch-0", "batch-float", "fd-0", "jitter", "jitter-nan",
        "sabotage-unknown",
        "sabotage-unused"])
def test_bad_gradcheck_arguments(kw, exc, fragments):
    kw = {"name": "seed", "fd_per_leaf": 1, **kw}
    _raises(exc, fragments, gradcheck.gradcheck, **kw)


@pytest.mark.parametrize("fn, exc, fragments", [
    (lambda: models.get("nosuch"), ValueError, ["unknown model 'nosuch'", "lenet5"]),
    (lambda: models.get("seed", impl="fast"), ValueError, ["impl", "'fast'", "gemm"]),
    (lambda: grads.value_and_grad(SEED, "numeric"), ValueError, ["grad", "'numeric'"]),
    (lambda: layers.Dropout(1.0), ValueError, ["Dropout", "rate", "1.0"]),
    (lambda: layers.BatchNorm(momentum=1.0), ValueError, ["BatchNorm", "momentum", "1.0"]),
    (lambda: layers.Conv2D(1, 0), ValueError, ["Conv2D", "kernel", "(0, 0)"]),
    (lambda: layers.Conv2D(1, "3"), TypeError, ["Conv2D", "kernel", "'3'"]),
    (lambda: Network("n", [layers.Conv2D(1, padding="FULL")], (6, 6, 1), BINARY), ValueError,
     ["padding", "'FULL'"]),
    (lambda: Network("n", [layers.MaxPool(2, stride=0)], (6, 6, 1), BINARY), ValueError,
     ["max_pool", "stride", "(0, 0)"]),
    (lambda: Network("n", [layers.Conv2D(1, 7)], (6, 6, 1), BINARY), ValueError,
     ["conv2d", "kernel spans (7, 7)"]),
    (lambda: Network("n", [layers.Conv2D(1), layers.Dense(1)], (6, 6, 1), BINARY), ValueError,
     ["Dense 'dense'", "Flatten"]),
    (lambda: Network("n", [layers.Flatten(), layers.Flatten()], (6, 6, 1), BINARY), ValueError,
     ["layer names must be unique", "'flatten'"]),
], ids=["model", "impl", "grad", "dropout-rate", "bn-momentum", "kernel-0", "kernel-str",
        "padding", "pool-stride", "kernel-too-big", "dense-unflat", "duplicate-names"])
def test_bad_registry_and_layer_options(fn, exc, fragments):
    _raises(exc, fragments, fn)


def test_messages_are_one_line_and_name_no_internal_error():
    for params, _, _ in [c[1:] for c in BAD_PARAMS]:
        try:
            SEED.check_params(params, X.dtype)
        except (ValueError, TypeError) as e:
            assert "\n" not in str(e) and not re.search(r"KeyError|AttributeError", str(e))
        else:
            raise AssertionError("check_params accepted malformed params")
