"""Data-parallel training: one global batch split over the devices of a 1-D mesh.

    mesh = make_mesh()                      # all devices, one axis named "data"
    step = make_parallel_train_step(model, optimizer, mesh)
    params, state, opt_state = replicate((params, state, opt_state), mesh)
    params, state, opt_state, metrics = step(params, state, opt_state, (x, y), key)

The step has exactly the signature and metrics of `jaxcnn.training.steps.make_train_step`. Inside
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

from jaxcnn.nn.grads import value_and_grad
from jaxcnn.nn.network import Network
from jaxcnn.training.steps import jit_with_options, update_and_metrics

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
    """Put every array of `tree` (params, state, optimizer state) on every device of `mesh`.

    With several processes (`jaxcnn.training.processes`) every process passes the same values,
    and each puts them on its own devices of the mesh."""
    sharding = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)


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
                             mesh: Mesh, grad: str = "manual", *,
                             donate: bool = True) -> Callable:
    """A jitted data-parallel step `(params, state, opt_state, (x, y), key) -> (params, state,
    opt_state, metrics)`, with `make_train_step`'s signature and metrics.

    x: (B, H, W, C) and y: (B,) are split along the batch over the mesh's "data" axis; B must be
    a multiple of the mesh size D (a ValueError at the call, naming both). params, state,
    opt_state and key are replicated; the outputs are replicated (a mesh-wide `NamedSharding`).
    metrics: "loss" and "accuracy" of the global batch, "grad_norm" and "layer_grad_norms" of the
    global gradient.

    The gradient is `jaxcnn.nn.grads.value_and_grad(model, grad, axis_name="data")`: manual,
    each device backprops its B / D examples and `lax.pmean` averages the gradients; autodiff,
    `jax.grad` of the global mean loss (see there why not of the local one). The update and the
    metrics are `steps.update_and_metrics`, as on one device.

    Dropout: each device draws its mask from `fold_in(key, device index)`, so a run with Dropout
    is statistically, not bitwise, the same as one device's run on the whole batch (whose mask is
    one draw of shape (B, ...)). Without Dropout the two agree to rounding.

    With `donate`, the old params, state and optimizer state buffers are reused for the new ones
    (do not use them after the call; `replicate` them onto the mesh first, or the donation of
    single-device arrays cannot be honoured and JAX warns).
    """
    if AXIS not in mesh.axis_names:
        raise ValueError(f"the mesh needs an axis named {AXIS!r} (see make_mesh); "
                         f"got axes {mesh.axis_names}")
    devices = mesh.shape[AXIS]
    vg = value_and_grad(model, grad, axis_name=AXIS)

    def local_step(params, state, opt_state, x, y, key):
        """One device's share: x (B / D, H, W, C), y (B / D,); everything else replicated."""
        key = jax.random.fold_in(key, lax.axis_index(AXIS))
        loss, g, (new_state, logits) = vg(params, x, y, state=state, train=True, key=key)
        # identical on every device already (synchronised statistics); the pmean guards drift
        new_state = lax.pmean(new_state, AXIS)
        return update_and_metrics(model, optimizer, (params, state, opt_state), new_state, loss,
                                  g, logits, y, axis_name=AXIS)

    sharded = jax.shard_map(local_step, mesh=mesh,
                            in_specs=(P(), P(), P(), P(AXIS), P(AXIS), P()),
                            out_specs=(P(), P(), P(), P()))

    def step(params, state, opt_state, batch, key):
        x, y = batch
        _check_batch(model, x, y, devices)
        return sharded(params, state, opt_state, x, y, key)

    return jit_with_options(step, donate_argnums=(0, 1, 2) if donate else ())
