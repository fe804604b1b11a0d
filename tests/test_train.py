"""Training with the hand-written gradients: the same trajectory as jax.grad, per-example
gradients, optimizers against their formulas, exact resume, and stops that explain themselves."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import backward, models
from jaxcnn.nn import grads
from jaxcnn.training import data, optim, per_example
from jaxcnn.training import run as trainer
from jaxcnn.training import steps as train_steps

from helpers import rel_err

STEPS = 100


@functools.cache
def digits():
    return data.load_digits(dtype=np.float64)


def trajectory(grad: str, dtype, steps: int = STEPS, name: str = "lenet5-digits",
               batch: int = 8):
    """`steps` Adam steps from one float64 initialisation (cast to dtype), same batches and
    dropout keys for every call; returns (losses, params). Batches of 8 keep the test fast:
    float64 convolutions have no optimised XLA:CPU kernel."""
    ds, m = digits(), models.get(name)
    opt = optim.make_optimizer("adam", 2e-3)
    params = jax.tree.map(lambda a: a.astype(dtype), m.init(jax.random.key(0), jnp.float64))
    state, opt_state = m.init_state(dtype), opt.init(params)
    step = train_steps.make_train_step(m, opt, grad)
    losses, epoch = [], 0
    while len(losses) < steps:
        for xb, yb in data.batches(ds.x_train.astype(dtype), ds.y_train, batch, seed=0,
                                   epoch=epoch):
            params, state, opt_state, met = step(params, state, opt_state, (xb, yb),
                                                 jax.random.key(len(losses)))
            losses.append(float(met["loss"]))
            if len(losses) == steps:
                break
        epoch += 1
    return np.array(losses), params


def params_rel(a, b) -> float:
    return max(rel_err(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_manual_and_autodiff_train_identically_float64():
    loss_m, p_m = trajectory("manual", jnp.float64)
    loss_a, p_a = trajectory("autodiff", jnp.float64)
    assert params_rel(p_m, p_a) <= 1e-9
    np.testing.assert_allclose(loss_m, loss_a, rtol=1e-12)
    assert loss_m[-1] < 0.5 * loss_m[0]  # it learned something


def test_manual_and_autodiff_train_identically_float32():
    """float32 tolerance, calibrated in the same run: manual and autodiff may differ from each
    other by no more than float32 autodiff differs from the float64 trajectory (the rounding
    noise of this very training run; measured ~3e-6 vs ~2e-5 relative on the parameters after
    100 Adam steps), and their loss curves coincide to 1e-5 relative."""
    loss_m, p_m = trajectory("manual", jnp.float32)
    loss_a, p_a = trajectory("autodiff", jnp.float32)
    _, p_64 = trajectory("autodiff", jnp.float64)
    float32_noise = params_rel(p_a, p_64)
    assert params_rel(p_m, p_a) <= float32_noise
    np.testing.assert_allclose(loss_m, loss_a, rtol=1e-5)


@pytest.mark.parametrize("impl", ["auto", "conv"])
def test_per_example_grads_equal_a_loop_and_average_to_the_batch_gradient(impl):
    m = models.lenet5_digits(impl=impl)
    params = m.init(jax.random.key(1), jnp.float64)
    ds = digits()
    x, y = ds.x_train[:6], ds.y_train[:6]
    each = jax.jit(lambda p, x, y: per_example.per_example_grads(m, p, x, y))(params, x, y)
    for i in range(len(x)):
        _, gi = grads.manual_grad(m, params, x[i:i + 1], y[i:i + 1])
        assert params_rel(jax.tree.map(lambda a, i=i: a[i], each), gi) <= 1e-12
    _, batch = grads.manual_grad(m, params, x, y)
    assert params_rel(jax.tree.map(lambda a: a.mean(0), each), batch) <= 1e-12


def test_models_check_impl_when_built():
    with pytest.raises(ValueError, match="impl must be one of conv, gemm, auto; got 'fastest'"):
        models.seed_cnn(impl="fastest")
    with pytest.raises(ValueError, match="impl must be one of conv, gemm, auto; got 'im2col'"):
        models.lenet5().with_impl("im2col")


def _one_update(opt, params, g):
    updates, _ = opt.update(g, opt.init(params), params)
    return optax.apply_updates(params, updates)


def test_optimizers_follow_their_formulas():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal(5))}
    g = {"w": jnp.asarray(rng.standard_normal(5))}
    # seed 003: F_new = F_old - lr * dL/dF
    new = _one_update(optim.make_optimizer("sgd", 0.1), params, g)
    np.testing.assert_allclose(new["w"], params["w"] - 0.1 * g["w"], rtol=1e-15)
    # clipping by global norm: g * clip / ||g|| when ||g|| > clip
    clipped = _one_update(optim.make_optimizer("sgd", 1.0, clip=0.5), params, g)
    norm = np.linalg.norm(g["w"])
    np.testing.assert_allclose(clipped["w"], params["w"] - g["w"] * 0.5 / norm, rtol=1e-12)
    # momentum's first step is plain SGD; Adam's first step is lr * sign(g) (bias-corrected)
    np.testing.assert_allclose(_one_update(optim.make_optimizer("momentum", 0.1), params, g)["w"],
                               params["w"] - 0.1 * g["w"], rtol=1e-15)
    np.testing.assert_allclose(_one_update(optim.make_optimizer("adam", 0.1), params, g)["w"],
                               params["w"] - 0.1 * np.sign(g["w"]), rtol=1e-6)


def test_layer_grad_norms_are_reported():
    m, ds = models.lenet5_digits(), digits()
    opt = optim.make_optimizer("sgd", 0.01)
    params = m.init(jax.random.key(0), jnp.float64)
    step = train_steps.make_train_step(m, opt, "manual", donate=False)
    _, _, _, met = step(params, {}, opt.init(params), (ds.x_train[:8], ds.y_train[:8]),
                        jax.random.key(0))
    _, g = grads.manual_grad(m, params, ds.x_train[:8], ds.y_train[:8], train=True,
                             key=jax.random.key(0))
    assert set(met["layer_grad_norms"]) == set(params)
    for name, norm in met["layer_grad_norms"].items():
        np.testing.assert_allclose(norm, optax.tree_utils.tree_norm(g[name]), rtol=1e-12)


# ----------------------------------------------------------------------------- the run
SMALL = dict(model="seed", data="synthetic", epochs=3, batch_size=16, lr=0.05, log_every=5)


def test_resume_after_a_stop_ends_with_the_same_parameters(tmp_path):
    cfg = trainer.TrainConfig(**SMALL)
    full = trainer.fit(cfg, tmp_path / "full", progress=False, log=lambda s: None)
    # a run that dies in the middle of epoch 3, after the checkpoint of epoch 2
    stopped = trainer.fit(cfg, tmp_path / "cut", progress=False, log=lambda s: None,
                          stop_after_steps=2 * 32 + 7)
    assert stopped == {"stopped_at_step": 71}
    resumed = trainer.fit(cfg, tmp_path / "cut", resume=True, progress=False, log=lambda s: None)
    jax.tree.map(np.testing.assert_array_equal, resumed["params"], full["params"])
    epochs = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").open()
              if '"epoch"' in line and '"kind": "epoch"' in line]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for name in ("curves.png", "filters.png", "grad_norms.png"):
        assert (tmp_path / "cut" / name).read_bytes()[:4] == b"\x89PNG"


def test_divergence_stops_with_the_step_and_layer(tmp_path):
    """An absurd learning rate: the run stops at the step the loss went non-finite and names the
    layer whose gradient went non-finite first in backprop order."""
    cfg = trainer.TrainConfig(model="lenet5-digits", epochs=2, optimizer="sgd", lr=1e12,
                              schedule="constant")
    with pytest.raises(trainer.TrainingStoppedError,
                       match=r"step 2 \(epoch 1\): the loss is nan; the first non-finite gradient "
                             r"in backprop order is that of layer 'dense3'; no checkpoint"):
        trainer.fit(cfg, tmp_path, progress=False, log=lambda s: None)


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    # constant: the one schedule under which --resume may add epochs (cosine spans them all)
    cfg = trainer.TrainConfig(**{**SMALL, "epochs": 1, "schedule": "constant"})
    trainer.fit(cfg, tmp_path, progress=False, log=lambda s: None)
    good = (tmp_path / trainer.CHECKPOINT).read_bytes()
    real_make = train_steps.make_train_step

    def poisoned(*args, **kw):
        step = real_make(*args, **kw)

        def wrapped(params, state, opt_state, batch, key):
            params, state, opt_state, m = step(params, state, opt_state, batch, key)
            return params, state, opt_state, {**m, "loss": m["loss"] * jnp.nan}
        return wrapped

    monkeypatch.setattr(train_steps, "make_train_step", poisoned)
    with pytest.raises(trainer.TrainingStoppedError, match=r"step 33 \(epoch 2\).*the last "
                                                           r"good checkpoint is .* \(epoch 1\)"):
        trainer.fit(dataclasses.replace(cfg, epochs=2), tmp_path, resume=True,
                    progress=False, log=lambda s: None)
    assert (tmp_path / trainer.CHECKPOINT).read_bytes() == good


def test_check_grads_stops_a_run_with_a_wrong_rule(tmp_path, monkeypatch):
    monkeypatch.setattr(backward, "relu", lambda dy, x: 2 * jnp.where(x > 0, dy, 0))
    cfg = trainer.TrainConfig(**{**SMALL, "check_grads": True})
    with pytest.raises(trainer.TrainingStoppedError, match="--check-grads: manual and autodiff"):
        trainer.fit(cfg, tmp_path, progress=False, log=lambda s: None)


@pytest.mark.parametrize("change, message", [
    (dict(model="nosuch"), "unknown model 'nosuch'"),
    (dict(batch_size=0), "--batch-size must be >= 1; got 0"),
    (dict(lr=-1.0), "the learning rate must be > 0; got -1.0"),
    (dict(model="lenet5"), "model 'lenet5' takes images of shape (28, 28, 1) but --data "
                           "synthetic has images of shape (6, 6, 1)"),
    (dict(model="lenet5-digits"), "model 'lenet5-digits' takes images of shape (8, 8, 1)"),
    (dict(data="digits"), "model 'seed' takes images of shape (6, 6, 1) but --data digits"),
])
def test_bad_configuration_is_a_clear_error(tmp_path, change, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        trainer.fit(trainer.TrainConfig(**{**SMALL, **change}), tmp_path, progress=False)
