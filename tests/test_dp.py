"""DP-SGD (jaxcnn.training.dp): the accounting against dp-accounting's published figures, the step
against the same computation from vmap(jax.grad) in float64, bit-for-bit reproducibility, one
device against eight, the Poisson sampler, and the refusals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.nn import models
from jaxcnn.training import dp, optim

from helpers import run_forced_device_worker


@pytest.mark.parametrize("accountant,want", [("rdp", 2.597), ("pld", 2.382)])
def test_accounting_matches_the_libraries_figures(accountant, want):
    """sigma 1.1, q = 256/60000, 60 epochs = 14062 steps, delta 1e-5 (dp-accounting 0.6.0)."""
    eps = dp.epsilon(1.1, 256 / 60000, 14062, 1e-5, accountant=accountant)
    assert round(eps, 3) == want


def test_accounting_edges():
    assert dp.epsilon(1.1, 0.01, 0, 1e-5) == 0.0
    assert dp.epsilon(0.0, 0.01, 10, 1e-5) == float("inf")
    assert dp.epsilon(2.0, 0.01, 100, 1e-5) < dp.epsilon(1.0, 0.01, 100, 1e-5)


def _setup():
    model = models.cnn1d(input_shape=(16, 1))
    rng = np.random.default_rng(0)
    params = model.init(jax.random.key(0), jnp.float64)
    x = jnp.asarray(rng.standard_normal((10, 16, 1)))
    y = jnp.asarray(rng.integers(0, 4, 10))
    mask = jnp.asarray((np.arange(10) < 7).astype(np.float64))
    return model, params, x, y, mask


def test_dp_step_equals_the_same_computation_from_vmap_grad_and_is_reproducible():
    model, params, x, y, mask = _setup()
    c, sigma, b = 0.3, 1.1, 8.0
    opt = optim.make_optimizer("sgd", 0.1)
    step = dp.make_dp_train_step(model, opt, clip_norm=c, noise_multiplier=sigma,
                                 expected_batch_size=b)
    key = jax.random.key(5)
    out1 = step(params, {}, opt.init(params), (x, y, mask), key)
    out2 = step(params, {}, opt.init(params), (x, y, mask), key)
    for a, b2 in zip(jax.tree.leaves(out1[0]), jax.tree.leaves(out2[0])):
        assert np.array_equal(a, b2)  # bit for bit

    def loss_i(p, xi, yi):
        return model.loss(p, xi[None], yi[None], train=True)

    g = jax.vmap(jax.grad(loss_i), in_axes=(None, 0, 0))(params, x, y)
    norms = np.sqrt(sum(np.sum(np.asarray(v).reshape(10, -1) ** 2, axis=1)
                        for v in jax.tree.leaves(g)))
    w = np.minimum(1.0, c / norms) * np.asarray(mask)
    g_sum = jax.tree.map(lambda v: np.tensordot(w, np.asarray(v), axes=1), g)
    leaves, tree = jax.tree.flatten(g_sum)
    keys = jax.random.split(jax.random.split(key)[0], len(leaves))
    noisy = [(v + sigma * c * np.asarray(jax.random.normal(k, v.shape, jnp.float64))) / b
             for v, k in zip(leaves, keys)]
    want = optax.apply_updates(params, jax.tree.map(lambda v: -0.1 * v,
                                                    jax.tree.unflatten(tree, noisy)))
    for a, b2 in zip(jax.tree.leaves(out1[0]), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b2, rtol=1e-12, atol=1e-15)
    assert float(out1[3]["examples"]) == 7
    assert float(out1[3]["clipped"]) == pytest.approx(np.mean(norms[:7] > c))


def test_poisson_batches():
    got = list(dp.poisson_batches(1000, 0.05, 40, seed=3))
    size = dp.padded_size(50)
    assert all(i.shape == (size,) and m.shape == (size,) for i, m in got)
    counts = np.array([m.sum() for _, m in got])
    assert 35 < counts.mean() < 65  # mean q n = 50, std ~1.1 over 40 steps
    again = list(dp.poisson_batches(1000, 0.05, 40, seed=3, start=20))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(got[20:], again))  # resumable
    i, m = got[0]
    assert (i[m == 0] == 0).all() and len(np.unique(i[m == 1])) == m.sum()


BAD = [
    (lambda: dp.epsilon(1.1, 0.01, 10, 1.5), ["delta", "(0, 1)", "1.5"]),
    (lambda: dp.epsilon(1.1, 0.01, 10, 0.0), ["delta", "0.0"]),
    (lambda: dp.epsilon(-1.0, 0.01, 10, 1e-5), ["noise_multiplier", ">= 0", "-1.0"]),
    (lambda: dp.epsilon(1.0, 1.5, 10, 1e-5), ["sample_rate", "(0, 1]", "1.5"]),
    (lambda: dp.epsilon(1.0, 0.5, 10, 1e-5, accountant="gdp"), ["accountant", "'gdp'"]),
    (lambda: dp.make_dp_train_step(models.cnn1d(), optax.sgd(0.1), clip_norm=0.0,
                                   noise_multiplier=1.0, expected_batch_size=8),
     ["clip_norm", "> 0", "0.0"]),
    (lambda: dp.make_dp_train_step(models.cnn1d(), optax.sgd(0.1), clip_norm=1.0,
                                   noise_multiplier=-0.5, expected_batch_size=8),
     ["noise_multiplier", "-0.5"]),
    (lambda: dp.make_dp_train_step(models.resnet20(), optax.sgd(0.1), clip_norm=1.0,
                                   noise_multiplier=1.0, expected_batch_size=8),
     ["BatchNorm", "GroupNorm"]),
]


@pytest.mark.parametrize("call,words", BAD)
def test_bad_dp_settings_are_refused_naming_them(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.fixture(scope="module")
def worker() -> dict:
    return run_forced_device_worker("dp_worker.py")


def test_dp_on_eight_devices_equals_one(worker):
    """The noise is drawn once per step from the replicated key: identical on every device."""
    assert worker["devices"] == 8
    assert worker["params_rel"] <= 1e-12 and worker["loss_rel"] <= 1e-12, worker
    assert worker["metrics_8"]["examples"] == 13


def test_a_sample_not_divisible_by_the_devices_is_refused(worker):
    assert "12 rows is not divisible by the 8 devices" in worker["indivisible"]
