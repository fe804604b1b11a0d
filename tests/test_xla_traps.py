"""XLA traps that jaxcnn works around, checked in subprocesses on the running jaxlib (CPU).

Measured present on jaxlib 0.10.2 (Python 3.11) and 0.12.0.1 (Python 3.12).

1. `jax.grad` of `lax.conv_general_dilated` aborts the process (a CHECK failure in XLA's
   convolution operand swapper) when one axis has kernel 2, stride 2, dilation 1 and the other
   axis's kernel is wider than the output. The manual backward must still be right there.
2. `lax.reduce_window` with `base_dilation` is silently wrong on large inputs (openxla/xla#48714):
   no pooling rule may use it.
3. XLA:CPU lets a fused consumer write its output over a buffer that the same fusion still reads
   through a bitcast (reshape) view at other positions: silently wrong values (issue 18's
   reproduction, docs/xla_traps.md section 6). No rule may read its input through a reshaped view
   where it also depends on it elementwise; max pool reads its taps by strided slices.

The "still present" tests fail when an upgrade changes a trap, so that the guards are revisited.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jaxlib
import numpy as np
import pytest
from jax import lax

from jaxcnn import backward, fast, forward

from helpers import run_child

HERE = Path(__file__).parent
TRAPS = {  # the two of the Core issue, and two found by tests' probe (no dilation; depthwise)
    "issue-1": dict(x=(2, 6, 9, 2), w=(2, 5, 2, 1), stride=(2, 1), dilation=(1, 2),
                    padding=((1, 1), (1, 1))),
    "issue-2": dict(x=(2, 10, 10, 1), w=(2, 4, 1, 1), stride=(2, 2), dilation=(1, 2),
                    padding=((1, 1), (2, 0))),
    "no-dilation": dict(x=(2, 5, 6, 6), w=(5, 2, 6, 1), stride=(1, 2), dilation=(1, 1),
                        padding=((0, 2), (1, 1))),
    "depthwise": dict(x=(3, 8, 6, 3), w=(5, 2, 1, 6), stride=(2, 2), dilation=(1, 1),
                      padding=((1, 2), (1, 2)), groups=3),
}


def run_worker(mode: str, cfg: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    return run_child([sys.executable, str(HERE / "trap_worker.py"), mode, json.dumps(cfg)],
                     capture_output=True, text=True, env=env)


@pytest.mark.parametrize("name", TRAPS)
def test_manual_backward_is_right_where_jax_grad_aborts(name):
    proc = run_worker("manual", TRAPS[name])
    assert proc.returncode == 0, f"manual died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["guarded"], "fast.traps.xla_may_abort must flag this configuration"
    assert result["oracle_rel"] <= 1e-9, result
    assert result["fd_rel"] <= 1e-6, result


def _aborted(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGABRT and "Check failed" in proc.stderr


@pytest.mark.parametrize("name", ["issue-1", "issue-2"])
def test_jax_grad_still_aborts_on_this_jaxlib(name):
    proc = run_worker("grad", TRAPS[name])
    assert _aborted(proc), (
        f"jaxlib {jaxlib.__version__} no longer aborts on {name} (rc {proc.returncode}): the XLA "
        f"trap changed; re-measure fast.traps.xla_may_abort and the tests that avoid jax.vjp")


def test_unguarded_textbook_dx_aborts_too():
    """The guard is not decoration: without it the textbook dx dies exactly like jax.grad."""
    assert _aborted(run_worker("textbook", TRAPS["issue-1"]))


def test_predicate_flags_only_kernel2_stride2_axes():
    from jaxcnn import _geometry
    x = np.zeros((1, 9, 9, 1))
    def flagged(k, s, d):
        g = _geometry.conv("c", x, np.zeros((*k, 1, 1)), s, "VALID", d, 1)
        return fast.traps.xla_may_abort(g.win)
    assert flagged((2, 3), (2, 1), (1, 2)) and flagged((3, 2), (1, 2), (1, 1))
    assert not flagged((3, 3), (2, 2), (2, 2)) and not flagged((2, 2), (2, 2), (2, 2))
    assert not flagged((2, 2), (1, 1), (1, 1)) and not flagged((2, 3), (3, 1), (1, 1))


def _base_dilated_sum(x):
    return lax.reduce_window(x, 0.0, lax.add, (2, 1), (2, 1), ((0, 0), (0, 0)),
                             base_dilation=(1, 2))


def _base_dilated_sum_oracle(x):
    xd = np.zeros((x.shape[0], 2 * x.shape[1] - 1), x.dtype)
    xd[:, ::2] = x
    return xd[0:-1:2] + xd[1::2] if x.shape[0] % 2 == 0 else None


# jaxlib -> whether reduce_window with base_dilation is wrong at 64x128 (XLA:CPU), as measured
BASE_DILATION_WRONG = {"0.10.2": True, "0.12.0.1": True, "0.12.1": False}


def test_reduce_window_base_dilation_trap_is_as_measured():
    x = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    small = x[:8, :8]
    np.testing.assert_allclose(_base_dilated_sum(small), _base_dilated_sum_oracle(small),
                               rtol=1e-6)
    # wrong values (sometimes NaN: the kernel reads memory it should not) count as wrong
    wrong = not np.allclose(_base_dilated_sum(x), _base_dilated_sum_oracle(x), rtol=1e-5)
    version = jaxlib.__version__
    assert version in BASE_DILATION_WRONG, (
        f"jaxlib {version} has not been measured for reduce_window's base_dilation trap (wrong "
        f"at 64x128 here: {wrong}); add it to BASE_DILATION_WRONG and docs/xla_traps.md")
    assert wrong == BASE_DILATION_WRONG[version], (
        f"jaxlib {version}: reduce_window with base_dilation is now "
        f"{'wrong' if wrong else 'right'} at 64x128, measured otherwise (openxla/xla#48714); "
        f"update BASE_DILATION_WRONG and docs/xla_traps.md section 2")


@pytest.mark.parametrize("op", ["max_pool", "avg_pool", "l2_pool"])
def test_pool_rules_never_use_base_dilation(op):
    x = np.zeros((2, 64, 128, 1), np.float32)
    kw = dict(window=(2, 1), stride=(2, 2), padding="VALID")
    dy = np.zeros_like(np.asarray(getattr(forward, op)(x, **kw)))
    jaxpr = jax.make_jaxpr(lambda dy, x: getattr(backward, op)(dy, x, **kw))(dy, x)
    for eqn in jaxpr.jaxpr.eqns:
        dilation = eqn.params.get("base_dilation")
        assert dilation is None or set(dilation) == {1}, f"{op}: {eqn}"


# jaxlib -> the activations for which issue 18's pure-JAX chain comes out wrong under jax.jit
# (tests/alias_worker.py, XLA's default flags, CPU): measured on each release listed
ALIAS_TRAP_WRONG = {
    "0.10.2": {"tanh", "sigmoid", "exp"},
    "0.12.0.1": {"tanh", "sigmoid", "exp"},
    "0.12.1": set(),
}


@pytest.fixture(scope="module")
def alias_run() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # XLA's defaults
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent)])
    proc = run_child([sys.executable, str(HERE / "alias_worker.py")], capture_output=True,
                     text=True, env=env)
    assert proc.returncode == 0, f"alias_worker died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_alias_trap_is_as_measured_on_this_jaxlib(alias_run):
    """The canary: whether the installed jaxlib still computes issue 18's chain wrongly."""
    version = alias_run["jaxlib"]
    wrong = {act for act, row in alias_run["pure_jax"].items() if not row["rel"] <= 1e-9}
    assert version in ALIAS_TRAP_WRONG, (
        f"jaxlib {version} has not been measured for the in-place aliasing trap: on it the "
        f"pure-JAX chain is wrong for {sorted(wrong)}; add it to ALIAS_TRAP_WRONG and to "
        f"docs/xla_traps.md section 6")
    assert wrong == ALIAS_TRAP_WRONG[version], (
        f"jaxlib {version}: the pure-JAX chain is now wrong for {sorted(wrong)}, measured "
        f"{sorted(ALIAS_TRAP_WRONG[version])}: the trap changed; re-measure and update "
        f"ALIAS_TRAP_WRONG and docs/xla_traps.md section 6 ({alias_run['pure_jax']})")


def test_max_pool_rule_is_right_in_the_same_chain(alias_run):
    for act, row in alias_run["jaxcnn"].items():
        assert row["rel"] <= 1e-12, f"jaxcnn's max_pool rule under jit after {act}: {row}"


@pytest.mark.parametrize("window,stride,shape", [(2, None, (2, 8, 8, 3)), (3, 2, (2, 9, 9, 2)),
                                                 (2, None, (2, 8, 3)), (2, 1, (1, 4, 4, 4, 2))])
def test_max_pool_rule_reads_x_through_no_reshape(window, stride, shape):
    """The trap needs a reshaped (bitcast) view of the input: the rule must not build one."""
    x = np.zeros(shape)
    dy = np.zeros(forward.max_pool(x, window=window, stride=stride).shape)
    jaxpr = jax.make_jaxpr(lambda dy, x: backward.max_pool(dy, x, window=window,
                                                           stride=stride))(dy, x)
    used = {str(eqn.primitive) for eqn in jaxpr.jaxpr.eqns}
    assert not used & {"reshape", "transpose"}, used
