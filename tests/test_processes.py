"""Several processes (jaxcnn.training.processes, `jaxcnn train --processes P`): a run over P
processes on JAX's distributed runtime (gloo collectives on this machine's CPU) equals the
one-process run, survives a killed process, and resumes bit for bit.

Each multi-process run is a real `jaxcnn train --processes P` (the launcher, jaxcnn.tools.launch,
starts P `jaxcnn train --coordinator ...` processes); the one-process references run in this
process. Runs are small (the 6x6 synthetic bars, 16 steps an epoch) since every process pays for
importing jax and compiling its step: about 10 s a run on two idle cores.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcnn.training import checkpoint, processes
from jaxcnn.training import run as trainer

from helpers import run_child

# as in test_kill_resume.py: a background shell hands its children SIGINT ignored, and the
# launcher would then never see the Ctrl-C that the test below sends
signal.signal(signal.SIGINT, signal.default_int_handler)

TINY_BN = '''
from jaxcnn.nn.layers import Dense, Flatten, MaxPool, ReLU
from jaxcnn.nn.conv_layers import Conv2D
from jaxcnn.nn.norm_layers import BatchNorm
from jaxcnn.nn.network import Network
from jaxcnn.nn.heads import BINARY


def build():
    """conv 3x3 (2 filters) -> BatchNorm -> ReLU -> pool -> dense: the seed net with batch
    statistics, which the processes must share. No conv bias: BatchNorm cancels it, its gradient
    is rounding noise (1e-17), and Adam's normalised step turns that noise into +-lr."""
    return Network("tiny_bn", [Conv2D(2, 3, use_bias=False, name="conv"), BatchNorm(name="bn"),
                               ReLU(),
                               MaxPool(2), Flatten(), Dense(1, name="dense")], (6, 6, 1), BINARY)
'''
COMMON = ["--data", "synthetic", "--batch-size", "32", "--schedule", "constant", "--lr", "1e-2",
          "--quiet"]
PLAIN = ["--model", "tiny_bn:build", *COMMON]
PRIVATE = ["--model", "seed", *COMMON, "--dp-clip", "1", "--dp-noise", "1.0"]
TIMEOUT = 240  # seconds for one launched run (about 10 s on two idle cores)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("processes")
    (d / "tiny_bn.py").write_text(TINY_BN)
    return d


def _cli(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "jaxcnn.tools.cli", "train", *args]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]),
                                         env.get("PYTHONPATH", "")])
    env.pop("XLA_FLAGS", None)  # the processes run as users run them
    return env


def _launch(workdir: Path, out: str, args: list[str], procs: int) -> subprocess.CompletedProcess:
    done = run_child(_cli(workdir, *args, "--processes", str(procs), "--out", out),
                     cwd=workdir, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _checkpoint(path: Path) -> list[np.ndarray]:
    """The arrays of a checkpoint (params, state, optimizer state), in the order saved."""
    with np.load(path) as z:
        return [z[k] for k in sorted(z.files) if k.startswith("leaf_")]


def _reference(workdir: Path, out: str, args: list[str], epochs: int, dtype: str) -> Path:
    """The one-process run of the same settings, in this process."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        cfg = _config(args, epochs, dtype)
        trainer.fit(cfg, workdir / out, progress=False, log=lambda s: None)
    finally:
        os.chdir(cwd)
    return workdir / out / "checkpoint.npz"


def _config(args: list[str], epochs: int, dtype: str) -> trainer.TrainConfig:
    names = {"--model": "model", "--data": "data", "--batch-size": "batch_size",
             "--schedule": "schedule", "--lr": "lr",
             "--dp-clip": "dp_clip", "--dp-noise": "dp_noise"}
    kw, it = {}, iter(args)
    for a in it:
        if a in names:
            v = next(it)
            kw[names[a]] = (int(v) if names[a] == "batch_size"
                            else float(v) if names[a] in ("lr", "dp_clip", "dp_noise") else v)
    return trainer.TrainConfig(**kw, epochs=epochs, dtype=dtype)


def _max_rel(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b)
    worst = 0.0
    for x, y in zip(a, b):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(np.abs(y).max(initial=0.0), 1e-300)
        worst = max(worst, float(np.abs(x - y).max(initial=0.0) / scale))
    return worst


# ----------------------------------------------------------------------------- equality
@pytest.mark.parametrize("procs,args,epochs,dtype,rtol", [
    # float64: the P shard means averaged (pmean) against one mean over the batch: rounding
    (2, PLAIN, 2, "float64", 1e-12),
    (4, PLAIN, 1, "float64", 1e-12),
    (2, PRIVATE, 1, "float64", 1e-12),   # one Poisson sample, one noise draw for all processes
    # float32: the same sums in another order (rounding 6e-8), then 16 Adam steps (lr 1e-2),
    # whose normalised steps amplify it: measured 6.9e-6 of a leaf's largest entry (float64:
    # 3e-15 to 4e-14). 1e-4 leaves a margin of 14 and still fails any wrong step (a shard
    # counted twice is off by 1e-1)
    (2, PLAIN, 1, "float32", 1e-4),
], ids=["bn-2-float64", "bn-4-float64", "dp-2-float64", "bn-2-float32"])
def test_processes_equal_one_process(workdir, procs, args, epochs, dtype, rtol):
    tag = f"{procs}-{'dp' if '--dp-clip' in args else 'bn'}-{dtype}-{epochs}"
    done = _launch(workdir, f"p{tag}", [*args, "--epochs", str(epochs), "--dtype", dtype], procs)
    assert f"epoch {epochs}:" in done.stdout, done.stdout  # process 0's log, once
    assert done.stdout.count(f"epoch {epochs}:") == 1, done.stdout
    many = _checkpoint(workdir / f"p{tag}" / "checkpoint.npz")
    one = _checkpoint(_reference(workdir, f"one{tag}", args, epochs, dtype))
    assert _max_rel(many, one) <= rtol  # params, BatchNorm's running statistics, Adam's moments
    meta = checkpoint.load_meta(workdir / f"p{tag}" / "checkpoint.npz")
    assert meta["config"]["processes"] == procs and meta["step"] == 16 * epochs


# ----------------------------------------------------------------------------- faults
def _pids_of_children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def _running_with(text: str) -> list[int]:
    """Pids of the processes (not zombies) whose command line holds `text`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmd and state != b"Z":
                found.append(int(entry.name))
    return found


def _process_one(launcher: subprocess.Popen) -> int:
    for pid in _pids_of_children(launcher.pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"--process-id\x001" in f.read():
                return pid
    raise AssertionError("process 1 of the run was not found")


def test_killed_process_ends_the_run_and_resume_is_bit_identical(workdir, children):
    """SIGKILL to process 1 after the first epoch: the launcher stops process 0 and says so in one
    line within 60 s; `--resume` with the same processes ends bit for bit where the uninterrupted
    2-epoch run ends (the constant schedule lets the killed run's --epochs 1000 become 2)."""
    out = workdir / "killed"
    launcher = children(_cli(workdir, *PLAIN, "--epochs", "1000", "--dtype", "float64",
                             "--processes", "2", "--out", str(out)),
                        cwd=workdir, env=_env(), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
    for line in launcher.stdout:  # process 0's log: an event, not a guess at a duration
        if line.startswith("epoch 1:"):
            break
    else:
        raise AssertionError(launcher.stderr.read()[-3000:])
    victim = _process_one(launcher)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    rc = launcher.wait(timeout=120)
    took = time.monotonic() - killed_at
    err = launcher.stderr.read()
    assert rc != 0 and took < 60, (rc, took, err[-2000:])
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert "process 1 of 2 was killed by SIGKILL" in last and "stopped the other 1" in last, err
    assert not _running_with(str(out)), "the launcher left a process of the run running"
    assert not list(out.glob("*.tmp*")), "a half-written file was left"
    assert checkpoint.load_meta(out / "checkpoint.npz")["epoch"] in (1, 2)

    _launch(workdir, str(out), [*PLAIN, "--epochs", "2", "--dtype", "float64", "--resume"], 2)
    whole = workdir / "p2-bn-float64-2" / "checkpoint.npz"  # the equality test's 2-epoch run
    if not whole.exists():
        _launch(workdir, str(whole.parent), [*PLAIN, "--epochs", "2", "--dtype", "float64"], 2)
    for a, b in zip(_checkpoint(out / "checkpoint.npz"), _checkpoint(whole)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_ctrl_c_stops_every_process_and_keeps_the_checkpoint(workdir, children):
    """SIGINT to the launcher (Ctrl-C, or SIGTERM): passed on to the processes, status 130, one
    line saying so, nothing left running, the last checkpoint whole."""
    out = workdir / "interrupted"
    launcher = children(_cli(workdir, *PRIVATE, "--epochs", "1000", "--dtype", "float64",
                             "--processes", "2", "--out", str(out)),
                        cwd=workdir, env=_env(), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
    for line in launcher.stdout:
        if line.startswith("epoch 1:"):
            break
    else:
        raise AssertionError(launcher.stderr.read()[-3000:])
    launcher.send_signal(signal.SIGINT)
    rc = launcher.wait(timeout=120)
    err = launcher.stderr.read()
    assert rc == 130, (rc, err[-2000:])
    assert "interrupted; stopped all 2 processes" in err.splitlines()[-1], err
    assert not _running_with(str(out)), "a process of the run is still running"
    assert checkpoint.load_meta(out / "checkpoint.npz")["epoch"] >= 1


def test_resume_with_another_process_count_is_refused(workdir):
    """The checkpoint of a 2-process run, resumed by one process: refused, naming --processes."""
    src = workdir / "p2-dp-float64-1"
    if not src.exists():
        _launch(workdir, str(src), [*PRIVATE, "--epochs", "1", "--dtype", "float64"], 2)
    done = run_child(_cli(workdir, *PRIVATE, "--epochs", "1", "--dtype", "float64", "--resume",
                          "--out", str(src)), cwd=workdir, env=_env(), capture_output=True,
                     text=True, timeout=TIMEOUT)
    assert done.returncode == 2, done.stderr
    assert "--processes (checkpoint 2, now 1)" in done.stderr, done.stderr


def test_coordinator_port_in_use_is_a_clear_error(workdir):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = run_child(_cli(workdir, *PLAIN, "--processes", "2", "--coordinator",
                              f"127.0.0.1:{port}", "--out", str(workdir / "port")),
                         cwd=workdir, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2, done.stderr
    assert f"port {port} is already in use" in done.stderr, done.stderr
    assert not (workdir / "port").exists()


@pytest.mark.parametrize("args,message", [
    (["--coordinator", "nohost"], "--coordinator must be HOST:PORT"),
    (["--coordinator", "127.0.0.1:1234"], "--num-processes must be an int >= 1"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "--process-id must be an int in 0..1"),
    (["--coordinator", "auto", "--num-processes", "2"], "leave them out"),
])
def test_bad_cluster_settings_are_refused_before_joining(args, message):
    with pytest.raises(ValueError, match=message):
        processes.check_cluster(*_cluster(args))


def _cluster(args: list[str]) -> tuple:
    kw = dict(zip(args[::2], args[1::2]))
    n, i = kw.get("--num-processes"), kw.get("--process-id")
    return kw["--coordinator"], None if n is None else int(n), None if i is None else int(i)


def test_one_process_helpers_are_the_identity():
    assert processes.count() == 1 and processes.index() == 0 and processes.is_leader()
    batch = (np.ones((4, 2)), np.zeros(4))
    assert processes.feed(batch, None) is batch
    tree = {"a": jax.numpy.arange(3.0)}
    assert np.array_equal(processes.to_host(tree)["a"], np.arange(3.0))
    assert processes.broadcast(tree) is tree
