"""Data-parallel training: one global batch split over the devices of a 1-D mesh.

    mesh = make_mesh()                      # all devices, one axis named "data"
    step = make_parallel_train_step(model, optimizer, mesh)
    params, state, opt_state = replicate((params, state, opt_state), mesh)
    params, state, opt_state, metrics = step(params, state, opt_state, (x, y), key)

The step has exactly the signature and metrics of `jaxcnn.train.make_train_step`. Inside
`jax.shard_map`, each of the D devices holds the whole (replicated) params, state and optimizer
state and a shard of B / D examples of the global batch x (B, H, W, C), y (B,). It computes the
gradient of its shard's mean loss with the hand-written backward pass (BatchNorm's statistics and
its two backward sums are averaged over the devices, see `jaxcnn.backward.batch_norm`), then
`lax.pmean` averages the gradients: the gradient of the global batch's mean loss, exactly what one
device computes on the whole batch. Every device then runs the same optimizer update on the same
numbers, so params and optimizer state stay replicated without ever being sent anywhere.

The same code runs on 1..N devices: the mesh decides. On one CPU, test with N forced devices:
`XLA_FLAGS=--xla_force_host_platform_device_count=N` set before jax is imported (they share the
machine's cores: correct, not faster). On several hosts, call `jax.distributed.initialize()` first
on every process (`coordinator_address="host0:1234", num_processes=P, process_id=i`, or no
arguments where the cluster is auto-detected: SLURM, Open MPI, Cloud TPU), build the mesh over
`jax.devices()` (every host's devices: `make_mesh()`), and give each host its own slice of the
global batch: `shard_batch` assembles the global arrays with
`jax.make_array_from_process_local_data`.
Only what one machine can run is tested here (tests/test_parallel.py, forced CPU devices).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn import grads as grads_lib
from jaxcnn._checks import IMPLS
from jaxcnn.network import Network
from jaxcnn.train import GRADS, accuracy, jit_with_options, layer_norms

Array = jax.Array
AXIS = "data"

__all__ = ["AXIS", "make_mesh", "make_parallel_train_step", "replicate", "shard_batch"]


def make_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh with the axis "data": over `jax.devices()` (every host's) when `devices` is
    None, else over the first `devices` local devices."""
    available = jax.devices() if devices is None else jax.local_devices()
    n = len(available) if devices is None else devices
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"make_mesh: devices must be a positive int or None; got {devices!r}")
    if n > len(available):
        kind = available[0].platform.upper()
        raise ValueError(
            f"make_mesh: asked for {n} devices but only {len(available)} {kind} device(s) exist; "
            f"to test on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N "
            f"before jax is imported")
    return Mesh(np.array(available[:n]), (AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put every array of `tree` (params, state, optimizer state) on every device of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: tuple[Any, Any], mesh: Mesh) -> tuple[Array, Array]:
    """(x, y) this process holds -> global arrays split along the batch axis over `mesh`.

    On one host, pass the whole global batch x (B, H, W, C), y (B,). On several hosts, each
    process passes its own consecutive slice (B / num_processes examples); the global batch is
    their concatenation in process order.
    """
    sharding = NamedSharding(mesh, P(AXIS))
    return tuple(jax.make_array_from_process_local_data(sharding, np.asarray(a)) for a in batch)


def _check_batch(model: Network, x: Any, y: Any, devices: int) -> None:
    """Shapes only (they are static under jit): the model's own checks, then divisibility."""
    model.check_input(x)
    model.check_labels(x, y)
    b = x.shape[0]
    if b % devices:
        raise ValueError(f"batch size {b} is not divisible by the {devices} devices of the mesh; "
                         f"use a multiple of {devices}")


def make_parallel_train_step(model: Network, optimizer: optax.GradientTransformation,
                             mesh: Mesh, grad: str = "manual", *, impl: str = "conv",
                             donate: bool = True) -> Callable:
    """A jitted data-parallel step `(params, state, opt_state, (x, y), key) -> (params, state,
    opt_state, metrics)`, with `jaxcnn.train.make_train_step`'s signature and metrics.

    x: (B, H, W, C) and y: (B,) are split along the batch over the mesh's "data" axis; B must be
    a multiple of the mesh size D (a ValueError at the call, naming both). params, state,
    opt_state and key are replicated; the outputs are replicated (a mesh-wide `NamedSharding`).
    metrics: "loss" and "accuracy" of the global batch, "grad_norm" and "layer_grad_norms" of the
    global gradient.

    grad="manual": each device runs the hand-written backward pass on its B / D examples
    (`axis_name="data"`), then `lax.pmean` averages the gradients, loss and accuracy.
    grad="autodiff": `jax.value_and_grad` of the GLOBAL mean loss, `lax.pmean(local loss)`. Why
    not of the local loss: inside `shard_map` (with its default `check_vma=True`) JAX knows that
    params are replicated and transposes their implicit broadcast into a `psum`, so the gradient
    of the local loss is already summed over devices: the gradient of the SUM of the D shard
    losses, D times the global gradient, and a `pmean` after it changes nothing. (With
    `check_vma=False` each device instead gets a partial gradient whose `pmean` is right.)
    Differentiating `pmean(local loss)` gives the global gradient exactly, BatchNorm's
    cross-device terms included; tests/test_parallel.py checks both paths against one device.

    impl: the formulation of the convolutions ("conv", "gemm", "auto"), as `make_train_step`.

    Dropout: each device draws its mask from `fold_in(key, device index)`, so a run with Dropout
    is statistically, not bitwise, the same as one device's run on the whole batch (whose mask is
    one draw of shape (B, ...)). Without Dropout the two agree to rounding.

    With `donate`, the old params, state and optimizer state buffers are reused for the new ones
    (do not use them after the call; `replicate` them onto the mesh first, or the donation of
    single-device arrays cannot be honoured and JAX warns).
    """
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {', '.join(GRADS)}; got {grad!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")
    if AXIS not in mesh.axis_names:
        raise ValueError(f"the mesh needs an axis named {AXIS!r} (see make_mesh); "
                         f"got axes {mesh.axis_names}")
    devices = mesh.shape[AXIS]

    def value_and_grad(params, state, x, y, key):
        """On one device: (global mean loss or local loss, grads of the global mean loss,
        (new state, local logits))."""
        kw = dict(state=state, train=True, key=key, axis_name=AXIS, impl=impl)
        if grad == "manual":
            loss, g, aux = grads_lib.manual_value_and_grad(model, params, x, y, **kw)
            return loss, lax.pmean(g, AXIS), aux

        def global_loss(p):
            loss, aux = model.loss_and_aux(p, x, y, **kw)
            return lax.pmean(loss, AXIS), aux

        (loss, aux), g = jax.value_and_grad(global_loss, has_aux=True)(params)
        return loss, g, aux

    def local_step(params, state, opt_state, x, y, key):
        """One device's share: x (B / D, H, W, C), y (B / D,); everything else replicated."""
        key = jax.random.fold_in(key, lax.axis_index(AXIS))
        loss, g, (new_state, logits) = value_and_grad(params, state, x, y, key)
        # identical on every device already (synchronised statistics); the pmean guards drift
        new_state = lax.pmean(new_state, AXIS)
        updates, opt_state = optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": lax.pmean(loss, AXIS),
                   "accuracy": lax.pmean(accuracy(model, logits, y), AXIS),
                   "grad_norm": optax.tree_utils.tree_norm(g), "layer_grad_norms": layer_norms(g)}
        return params, new_state, opt_state, metrics

    sharded = jax.shard_map(local_step, mesh=mesh,
                            in_specs=(P(), P(), P(), P(AXIS), P(AXIS), P()),
                            out_specs=(P(), P(), P(), P()))

    def step(params, state, opt_state, batch, key):
        x, y = batch
        _check_batch(model, x, y, devices)
        return sharded(params, state, opt_state, x, y, key)

    return jit_with_options(step, donate_argnums=(0, 1, 2) if donate else ())
