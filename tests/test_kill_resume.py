"""Kill `jaxcnn train` at the worst moments, resume it, and end exactly where an uninterrupted run
ends: bit-identical parameters and optimizer state, and the same metrics.jsonl records (but for
their "seconds").

Real processes (`python -m jaxcnn.tools.cli train ...`). To hit the narrow windows every time, a
small driver runs the same `cli.main` with a pause patched in (it writes OUT.paused, then sleeps
until it is killed): between writing a checkpoint's temporary file and renaming it, just after
the rename, and halfway through writing one line of metrics.jsonl. One more run is killed
whenever its first checkpoint appears, wherever it then is. Each process costs ~3-4 s (import,
compile, and the plots at the end), two of them at a time.

The test waits on events (a marker file appearing, a process exiting), never on a guess of how
long something takes; the bounds (helpers.CHILD_TIMEOUT) only turn a hang into a failure. Every
child is started by the `children` fixture (its own process group, killed and reaped at teardown
whatever happened).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from jaxcnn.training import checkpoint

from helpers import CHILD_TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["train", "--model", "seed", "--data", "synthetic", "--epochs", "3", "--batch-size", "32",
        "--quiet"]  # 512 bars / 32: 16 steps an epoch, 48 in all; step records every 10 steps

DRIVER = r"""
import json, os, signal, sys, time
from pathlib import Path

# Ctrl-C as in a terminal's foreground job. A test run started in the background of a
# non-interactive shell (`pytest &` in a script) hands its children SIGINT *ignored*, and Python
# then installs no KeyboardInterrupt handler: the SIGINT below would do nothing.
signal.signal(signal.SIGINT, signal.default_int_handler)

from jaxcnn.tools import cli
from jaxcnn.training import rundir

mode, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
out = Path(argv[argv.index("--out") + 1])


def pause():
    (out.parent / (out.name + ".paused")).write_text(str(os.getpid()))
    time.sleep(600)


real_replace, saves = os.replace, [0]


def replace(src, dst, *args, **kw):
    if Path(dst).name != "checkpoint.npz":
        return real_replace(src, dst, *args, **kw)
    saves[0] += 1
    if mode == "before-replace" and saves[0] == n:
        pause()
    real_replace(src, dst, *args, **kw)
    if mode == "after-replace" and saves[0] == n:
        pause()


real_append = rundir.MetricsLog.append


def append(self, record):
    if mode == "mid-record" and record["kind"] == "step" and record["step"] == n:
        line = json.dumps(record) + "\n"
        self._f.write(line[: len(line) // 2])
        self._f.flush()
        pause()
    real_append(self, record)


os.replace, rundir.MetricsLog.append = replace, append
raise SystemExit(cli.main(argv))
"""


@pytest.fixture
def spawn(children):
    """spawn(*argv, driver=(mode, n)) starts `jaxcnn <argv>` (through DRIVER when given)."""
    def start(*argv: object, driver: tuple[str, int] | None = None,
              stdout: int = subprocess.DEVNULL) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
            str(ROOT), os.environ.get("PYTHONPATH")]))}
        head = ["-c", DRIVER, driver[0], str(driver[1])] if driver else ["-m", "jaxcnn.tools.cli"]
        return children([sys.executable, *head, *map(str, argv)], env=env, cwd=ROOT,
                        stdout=stdout, stderr=subprocess.PIPE, text=True)
    return start


def wait_until(ready, proc: subprocess.Popen, what: str) -> None:
    """Until `ready()` (or `proc` exits first: a failure); CHILD_TIMEOUT guards against a hang."""
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {CHILD_TIMEOUT} s (hung?)")
        time.sleep(0.01)


def paused(out: Path, proc: subprocess.Popen) -> None:
    marker = out.parent / (out.name + ".paused")
    wait_until(marker.exists, proc, "the pause")
    marker.unlink()


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=CHILD_TIMEOUT)
    return proc.returncode, err


def killed(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL


def epoch_of(out: Path) -> int | None:
    meta = checkpoint.read_meta(out / "checkpoint.npz")
    return None if meta is None else meta["epoch"]


def assert_same_run(out: Path, ref: Path) -> None:
    with np.load(out / "checkpoint.npz") as a, np.load(ref / "checkpoint.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:  # every parameter, BatchNorm state, optimizer moment, and the meta
            assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k

    def records(d: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (d / "metrics.jsonl").read_text().splitlines()]

    assert records(out) == records(ref)
    assert all((out / f).stat().st_size for f in ("curves.png", "filters.png", "grad_norms.png"))
    assert not list(out.glob("*.tmp"))


def test_killed_at_the_worst_moments_then_resumed_ends_bit_identical(tmp_path, spawn):
    ref, cut, polled = tmp_path / "ref", tmp_path / "cut", tmp_path / "polled"
    procs = [spawn(*ARGS, "--out", ref), spawn(*ARGS, "--out", polled)]

    # any moment: SIGKILL as soon as the first checkpoint exists
    wait_until((polled / "checkpoint.npz").exists, procs[1], "the first checkpoint")
    procs[1].kill()
    assert finish(procs[1])[0] in (-signal.SIGKILL, 0)  # 0: it won the race to the end

    # Ctrl-C just after the first checkpoint's rename: one line, exit 130
    p = spawn(*ARGS, "--out", cut, driver=("after-replace", 1))
    paused(cut, p)
    p.send_signal(signal.SIGINT)
    rc, err = finish(p)
    assert rc == 130 and "Traceback" not in err, err
    assert err.splitlines() == [f"jaxcnn train: interrupted after step 16; the last "
                                f"checkpoint is epoch 1 ({cut / 'checkpoint.npz'}); "
                                "--resume continues"]

    # SIGKILL between writing the second checkpoint's temporary file and its rename; while it
    # waits there, a second run on the same directory is refused, naming the holder
    p = spawn(*ARGS, "--out", cut, "--resume", driver=("before-replace", 1))
    paused(cut, p)
    rc, err = finish(spawn(*ARGS, "--out", cut, "--resume"))
    assert rc == 2 and f"is in use by another jaxcnn run (pid {p.pid} " in err, err
    killed(p)
    assert epoch_of(cut) == 1 and len(list(cut.glob("checkpoint.npz.*.tmp"))) == 1

    # SIGKILL halfway through the line of step 40 (epoch 3, after checkpoint 2)
    p = spawn(*ARGS, "--out", cut, "--resume", driver=("mid-record", 40))
    paused(cut, p)
    killed(p)
    assert epoch_of(cut) == 2 and not (cut / "metrics.jsonl").read_text().endswith("\n")

    # SIGKILL just after the last checkpoint's rename, before the plots
    p = spawn(*ARGS, "--out", cut, "--resume", driver=("after-replace", 1))
    paused(cut, p)
    killed(p)
    assert epoch_of(cut) == 3 and not (cut / "curves.png").exists()

    # resume both to the end
    procs += [spawn(*ARGS, "--out", polled, "--resume"), spawn(*ARGS, "--out", cut, "--resume")]
    for proc in (procs[0], *procs[2:]):
        rc, err = finish(proc)
        assert rc == 0, err
    assert_same_run(cut, ref)
    assert_same_run(polled, ref)


def test_a_closed_stdout_does_not_stop_training(tmp_path, spawn):
    """`jaxcnn train | head -1`: the reader takes one line and goes; the run goes on to the end,
    silently, and exits 0."""
    out = tmp_path / "run"
    p = spawn(*ARGS, "--out", out, stdout=subprocess.PIPE)
    hang_guard = threading.Timer(CHILD_TIMEOUT, p.kill)  # a hung run: EOF instead of a stall
    hang_guard.start()
    try:
        first = p.stdout.readline()
    finally:
        hang_guard.cancel()
    p.stdout.close()
    _, err = p.communicate(timeout=CHILD_TIMEOUT)
    assert first.startswith("epoch 1: train loss")
    assert p.returncode == 0 and err == "", err
    assert epoch_of(out) == 3 and (out / "curves.png").exists()
