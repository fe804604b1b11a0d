"""Beyond the gradient, float64: per-example gradients, their norms without materialising (both
choices of the cost model forced on every convolution), the clipped mean, gradient statistics,
Hessian-vector products through the manual backward pass and the GGN diagonal, each against its
definition computed with autodiff (`vmap(jax.grad)`, `jax.jvp(jax.grad)`, `jax.jacrev` and
`jax.hessian`), for every model without BatchNorm in training mode."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn.nn import ghost, layers, models
from jaxcnn.nn.network import PIXEL_BINARY, REGRESSION, SOFTMAX, Network

RTOL = 1e-9
LIGHT = ("resnet20-gn",)
MODELS = {  # every model without BatchNorm (small inputs where the model takes any), batch
    "seed": (models.seed_cnn, 4),
    "lenet5-digits": (lambda: models.lenet5_digits(dropout=0.0), 3),
    "cifar": (models.cifar_cnn, 2),
    "resnet20-gn": (lambda: models.resnet20(norm="group", input_shape=(4, 4, 3)), 2),
    "unet": (lambda: models.unet(input_shape=(8, 8, 1)), 2),
    "cnn1d": (lambda: models.cnn1d(input_shape=(16, 1)), 3),
    "cnn3d": (lambda: models.cnn3d(input_shape=(8, 8, 8, 1)), 2),
    "grouped": (lambda: Network("grouped", [  # groups, stride, dilation, a transposed conv
        layers.Conv2D(4, 3, stride=2, padding=1, name="c1"), layers.GroupNorm(2),
        layers.ReLU(name="r1"), layers.Conv2D(4, 3, padding="SAME", groups=2, dilation=2,
                                              name="c2"),
        layers.LayerNorm(), layers.ReLU(name="r2"),
        layers.ConvTranspose2D(3, 3, stride=2, padding=1, output_padding=1, groups=1),
        layers.GlobalAvgPool(), layers.Dense(3)], (8, 8, 2), SOFTMAX), 3),
    "pixel-binary-3d": (lambda: Network("pb3", [
        layers.Conv3D(2, 2, stride=2), layers.ReLU(),
        layers.ConvTranspose3D(1, 2, stride=2)], (4, 4, 4, 1), PIXEL_BINARY), 2),
    "regression-1d": (lambda: Network("reg1", [
        layers.Conv1D(3, 3, padding="SAME", groups=1), layers.Upsample(2),
        layers.Conv1D(2, 3, padding=1, dilation=1, name="c2")], (6, 1), REGRESSION), 3),
}


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _max_rel(tree_a, tree_b) -> float:
    return max(_rel(a, b) for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)))


@functools.cache
def _setup(name: str):
    build, n = MODELS[name]
    model = build()
    rng = np.random.default_rng(3)
    params = model.init(jax.random.key(0), jnp.float64)
    params = jax.tree.map(lambda v: v + jnp.asarray(0.05 * rng.standard_normal(v.shape)), params)
    x = jnp.asarray(rng.standard_normal((n, *model.input_shape)))
    y = jnp.asarray(model.head.random_labels(rng, n, model.output_shape, np.float64))
    v = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape)), params)

    @jax.jit
    def reference(params, x, y, v):
        def loss_i(p, xi, yi):
            return model.loss(p, xi[None], yi[None], train=True)

        per_example = jax.vmap(jax.grad(loss_i), in_axes=(None, 0, 0))(params, x, y)
        norms = jnp.sqrt(sum(jnp.sum(g.reshape(n, -1) ** 2, axis=1)
                             for g in jax.tree.leaves(per_example)))
        hv = jax.jvp(jax.grad(lambda p: model.loss(p, x, y, train=True)), (params,), (v,))[1]
        return per_example, norms, hv

    return model, params, x, y, v, reference(params, x, y, v)


@pytest.mark.parametrize("name", list(MODELS))
def test_per_example_norms_clipping_and_hvp_equal_their_autodiff_definitions(name):
    model, params, x, y, v, (per_example, norms, hv) = _setup(name)
    clips = (float(np.min(norms)) / 10, float(np.median(norms)), float(np.max(norms)) * 10)
    # resnet20-gn: the two forced methods and one clip norm only, a program half as large to
    # compile (auto and the other clip norms are the same code, proven on the other models)
    methods = ("ghost", "instantiate") if name in LIGHT else ("auto", "ghost", "instantiate")
    clips = clips[1:2] if name in LIGHT else clips

    @jax.jit
    def ours(params, x, y, v):
        out = {"grads": jaxcnn.per_example_grads(model, params, x, y, train=True),
               "hvp": jaxcnn.hvp(model, params, x, y, v, train=True)}
        for m in methods:
            out[m] = jaxcnn.per_example_grad_norms(model, params, x, y, train=True, method=m)
        out["clipped"] = [jaxcnn.clipped_grad(model, params, x, y, clip_norm=c) for c in clips]
        return out

    got = ours(params, x, y, v)
    assert _max_rel(got["grads"], per_example) <= RTOL
    for m in methods:
        assert _rel(got[m], norms) <= RTOL, m
    assert _max_rel(got["hvp"], hv) <= RTOL
    for c, (loss, clipped) in zip(clips, got["clipped"]):
        assert _max_rel(clipped, _clipped_mean(per_example, norms, c)) <= RTOL, c
        np.testing.assert_allclose(loss, model.loss(params, x, y, train=True), rtol=1e-12)
    # the clip norms clip all, some (the median: more than one example here) and none
    n_clipped = [int((np.asarray(norms) > c).sum()) for c in clips]
    assert n_clipped == ([1] if name in LIGHT else [len(norms), len(norms) // 2, 0]), n_clipped


def _clipped_mean(per_example, norms, clip):
    """(1/N) sum_i min(1, C / ||g_i||) g_i from the materialised per-example gradients."""
    w = np.minimum(1.0, clip / np.asarray(norms))
    return jax.tree.map(
        lambda g: np.mean(np.asarray(g) * w.reshape((-1,) + (1,) * (g.ndim - 1)), axis=0),
        per_example)


@pytest.mark.parametrize("name", ["seed", "lenet5-digits", "cnn1d", "regression-1d"])
def test_ggn_diagonal_equals_its_definition(name):
    """diag(G) = (1/N) sum_i diag(J_i^T H_i J_i), J_i by jax.jacrev of example i's logits,
    H_i by jax.hessian of its loss in them."""
    model, params, x, y, _, _ = _setup(name)
    got = jax.jit(lambda p: jaxcnn.ggn_diagonal(model, p, x, y))(params)

    def logits(p, xi):  # flat: K = the output's size (a regression output may be (W, C))
        return model.forward(p, xi[None]).activations[-1].reshape(-1)

    def one(xi, yi):
        z = logits(params, xi)
        j = jax.jacrev(logits)(params, xi)  # leaves (K, ...)
        h = jax.hessian(lambda zz: model.head.loss(zz.reshape(1, *model.output_shape),
                                                   yi[None]))(z)  # (K, K)
        return jax.tree.map(lambda jl: jnp.einsum("k...,kl,l...->...", jl, h, jl), j)

    want = jax.tree.map(lambda t: jnp.mean(t, axis=0), jax.vmap(one)(x, y))
    assert _max_rel(got, want) <= RTOL


def test_grad_statistics_are_the_moments_of_the_per_example_gradients():
    model, params, x, y, _, (per_example, _, _) = _setup("lenet5-digits")
    stats = jax.jit(lambda p: jaxcnn.grad_statistics(model, p, x, y, train=True))(params)
    sq = jax.tree.map(lambda g: np.sum(np.asarray(g) ** 2, axis=0), per_example)
    var = jax.tree.map(lambda g: np.var(np.asarray(g), axis=0), per_example)
    assert _max_rel(stats["sum_grad_squared"], sq) <= RTOL
    assert _max_rel(stats["variance"], var) <= 1e-8  # a difference of two moments


def test_the_cost_model_counts_and_chooses():
    # 4x4 output positions, patch 3*3*64, 128 channels: ghost 16^2 + 16 * 576 = 9472 elements
    # (Gram matrices and patches) < 576 * 128 = 73728 for the per-example dW
    assert ghost.costs(16, 576, 128, 1) == {
        "ghost": (2 * 16 * 16 * (576 + 128) + 2 * 16 * 576 * 576, 16 * 16 + 16 * 576),
        "instantiate": (2 * 16 * 576 * 128, 576 * 128)}
    assert ghost.choose(16, 576, 128, 1) == "ghost"
    assert ghost.choose(1024, 27, 32, 1) == "instantiate"  # a 32x32 map: T^2 is large
    assert ghost.choose(256, 576, 128, 1) == "instantiate"  # the patches alone: 147456


BAD = [
    (lambda m, p, x, y: jaxcnn.clipped_grad(m, p, x, y, clip_norm=0.0), ValueError,
     ["clipped_grad", "clip_norm", "> 0", "0.0"]),
    (lambda m, p, x, y: jaxcnn.clipped_grad(m, p, x, y, clip_norm=-1), ValueError,
     ["clip_norm", "-1"]),
    (lambda m, p, x, y: jaxcnn.clipped_grad(m, p, x, y, clip_norm=float("nan")), ValueError,
     ["clip_norm", "nan"]),
    (lambda m, p, x, y: jaxcnn.per_example_grad_norms(m, p, x, y, method="exact"), ValueError,
     ["per_example_grad_norms", "method", "auto, ghost, instantiate", "'exact'"]),
]


@pytest.mark.parametrize("call,err,words", BAD)
def test_bad_arguments_are_refused_naming_them(call, err, words):
    model, params, x, y, _, _ = _setup("seed")
    with pytest.raises(err) as info:
        call(model, params, x, y)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("fn", [
    lambda m, p, x, y: jaxcnn.clipped_grad(m, p, x, y, clip_norm=1.0),
    lambda m, p, x, y: jaxcnn.per_example_grad_norms(m, p, x, y, train=True),
    lambda m, p, x, y: jaxcnn.per_example_grads(m, p, x, y, train=True),
])
def test_batchnorm_is_refused_pointing_to_groupnorm(fn):
    model = models.resnet20(input_shape=(8, 8, 3))
    params = model.init(jax.random.key(0), jnp.float64)
    x = jnp.zeros((2, 8, 8, 3))
    y = jnp.zeros((2,), jnp.int32)
    with pytest.raises(ValueError, match=r"BatchNorm.*GroupNorm"):
        fn(model, params, x, y)


def test_a_users_layer_that_mixes_the_examples_is_refused_as_batchnorm_is():
    """The refusal reads the layer's capability, not its kind: any layer may declare it."""
    mixing = layers.ReLU(name="batch_mixer")._replace(mixes_examples=True)
    model = Network("mixer", [layers.Flatten(), mixing, layers.Dense(2, name="dense")], (2, 2, 1),
                    SOFTMAX)
    params = model.init(jax.random.key(0), jnp.float64)
    x, y = jnp.ones((2, 2, 2, 1)), jnp.zeros((2,), jnp.int32)
    with pytest.raises(ValueError, match=r"mix the examples .*\(batch_mixer\)"):
        jaxcnn.per_example_grad_norms(model, params, x, y, train=True)
    assert not models.cnn1d().layers[0].mixes_examples


def test_batchnorm_in_evaluation_mode_has_exact_per_example_norms():
    model = models.deep_cnn((8, 8, 1))
    rng = np.random.default_rng(1)
    params = model.init(jax.random.key(0), jnp.float64)
    x = jnp.asarray(rng.standard_normal((3, 8, 8, 1)))
    y = jnp.asarray(rng.integers(0, 10, 3))

    def loss_i(p, xi, yi):
        return model.loss(p, xi[None], yi[None])

    per_example = jax.vmap(jax.grad(loss_i), in_axes=(None, 0, 0))(params, x, y)
    want = np.sqrt(sum(np.sum(np.asarray(g).reshape(3, -1) ** 2, axis=1)
                       for g in jax.tree.leaves(per_example)))
    got = jax.jit(lambda p: jaxcnn.per_example_grad_norms(model, p, x, y))(params)
    assert _rel(got, want) <= RTOL
