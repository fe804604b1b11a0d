"""Blocks as layers (jaxcnn.nn.combinators) and the layers added with them: every backward equals
jax.vjp of its apply and central differences (float64), in training and evaluation mode, under
jit and vmap; nested blocks; the bridge on a network of blocks; structure and errors."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import backward, bridge, forward
from jaxcnn.nn import grads
from jaxcnn.nn.combinators import Residual, Serial, SkipConcat, kinds
from jaxcnn.nn.layers import (
    AvgPool,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GroupNorm,
    Layer,
    LayerNorm,
    MaxPool,
    ReLU,
    Tanh,
    Upsample,
)
from jaxcnn.nn.network import SOFTMAX, Network

from helpers import rel_err

KEY = jax.random.key(7)  # the dropout key, one for every path
VJP_RTOL, FD_RTOL = 1e-9, 1e-6
MODE_KINDS = {"BatchNorm", "Dropout"}  # the layers whose apply depends on train


def basic_f(c: int, stride: int = 1) -> Layer:
    return Serial(Conv2D(c, 3, stride=stride, padding=1, use_bias=False, name="conv1"),
                  BatchNorm(name="bn1"), ReLU(name="relu"),
                  Conv2D(c, 3, padding=1, use_bias=False, name="conv2"), BatchNorm(name="bn2"),
                  name="f")


def unet_inner() -> Layer:
    return Serial(MaxPool(2, name="down"), Conv2D(6, 3, padding=1, name="conv"),
                  GroupNorm(2, name="gn"), ReLU(name="relu"), Upsample(2, name="up"), name="inner")


def nested() -> Layer:
    """Residual(f = conv -> SkipConcat(conv -> LayerNorm -> tanh) -> 1x1 conv -> BN) -> ReLU
    -> Residual(conv): names repeat across blocks ("conv"), never inside one."""
    skip = SkipConcat(Serial(Conv2D(2, 3, padding=1, name="conv"), LayerNorm(name="ln"),
                             Tanh(name="tanh"), name="inner"), name="skip")
    f = Serial(Conv2D(4, 3, padding=1, name="conv"), skip,
               Conv2D(4, 1, use_bias=False, name="mix"), BatchNorm(name="bn"), name="f")
    return Serial(Residual(f, name="res"), ReLU(name="relu"),
                  Residual(Serial(Conv2D(4, 3, padding=1, name="conv"), Dropout(0.3), name="f"),
                           name="res2"), name="nested")


# name -> (layer, one example's input shape). A conv before BatchNorm has no bias: in training
# its gradient is exactly 0 (the batch mean subtracts it), rounding noise to compare.
CASES = {
    "serial": (lambda: Serial(Conv2D(5, 3, padding=1, use_bias=False, name="conv"),
                              BatchNorm(name="bn"),
                              ReLU(name="relu"), Dropout(0.25, name="drop"),
                              Conv2D(3, 1, name="conv1x1")), (6, 6, 4)),
    "residual-identity": (lambda: Residual(basic_f(4), name="block"), (6, 6, 4)),
    "residual-projection": (lambda: Residual(basic_f(6, stride=2), Serial(
        Conv2D(6, 1, stride=2, use_bias=False, name="conv"), BatchNorm(name="bn"),
        name="projection")), (7, 7, 4)),
    "residual-layer-shortcut": (lambda: Residual(Serial(Conv2D(6, 3, padding=1), name="f"),
                                                 Conv2D(6, 1, name="proj")), (5, 5, 3)),
    "skip-concat": (lambda: SkipConcat(unet_inner()), (6, 6, 4)),
    "nested": (nested, (6, 6, 4)),
    "group-norm": (lambda: GroupNorm(2), (5, 5, 6)),
    "layer-norm": (lambda: LayerNorm(), (5, 5, 6)),
    "global-avg-pool": (lambda: GlobalAvgPool(), (5, 4, 3)),
    "upsample": (lambda: Upsample((2, 3)), (3, 2, 2)),
}
MODES = [(name, train) for name, (make, _) in CASES.items()
         for train in ((False, True) if MODE_KINDS & set(kinds(make())) else (False,))]
_BUILT: dict = {}


class Built(NamedTuple):
    """A case built once: x (3, *in_shape), dy of the output's shape, and compiled functions
    manual / vjp (params, x, dy) -> (dparams, dx), fwd (params, x) -> y."""

    layer: Layer
    params: Any
    state: Any
    x: jax.Array
    dy: jax.Array
    manual: Callable
    vjp: Callable
    fwd: Callable


def perturbed(tree, seed: int, scale: float = 0.05):
    """Every leaf plus small Gaussian noise: gammas off 1, betas and biases off 0 (so no
    pre-activation sits exactly on ReLU's kink), running variances kept positive."""
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(treedef, [jnp.abs(v + scale * rng.standard_normal(v.shape))
                                        if v.ndim == 1 and float(v.min()) > 0 else
                                        v + scale * rng.standard_normal(v.shape) for v in leaves])


def built(name: str, train: bool) -> Built:
    """The case `name` in one mode, built and compiled once."""
    if (name, train) in _BUILT:
        return _BUILT[name, train]
    make, in_shape = CASES[name]
    layer = make()
    out_shape, params, state = layer.init(jax.random.key(0), in_shape, jnp.float64)
    params, state = perturbed(params, 1), perturbed(state, 2, 0.2)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((3, *in_shape)))
    dy = jnp.asarray(rng.standard_normal((3, *out_shape)))

    def fwd(p, x):
        return layer.apply(p, state, x, train=train, key=KEY)[0]

    def manual(p, x, dy):
        _, _, residual = layer.apply(p, state, x, train=train, key=KEY)
        dx, dp = layer.backward(dy, p, x, residual)
        return dp, dx

    def vjp(p, x, dy):
        return jax.vjp(fwd, p, x)[1](dy)

    _BUILT[name, train] = Built(layer, params, state, x, dy, jax.jit(manual), jax.jit(vjp),
                                jax.jit(fwd))
    return _BUILT[name, train]


def assert_trees_close(a, b, rtol: float, what: str) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for (path, la), lb in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        err = rel_err(la, lb)
        assert err <= rtol, f"{what}{jax.tree_util.keystr(path)}: {err:.2e}"


# ----------------------------------------------------------------------------- the rules
@pytest.mark.parametrize("name, train", MODES, ids=[f"{n}-{'train' if t else 'eval'}"
                                                    for n, t in MODES])
def test_backward_equals_vjp_and_central_differences(name, train):
    b = built(name, train)
    params, x, dy, fwd = b.params, b.x, b.dy, b.fwd
    (dp, dx), (dp_ref, dx_ref) = b.manual(params, x, dy), b.vjp(params, x, dy)
    assert jax.tree.structure(dp) == jax.tree.structure(params)
    assert_trees_close((dp, dx), (dp_ref, dx_ref), VJP_RTOL, name)
    # central differences of <dy, f> along one random unit direction per leaf (x and each
    # param): a step of length eps, so that few pre-activations cross a ReLU kink inside it
    rng, eps = np.random.default_rng(4), 1e-6
    leaves, treedef = jax.tree.flatten((params, x))
    for i, (path, g) in enumerate(jax.tree_util.tree_leaves_with_path((dp, dx))):
        v = rng.standard_normal(g.shape)
        v /= np.linalg.norm(v)

        def at(sign, i=i, v=v):
            moved = list(leaves)
            moved[i] = leaves[i] + sign * eps * v
            return float(jnp.vdot(dy, fwd(*jax.tree.unflatten(treedef, moved))))

        fd = (at(1) - at(-1)) / (2 * eps)
        err = abs(fd - float(jnp.vdot(g, v))) / (np.linalg.norm(g) * np.linalg.norm(v))
        assert err <= FD_RTOL, (name, jax.tree_util.keystr(path), err)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_blocks_under_vmap(train):
    """vmap over a leading axis of stacked batches: each slice its own batch (BatchNorm's
    statistics per slice in training), equal to the slices one by one."""
    b = built("residual-projection", train)
    params, manual, vjp = b.params, b.manual, b.vjp
    xs, dys = jnp.stack([b.x, 2 * b.x[::-1]]), jnp.stack([b.dy, -b.dy])
    mapped = jax.jit(jax.vmap(manual, in_axes=(None, 0, 0)))(params, xs, dys)
    mapped_ref = jax.vmap(vjp, in_axes=(None, 0, 0))(params, xs, dys)
    for k in range(2):
        one = manual(params, xs[k], dys[k])
        assert_trees_close(jax.tree.map(lambda a, k=k: a[k], mapped), one, 1e-12, "vmap")
    assert_trees_close(mapped, mapped_ref, VJP_RTOL, "vmap vs vjp")


@pytest.mark.parametrize("name", ["group-norm", "layer-norm"])
def test_norm_layers_compute_the_public_ops(name):
    """The layers run the cores of `forward.group_norm` / `layer_norm` and their rules (x_hat and
    1/sigma kept from the forward): the same values as the public twins."""
    b = built(name, False)
    opts = {"groups": 2} if name == "group-norm" else {}
    op = "group_norm" if name == "group-norm" else "layer_norm"
    gamma, beta = b.params["gamma"], b.params["beta"]
    y = getattr(forward, op)(b.x, gamma, beta, **opts)
    np.testing.assert_allclose(b.fwd(b.params, b.x), y, rtol=1e-14, atol=1e-14)
    dx, dgamma, dbeta = getattr(backward, op)(b.dy, b.x, gamma, beta, **opts)
    dp, dx_layer = b.manual(b.params, b.x, b.dy)
    for got, want in ((dx_layer, dx), (dp["gamma"], dgamma), (dp["beta"], dbeta)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------- in a network
def block_net() -> Network:
    return Network("blocks", [
        Conv2D(4, 3, padding=1, name="stem"), ReLU(name="relu0"),
        Residual(basic_f(4), name="res"), ReLU(name="relu1"),
        SkipConcat(unet_inner(), name="skip"),
        Residual(Serial(Conv2D(6, 3, stride=2, padding=1, name="conv"), Dropout(0.2), name="f"),
                 Conv2D(6, 1, stride=2, name="proj"), name="down"),
        GlobalAvgPool(name="pool"), Dense(3, name="dense"),
    ], (6, 6, 2), SOFTMAX)


@functools.cache
def net_setup():
    """(net, params, state, x (4, 6, 6, 2), y (4,)), params and running averages perturbed."""
    net = block_net()
    params = perturbed(net.init(jax.random.key(0), jnp.float64), 1)
    state = perturbed(net.init_state(jnp.float64), 2, 0.2)
    x = jax.random.normal(jax.random.key(1), (4, *net.input_shape), jnp.float64)
    return net, params, state, x, jnp.arange(4) % net.num_classes


@functools.cache
def net_grads(train: bool, how: str = "manual"):
    """(loss, grads) of the block network, compiled: "manual", "autodiff", "bridge" (jax.grad
    of the bridged loss) or "gemm" (manual, every convolution in impl="gemm")."""
    net, params, state, x, y = net_setup()
    kw = dict(state=state, train=train, key=KEY)
    if how == "bridge":
        return jax.jit(jax.value_and_grad(lambda p: bridge.bridge(net).loss(p, x, y, **kw)))(
            params)
    fn = grads.autodiff_grad if how == "autodiff" else grads.manual_grad
    m = net.with_impl("gemm") if how == "gemm" else net
    return jax.jit(lambda p: fn(m, p, x, y, **kw))(params)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_bridge_on_a_network_of_blocks_equals_manual_grad(train):
    (loss_b, g_b), (loss_m, g_m) = net_grads(train, "bridge"), net_grads(train)
    np.testing.assert_allclose(loss_b, loss_m, rtol=1e-14)
    for ref in (g_m, net_grads(train, "autodiff")[1]):
        for row in grads.compare(g_b, ref):
            assert row.max_rel <= VJP_RTOL, row


def test_structure_of_params_state_and_grads():
    net, params, state, x, y = net_setup()
    shapes = jax.tree.map(lambda a: a.shape, params)
    assert set(shapes) == {"stem", "res", "skip", "down", "dense"}
    assert shapes["res"] == {"f": {"conv1": {"w": (3, 3, 4, 4)}, "bn1": {"gamma": (4,),
                             "beta": (4,)}, "conv2": {"w": (3, 3, 4, 4)},
                             "bn2": {"gamma": (4,), "beta": (4,)}}}  # no shortcut entry
    assert shapes["skip"] == {"inner": {"conv": {"w": (3, 3, 4, 6), "b": (6,)},
                                        "gn": {"gamma": (6,), "beta": (6,)}}}
    assert shapes["down"] == {"f": {"conv": {"w": (3, 3, 10, 6), "b": (6,)}},
                              "shortcut": {"w": (1, 1, 10, 6), "b": (6,)}}
    assert jax.tree.map(lambda a: a.shape, state) == {"res": {"f": {
        "bn1": {"mean": (4,), "var": (4,)}, "bn2": {"mean": (4,), "var": (4,)}}}}
    assert net.shapes[4] == (6, 6, 10) and net.shapes[5] == (3, 3, 6)  # concat, then stride 2
    assert jax.tree.structure(net_grads(True)[1]) == jax.tree.structure(params)
    _, (new_state, _) = jax.jit(lambda p: net.loss_and_aux(p, x, y, state=state, train=True,
                                                           key=KEY))(params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert not np.allclose(new_state["res"]["f"]["bn1"]["mean"], state["res"]["f"]["bn1"]["mean"])
    bad = {**params, "res": {"f": {**params["res"]["f"], "conv1": {}}}}
    with pytest.raises(ValueError, match=re.escape("params['res']['f']['conv1']['w']")):
        net.check_params(bad)


def test_specs_kinds_and_with_impl():
    block = nested()
    assert block.spec["kind"] == "Serial"
    assert [s["name"] for s in block.spec["layers"]] == ["res", "relu", "res2"]
    res = block.spec["layers"][0]
    assert res["kind"] == "Residual" and res["shortcut"] is None
    assert res["f"]["layers"][1] == {"name": "skip", **SkipConcat(Serial(
        Conv2D(2, 3, padding=1, name="conv"), LayerNorm(name="ln"), Tanh(name="tanh"),
        name="inner"), name="skip").spec}
    assert list(kinds(block)).count("Conv2D") == 4 and "LayerNorm" in kinds(block)
    gemm = block.with_impl("gemm")
    assert list(kinds(gemm)) == list(kinds(block))
    convs = [s for s in _walk(gemm.spec) if s.get("kind") == "Conv2D"]
    assert len(convs) == 4 and {s["impl"] for s in convs} == {"gemm"}
    assert Serial(ReLU(), Tanh()).with_impl is None  # no convolution: nothing to rebuild
    assert SkipConcat(AvgPool(1)).with_impl is None and Residual(ReLU()).with_impl is None
    for row in grads.compare(net_grads(False, "gemm")[1], net_grads(False)[1]):
        assert row.max_rel <= VJP_RTOL, row


def _walk(spec):
    if not spec:
        return
    yield spec
    for sub in spec.get("layers", ()):
        yield from _walk(sub)
    for slot in ("f", "shortcut", "inner"):
        yield from _walk(spec.get(slot))


# ----------------------------------------------------------------------------- errors
def test_bad_blocks_are_refused_when_built():
    with pytest.raises(ValueError, match=r"Serial 'serial': layer names must be unique inside "
                                         r"the block; 'a' repeated in \['a', 'b', 'a'\]"):
        Serial(ReLU(name="a"), Tanh(name="b"), ReLU(name="a"))
    with pytest.raises(ValueError, match="Serial 'empty': needs at least one layer"):
        Serial(name="empty")
    with pytest.raises(TypeError, match="Serial 'serial': layer 1 must be a Layer"):
        Serial(ReLU(), "relu")
    with pytest.raises(TypeError, match="Residual 'residual': shortcut must be a Layer"):
        Residual(ReLU(), shortcut=lambda x: x)
    with pytest.raises(ValueError, match="GroupNorm 'groupnorm': groups must be an int >= 1"):
        GroupNorm(0)


BUILD_ERRORS = [
    (Residual(Serial(Conv2D(8, 3, padding=1), name="f"), name="r"), (6, 6, 4),
     ["Residual 'r': f 'f' maps (6, 6, 4) to (6, 6, 8) but the identity shortcut passes x "
      "through as (6, 6, 4)", "projection shortcut"]),
    (Residual(Conv2D(8, 3, stride=2, padding=1, name="c"), Conv2D(8, 1, name="p")), (6, 6, 4),
     ["f 'c' maps (6, 6, 4) to (3, 3, 8) but the shortcut 'p' gives (6, 6, 8)"]),
    (SkipConcat(MaxPool(2, name="pool"), name="s"), (6, 6, 4),
     ["SkipConcat 's': inner 'pool' maps (6, 6, 4) to (3, 3, 4)", "spatial shape (6, 6)"]),
    (SkipConcat(Serial(Flatten(), name="flat")), (6, 6, 4),
     ["inner 'flat' maps (6, 6, 4) to (144,)"]),
    (GroupNorm(3, name="gn"), (6, 6, 4), ["GroupNorm 'gn'", "groups=3 must divide the 4"]),
]


@pytest.mark.parametrize("layer, in_shape, fragments", BUILD_ERRORS,
                         ids=["identity", "projection", "skip-spatial", "skip-rank", "gn"])
def test_shape_mismatches_raise_when_the_network_is_built(layer, in_shape, fragments):
    with pytest.raises(ValueError) as info:
        Network("bad", [Serial(layer, name="outer"), Flatten(), Dense(2)], in_shape, SOFTMAX)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
