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
from jaxcnn.nn.combinators import Residual, SkipConcat
from jaxcnn.nn.network import BINARY, PIXEL_BINARY, PIXEL_SOFTMAX, REGRESSION, SOFTMAX, Network
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


# ----------------------------------------------------------------------------- the new layers
def _net(layer_list, input_shape, head=PIXEL_SOFTMAX, name="n"):
    """A Network built from `layer_list` (building checks every layer's options)."""
    return Network(name, layer_list, input_shape, head)


# (id, thunk, exception, fragments: the argument, the value got, what is expected)
NEW_LAYERS = [
    ("conv1d-kernel-pair", lambda: layers.Conv1D(4, (3, 3)), TypeError,
     ["Conv1D", "kernel", "an int or a tuple of 1 int (w,)", "got (3, 3)"]),
    ("conv3d-stride-pair", lambda: _net([layers.Conv3D(2, 3, stride=(1, 2))], (6, 6, 6, 1)),
     TypeError, ["conv3d", "stride", "a tuple of 3 ints (d, h, w)", "got (1, 2)"]),
    ("conv1d-padding-pair", lambda: _net([layers.Conv1D(2, 3, padding=(1, 1))], (8, 1)),
     TypeError, ["conv1d", "padding", "(p,) or ((lo, hi),)", "got (1, 1)"]),
    ("conv1d-on-images", lambda: _net([layers.Conv1D(2, 3)], (6, 6, 1)), ValueError,
     ["conv1d", "x must be a 3-D array (N, W, C)", "got shape (1, 6, 6, 1)"]),
    ("conv3d-features-0", lambda: layers.Conv3D(0), ValueError,
     ["Conv3D 'conv'", "features", "an int >= 1", "got 0"]),
    ("deconv2d-output-padding", lambda: _net(
        [layers.ConvTranspose2D(2, 3, stride=2, output_padding=2)], (4, 4, 1)), ValueError,
     ["conv_transpose2d", "output_padding", "smaller than the stride or the dilation",
      "output_padding (2, 2), stride (2, 2)"]),
    ("deconv1d-groups-divide", lambda: _net([layers.ConvTranspose1D(6, 3, groups=3)], (8, 4)),
     ValueError, ["conv_transpose1d", "groups=3", "must divide the 4 input channels of x"]),
    ("deconv2d-features-0", lambda: layers.ConvTranspose2D(0), ValueError,
     ["ConvTranspose2D 'deconv'", "features", "an int >= 1", "got 0"]),
    ("deconv1d-kernel-0", lambda: layers.ConvTranspose1D(2, 0), ValueError,
     ["ConvTranspose1D", "kernel", ">= 1 on every axis", "got (0,)"]),
    ("deconv2d-padding-same", lambda: _net([layers.ConvTranspose2D(2, 3, padding="SAME")],
                                           (4, 4, 1)), TypeError,
     ["conv_transpose2d", "padding", "an int or a tuple of 2 ints", "no \"SAME\"", "'SAME'"]),
    ("deconv1d-output-empty", lambda: _net([layers.ConvTranspose1D(2, 1, padding=3)], (2, 1)),
     ValueError, ["conv_transpose1d", "spatial size (-4,)", "padding (3,)", ">= 1"]),
    ("groupnorm-divide", lambda: _net([layers.Conv2D(4, 3), layers.GroupNorm(3)], (6, 6, 1)),
     ValueError, ["GroupNorm 'groupnorm'", "groups=3", "must divide the 4 channels of x"]),
    ("groupnorm-0", lambda: layers.GroupNorm(0), ValueError,
     ["GroupNorm 'groupnorm'", "groups", "an int >= 1", "got 0"]),
    ("groupnorm-float", lambda: layers.GroupNorm(2.0), ValueError,
     ["GroupNorm", "groups", "an int >= 1", "got 2.0"]),
    ("layernorm-eps-negative", lambda: _net([layers.LayerNorm(eps=-1.0)], (6, 6, 2)),
     ValueError, ["LayerNorm 'layernorm'", "eps", ">= 0", "got -1.0"]),
    ("layernorm-eps-str", lambda: _net([layers.LayerNorm(eps="1e-5")], (6, 6, 2)), TypeError,
     ["LayerNorm 'layernorm'", "eps", "a Python or NumPy number", "got '1e-5'"]),
    ("upsample-0", lambda: _net([layers.Upsample(0)], (4, 4, 1)), ValueError,
     ["upsample_nearest", "scale", ">= 1 on every axis", "got (0, 0)"]),
    ("upsample-pair-on-signals", lambda: _net([layers.Upsample((2, 2))], (8, 1)), TypeError,
     ["upsample_nearest", "scale", "a tuple of 1 ints, one per spatial axis", "got (2, 2)"]),
    ("upsample-float", lambda: _net([layers.Upsample(1.5)], (4, 4, 1)), TypeError,
     ["upsample_nearest", "scale", "an int or a tuple of 2 ints", "got 1.5"]),
    ("maxpool-3-window-on-images", lambda: _net([layers.MaxPool((2, 2, 2))], (4, 4, 1)),
     TypeError, ["max_pool", "window", "a pair of ints (h, w)", "got (2, 2, 2)"]),
    ("global-pool-flat", lambda: _net([layers.Flatten(), layers.GlobalAvgPool()], (4, 4, 1),
                                      SOFTMAX), ValueError,
     ["global_avg_pool", "x must be (N, *spatial, C)", "1, 2 or 3 spatial axes",
      "got shape (1, 16)"]),
    ("deconv1d-features-groups", lambda: layers.ConvTranspose1D(5, 3, groups=2), ValueError,
     ["ConvTranspose1D 'deconv'", "groups=2 must divide features=5"]),
    ("deconv2d-groups-0", lambda: layers.ConvTranspose2D(2, 3, groups=0), ValueError,
     ["ConvTranspose2D 'deconv'", "groups must be an int >= 1", "got 0"]),
    ("unet-input-shape-str", lambda: models.unet(input_shape="32x32"), TypeError,
     ["unet", "input_shape", "(H, W, C)", "'32x32'"]),
    ("network-input-shape-float", lambda: _net([layers.Conv1D(2, 1)], (4.0, 1)), TypeError,
     ["n: input_shape", "tuple of ints", "(4.0, 1)"]),
    ("network-input-shape-0", lambda: _net([layers.Conv1D(2, 1)], (0, 1)), ValueError,
     ["n: input_shape", ">= 1", "(0, 1)"]),
]


@pytest.mark.parametrize("fn, exc, fragments", [c[1:] for c in NEW_LAYERS],
                         ids=[c[0] for c in NEW_LAYERS])
def test_bad_options_of_the_new_layers(fn, exc, fragments):
    _raises(exc, fragments, fn)


# ----------------------------------------------------------------------------- blocks and models
BLOCKS_AND_MODELS = [
    ("residual-identity-mismatch", lambda: _net([Residual(layers.Conv2D(3, 3, name="c"))],
                                                (6, 6, 3)), ValueError,
     ["Residual 'residual'", "f 'c' maps (6, 6, 3) to (4, 4, 3)", "identity shortcut",
      "(6, 6, 3)", "shapes must be equal", "projection shortcut"]),
    ("residual-shortcut-mismatch", lambda: _net([Residual(
        layers.Conv2D(3, 3, padding="SAME", name="c"), layers.Conv2D(4, 1, name="s"))],
        (6, 6, 3)), ValueError,
     ["Residual 'residual'", "the shortcut 's' gives (6, 6, 4)", "(6, 6, 3)"]),
    ("residual-not-a-layer", lambda: Residual(lambda x: x), TypeError,
     ["Residual 'residual'", "f must be a Layer", "got function"]),
    ("skip-spatial-mismatch", lambda: _net([SkipConcat(layers.MaxPool(2))], (6, 6, 3)),
     ValueError, ["SkipConcat 'skip'", "inner 'maxpool' maps (6, 6, 3) to (3, 3, 3)",
                  "same spatial shape (6, 6)"]),
    ("skip-flat-inner", lambda: _net([SkipConcat(layers.Flatten())], (4, 4, 1), SOFTMAX),
     ValueError, ["SkipConcat 'skip'", "maps (4, 4, 1) to (16,)", "same spatial shape (4, 4)"]),
    ("unet-h-not-divisible-by-4", lambda: models.unet(input_shape=(30, 32, 1)), ValueError,
     ["unet", "input_shape (30, 32, 1)", "H and W divisible by 4"]),
    ("unet-width-0", lambda: models.unet(input_shape=(8, 8, 1), width=0), ValueError,
     ["Conv2D 'conv1'", "features", "got 0"]),
    ("resnet20-layer-norm", lambda: models.resnet20(norm="layer"), ValueError,
     ["resnet20", "norm must be one of batch, group", "got 'layer'"]),
    ("pixel-binary-two-channels", lambda: _net([layers.Conv2D(2, 1)], (4, 4, 1), PIXEL_BINARY),
     ValueError, ["per-position binary head needs one logit per position", "(*S, 1)",
                  "got (4, 4, 2)"]),
    ("pixel-head-flat-logits", lambda: _net([layers.Flatten(), layers.Dense(2)], (4, 4, 1)),
     ValueError, ["per-position head needs logits (*S, K) with spatial axes", "got (2,)"]),
]


@pytest.mark.parametrize("fn, exc, fragments", [c[1:] for c in BLOCKS_AND_MODELS],
                         ids=[c[0] for c in BLOCKS_AND_MODELS])
def test_bad_blocks_and_model_options(fn, exc, fragments):
    _raises(exc, fragments, fn)


# ----------------------------------------------------------------------------- N-d data, labels
CNN1D = models.cnn1d(input_shape=(32, 1))
CNN3D = models.cnn3d(input_shape=(8, 8, 8, 1))


def test_inputs_of_the_wrong_rank_name_the_layout():
    """A 1-D network given images, a 3-D one given images: the message names the layout."""
    _raises(ValueError, ["cnn1d expects inputs of shape (N, 32, 1) (N, W, C)",
                         "got x with shape (2, 32, 32, 1)"], CNN1D.check_input,
            np.zeros((2, 32, 32, 1)))
    _raises(ValueError, ["cnn3d expects inputs of shape (N, 8, 8, 8, 1) (N, D, H, W, C)",
                         "got x with shape (2, 8, 8, 1)"], CNN3D.check_input,
            np.zeros((2, 8, 8, 1)))
    params = CNN1D.init(jax.random.key(0), jnp.float64)
    _raises(ValueError, ["(N, W, C)", "(2, 32, 32, 1)"], jax.jit(CNN1D.loss), params,
            jnp.zeros((2, 32, 32, 1)), np.zeros(2, np.int32))  # before XLA sees it


PIXEL = _net([layers.Conv2D(3, 1, name="logits")], (4, 4, 1), name="pix")
PIXEL_B = _net([layers.Conv2D(1, 1, name="logits")], (4, 4, 1), PIXEL_BINARY, name="pixb")
REG = _net([layers.Flatten(), layers.Dense(3)], (4, 1), REGRESSION, name="reg")
X_PIX = np.zeros((2, 4, 4, 1))

BAD_LABELS = [
    ("pixel-labels-per-image", PIXEL, X_PIX, np.zeros(2, np.int32),
     ["pix expects y of shape (2, 4, 4)", "int class ids in [0, 3)", "got shape (2,)"]),
    ("pixel-labels-wrong-spatial", PIXEL, X_PIX, np.zeros((2, 2, 2), np.int32),
     ["y of shape (2, 4, 4)", "got shape (2, 2, 2)"]),
    ("pixel-labels-float", PIXEL, X_PIX, np.zeros((2, 4, 4)),
     ["y of shape (2, 4, 4) holding int class ids", "float64"]),
    ("pixel-labels-out-of-range", PIXEL, X_PIX, np.full((2, 4, 4), 3, np.int32),
     ["y holding int class ids in [0, 3)", "got values in [3, 3]"]),
    ("pixel-binary-labels-per-image", PIXEL_B, X_PIX, np.zeros(2),
     ["pixb expects y of shape (2, 4, 4)", "0./1. float labels", "got shape (2,)"]),
    ("pixel-binary-labels-2", PIXEL_B, X_PIX, np.full((2, 4, 4), 2.0),
     ["y holding 0./1. float labels", "[2.0, 2.0]"]),
    ("regression-targets-per-example", REG, np.zeros((2, 4, 1)), np.zeros(2),
     ["reg expects y of shape (2, 3)", "float targets", "got shape (2,)"]),
    ("regression-targets-int", REG, np.zeros((2, 4, 1)), np.zeros((2, 3), np.int32),
     ["y of shape (2, 3) holding float targets", "int32"]),
]


@pytest.mark.parametrize("net, x, y, fragments", [c[1:] for c in BAD_LABELS],
                         ids=[c[0] for c in BAD_LABELS])
def test_bad_labels_of_the_new_heads(net, x, y, fragments):
    _raises(ValueError, fragments, net.check_labels, x, y)


def test_bad_pixel_labels_are_refused_on_the_gradient_paths():
    params = PIXEL.init(jax.random.key(0), jnp.float64)
    y = np.zeros(2, np.int32)
    for path in (grads.manual_grad, grads.autodiff_grad):
        _raises(ValueError, ["y of shape (2, 4, 4)", "got shape (2,)"], path, PIXEL, params,
                X_PIX, y)
    _raises(ValueError, ["y of shape (2, 4, 4)"], jax.jit(jax.grad(bridge.bridge(PIXEL).loss)),
            params, X_PIX, y)


# ----------------------------------------------------------------------------- the CIFAR reader
def _cifar_batch(**changes):
    """A valid CIFAR-10 batch dict (two images) with `changes` (byte-string keys) applied."""
    d = {b"batch_label": b"training batch", b"labels": [1, 2],
         b"data": np.zeros((2, 3072), np.uint8), b"filenames": [b"a.png", b"b.png"]}
    d.update({k.encode(): v for k, v in changes.items()})
    return d


# what tests/test_cifar.py does not already cover
BAD_CIFAR = [
    ("unexpected-key", _cifar_batch(evil=b"x"), ["missing []", "unexpected [\"b'evil'\"]"]),
    ("data-one-row-flat", _cifar_batch(data=np.zeros(3072, np.uint8)),
     ["b'data' is a uint8 array of shape (3072,)", "expected a uint8 array (n, 3072)"]),
    ("labels-a-tuple", _cifar_batch(labels=(1, 2)),
     ["b'labels' is a tuple", "expected a list of 2 ints in 0..9"]),
    ("label-a-string", _cifar_batch(labels=[1, "2"]),
     ["b'labels'[1] is '2'", "expected class ids 0..9 (ints)"]),
]


@pytest.mark.parametrize("obj, fragments", [c[1:] for c in BAD_CIFAR],
                         ids=[c[0] for c in BAD_CIFAR])
def test_bad_cifar_batches_name_the_file(tmp_path, obj, fragments):
    import pickle

    from jaxcnn.training import cifar

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    _raises(ValueError, [str(path), *fragments], cifar.read_batch, path)


def test_a_missing_cifar_batch_file_is_named(tmp_path):
    from jaxcnn.training import cifar

    _raises(FileNotFoundError, [str(tmp_path / "nope")], cifar.read_batch, tmp_path / "nope")
