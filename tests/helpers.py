"""Shared test helpers: error measures, random arrays, central differences."""

from __future__ import annotations

import json
import os
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


def run_forced_device_worker(script: str, devices: int = 8) -> dict:
    """Run tests/<script> in a fresh process with `devices` forced CPU devices (this process's
    XLA flags are fixed once jax is imported) and return the JSON object its last line prints."""
    here = Path(__file__).parent
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = os.pathsep.join([str(here.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(here / script)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
