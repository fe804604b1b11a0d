"""ResNet-20 (BatchNorm and GroupNorm): the manual backward pass equals jax.grad and central
differences (float64), in training and evaluation mode, at batch 1 and 8; 272,474 parameters.
Central differences: on coordinates of every leaf at batch 1, along directions through all the
parameters at batch 8 in training mode.

The gradient checks run on 16x16 images (the same network: three stages 16 -> 8 -> 4, global
pooling makes the dense layer independent of the size) and once on the 32x32x3 default. Every
gradient function is compiled once per model, mode and batch shape, manual and autodiff in one
program, and reused.
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
from jaxcnn.nn.combinators import kinds
from jaxcnn.nn.network import Network

NAMES = ("resnet20", "resnet20-gn")
SMALL = (16, 16, 3)
PARAMS_RESNET20 = 272_474  # 432 + 32 + 14,016 + 51,648 + 205,696 + 650
VJP_RTOL, FD_RTOL = grads.TOLERANCES["float64"]


@functools.cache
def model(name: str, input_shape: tuple[int, int, int] = SMALL, impl: str = "conv") -> Network:
    norm = "group" if name.endswith("-gn") else "batch"
    return models.resnet20(input_shape=input_shape, norm=norm, impl=impl)


def perturbed(tree, seed: int, scale: float):
    """Every leaf plus Gaussian noise (gammas off 1, betas and the dense bias off 0); running
    variances stay positive."""
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(treedef, [jnp.abs(v + scale * rng.standard_normal(v.shape))
                                        if float(v.min()) > 0 and v.ndim == 1 else
                                        v + scale * rng.standard_normal(v.shape) for v in leaves])


@functools.cache
def setup(name: str, input_shape: tuple[int, int, int] = SMALL):
    """(params, state, x (8, *input_shape), y (8,)): random running averages, so evaluation
    mode is not BatchNorm at mean 0, variance 1."""
    m = model(name, input_shape)
    params = perturbed(m.init(jax.random.key(0), jnp.float64), 1, 0.05)
    state = perturbed(m.init_state(jnp.float64), 2, 0.2)
    x = jax.random.normal(jax.random.key(3), (8, *input_shape), jnp.float64)
    return params, state, x, jnp.arange(8) * 7 % 10


@functools.cache
def both(name: str, train: bool, input_shape: tuple[int, int, int] = SMALL):
    """One compiled program (params, state, x, y) -> ((loss, grads) manual, autodiff)."""
    m = model(name, input_shape)

    def run(params, state, x, y):
        kw = dict(state=state, train=train)
        return grads.manual_grad(m, params, x, y, **kw), grads.autodiff_grad(m, params, x, y, **kw)

    return jax.jit(run)


@functools.cache
def gradients(name: str, train: bool, n: int, input_shape: tuple[int, int, int] = SMALL):
    params, state, x, y = setup(name, input_shape)
    return both(name, train, input_shape)(params, state, x[:n], y[:n])


def assert_manual_is_autodiff(name: str, train: bool, n: int, input_shape=SMALL) -> None:
    (loss_m, g_m), (loss_a, g_a) = gradients(name, train, n, input_shape)
    assert jax.tree.structure(g_m) == jax.tree.structure(setup(name, input_shape)[0])
    np.testing.assert_allclose(loss_m, loss_a, rtol=1e-13)
    rows = grads.compare(g_m, g_a)
    assert len(rows) == 65  # 21 convolutions (w), 21 norms (gamma, beta), the dense (w, b)
    for row in rows:
        assert row.max_rel <= VJP_RTOL, row


# ----------------------------------------------------------------------------- manual = autodiff
CHECKS = [("resnet20", False), ("resnet20", True), ("resnet20-gn", True)]


@pytest.mark.parametrize("n", [1, 8])
@pytest.mark.parametrize("name, train", CHECKS, ids=["bn-eval", "bn-train", "gn"])
def test_manual_equals_autodiff(name, train, n):
    assert_manual_is_autodiff(name, train, n)


def test_manual_equals_autodiff_on_the_32x32_default_at_batch_1():
    """He et al.'s CIFAR input; in training, the last stage's BatchNorm takes its statistics
    over the 8 x 8 positions of one image."""
    assert model("resnet20", (32, 32, 3)).shapes[-3] == (8, 8, 64)
    assert_manual_is_autodiff("resnet20", True, 1, (32, 32, 3))


def test_group_norm_model_is_one_program_in_both_modes():
    """resnet20-gn has no layer that reads `train` (GroupNorm normalises each example on its
    own, there is no Dropout), so evaluation mode is the very program training mode is: its
    check above covers both."""
    m = model("resnet20-gn")
    assert not {"BatchNorm", "Dropout"} & {k for layer in m.layers for k in kinds(layer)}
    params, _, x, y = setup("resnet20-gn")

    def program(train):
        return str(jax.make_jaxpr(lambda p: grads.manual_grad(m, p, x[:2], y[:2],
                                                              train=train))(params))

    assert program(True) == program(False)


# ----------------------------------------------------------------------------- finite differences
def central_differences(m: Network, params, x, y, per_leaf: int, eps: float = 1e-6, **kw):
    """Central differences on `per_leaf` random coordinates of every leaf, in ONE compiled
    program (as grads.finite_difference_grad, with this test's step 3e-6): the coordinates of
    the flattened parameters, perturbed 32 at a time under vmap. Returns [(coords, fd)] per
    leaf, coords into the flattened leaf."""
    flat, unravel = ravel_pytree(params)
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]
    starts = np.cumsum([0, *sizes[:-1]])
    rng = np.random.default_rng(0)
    coords = [np.sort(rng.choice(s, min(per_leaf, s), replace=False)) for s in sizes]

    @jax.jit
    def differences(flat, idx):
        def one(j):
            e = jnp.zeros_like(flat).at[j].set(eps)
            return (m.loss(unravel(flat + e), x, y, **kw)
                    - m.loss(unravel(flat - e), x, y, **kw)) / (2 * eps)
        return jax.lax.map(one, idx, batch_size=32)

    fd = np.asarray(differences(flat, np.concatenate([s + c for s, c in zip(starts, coords)])))
    return list(zip(coords, np.split(fd, np.cumsum([len(c) for c in coords])[:-1])))


@pytest.mark.parametrize("name, train", CHECKS, ids=["bn-eval", "bn-train", "gn"])
def test_manual_matches_central_differences(name, train):
    """2 random coordinates of each of the 65 leaves at batch 1 (the gradients of the check
    above, reused); the error is relative to the leaf's largest gradient entry (as
    tests/test_network.py measures it).

    The step is 3e-6. At 1e-6 rounding dominates on the leaves with the smallest gradients (the
    error grows as 1/eps: in evaluation mode at batch 2, 2e-8, 2.5e-7, 2.3e-6 at 1e-5, 1e-6,
    1e-7); at 1e-5 a perturbation can carry a pre-activation across a ReLU kink (4e-3 measured
    in training mode at batch 2: BatchNorm's batch statistics move every unit downstream). At
    3e-6 the worst of the three checks measured 1.6e-8.
    """
    m = model(name)
    params, state, x, y = setup(name)
    (_, g), _ = gradients(name, train, 1)
    fd = central_differences(m, params, x[:1], y[:1], 2, eps=3e-6, state=state, train=train)
    for (path, leaf), (coords, values) in zip(jax.tree_util.tree_leaves_with_path(g), fd):
        leaf = np.asarray(leaf).ravel()
        err = np.abs(leaf[coords] - values).max() / np.abs(leaf).max()
        assert err <= FD_RTOL, (jax.tree_util.keystr(path), err)


def directional_differences(m: Network, params, x, y, directions: int, eps: float, **kw):
    """(L(p + eps v) - L(p - eps v)) / (2 eps) along `directions` random directions v over ALL
    the parameters at once (one compiled loss, called 2 * directions times); returns (the
    differences, the directions as pytrees of params' structure)."""
    rng = np.random.default_rng(7)
    loss = jax.jit(lambda p: m.loss(p, x, y, **kw))
    vs = [jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), params)
          for _ in range(directions)]
    step = lambda v, sign: jax.tree.map(lambda a, d: a + sign * eps * d, params, v)
    return [(float(loss(step(v, 1))) - float(loss(step(v, -1)))) / (2 * eps) for v in vs], vs


@pytest.mark.parametrize("name", NAMES, ids=["bn-train", "gn"])
def test_manual_matches_directional_differences_at_batch_8(name):
    """Training mode at batch 8, where BatchNorm's statistics couple the examples: the
    derivative along 3 random directions v through all 272,474 parameters, <grads, v>, against
    central differences of the loss, within 1e-6 relative (measured: at most 1.9e-9, step 1e-7).

    Why directions, not the coordinates of the batch-1 check: that program cost 20-30 s per
    check at batch 8. A direction through every parameter carries the whole gradient's signal
    (|<g, v>| ~ |g|), so the step can be small while rounding stays far below the tolerance.
    Not evaluation mode: there each example's loss is a function of its own (BatchNorm a fixed
    affine map), so the batch-8 loss is the mean of batch-1 losses, which
    test_manual_matches_central_differences checks; and along such directions its differences
    crossed ReLU kinks (1.4e-4 at step 1e-7, 8e-5 at 1e-8, 4e-8 at 1e-9: not the eps^2 of a
    smooth function).
    """
    m = model(name)
    params, state, x, y = setup(name)
    (_, g), _ = gradients(name, True, 8)
    fd, vs = directional_differences(m, params, x, y, 3, 1e-7, state=state, train=True)
    for i, (value, v) in enumerate(zip(fd, vs)):
        analytic = sum(float(jnp.vdot(a, d)) for a, d in zip(jax.tree.leaves(g),
                                                             jax.tree.leaves(v)))
        assert abs(value - analytic) <= FD_RTOL * abs(analytic), (i, value, analytic)


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_and_layout(name):
    m = models.get(name)
    assert m.input_shape == (32, 32, 3) and m.output_shape == (10,)
    count = sum(int(np.prod(s)) for s in jax.tree.leaves(m.param_shapes,
                                                         is_leaf=lambda v: isinstance(v, tuple)))
    assert count == PARAMS_RESNET20
    assert abs(count - 270_000) <= 0.02 * 270_000  # the paper's 0.27M
    shapes = m.param_shapes
    assert shapes["conv"] == {"w": (3, 3, 3, 16)} and shapes["dense"] == {"w": (64, 10),
                                                                          "b": (10,)}
    assert set(shapes["stage1_block1"]) == {"f"}  # identity shortcut: no parameters
    assert shapes["stage2_block1"]["shortcut"] == {"conv": {"w": (1, 1, 16, 32)},
                                                   "norm": {"gamma": (32,), "beta": (32,)}}
    assert shapes["stage3_block1"]["f"]["conv1"] == {"w": (3, 3, 32, 64)}
    assert [s for layer, s in zip(m.layers, m.shapes) if layer.name.endswith("block3")] == [
        (32, 32, 16), (16, 16, 32), (8, 8, 64)]
    assert bool(m.state_shapes) == (name == "resnet20")  # GroupNorm keeps no running averages
    norms = [k for layer in m.layers for k in kinds(layer) if k.endswith("Norm")]
    assert len(norms) == 21 and set(norms) == {"BatchNorm" if name == "resnet20" else "GroupNorm"}


def test_bad_norm_is_refused():
    with pytest.raises(ValueError, match="resnet20: norm must be one of batch, group; got 'layer'"):
        models.resnet20(norm="layer")


def test_with_impl_auto_gives_the_same_gradients():
    """impl="auto" runs some convolutions' dx as per-offset products on the CPU (the strided
    ones and those of at most 16 input channels): the same sums in another order."""
    auto = model("resnet20").with_impl("auto")
    convs = [s for s in _specs(auto) if s.get("kind") == "Conv2D"]
    assert len(convs) == 21 and {s["impl"] for s in convs} == {"auto"}
    params, state, x, y = setup("resnet20")
    _, g_auto = jax.jit(lambda p: grads.manual_grad(auto, p, x, y, state=state, train=True))(
        params)
    (_, g_conv), _ = gradients("resnet20", True, 8)
    for row in grads.compare(g_auto, g_conv):
        assert row.max_rel <= VJP_RTOL, row


def _specs(m: Network):
    def walk(spec):
        if spec:
            yield spec
            for sub in spec.get("layers", ()):
                yield from walk(sub)
            for slot in ("f", "shortcut", "inner"):
                yield from walk(spec.get(slot))
    for layer in m.layers:
        yield from walk(layer.spec)
