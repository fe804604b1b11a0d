"""Shared test helpers: error measures, random arrays, central differences, child processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the relative error of a whole array (0 when both are zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = np.abs(b).max(initial=0.0)
    diff = np.abs(a - b).max(initial=0.0)
    return 0.0 if diff == 0 else diff / (scale if scale > 0 else 1.0)


def assert_close(a, b, rtol: float, what: str = "") -> None:
    err = rel_err(a, b)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.0e}"


def randn(rng: np.random.Generator, *shape, dtype=np.float64) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def central_difference_vjp(f, args, dy, argnum, eps=1e-6, n_dirs=4, seed=0):
    """Check <dy, J v> by central differences along random directions v of args[argnum].

    Returns a list of (finite difference, v) so the caller compares <manual_dx, v> to it.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_dirs):
        v = rng.standard_normal(np.shape(args[argnum]))
        plus = list(args)
        minus = list(args)
        plus[argnum] = args[argnum] + eps * v
        minus[argnum] = args[argnum] - eps * v
        fd = (np.vdot(dy, np.asarray(f(*plus))) - np.vdot(dy, np.asarray(f(*minus)))) / (2 * eps)
        out.append((fd, v))
    return out


def assert_directional_differences(fwd, args, grads, dy, *, eps=1e-6, n_dirs=3, seed=1,
                                   rtol=1e-6, what=""):
    """<dy, fwd(args + eps v) - fwd(args - eps v)> / (2 eps) == <grads, v> along `n_dirs` random
    directions v over all of `args` at once, to `rtol` relative."""
    rng = np.random.default_rng(seed)
    for _ in range(n_dirs):
        v = [rng.standard_normal(np.shape(a)) for a in args]
        plus = fwd(*(a + eps * d for a, d in zip(args, v)))
        minus = fwd(*(a - eps * d for a, d in zip(args, v)))
        fd = np.vdot(dy, np.asarray(plus) - np.asarray(minus)) / (2 * eps)
        analytic = sum(np.vdot(g, d) for g, d in zip(grads, v))
        assert abs(fd - analytic) <= rtol * abs(analytic), (what, fd, analytic)


def forward_rule_vjp(fwd, bwd, kw, with_vjp):
    """One jitted program (dy, x, w, b) -> {"y", "rule", and "vjp" if asked}: the forward, the
    hand-written rule and jax.vjp of the forward, for a conv-like op with options `kw`."""
    import jax

    def run(dy, x, w, b):
        out = {"y": fwd(x, w, b, **kw), "rule": bwd(dy, x, w, **kw)}
        if with_vjp:
            out["vjp"] = jax.vjp(lambda x, w, b: fwd(x, w, b, **kw), x, w, b)[1](dy)
        return out
    return jax.jit(run)


# ----------------------------------------------------------------------------- child processes
# Every process a test starts goes through `run_child` below or the `children` fixture of
# conftest.py: in its own session (so its own process group), and on every path, failure and
# timeout included, SIGKILL to that whole group and a wait, so that neither the child nor anything
# it started outlives the test. tests/conftest.py fails the session if a process is left anyway.

# A hang guard, not a timing: it only turns a hung child into a failed test instead of a stalled
# run, and must hold on a machine 10x slower than an idle 2-core one. Most children take 3-25 s
# there; the heaviest, tests/parallel_worker.py (eight forced devices, many compiles), 53 s (89
# CPU-seconds), and 4 minutes at load 10-14 on the same 2 cores.
CHILD_TIMEOUT = 1200


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of `proc` (started with start_new_session=True), then reap
    `proc` and close its pipes. Harmless on a child that has already exited and been waited on."""
    # (the group outlives its leader while members remain; ProcessLookupError: none do)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def run_child(args, *, timeout: float = CHILD_TIMEOUT, check: bool = False, input=None,
              capture_output: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run` for the tests: the child runs in its own session, and whatever happens
    (it ends, it times out, the test is interrupted) its whole process group is killed and it
    is reaped before this returns or raises. (subprocess.run kills only the child itself.)"""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    proc = subprocess.Popen(args, start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    finally:
        kill_group(proc)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


def run_forced_device_worker(script: str, devices: int = 8) -> dict:
    """Run tests/<script> in a fresh process with `devices` forced CPU devices (this process's
    XLA flags are fixed once jax is imported) and return the JSON object its last line prints."""
    here = Path(__file__).parent
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = os.pathsep.join([str(here.parent), env.get("PYTHONPATH", "")])
    done = run_child([sys.executable, str(here / script)], env=env, capture_output=True,
                     text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
