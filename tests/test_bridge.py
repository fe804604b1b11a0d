"""jaxcnn.bridge: the hand-written rules inside jax.grad, op by op and network by network."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxcnn import backward, bridge, forward, models
from jaxcnn.nn import grads
from jaxcnn.nn.network import Network
from jaxcnn.training import optim, parallel, per_example
from jaxcnn.training import steps as train_steps

from helpers import assert_close, randn

RTOL = 1e-12


def worst(a, b) -> float:
    return max(r.max_rel for r in grads.compare(a, b))


def jitted(fn, model):
    """fn(model, ...) compiled (one XLA program is much faster here than eager op by op)."""
    return jax.jit(functools.partial(fn, model), static_argnames="train")


# ----------------------------------------------------------------------------- op by op
# (name, shapes of the array arguments, options, indices of the differentiable arguments)
OPS = [
    ("conv2d", [(2, 6, 6, 1), (3, 3, 1, 1)], {}, (0, 1)),
    ("conv2d", [(2, 9, 8, 4), (3, 3, 2, 6), (6,)], dict(stride=2, padding="SAME", groups=2),
     (0, 1, 2)),
    ("conv2d", [(2, 9, 10, 3), (3, 2, 1, 3), (3,)], dict(dilation=2, padding=[[1, 0], [2, 1]],
                                                         groups=3), (0, 1, 2)),
    ("conv2d", [(2, 9, 8, 4), (3, 3, 2, 6), (6,)], dict(stride=2, padding=1, groups=2,
                                                        impl="gemm"), (0, 1, 2)),
    ("convolve2d", [(2, 6, 6, 2), (3, 3, 2, 2), (2,)], dict(padding="SAME"), (0, 1, 2)),
    ("dense", [(4, 6), (6, 3), (3,)], {}, (0, 1, 2)),
    ("dense", [(4, 6), (6, 3)], {}, (0, 1)),
    ("flatten", [(2, 2, 2, 3)], {}, (0,)),
    ("max_pool", [(2, 4, 4, 1)], {}, (0,)),
    ("max_pool", [(2, 7, 7, 3)], dict(window=3, stride=2, padding="SAME"), (0,)),
    ("avg_pool", [(2, 7, 7, 3)], dict(window=3, stride=2, padding=1, count_include_pad=False),
     (0,)),
    ("l2_pool", [(2, 6, 6, 2)], dict(window=2), (0,)),
    ("relu", [(2, 4, 4, 1)], {}, (0,)),
    ("leaky_relu", [(2, 4, 4, 1)], dict(negative_slope=0.2), (0,)),
    ("sigmoid", [(4, 1)], {}, (0,)),
    ("tanh", [(4, 5)], {}, (0,)),
    ("softmax", [(4, 5, 3)], dict(axis=1), (0,)),
    ("batch_norm", [(4, 3, 3, 2), (2,), (2,)], dict(eps=1e-3), (0, 1, 2)),
    ("batch_norm", [(4, 3, 3, 2), (2,), (2,), (2,), (2,)], {}, (0, 1, 2)),
    # 1 and 3 spatial axes, transposed convolutions, the new normalisations, joins and shapes
    ("conv1d", [(2, 9, 4), (3, 2, 6), (6,)], dict(stride=2, padding="SAME", groups=2),
     (0, 1, 2)),
    ("conv1d", [(2, 8, 3), (3, 3, 2)], dict(dilation=2, padding=((2, 1),)), (0, 1)),
    ("conv3d", [(2, 5, 6, 5, 2), (3, 2, 3, 2, 3), (3,)], dict(stride=(2, 1, 2), padding=1),
     (0, 1, 2)),
    ("conv3d", [(1, 4, 5, 4, 4), (2, 3, 2, 2, 4)], dict(groups=2, dilation=(2, 1, 1),
                                                        padding="SAME"), (0, 1)),
    ("conv_transpose1d", [(2, 5, 4), (3, 3, 4), (6,)], dict(stride=2, padding=1,
                                                            output_padding=1, groups=2),
     (0, 1, 2)),
    ("conv_transpose2d", [(2, 3, 4, 2), (3, 2, 3, 2), (3,)],
     dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(1, 2)), (0, 1, 2)),
    ("conv_transpose2d", [(1, 3, 3, 3), (2, 3, 2, 3)], dict(stride=2, padding=(0, 1)), (0, 1)),
    ("conv_transpose3d", [(1, 3, 2, 3, 2), (2, 3, 2, 2, 2), (2,)],
     dict(stride=(2, 1, 2), padding=(0, 1, 1), output_padding=(1, 0, 0)), (0, 1, 2)),
    ("group_norm", [(2, 3, 3, 4), (4,), (4,)], dict(groups=2), (0, 1, 2)),
    ("group_norm", [(2, 5, 6), (6,), (6,)], dict(groups=3, eps=1e-3), (0, 1, 2)),
    ("layer_norm", [(2, 3, 3, 4), (4,), (4,)], {}, (0, 1, 2)),
    ("layer_norm", [(2, 2, 2, 2, 3), (3,), (3,)], dict(eps=1e-3), (0, 1, 2)),
    ("moments", [(4, 3, 3, 2)], {}, (0,)),
    ("global_avg_pool", [(2, 3, 4, 5)], {}, (0,)),
    ("global_avg_pool", [(2, 7, 3)], {}, (0,)),
    ("upsample_nearest", [(2, 3, 4, 2)], dict(scale=(2, 3)), (0,)),
    ("upsample_nearest", [(2, 2, 2, 2, 1)], {}, (0,)),
    ("add", [(2, 3, 3, 4), (2, 3, 3, 4)], {}, (0, 1)),
    ("concat", [(2, 3, 3, 4), (2, 3, 3, 2)], {}, (0, 1)),
    ("concat", [(2, 5, 1), (2, 5, 3)], {}, (0, 1)),
    ("max_pool", [(2, 7, 3)], dict(window=3, stride=2), (0,)),
    ("avg_pool", [(2, 4, 4, 4, 2)], dict(window=2), (0,)),
]


def _positive_var(name, args):
    if name == "batch_norm" and len(args) == 5:
        args[4] = np.abs(args[4]) + 0.5
    return args


def _counting(monkeypatch, name):
    """backward.<name> wrapped to count its calls (the bridge looks it up at each call)."""
    calls, rule = [0], getattr(backward, name)

    def counted(*args, **kw):
        calls[0] += 1
        return rule(*args, **kw)

    monkeypatch.setattr(backward, name, counted)
    return calls


@pytest.mark.parametrize("name, shapes, kw, diff", OPS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(OPS)])
def test_op_vjp_matches_jax_grad_of_forward(monkeypatch, name, shapes, kw, diff):
    """The twin's output is the forward's, bit for bit; its VJP runs the rule (counted) and
    equals jax.vjp of the forward for a random cotangent (of every output: moments has two)."""
    rng = np.random.default_rng(0)
    args = _positive_var(name, [randn(rng, *s) for s in shapes])
    f_ops = lambda *a: getattr(bridge, name)(*a, **kw)
    f_fwd = lambda *a: getattr(forward, name)(*a, **kw)
    calls = _counting(monkeypatch, name)
    y_ops, vjp_ops = jax.vjp(f_ops, *args)
    y_fwd, vjp_fwd = jax.vjp(f_fwd, *args)
    for a, b in zip(jax.tree.leaves(y_ops), jax.tree.leaves(y_fwd), strict=True):
        np.testing.assert_array_equal(a, b)
    dy = jax.tree.map(lambda a: randn(rng, *a.shape), y_fwd)
    got, want = vjp_ops(dy), vjp_fwd(dy)
    assert calls[0] == 1, f"jax.vjp of bridge.{name} ran backward.{name} {calls[0]} times"
    for i in diff:
        assert_close(got[i], want[i], RTOL, f"{name} argument {i}")
    for i in set(range(len(args))) - set(diff):  # running statistics: no gradient
        assert not np.any(got[i])


LOSSES = [
    ("sigmoid_binary_cross_entropy", (4, 1), np.array([1.0, 0.0, 1.0, 1.0])),
    ("binary_cross_entropy", (4,), np.array([1.0, 0.0, 1.0, 1.0])),
    ("softmax_cross_entropy", (4, 3), np.array([0, 2, 1, 2])),
    ("softmax_cross_entropy", (4, 3), np.eye(3)[[0, 2, 1, 2]]),
    ("mse", (4, 3), np.linspace(-1, 1, 12).reshape(4, 3)),
    ("pixel_softmax_cross_entropy", (2, 3, 3, 4), np.arange(18).reshape(2, 3, 3) % 4),
    ("pixel_softmax_cross_entropy", (2, 5, 3), np.arange(10).reshape(2, 5) % 3),
    ("pixel_sigmoid_binary_cross_entropy", (2, 3, 3, 1), np.arange(18.0).reshape(2, 3, 3) % 2),
    ("pixel_sigmoid_binary_cross_entropy", (2, 2, 2, 3), np.arange(24.0).reshape(2, 2, 2, 3) % 2),
]


@pytest.mark.parametrize("name, shape, y", LOSSES, ids=[f"{c[0]}-{i}" for i, c in
                                                        enumerate(LOSSES)])
def test_loss_grad_matches_and_labels_get_none(name, shape, y):
    rng = np.random.default_rng(1)
    z = randn(rng, *shape)
    if name == "binary_cross_entropy":
        z = 1 / (1 + np.exp(-z))
    elif name.startswith("pixel"):
        z.reshape(-1)[:2] = 0.0  # exact 0 logits: where a max/abs form's jax.grad was wrong
    g_ops = jax.grad(lambda z: 2.5 * getattr(bridge, name)(z, y))(z)
    g_fwd = jax.grad(lambda z: 2.5 * getattr(forward, name)(z, y))(z)
    assert_close(g_ops, g_fwd, RTOL, name)
    _, vjp = jax.vjp(getattr(bridge, name), z, y)
    dy_label = vjp(1.0)[1]
    if np.issubdtype(y.dtype, np.integer):
        assert dy_label.dtype == jax.dtypes.float0
    else:
        assert not np.any(dy_label)


def test_every_forward_op_has_a_twin_with_its_signature_and_a_check_above():
    """What the module docstring promises: a namesake for every op of jaxcnn.forward, with the
    same parameters (names, kinds, defaults), and each one checked by the two tests above."""
    assert set(bridge.__all__) == set(forward.__all__) | {"bridge"}
    for name in forward.__all__:
        want = inspect.signature(getattr(forward, name)).parameters.values()
        got = inspect.signature(getattr(bridge, name)).parameters.values()
        assert [(p.name, p.kind, p.default) for p in got] == \
            [(p.name, p.kind, p.default) for p in want], name
    assert {c[0] for c in OPS} | {c[0] for c in LOSSES} == set(forward.__all__)


def _small_cnn(p, x, y):
    h = bridge.relu(bridge.conv2d(x, p["w1"], p["b1"], padding="SAME"))
    h = bridge.flatten(bridge.max_pool(h, window=2))
    return bridge.softmax_cross_entropy(bridge.dense(h, p["w2"], p["b2"]), y)


def _small_cnn_forward(p, x, y):
    h = forward.relu(forward.conv2d(x, p["w1"], p["b1"], padding="SAME"))
    h = forward.flatten(forward.max_pool(h, window=2))
    return forward.softmax_cross_entropy(forward.dense(h, p["w2"], p["b2"]), y)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(2)
    p = {"w1": randn(rng, 3, 3, 1, 4), "b1": randn(rng, 4), "w2": randn(rng, 16 * 4, 3),
         "b2": randn(rng, 3)}
    return p, randn(rng, 5, 8, 8, 1), np.array([0, 1, 2, 1, 0])


def test_ops_under_jit_vmap_checkpoint_and_second_order(small):
    p, x, y = small
    ref = jax.grad(_small_cnn_forward)(p, x, y)
    assert worst(jax.jit(jax.grad(_small_cnn))(p, x, y), ref) <= RTOL
    assert worst(jax.grad(jax.checkpoint(_small_cnn))(p, x, y), ref) <= RTOL
    per_ex = jax.vmap(jax.grad(_small_cnn), (None, 0, 0))(p, x[:, None], y[:, None])
    per_ex_ref = jax.vmap(jax.grad(_small_cnn_forward), (None, 0, 0))(p, x[:, None], y[:, None])
    assert worst(per_ex, per_ex_ref) <= RTOL
    # second order: the derivative of the rule's code (smooth here, so the true one)
    x1 = x[0, :, :, 0]
    d2 = jax.grad(lambda v: jnp.sum(jax.grad(lambda u: jnp.sum(bridge.tanh(u) ** 2))(v)))(x1)
    d2_ref = jax.grad(lambda v: jnp.sum(jax.grad(lambda u: jnp.sum(jnp.tanh(u) ** 2))(v)))(x1)
    assert_close(d2, d2_ref, RTOL, "second derivative")


def test_forward_mode_raises_type_error(small):
    p, x, y = small
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(bridge.relu, (x,), (x,))
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jacfwd(lambda w: _small_cnn({**p, "w2": w}, x, y))(p["w2"])
    model = models.seed_cnn()
    params = model.init(jax.random.key(0), jnp.float64)
    xs = np.ones((2, 6, 6, 1))
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(lambda q: bridge.bridge(model).loss(q, xs, np.array([0.0, 1.0])), (params,),
                (params,))


_X4, _W = np.ones((2, 6, 6, 1)), np.ones((3, 3, 1, 2))
BAD = [
    ("conv2d", (np.ones((6, 6, 1)), _W), {}),
    ("conv2d", (_X4.astype(np.float32), _W), {}),
    ("conv2d", (_X4, _W), dict(padding="FULL")),
    ("conv2d", (_X4, _W), dict(padding={"top": 1})),
    ("conv2d", (_X4, _W), dict(stride=1.0)),  # equal to a cached stride=1, yet invalid
    ("conv2d", (_X4, _W), dict(stride=True)),
    ("conv2d", (_X4, _W), dict(impl="fast")),
    ("conv2d", ([[1.0]], _W), {}),
    ("dense", (np.ones((2, 5)), np.ones((4, 3))), {}),
    ("max_pool", (_X4,), dict(window=7)),
    ("relu", (np.ones(3, np.int32),), {}),
    ("flatten", (np.ones(3),), {}),
    ("softmax_cross_entropy", (np.ones((2, 3)), np.array([0, 3])), {}),
    ("batch_norm", (_X4, np.ones(1), np.ones(1), np.ones(1)), {}),
    ("conv1d", (np.ones((2, 8, 3)), np.ones((2, 3, 4))), dict(stride=(1, 2))),
    ("conv3d", (np.ones((1, 4, 4, 4, 2)), np.ones((2, 2, 2, 3, 4))), {}),
    ("conv_transpose2d", (_X4, np.ones((2, 2, 3, 1))), dict(stride=2, output_padding=2)),
    ("conv_transpose1d", (np.ones((2, 5, 3)), np.ones((2, 2, 3))), dict(groups=2)),
    ("group_norm", (_X4.repeat(3, -1), np.ones(3), np.ones(3)), dict(groups=2)),
    ("layer_norm", (_X4, np.ones(2), np.ones(2)), {}),
    ("upsample_nearest", (_X4,), dict(scale=0)),
    ("global_avg_pool", (np.ones((2, 3)),), {}),
    ("add", (_X4, np.ones((2, 6, 5, 1))), {}),
    ("concat", (_X4, np.ones((2, 5, 6, 1))), {}),
    ("moments", (np.ones(3, np.int32),), {}),
    ("pixel_softmax_cross_entropy", (np.ones((2, 6, 6, 3)), np.zeros(2, np.int32)), {}),
    ("pixel_sigmoid_binary_cross_entropy", (np.ones((2, 6, 6, 2)), np.zeros((2, 6, 6))), {}),
]


@pytest.mark.parametrize("name, args, kw", BAD, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD)])
def test_bad_input_raises_the_forward_error(name, args, kw):
    with pytest.raises((ValueError, TypeError)) as want:
        getattr(forward, name)(*args, **kw)
    with pytest.raises(want.type) as got:
        getattr(bridge, name)(*args, **kw)
    assert str(got.value) == str(want.value)


def test_patched_rule_is_what_runs(monkeypatch, small):
    """A marker in jaxcnn.backward.conv2d shows up through ops and the bridge, not forward."""
    p, x, y = small
    model = models.seed_cnn()
    params = model.init(jax.random.key(0), jnp.float64)
    xs, ys = randn(np.random.default_rng(3), 4, 6, 6, 1), np.array([1.0, 0.0, 0.0, 1.0])
    ref_model = jax.grad(model.loss)(params, xs, ys)
    ref_ops = jax.grad(_small_cnn)(p, x, y)
    original = backward.conv2d

    def marked(dy, x, w, **kw):
        dx, dw, db = original(dy, x, w, **kw)
        return dx, dw + 1000, db

    monkeypatch.setattr(backward, "conv2d", marked)
    got = jax.grad(bridge.bridge(model).loss)(params, xs, ys)
    assert_close(got["conv"]["w"], ref_model["conv"]["w"] + 1000, RTOL, "bridged conv w")
    assert worst(got["dense"], ref_model["dense"]) <= RTOL
    assert worst(jax.grad(model.loss)(params, xs, ys), ref_model) == 0  # forward: untouched
    got_ops = jax.jit(jax.grad(_small_cnn))(p, x, y)
    assert_close(got_ops["w1"], ref_ops["w1"] + 1000, RTOL, "ops conv w")
    assert_close(got_ops["w2"], ref_ops["w2"], RTOL, "ops dense w")


# ----------------------------------------------------------------------------- networks
def _case(name):
    rng = np.random.default_rng(4)
    if name == "seed":
        model, n, y = models.seed_cnn(), 8, rng.integers(0, 2, 8).astype(np.float64)
    elif name == "lenet5":
        model, n, y = models.lenet5(), 4, rng.integers(0, 10, 4)
    else:
        model, n, y = models.deep_cnn((8, 8, 1)), 8, rng.integers(0, 10, 8)
    x = randn(rng, n, *model.input_shape)
    params = model.init(jax.random.key(1), jnp.float64)
    return model, params, x, y


def _manual_value_and_grad(model, params, x, y, **kw):
    return grads.value_and_grad(model, "manual")(params, x, y, **kw)


@pytest.mark.parametrize("name", ["seed", "lenet5", "deep"])
def test_bridge_grad_equals_autodiff_and_manual(name):
    model, params, x, y = _case(name)
    bridged = bridge.bridge(model)
    assert (bridged.name, bridged.input_shape) == (model.name, model.input_shape)
    # the same head, its loss now a custom_vjp whose backward is the head's delta
    assert bridged.head._replace(loss=None) == model.head._replace(loss=None)
    assert bridged.head.loss is not model.head.loss
    assert [la.name for la in bridged.layers] == [la.name for la in model.layers]
    key = jax.random.key(5)
    grad_of = lambda m: jax.jit(jax.grad(m.loss), static_argnames="train")
    manual = jitted(_manual_value_and_grad, model)
    state = model.init_state(jnp.float64)
    # training (BatchNorm batch statistics, Dropout with one key), then evaluation with the
    # running averages that training produced
    _, g, (state1, _) = manual(params, x, y, state=state, train=True, key=key)
    for kw in (dict(state=state, train=True, key=key), dict(state=state1, train=False)):
        got = grad_of(bridged)(params, x, y, **kw)
        assert worst(got, grad_of(model)(params, x, y, **kw)) <= RTOL
        assert worst(got, manual(params, x, y, **kw)[1]) <= RTOL
    # the same auxiliary outputs, and the manual path still works on the bridged network
    kw = dict(state=state, train=True, key=key)
    aux_b = jax.jit(bridged.loss_and_aux, static_argnames="train")(params, x, y, **kw)
    aux_m = jax.jit(model.loss_and_aux, static_argnames="train")(params, x, y, **kw)
    assert worst(aux_b, aux_m) <= RTOL
    assert worst(jitted(_manual_value_and_grad, bridged)(params, x, y, **kw)[1], g) <= RTOL


NEW_MODELS = {"unet": lambda: models.unet(num_classes=3, input_shape=(8, 8, 1)),
              "cnn1d": lambda: models.cnn1d(input_shape=(32, 1))}


@pytest.mark.parametrize("name", NEW_MODELS)
def test_bridge_of_the_new_models_autodiff_equals_manual(name):
    """jax.grad of the bridged U-Net (SkipConcat, ConvTranspose2D, the per-pixel head) and 1-D
    CNN (Conv1D, GroupNorm, GlobalAvgPool) is the manual gradient of the model and jax.grad of
    its forward, in one compiled program (training mode: neither model reads `train`)."""
    model = NEW_MODELS[name]()
    rng = np.random.default_rng(8)
    params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape),
                          model.init(jax.random.key(2), jnp.float64))
    x = randn(rng, 2, *model.input_shape)
    y = model.head.random_labels(rng, 2, model.output_shape, np.float64)
    bridged = bridge.bridge(model)

    def run(p):
        kw = dict(train=True)
        return (grads.autodiff_grad(bridged, p, x, y, **kw),
                grads.manual_grad(model, p, x, y, **kw), grads.autodiff_grad(model, p, x, y, **kw))

    (loss_b, g_b), (loss_m, g_m), (_, g_a) = jax.jit(run)(params)
    np.testing.assert_allclose(loss_b, loss_m, rtol=1e-14)
    assert worst(g_b, g_m) <= RTOL and worst(g_b, g_a) <= 1e-9


def test_bridge_under_vmap_checkpoint_and_train_step():
    model, params, x, y = _case("deep")
    bridged = bridge.bridge(model)
    state = model.init_state(jnp.float64)
    # vmap: per-example gradients in evaluation mode
    per_ex = jax.jit(jax.vmap(lambda xi, yi: jax.grad(bridged.loss)(
        params, xi[None], yi[None], state=state)))(x, y)
    assert worst(per_ex, per_example.per_example_grads(model, params, x, y, state=state)) <= RTOL
    # jax.checkpoint around the whole loss, in training
    key = jax.random.key(6)
    loss = lambda p: bridged.loss(p, x, y, state=state, train=True, key=key)
    got = jax.jit(jax.grad(jax.checkpoint(loss)))(params)
    ref = jitted(grads.manual_grad, model)(params, x, y, state=state, train=True, key=key)[1]
    assert worst(got, ref) <= RTOL
    # the gemm formulation of the convolutions reaches the rules through the bridge too
    gemm = dict(state=state, train=True, key=key)
    got = jax.jit(jax.grad(bridged.with_impl("gemm").loss), static_argnames="train")(
        params, x, y, **gemm)
    ref = jax.jit(functools.partial(grads.manual_grad, model.with_impl("gemm")),
                  static_argnames="train")(params, x, y, **gemm)[1]
    assert worst(got, ref) <= RTOL
    # the autodiff train step of a bridged model is the manual train step
    opt = optim.make_optimizer("adam", 1e-3)
    out_b = train_steps.make_train_step(bridged, opt, "autodiff", donate=False)(
        params, state, opt.init(params), (x, y), key)
    out_m = train_steps.make_train_step(model, opt, "manual", donate=False)(
        params, state, opt.init(params), (x, y), key)
    assert worst(out_b[:3], out_m[:3]) <= RTOL


def test_bridge_inside_shard_map_equals_manual_data_parallel():
    """One device here (tests/test_parallel.py runs eight): grad of the global mean loss."""
    model, params, x, y = _case("deep")
    model = models.deep_cnn((8, 8, 1), dropout=0.0)
    bridged, mesh = bridge.bridge(model), parallel.make_mesh(1)
    state = model.init_state(jnp.float64)

    def local(p, s, x, y):
        kw = dict(state=s, train=True, axis_name=parallel.AXIS)
        auto = jax.grad(lambda q: lax.pmean(bridged.loss(q, x, y, **kw), parallel.AXIS))(p)
        kw.pop("axis_name")
        # the global gradient, pmean over the devices inside
        manual = grads.value_and_grad(model, "manual", axis_name=parallel.AXIS)(p, x, y, **kw)[1]
        return auto, manual

    f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")),
                              out_specs=P()))
    auto, manual = f(params, state, x, y)
    assert worst(auto, manual) <= RTOL
    ref = jitted(grads.manual_grad, model)(params, x, y, state=state, train=True)[1]
    assert worst(manual, ref) <= RTOL


def test_bridge_bad_input_raises_the_same_error():
    model, params, x, y = _case("seed")
    bridged = bridge.bridge(model)
    for bad_x, bad_y in [(x[:, :5], y), (x, y[:3]), (x.astype(np.float32), y)]:
        with pytest.raises((ValueError, TypeError)) as want:
            model.loss(params, bad_x, bad_y)
        with pytest.raises(want.type) as got:
            bridged.loss(params, bad_x, bad_y)
        assert str(got.value) == str(want.value)
    assert isinstance(bridged, Network)
