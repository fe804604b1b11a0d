"""Several processes: one training run over JAX's multi-controller runtime.

Every process runs the same program (`jaxcnn train ... --coordinator HOST:PORT --num-processes P
--process-id I`, or `jaxcnn train --processes P`, which starts them on this machine:
`jaxcnn.tools.launch`). Each calls `join` before anything touches a device; then

- the mesh spans every process's devices (`parallel.make_mesh()` over `jax.devices()`), so the
  train step of `jaxcnn.training.parallel` and the DP step of `jaxcnn.training.dp` are the
  one-process programs: a `lax.pmean` (a `lax.psum` for DP) over the mesh is a collective across
  processes (gloo on CPU), and BatchNorm's batch statistics are averaged over all of them;
- every process computes the same batch order (same seed) and feeds only its own rows of each
  global batch (`feed`: with one device a process, rows i * B / P ... (i + 1) * B / P, assembled
  into one global array by `jax.make_array_from_process_local_data`); the DP step's Poisson
  sample and its noise key are the same on every process, so the noise is one draw for all;
- params, optimizer state and metrics are replicated; `to_host` reads them from this process's
  own copy;
- process 0 alone owns the run directory: it takes the lock, writes config, metrics, checkpoints
  and plots, and on `--resume` reads the checkpoint and sends it to the others (`broadcast`), so
  the other hosts need no shared file system.

A run over P processes equals the one-process run on P local devices (the same mesh size: the same
sums in the same order), and the one-device run to rounding: tests/test_processes.py proves both.
"""

from __future__ import annotations

import socket
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxcnn.training import parallel

__all__ = ["broadcast", "check_cluster", "count", "feed", "index", "is_leader", "join",
           "port_in_use", "run_counts", "to_host"]

AUTO = "auto"  # --coordinator auto: jax's cluster detection (SLURM, Open MPI, Cloud TPU, ...)
HEARTBEAT_S = 30  # a process silent this long ends the others (jax's default: 100)
JOIN_TIMEOUT_S = 120  # how long process 0 waits for the others to connect


def check_cluster(coordinator: str, num_processes: Any, process_id: Any) -> tuple[str, int]:
    """Check a process's cluster settings before anything starts.

    Args:
      coordinator: "HOST:PORT" of process 0's coordination service, or "auto".
      num_processes: P >= 1 (None with "auto").
      process_id: this process's index in 0..P-1 (None with "auto").

    Returns:
      (host, port); ("", 0) for "auto".

    Raises:
      ValueError: naming the setting and the form it needs.
    """
    if coordinator == AUTO:
        if num_processes is not None or process_id is not None:
            raise ValueError("--coordinator auto takes --num-processes and --process-id from the "
                             "cluster's environment; leave them out")
        return "", 0
    host, sep, port = str(coordinator).rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"--coordinator must be HOST:PORT (PORT in 1..65535) or auto; "
                         f"got {coordinator!r}")
    if not (isinstance(num_processes, int) and num_processes >= 1):
        raise ValueError(f"--num-processes must be an int >= 1 with --coordinator; "
                         f"got {num_processes!r}")
    if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
        raise ValueError(f"--process-id must be an int in 0..{num_processes - 1} "
                         f"(--num-processes {num_processes}); got {process_id!r}")
    return host, int(port)


def port_in_use(host: str, port: int) -> bool:
    """Whether `port` on `host` (this machine's address) cannot be bound now; with port 0 (any
    free port), whether `host` is not an address of this machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def join(coordinator: str, num_processes: int | None = None,
         process_id: int | None = None) -> None:
    """Join the run's processes: `jax.distributed.initialize`, with gloo collectives on CPU.

    Call it first, before any array is made. Process 0 hosts the coordination service at
    `coordinator` (its port must be free: a ValueError names it otherwise, where the host is this
    machine); the others connect to it within JOIN_TIMEOUT_S. A process that dies is noticed by
    the others within HEARTBEAT_S, and they end with jax's error.

    Args:
      coordinator: "HOST:PORT", or "auto" (jax's cluster detection: SLURM, Open MPI, ...).
      num_processes: P (None with "auto").
      process_id: this process's index (None with "auto").
    """
    host, port = check_cluster(coordinator, num_processes, process_id)
    if process_id == 0 and not port_in_use(host, 0) and port_in_use(host, port):
        raise ValueError(f"--coordinator {coordinator}: port {port} is already in use on this "
                         f"machine; pick a free port (or let `--processes` pick one)")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    cluster = () if coordinator == AUTO else (coordinator, num_processes, process_id)
    jax.distributed.initialize(*cluster, initialization_timeout=JOIN_TIMEOUT_S,
                               heartbeat_timeout_seconds=HEARTBEAT_S)


def count() -> int:
    """P, the number of processes of the run (1 without `join`)."""
    return jax.process_count()


def index() -> int:
    """This process's index in 0..P-1."""
    return jax.process_index()


def is_leader() -> bool:
    """Whether this process owns the run directory (process 0)."""
    return jax.process_index() == 0


def run_counts(devices: int | None, processes: int | None) -> tuple[int, int]:
    """(local devices, processes) of a run asked for `devices` (None: all local ones) and
    `processes` (None: those joined), checked against what exists.

    Raises:
      ValueError: naming --devices or --processes.
    """
    local, procs = jax.local_devices(), count()
    devices = devices or len(local)
    if devices > len(local):
        raise ValueError(f"--devices {devices}: only {len(local)} local "
                         f"{local[0].platform.upper()} device(s) exist")
    if processes not in (None, procs):
        raise ValueError(f"--processes {processes}: this run has joined {procs} "
                         f"process(es) (jaxcnn.training.processes.join)")
    if procs > 1 and devices != len(local):
        raise ValueError(f"--devices {devices}: with several processes every process uses all "
                         f"its {len(local)} local device(s); leave --devices out")
    return devices, procs


def feed(batch: tuple[Any, ...], mesh: Any) -> tuple[Any, ...]:
    """This process's rows of a global batch, as global arrays over `mesh`.

    Args:
      batch: the global batch, every array (B, ...), the same on every process.
      mesh: the run's mesh (over every process's devices).

    Returns:
      `batch` unchanged with one process; else global arrays (B, ...) split along the batch axis,
      of which this process has given rows index() * B / P ... (index() + 1) * B / P.
    """
    if count() == 1:
        return batch
    mine = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == index()]
    rows = len(batch[0]) // mesh.devices.size  # per device; the mesh gives a process adjacent ones
    lo, hi = mine[0] * rows, (mine[-1] + 1) * rows
    return parallel.shard_batch(tuple(np.asarray(a)[lo:hi] for a in batch), mesh)


def to_host(tree: Any) -> Any:
    """NumPy copies of a tree of replicated arrays, from this process's own copy of each.

    With one process, `jax.device_get`. With several, a replicated global array cannot be
    fetched whole (it spans other processes' devices), but every process holds all of it.
    """
    if count() == 1:
        return jax.device_get(tree)

    def local(a: Any) -> Any:
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            if not a.is_fully_replicated:
                raise ValueError(f"to_host: a {a.shape} array is split over the processes, "
                                 f"not replicated ({a.sharding})")
            return np.asarray(a.addressable_shards[0].data)
        return np.asarray(a)

    return jax.tree.map(local, tree)


def broadcast(tree: Any) -> Any:
    """Process 0's values of `tree` (NumPy arrays and scalars) on every process (as NumPy)."""
    if count() == 1:
        return tree
    return to_host(multihost_utils.broadcast_one_to_all(tree))
