"""Data-parallel training on forced CPU devices vs one device: `python parallel_worker.py` prints
one JSON object on stdout.

Run by tests/test_parallel.py in a fresh process whose XLA_FLAGS add
`--xla_force_host_platform_device_count=8` (the test process has one CPU device and its flags are
fixed once jax is imported). Everything is float64; the test asserts on the numbers.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

jax.config.update("jax_enable_x64", True)

from jaxcnn import (  # noqa: E402
    bridge,
    models,
)
from jaxcnn.nn import grads  # noqa: E402
from jaxcnn.training import (  # noqa: E402
    data,
    optim,
    parallel,
    steps,
)

STEPS, BATCH = 20, 32
OPT = optim.make_optimizer("adam", 1e-3)


def max_rel(a, b) -> float:
    return max(r.max_rel for r in grads.compare(a, b))


def run(model, step, xs, ys, mesh=None) -> dict:
    """STEPS steps of `step` from the same start; returns final params, state, metric series."""
    params = model.init(jax.random.key(0), jnp.float64)
    state = model.init_state(jnp.float64)
    opt_state = OPT.init(params)
    if mesh is not None:
        params, state, opt_state = parallel.replicate((params, state, opt_state), mesh)
    losses, norms, accs = [], [], []
    for i in range(STEPS):
        params, state, opt_state, m = step(params, state, opt_state, (xs[i], ys[i]),
                                           jax.random.key(100 + i))
        losses.append(float(m["loss"]))
        norms.append(float(m["grad_norm"]))
        accs.append(float(m["accuracy"]))
    replicated = all(leaf.sharding.is_fully_replicated and
                     len(leaf.sharding.device_set) == (mesh.size if mesh else 1)
                     for leaf in jax.tree.leaves((params, state)))
    return dict(params=params, state=state, loss=np.array(losses), grad_norm=np.array(norms),
                accuracy=np.array(accs), replicated=replicated)


def compare(out: dict, ref: dict) -> dict:
    return {"params": max_rel(out["params"], ref["params"]),
            "state": max_rel(out["state"], ref["state"]) if ref["state"] else 0.0,
            "loss": float(np.max(np.abs(out["loss"] - ref["loss"]) / np.abs(ref["loss"]))),
            "grad_norm": float(np.max(np.abs(out["grad_norm"] - ref["grad_norm"])
                                      / ref["grad_norm"])),
            "accuracy": float(np.max(np.abs(out["accuracy"] - ref["accuracy"]))),
            "replicated": out["replicated"]}


def training(ds: data.Dataset) -> dict:
    xs = ds.x_train[:STEPS * BATCH].reshape(STEPS, BATCH, 8, 8, 1)
    ys = ds.y_train[:STEPS * BATCH].reshape(STEPS, BATCH)
    results = {}
    for name, model in [("plain", models.lenet5_digits(dropout=0.0)),
                        ("batchnorm", models.deep_cnn((8, 8, 1), dropout=0.0))]:
        ref = run(model, steps.make_train_step(model, OPT, "manual"), xs, ys)
        runs = [("manual-8", model, 8, "manual"), ("autodiff-8", model, 8, "autodiff"),
                ("manual-1", model, 1, "manual"), ("manual-2", model, 2, "manual")]
        if name == "batchnorm":
            runs.append(("bridge-autodiff-8", bridge.bridge(model), 8, "autodiff"))
        results[name] = {}
        for label, m, devices, grad in runs:
            mesh = parallel.make_mesh(devices)
            step = parallel.make_parallel_train_step(m, OPT, mesh, grad)
            results[name][label] = compare(run(m, step, xs, ys, mesh), ref)
    return results


def autodiff_semantics(ds: data.Dataset) -> dict:
    """What jax.grad of the LOCAL loss gives inside shard_map, against the global gradient."""
    model = models.deep_cnn((8, 8, 1), dropout=0.0)
    params = model.init(jax.random.key(0), jnp.float64)
    x, y = ds.x_train[:BATCH], ds.y_train[:BATCH]
    mesh = parallel.make_mesh(8)
    kw = dict(train=True, axis_name=parallel.AXIS)
    global_grad = jax.jit(jax.grad(model.loss), static_argnames="train")(params, x, y,
                                                                         train=True)

    def local_loss_grad(p, x, y):
        return jax.grad(model.loss)(p, x, y, **kw)

    def pmean_of_local_grads(p, x, y):
        return lax.pmean(jax.grad(model.loss)(p, x, y, **kw), parallel.AXIS)

    out = {}
    for label, fn, check in [("vma_local", local_loss_grad, True),
                             ("vma_local_pmean", pmean_of_local_grads, True),
                             ("novma_local_pmean", pmean_of_local_grads, False)]:
        f = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                                  out_specs=P(), check_vma=check))
        g = f(params, x, y)
        out[label] = {"vs_global": max_rel(g, global_grad),
                      "vs_8x_global": max_rel(g, jax.tree.map(lambda a: 8 * a, global_grad))}
    return out


def errors(ds: data.Dataset) -> dict:
    model = models.lenet5_digits(dropout=0.0)
    mesh = parallel.make_mesh(8)
    step = parallel.make_parallel_train_step(model, OPT, mesh, donate=False)
    params = model.init(jax.random.key(0), jnp.float64)
    out = {}
    try:
        step(params, {}, OPT.init(params), (ds.x_train[:30], ds.y_train[:30]), jax.random.key(0))
    except ValueError as e:
        out["divisibility"] = str(e)
    try:
        parallel.make_mesh(9)
    except ValueError as e:
        out["too_many_devices"] = str(e)
    return out


def dropout(ds: data.Dataset) -> dict:
    """Dropout trains (per-device masks from fold_in(key, device index)): finite, falling loss."""
    model = models.lenet5_digits(dropout=0.3)
    mesh = parallel.make_mesh(8)
    xs = ds.x_train[:STEPS * BATCH].reshape(STEPS, BATCH, 8, 8, 1)
    ys = ds.y_train[:STEPS * BATCH].reshape(STEPS, BATCH)
    out = run(model, parallel.make_parallel_train_step(model, OPT, mesh), xs, ys, mesh)
    return {"losses": out["loss"].tolist()}


if __name__ == "__main__":
    digits = data.load_digits(dtype=np.float64)
    print(json.dumps({"devices": jax.device_count(), "training": training(digits),
                      "autodiff": autodiff_semantics(digits), "errors": errors(digits),
                      "dropout": dropout(digits)}))
