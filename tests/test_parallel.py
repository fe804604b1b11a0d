"""jaxcnn.training.parallel: data-parallel training equals one device's training on the global
batch.

The multi-device checks run once, in a subprocess with eight forced CPU devices
(tests/parallel_worker.py): this process has one CPU device, and its XLA flags are fixed once jax
is imported. 20 Adam steps in float64, on 1, 2 and 8 devices, manual and autodiff gradients.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxcnn import models
from jaxcnn.nn import grads
from jaxcnn.training import optim, parallel
from jaxcnn.training import steps as train_steps

from helpers import run_child, run_forced_device_worker

RTOL = 1e-12


@pytest.fixture(scope="module")
def worker() -> dict:
    return run_forced_device_worker("parallel_worker.py")


def test_worker_has_eight_devices(worker):
    assert worker["devices"] == 8


@pytest.mark.parametrize("model", ["plain", "batchnorm"])
@pytest.mark.parametrize("run", ["manual-8", "autodiff-8", "manual-1", "manual-2"])
def test_data_parallel_training_equals_one_device(worker, model, run):
    r = worker["training"][model][run]
    assert r["params"] <= RTOL, r
    assert r["state"] <= RTOL, r  # BatchNorm running averages (none for "plain")
    assert r["loss"] <= RTOL and r["grad_norm"] <= RTOL and r["accuracy"] == 0, r
    assert r["replicated"], "params / state should come back replicated over the mesh"


def test_bridged_model_under_autodiff_equals_one_device(worker):
    r = worker["training"]["batchnorm"]["bridge-autodiff-8"]
    assert r["params"] <= RTOL and r["state"] <= RTOL and r["loss"] <= RTOL, r


def test_autodiff_of_the_local_loss_sums_over_devices(worker):
    """The finding behind grad="autodiff": inside shard_map with check_vma=True, jax.grad of the
    local loss w.r.t. replicated params is already the gradient of the SUM of the 8 shard losses
    (8x the global gradient), and pmean cannot undo it; with check_vma=False, pmean of the local
    gradients is the global gradient. make_parallel_train_step differentiates pmean(loss)."""
    a = worker["autodiff"]
    assert a["vma_local"]["vs_8x_global"] <= RTOL
    assert a["vma_local_pmean"]["vs_8x_global"] <= RTOL
    assert a["novma_local_pmean"]["vs_global"] <= RTOL


def test_errors(worker):
    assert worker["errors"]["divisibility"] == (
        "batch size 30 is not divisible by the 8 devices of the mesh; use a multiple of 8")
    msg = worker["errors"]["too_many_devices"]
    assert "9 devices" in msg and "only 8" in msg
    assert "--xla_force_host_platform_device_count" in msg


def test_dropout_trains_on_eight_devices(worker):
    losses = np.array(worker["dropout"]["losses"])
    assert np.isfinite(losses).all() and losses[-5:].mean() < losses[:5].mean()


# ----------------------------------------------------------------------------- in this process
def test_make_mesh_in_this_process():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    n = jax.device_count()
    with pytest.raises(ValueError, match=f"asked for {n + 1} devices but only {n}.*"
                                         "xla_force_host_platform_device_count"):
        parallel.make_mesh(n + 1)
    with pytest.raises(ValueError, match="positive int"):
        parallel.make_mesh(0)


def test_bad_arguments():
    model, opt = models.seed_cnn(), optim.make_optimizer("sgd", 0.1)
    with pytest.raises(ValueError, match="grad must be one of manual, autodiff"):
        parallel.make_parallel_train_step(model, opt, parallel.make_mesh(), "numeric")
    other = Mesh(np.array(jax.devices()[:1]), ("batch",))
    with pytest.raises(ValueError, match="axis named 'data'"):
        parallel.make_parallel_train_step(model, opt, other)


def test_one_device_step_equals_train_step():
    model, opt = models.seed_cnn(), optim.make_optimizer("adam", 1e-2)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 6, 6, 1)), rng.integers(0, 2, 8).astype(np.float64)
    params = model.init(jax.random.key(0), jnp.float64)
    mesh = parallel.make_mesh(1)
    ref = train_steps.make_train_step(model, opt, donate=False)(
        params, {}, opt.init(params), (x, y), jax.random.key(1))
    for grad, impl in [("manual", "conv"), ("autodiff", "conv"), ("manual", "gemm")]:
        step = parallel.make_parallel_train_step(model.with_impl(impl), opt, mesh, grad,
                                                 donate=False)
        out = step(*parallel.replicate((params, {}, opt.init(params)), mesh),
                   parallel.shard_batch((x, y), mesh), jax.random.key(1))
        assert out[3].keys() == ref[3].keys()
        assert max(r.max_rel for r in grads.compare(out, ref)) <= RTOL


def test_train_cli_over_four_devices(tmp_path):
    """`jaxcnn train --devices 4` trains data-parallel; a batch size the devices cannot split
    is a one-line error with exit status 2."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    base = [sys.executable, "-m", "jaxcnn.tools.cli", "train", "--model", "seed", "--data",
            "synthetic",
            "--epochs", "1", "--quiet", "--devices", "4", "--out", str(tmp_path / "run")]
    ok = run_child([*base, "--batch-size", "16"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "data parallel over 4 devices" in ok.stdout
    bad = run_child([*base, "--batch-size", "30"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "--batch-size 30 is not divisible by the 4 devices" in bad.stderr
