"""The fast-compile XLA flags of the test run (conftest.py) leave float64 results unchanged.

Every case's manual gradients are computed in two fresh processes, one with XLA's default flags
and one with the test run's flags, and compared. Different optimisation levels may fuse and
order floating-point operations differently, so the last bits may move; anything beyond
rtol 1e-14 would mean the flags change what the tests check.
"""

import os
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

from conftest import FAST_XLA_FLAGS, FLAGS_BY_JAXLIB
from helpers import rel_err, run_child

HERE = Path(__file__).parent


def _run(tmp_path: Path, flags: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if flags:
        env["XLA_FLAGS"] = flags
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent)])
    out = tmp_path / f"grads_{'fast' if flags else 'default'}.npz"
    run_child([sys.executable, str(HERE / "flags_worker.py"), str(out)], env=env, check=True)
    return dict(np.load(out))


def test_fast_flags_do_not_change_float64_results(tmp_path):
    assert FAST_XLA_FLAGS, (
        f"jaxlib {version('jaxlib')}: fast flags were checked on {', '.join(FLAGS_BY_JAXLIB)} "
        "only; check which flags this release has and add it to conftest.FLAGS_BY_JAXLIB")
    default, fast = _run(tmp_path, None), _run(tmp_path, FAST_XLA_FLAGS)
    assert default.keys() == fast.keys() and len(default) > 50
    worst = max((rel_err(fast[k], default[k]), k) for k in default)
    assert worst[0] <= 1e-14, f"{worst[1]}: relative difference {worst[0]:.2e}"
