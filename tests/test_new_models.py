"""The new models: the U-Net, the 1-D and 3-D CNNs, and two nets built from the new layers (a
REGRESSION head on 1-D signals, a PIXEL_BINARY head on volumes). In float64 the manual backward
pass equals jax.grad (max rel <= 1e-9 per leaf) and central differences (<= 1e-6 relative to the
leaf's largest entry, as tests/test_network.py measures it), in training and evaluation mode, at
batch 1 and batch 8. ResNet-20 with BatchNorm and with GroupNorm: tests/test_resnet.py.

The models run on small inputs (the same architectures: U-Net 8x8, cnn1d 32 samples, cnn3d 8^3).
The check point is init plus 0.05 N(0, 1) on every leaf (as `jaxcnn.tools.gradcheck`): off the
ReLU kinks where zero biases put all-zero windows. Each (model, mode, batch) is ONE compiled
program returning the manual and the autodiff gradients and the central differences on
FD_PER_LEAF random coordinates of every leaf (`grads.finite_difference_grad` is a program of its
own, for the differences only); its result is cached and read by both tests of that case.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxcnn import models
from jaxcnn.nn import grads
from jaxcnn.nn.combinators import Residual, Serial, SkipConcat, kinds
from jaxcnn.nn.layers import (
    BatchNorm,
    Conv1D,
    Conv3D,
    ConvTranspose1D,
    ConvTranspose3D,
    Dense,
    Dropout,
    Flatten,
    GroupNorm,
    LayerNorm,
    MaxPool,
    ReLU,
    Upsample,
)
from jaxcnn.nn.network import PIXEL_BINARY, REGRESSION, Network

VJP_RTOL, FD_RTOL = grads.TOLERANCES["float64"]
FD_PER_LEAF, EPS = 2, 1e-6
KEY = jax.random.key(42)  # the dropout key: one mask for manual, autodiff and the differences
BATCHES = (1, 8)


def regression_1d() -> Network:
    """(16, 2) signals -> 3 float targets: Conv1D, BatchNorm, an identity Residual around
    Conv1D + LayerNorm, max pool, ConvTranspose1D (stride 2, output_padding 1: 8 -> 16),
    Upsample 2, a strided dilated Conv1D, Dropout, Dense; squared error (REGRESSION). The
    convolutions before a BatchNorm have no bias: in training its gradient is exactly 0 (the
    batch mean subtracts it), a leaf of rounding noise that no relative tolerance can judge."""
    return Network("regression_1d", [
        Conv1D(4, 3, padding="SAME", use_bias=False, name="conv1"), BatchNorm(name="bn1"),
        ReLU(name="relu1"),
        Residual(Serial(Conv1D(4, 3, padding=1, name="conv"), LayerNorm(name="ln"), name="f"),
                 name="res"),
        ReLU(name="relu2"), MaxPool(2, name="pool"),
        ConvTranspose1D(3, 3, stride=2, padding=1, output_padding=1, name="up"),
        Upsample(2, name="upsample"),
        Conv1D(2, 3, stride=2, dilation=2, padding="SAME", name="conv2"), Dropout(0.25),
        Flatten(), Dense(3, name="dense"),
    ], (16, 2), REGRESSION)


def pixel_binary_3d() -> Network:
    """(4, 4, 4, 2) volumes -> one logit per voxel of (4, 8, 4): Conv3D, GroupNorm, a SkipConcat
    around max pool -> Conv3D -> BatchNorm -> ConvTranspose3D (stride 2: 2 -> 4), a grouped
    Conv3D, LayerNorm, Upsample (1, 2, 1), a ConvTranspose3D to one channel (PIXEL_BINARY)."""
    down = Serial(MaxPool(2, name="pool"),
                  Conv3D(4, 3, padding=1, use_bias=False, name="conv"), BatchNorm(name="bn"),
                  ReLU(name="relu"),
                  ConvTranspose3D(2, 3, stride=2, padding=1, output_padding=1, name="up"),
                  name="down")
    return Network("pixel_binary_3d", [
        Conv3D(4, 3, padding="SAME", name="conv1"), GroupNorm(2, name="gn1"), ReLU(name="relu1"),
        SkipConcat(down, name="skip"),
        Conv3D(4, (3, 1, 3), padding="SAME", groups=2, name="conv2"), LayerNorm(name="ln"),
        ReLU(name="relu2"), Upsample((1, 2, 1), name="upsample"),
        ConvTranspose3D(1, 3, padding=1, name="logits"),
    ], (4, 4, 4, 2), PIXEL_BINARY)


BUILDERS = {
    "unet": lambda: models.unet(num_classes=3, input_shape=(8, 8, 1)),
    "cnn1d": lambda: models.cnn1d(input_shape=(32, 1)),
    "cnn3d": lambda: models.cnn3d(input_shape=(8, 8, 8, 1)),
    "regression_1d": regression_1d,
    "pixel_binary_3d": pixel_binary_3d,
}
# the models whose layers read `train` (BatchNorm's batch statistics, Dropout): the others are
# one program in both modes (test_train_blind_models_are_one_program_in_both_modes), so their
# evaluation-mode check is their training-mode check
TRAIN_AWARE = ("regression_1d", "pixel_binary_3d")
CASES = [(name, train, n) for name in BUILDERS for train in (
    (True, False) if name in TRAIN_AWARE else (True,)) for n in BATCHES]
IDS = [f"{name}-{'train' if train else 'eval'}-{n}" for name, train, n in CASES]


@functools.cache
def model(name: str) -> Network:
    return BUILDERS[name]()


def _jittered(tree, rng: np.random.Generator, scale: float, positive: bool = False):
    return jax.tree.map(lambda v: jnp.abs(v + scale * rng.standard_normal(v.shape)) if positive
                        else v + scale * rng.standard_normal(v.shape), tree)


@functools.cache
def point(name: str):
    """(params = init + 0.05 N(0, 1), state, x (8, *input_shape), y (8, ...) from the head's
    random_labels); running means and variances perturbed (variances kept > 0), so that
    evaluation mode is not BatchNorm at mean 0, variance 1."""
    m = model(name)
    rng = np.random.default_rng(0)
    params = _jittered(m.init(jax.random.key(1), jnp.float64), rng, 0.05)
    state = {layer: {k: _jittered(v, rng, 0.2, positive=k == "var") for k, v in s.items()}
             for layer, s in m.init_state(jnp.float64).items()}
    x = jnp.asarray(rng.standard_normal((8, *m.input_shape)))
    y = jnp.asarray(m.head.random_labels(rng, 8, m.output_shape, np.float64))
    return params, state, x, y


def coordinates(params, per_leaf: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`per_leaf` random coordinates of every leaf: (per leaf, indices into the flattened leaf;
    all of them as indices into `ravel_pytree(params)`)."""
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]
    starts = np.cumsum([0, *sizes[:-1]])
    rng = np.random.default_rng(3)
    coords = [np.sort(rng.choice(s, min(per_leaf, s), replace=False)) for s in sizes]
    return coords, np.concatenate([s + c for s, c in zip(starts, coords)])


@functools.cache
def program(name: str, train: bool):
    """(params, state, x, y, idx) -> (manual (loss, grads), autodiff (loss, grads), central
    differences at flat indices idx), compiled once per batch shape."""
    m = model(name)

    def run(params, state, x, y, idx):
        kw = dict(state=state, train=train, key=KEY)
        flat, unravel = ravel_pytree(params)

        def one(j):
            e = jnp.zeros_like(flat).at[j].set(EPS)
            return (m.loss(unravel(flat + e), x, y, **kw)
                    - m.loss(unravel(flat - e), x, y, **kw)) / (2 * EPS)

        return (grads.manual_grad(m, params, x, y, **kw),
                grads.autodiff_grad(m, params, x, y, **kw),
                # one coordinate at a time: vmapped over params, every convolution gets a
                # kernel per coordinate, 14x slower here (cnn3d, batch 8: 34 s against 2.4 s)
                jax.lax.map(one, idx))

    return jax.jit(run)


@functools.cache
def results(name: str, train: bool, n: int):
    params, state, x, y = point(name)
    coords, idx = coordinates(params, FD_PER_LEAF)
    manual, auto, fd = program(name, train)(params, state, x[:n], y[:n], idx)
    fd = np.split(np.asarray(fd), np.cumsum([len(c) for c in coords])[:-1])
    return manual, auto, list(zip(coords, fd))


@pytest.mark.parametrize("name, train, n", CASES, ids=IDS)
def test_manual_equals_autodiff(name, train, n):
    (loss_m, g_m), (loss_a, g_a), _ = results(name, train, n)
    assert jax.tree.structure(g_m) == jax.tree.structure(point(name)[0])
    np.testing.assert_allclose(loss_m, loss_a, rtol=1e-12)
    rows = grads.compare(g_m, g_a)
    assert len(rows) == len(jax.tree.leaves(g_m)) > 0
    for row in rows:
        assert row.within(VJP_RTOL), row


@pytest.mark.parametrize("name, train, n", CASES, ids=IDS)
def test_manual_matches_central_differences(name, train, n):
    (_, g), _, fd = results(name, train, n)
    for (path, leaf), (coords, values) in zip(jax.tree_util.tree_leaves_with_path(g), fd):
        leaf = np.asarray(leaf).ravel()
        assert np.isfinite(values).all() and np.abs(leaf).max() > 0, jax.tree_util.keystr(path)
        err = np.abs(leaf[coords] - values).max() / np.abs(leaf).max()
        assert err <= FD_RTOL, (jax.tree_util.keystr(path), err)


def test_the_library_finite_differences_agree_on_the_1d_regression_net():
    """`grads.finite_difference_grad` (a program of its own, which is why the checks above
    compute their differences in theirs) on 2 coordinates of every leaf of the
    regression net in training mode, batch 1: BatchNorm's batch statistics, the Residual, the
    transposed convolution and Dropout's mask (the same key) through the library's own tool."""
    m = model("regression_1d")
    params, state, x, y = point("regression_1d")
    kw = dict(state=state, train=True, key=KEY)
    (_, g), _, _ = results("regression_1d", True, 1)
    fd, evaluated = grads.finite_difference_grad(m, params, x[:1], y[:1], eps=EPS,
                                                 max_per_leaf=FD_PER_LEAF, return_mask=True,
                                                 **kw)
    for (path, leaf), f, e in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(fd),
                                  jax.tree.leaves(evaluated)):
        leaf, f = np.asarray(leaf), np.asarray(f)
        assert e.sum() == min(FD_PER_LEAF, leaf.size) and np.isfinite(f[e]).all()
        err = np.abs(leaf[e] - f[e]).max() / np.abs(leaf).max()
        assert err <= FD_RTOL, (jax.tree_util.keystr(path), err)


def test_train_blind_models_are_one_program_in_both_modes():
    """The U-Net, cnn1d and cnn3d have no layer that reads `train` (no BatchNorm, no Dropout;
    GroupNorm normalises each example on its own), so the gradient program of evaluation mode is
    the very program of training mode, which the checks above run; the two other nets do read
    it, and are checked in both modes."""
    for name in BUILDERS:
        m = model(name)
        layer_kinds = {k for layer in m.layers for k in kinds(layer)}
        assert bool({"BatchNorm", "Dropout"} & layer_kinds) == (name in TRAIN_AWARE), name
        if name in TRAIN_AWARE:
            continue
        params, _, x, y = point(name)

        def jaxpr(train, m=m, params=params, x=x, y=y):
            return str(jax.make_jaxpr(lambda p: grads.manual_grad(
                m, p, x[:1], y[:1], train=train, key=KEY))(params))

        assert jaxpr(True) == jaxpr(False), name


def test_the_nets_use_the_new_layers_and_heads():
    """What the checks above cover: every new layer kind, both new heads, 1 to 3 spatial axes."""
    used = {k for name in BUILDERS for layer in model(name).layers for k in kinds(layer)}
    assert used >= {"Conv1D", "Conv3D", "ConvTranspose1D", "ConvTranspose2D", "ConvTranspose3D",
                    "GroupNorm", "LayerNorm", "Upsample", "SkipConcat", "Residual",
                    "GlobalAvgPool"}
    assert {model(name).head.kind for name in BUILDERS} == {"pixel_softmax", "softmax",
                                                           "regression", "pixel_binary"}
    assert model("unet").output_shape == (8, 8, 3)
    assert model("regression_1d").shapes[6] == (16, 3)  # the transposed conv: 8 -> 16
    assert model("pixel_binary_3d").output_shape == (4, 8, 4, 1)
