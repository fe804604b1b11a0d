"""The documented jit form of every public function, `jax.jit(f, static_argnums=0)` (plus
`static_argnames="method"` for the string option), works for every argument it takes, and gives
the eager call's numbers (float64; both run the same rules, so to rounding).

A `train` passed through jit is traced: `jaxcnn.nn.mode.by_mode` compiles both modes under
`lax.cond`, so one compiled function serves train=True and train=False. The refusals: training
mode that cannot be traced (Dropout with no key), a per-example function on a BatchNorm model with
a traced train, a string option not marked static, a train that is not a boolean scalar.

Kept small: tiny models, batch 2-3, each function jitted once per shape family.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn.nn.grads import value_and_grad
from jaxcnn.nn.layers import Conv2D, Dense, Dropout, Flatten, ReLU
from jaxcnn.nn.mode import by_mode, check_train
from jaxcnn.nn.network import SOFTMAX, Network
from jaxcnn.nn.norm_layers import BatchNorm
from jaxcnn.training.per_example import check_clip_norm

RTOL = 1e-12


def jit(fn, *static):
    """The documented form: `jax.jit(fn, static_argnums=0)`, with the string options static."""
    return jax.jit(fn, static_argnums=0, static_argnames=static or None)


def counted(fn):
    """fn, counting how often it is called: under jit, how often it is traced."""
    @functools.wraps(fn)
    def f(*args, **kw):
        f.traces += 1
        return fn(*args, **kw)

    f.traces = 0
    return f


def assert_same(got, want, rtol=RTOL):
    """Every leaf within rtol of the reference, relative to the largest |value| of its leaf
    (floored at 1e-3 of the tree's largest: BatchNorm's beta after a BatchNorm is ~1e-17)."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    want_leaves = [np.asarray(w) for w in jax.tree.leaves(want)]
    top = max(float(np.max(np.abs(w))) for w in want_leaves)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), want_leaves):
        scale = max(float(np.max(np.abs(w))), 1e-3 * top, 1e-300)
        diff = float(np.max(np.abs(np.asarray(g) - w)))
        assert diff <= rtol * scale, f"{jax.tree_util.keystr(path)}: {diff:.3e} vs {scale:.3e}"


def tiny(*layers, name: str) -> Network:
    return Network(name, [Conv2D(2, 3, name="conv"), *layers, Flatten(name="flat"),
                          Dense(3, name="dense")], (5, 5, 1), SOFTMAX)


@pytest.fixture(scope="module")
def data():
    kx, kp, kd = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, 5, 5, 1), jnp.float64)
    y = jnp.array([0, 2, 1])
    bn = tiny(BatchNorm(name="bn"), ReLU(name="relu"), name="tiny_bn")
    drop = tiny(ReLU(name="relu"), Dropout(0.5, name="drop"), name="tiny_drop")
    deep = jaxcnn.models.get("deep-digits")
    state = {"bn": {"mean": jnp.array([0.1, -0.2]), "var": jnp.array([0.7, 1.3])}}
    deep_state = jax.tree.map(lambda s: s * 0.9 + 0.05, deep.init_state(jnp.float64))
    return {"x": x, "y": y, "key": kd, "bn": bn, "bn_p": bn.init(kp, jnp.float64),
            "drop": drop, "drop_p": drop.init(kp, jnp.float64), "state": state,
            "deep": deep, "deep_p": deep.init(kp, jnp.float64), "deep_state": deep_state,
            "xd": jax.random.normal(kx, (3, 8, 8, 1), jnp.float64), "yd": jnp.array([0, 9, 4])}


# ------------------------------------------------------------------------ whole-batch gradients
@pytest.mark.parametrize("fn", [jaxcnn.manual_grad, jaxcnn.autodiff_grad],
                         ids=["manual_grad", "autodiff_grad"])
def test_batch_grads_under_jit_take_train_state_and_key(fn, data):
    """deep-digits (BatchNorm and Dropout): train traced, both values through one compile, with
    a non-default state and a traced key, equal the eager calls."""
    m, p, x, y = data["deep"], data["deep_p"], data["xd"], data["yd"]
    kw = dict(state=data["deep_state"], key=data["key"])
    jitted = jit(traced := counted(fn))
    for train in (True, False):
        assert_same(jitted(m, p, x, y, train=train, **kw), fn(m, p, x, y, train=train, **kw))
    assert traced.traces == 1   # one program serves both modes
    other = jax.random.key(7)   # the key is traced too: a new one, no recompile, new mask
    got = jitted(m, p, x, y, train=True, state=kw["state"], key=other)
    assert_same(got, fn(m, p, x, y, train=True, state=kw["state"], key=other))
    assert traced.traces == 1


def test_value_and_grad_under_jit_returns_the_updated_state(data):
    m, p, x, y = data["bn"], data["bn_p"], data["x"], data["y"]
    vg = value_and_grad(m, "manual")
    jitted = jax.jit(vg)
    for train in (True, False):
        assert_same(jitted(p, x, y, state=data["state"], train=train),
                    vg(p, x, y, state=data["state"], train=train))


def test_traced_train_with_dropout_and_no_key_says_pass_a_key_or_make_train_static(data):
    m, p, x, y = data["deep"], data["deep_p"], data["xd"], data["yd"]
    with pytest.raises(ValueError, match=r"manual_grad: train is traced .*training needs a PRNG "
                       r"key.*static_argnames=\"train\""):
        jit(jaxcnn.manual_grad)(m, p, x, y, train=False)
    # the static form compiles evaluation mode alone, which needs no key
    loss, _ = jit(jaxcnn.manual_grad, "train")(data["drop"], data["drop_p"], data["x"],
                                                data["y"], train=False)
    assert np.isfinite(loss)


def test_an_input_error_under_traced_train_is_not_blamed_on_the_mode(data):
    params = {**data["bn_p"], "dense": {"w": data["bn_p"]["dense"]["w"]}}   # no dense b
    with pytest.raises(ValueError) as err:
        jit(jaxcnn.manual_grad)(data["bn"], params, data["x"], data["y"], train=True)
    assert "dense" in str(err.value) and "train is traced" not in str(err.value)


@pytest.mark.parametrize("train", [1, None, "yes", jnp.array(1.0), jnp.ones(2, bool)])
def test_train_must_be_a_boolean_scalar(train, data):
    with pytest.raises(TypeError, match="manual_grad: train must be a bool"):
        jaxcnn.manual_grad(data["bn"], data["bn_p"], data["x"], data["y"], train=train)


def test_train_traced_with_another_dtype_is_refused_under_jit(data):
    with pytest.raises(TypeError, match=r"hvp: train must be a bool .*dtype float"):
        jit(jaxcnn.hvp)(data["bn"], data["bn_p"], data["x"], data["y"], data["bn_p"],
                        train=1.0)


def test_check_train_and_by_mode_on_known_values():
    assert check_train("f", np.bool_(True)) is True and check_train("f", jnp.array(False)) is False
    assert by_mode("f", jnp.array(True), lambda t: t) is True


# ----------------------------------------------------------------------------- per example
def test_per_example_grad_norms_under_jit_take_train_key_state_and_method(data):
    m, p, x, y = data["drop"], data["drop_p"], data["x"], data["y"]
    fn = jaxcnn.per_example_grad_norms
    for method in ("ghost", "instantiate"):
        jitted = jit(fn, "method")
        for train in (True, False):
            kw = dict(train=train, key=data["key"], method=method)
            assert_same(jitted(m, p, x, y, **kw), fn(m, p, x, y, **kw))
    bn, bp, state = data["bn"], data["bn_p"], data["state"]   # state: evaluation-mode BatchNorm
    assert_same(jit(fn)(bn, bp, x, y, state=state), fn(bn, bp, x, y, state=state))


def test_per_example_grads_and_statistics_under_jit_take_train_and_state(data):
    seed = jaxcnn.models.get("seed")   # no BatchNorm, no Dropout: training mode has no key
    sp = seed.init(jax.random.key(3), jnp.float64)
    xs = jax.random.normal(jax.random.key(4), (2, 6, 6, 1), jnp.float64)
    ys = jnp.array([1.0, 0.0])
    bn, bp, x, y, state = data["bn"], data["bn_p"], data["x"], data["y"], data["state"]
    for fn in (jaxcnn.per_example_grads, jaxcnn.grad_statistics):
        jitted = jit(fn)
        for train in (True, False):
            assert_same(jitted(seed, sp, xs, ys, train=train), fn(seed, sp, xs, ys, train=train))
        assert_same(jitted(bn, bp, x, y, state=state), fn(bn, bp, x, y, state=state))


@pytest.mark.parametrize("fn", [jaxcnn.per_example_grads, jaxcnn.per_example_grad_norms,
                                jaxcnn.grad_statistics],
                         ids=["per_example_grads", "per_example_grad_norms", "grad_statistics"])
def test_per_example_with_traced_train_on_batchnorm_says_train_must_be_static(fn, data):
    name = fn.__name__
    with pytest.raises(ValueError, match=rf"{name}: train is traced .*tiny_bn has BatchNorm.*"
                       rf"train must be static .*static_argnames=\"train\""):
        jit(fn)(data["bn"], data["bn_p"], data["x"], data["y"], train=False)


def test_per_example_grads_with_traced_train_and_dropout_names_the_static_form(data):
    with pytest.raises(ValueError, match=r"per_example_grads: train is traced .*PRNG key"):
        jit(jaxcnn.per_example_grads)(data["drop"], data["drop_p"], data["x"], data["y"],
                                      train=True)


def test_clipped_grad_under_jit_takes_clip_norm_key_and_method(data):
    m, p, x, y, key = data["drop"], data["drop_p"], data["x"], data["y"], data["key"]
    fn = jaxcnn.clipped_grad
    jitted = jit(traced := counted(fn), "method")
    for clip in (0.05, 1e3):   # a traced float: one compile, clipped and not
        kw = dict(clip_norm=clip, key=key, method="instantiate")
        assert_same(jitted(m, p, x, y, **kw), fn(m, p, x, y, **kw))
    assert traced.traces == 1
    # a traced clip_norm is not checked (its value is unknown); a known array one is
    with pytest.raises(ValueError, match="clipped_grad: clip_norm must be a number > 0"):
        fn(m, p, x, y, clip_norm=jnp.array(-1.0), key=key)


@pytest.mark.parametrize("clip", [np.float64(0.5), jnp.array(2.0), 3, float("inf")])
def test_check_clip_norm_accepts_real_scalars(clip):
    check_clip_norm("f", clip)


@pytest.mark.parametrize("clip", [0.0, -1, float("nan"), True, np.bool_(True), "1",
                                  jnp.ones(2), jnp.array(0.0), np.float64("nan")])
def test_check_clip_norm_refuses(clip):
    with pytest.raises(ValueError, match="f: clip_norm must be a number > 0"):
        check_clip_norm("f", clip)


@pytest.mark.parametrize("fn", [jaxcnn.per_example_grad_norms, jaxcnn.clipped_grad],
                         ids=["per_example_grad_norms", "clipped_grad"])
def test_method_not_static_gives_jax_own_error(fn, data):
    kw = {"clip_norm": 1.0} if fn is jaxcnn.clipped_grad else {}
    with pytest.raises(TypeError, match=r"(?s)path method.*static_argnums or static_argnames"):
        jit(fn)(data["drop"], data["drop_p"], data["x"], data["y"], method="ghost", **kw)


# ----------------------------------------------------------------------------- curvature
def test_hvp_under_jit_takes_v_state_and_train(data):
    m, p, x, y, state = data["bn"], data["bn_p"], data["x"], data["y"], data["state"]
    v = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype).reshape(a.shape)), p)
    jitted = jit(traced := counted(jaxcnn.hvp))
    for train in (True, False):
        assert_same(jitted(m, p, x, y, v, state=state, train=train),
                    jaxcnn.hvp(m, p, x, y, v, state=state, train=train))
    assert traced.traces == 1


def test_ggn_diagonal_under_jit_takes_state(data):
    m, p, x, y, state = data["bn"], data["bn_p"], data["x"], data["y"], data["state"]
    assert_same(jit(jaxcnn.ggn_diagonal)(m, p, x, y, state=state),
                jaxcnn.ggn_diagonal(m, p, x, y, state=state))
