"""Test configuration: float64 on, fast XLA compiles, a reproducible hypothesis profile.

Test time is mostly XLA compiling many small programs. With optimisation level 0 and the legacy
(non-fusion-emitter) CPU backend, compiles are ~3x faster; tests/test_xla_flags.py checks that the
float64 results stay the same without these flags.
"""

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version

# The flags, per jaxlib minor release they were checked on (test_xla_flags.py: float64 results
# unchanged). XLA aborts the process on an unknown flag, and jaxlib 0.11 dropped
# --xla_cpu_use_fusion_emitters, so each release gets only the flags it has; a release not listed
# runs the tests under XLA's defaults (and test_xla_flags.py fails, to say so).
FLAGS_BY_JAXLIB = {
    "0.10.": "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
    "0.11.": "--xla_backend_optimization_level=0",
    "0.12.": "--xla_backend_optimization_level=0",
}
FAST_XLA_FLAGS = next((f for v, f in FLAGS_BY_JAXLIB.items() if version("jaxlib").startswith(v)),
                      None)
if FAST_XLA_FLAGS:
    os.environ.setdefault("XLA_FLAGS", FAST_XLA_FLAGS)

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from helpers import kill_group  # noqa: E402

jax.config.update("jax_enable_x64", True)

# "ci": the same examples every run (derandomized), so a red CI is reproducible; "dev": fresh
# random examples each run, for hunting (HYPOTHESIS_PROFILE=dev pytest ...).
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("ci", derandomize=True, **_common)
settings.register_profile("dev", **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ----------------------------------------------------------------------------- file order
# The xdist workers take whole files in collection order (addopts: --no-loadscope-reorder; xdist's
# own order, by number of tests, handed out the two 4-minute hypothesis sweeps of
# test_properties.py last, and one worker idled while the other ran them). So the heaviest files
# go first, by their total seconds in a full run (issue 23: 2 workers, 2 cores at load 5-11):
# whatever comes last is short. Files not listed follow, those with more tests first.
HEAVY_FIRST = [
    "test_beyond_gradient.py",    # 554 s
    "test_composition.py",        # 479 s
    "test_bridge.py",             # 435 s
    "test_transforms.py",         # 362 s
    "test_properties.py",         # 261 s, in 2 tests
    "test_conv_transpose.py",     # 245 s
    "test_resnet.py",             # 244 s
    "test_parallel.py",           # 229 s, most of it one eight-device subprocess
    "test_explain.py",            # 216 s
    "test_processes.py",          # 110 s at load 2: every run starts 2-4 processes
    "test_network.py",            # 200 s
    "test_train.py",              # 188 s
    "test_backward.py",           # 186 s
    "test_norm_join.py",          # 176 s
    "test_pool_nd.py",            # 172 s
    "test_jit_public.py",         # 130 s
    "test_docs.py",               # 126 s
    "test_experiments.py",        # 124 s, in 7 tests
    "test_hostile_training.py",   # 122 s
    "test_tutorials.py",          # 111 s, in 12 tests
]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    count: dict = {}
    for item in items:
        count[item.path] = count.get(item.path, 0) + 1
    # a stable sort: each file's tests stay together and in their order
    items.sort(key=lambda it: (rank.get(it.path.name, len(rank)), -count[it.path], str(it.path)))


# ----------------------------------------------------------------------------- child processes
# Tests start processes through helpers.run_child (to completion) or the `children` fixture (to
# signal them while they run): each child in its own session, its whole process group SIGKILLed
# and the child reaped on every path. The session check below fails the run if a process is left
# anyway.


@pytest.fixture
def children():
    """`children(args, **popen_kwargs)` starts a `subprocess.Popen` in its own session; at
    teardown, whatever happened in the test, each one's process group gets SIGKILL and each
    child is reaped (so a failed assertion or a timeout leaves nothing running)."""
    started: list[subprocess.Popen] = []

    def start(args, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(args, start_new_session=True, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        kill_group(proc)


def _become_subreaper() -> None:
    """Orphaned descendants (a grandchild whose parent died) are re-parented to this process
    instead of init, so the check below still sees them."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _descendants() -> dict[int, tuple[str, str]]:
    """pid -> (state letter, command line) of every descendant of this process, from /proc."""
    parent, state = {}, {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()  # after "(comm)": state, ppid
            except OSError:
                continue  # gone meanwhile
            pid = int(entry.name)
            state[pid], parent[pid] = fields[0].decode(), int(fields[1])
    found, todo = {}, [os.getpid()]
    while todo:
        me = todo.pop()
        for pid in [p for p, pp in parent.items() if pp == me and p not in found]:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = ""
            found[pid] = (state[pid], cmd)
            todo.append(pid)
    return found


_CHECK = sys.platform.startswith("linux")  # /proc and the subreaper: Linux, where CI runs
_FIRST_SEEN: dict[int, str] = {}  # pid of a descendant -> the test file after which it was seen
_CURRENT: list = [None]  # the test running now


def _after(item) -> str:
    return f"the tests of {item.path.name} (the last: {item.name})" if item else "?"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _CURRENT[0] = item
    yield
    if _CHECK and (nextitem is None or nextitem.path != item.path):  # a file's last test
        for pid in _descendants():  # (a few ms: once a file, not once a test)
            _FIRST_SEEN.setdefault(pid, _after(item))


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """At the end of the session (of each xdist worker), this process must have no descendant
    left: any survivor is named (pid, command line, the test after which it appeared), killed,
    reaped, and the session fails."""
    if _CHECK:
        _become_subreaper()
    yield
    left = _descendants() if _CHECK else {}
    if not left:
        return
    report = [f"pid {pid} ({'a zombie: exited, never waited on' if st == 'Z' else 'state ' + st})"
              f", first seen after {_FIRST_SEEN.get(pid) or _after(_CURRENT[0])}: {cmd[:300]}"
              for pid, (st, cmd) in left.items()]
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _descendants() and time.monotonic() < deadline:  # reap ours (orphans became ours)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        time.sleep(0.05)
    pytest.fail(f"{len(left)} process(es) left behind by the tests (now killed):\n  "
                + "\n  ".join(report), pytrace=False)
