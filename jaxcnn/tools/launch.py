"""`jaxcnn train --processes P`: P processes of one run on this machine, started and watched.

Process i is `python -m jaxcnn.tools.cli <the same command line> --coordinator 127.0.0.1:PORT
--num-processes P --process-id i` (the options given last win; `jaxcnn.training.processes`), in
its own session, on the CPU (JAX_PLATFORMS=cpu unless set), killed with the launcher (Linux's
parent-death signal, `die_with_launcher`).
Process 0's output is the run's; the others' stdout is dropped and their stderr kept for the
reason of a failure. The launcher waits for the processes to end (an event, not a poll):

- all end with 0: 0;
- one ends otherwise (an error, a kill): the others are stopped (SIGTERM, then SIGKILL after
  STOP_GRACE_S) and one line says which process ended how, with the last line of its stderr;
  the status is the first failure's (2 for bad settings, as one process), 1 for a signal;
- Ctrl-C or SIGTERM to the launcher: SIGINT to every process (each stops as one process would:
  process 0's checkpoint is the last whole epoch), then as above; 130.

Every child is reaped on every path.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import IO

from jaxcnn.training import processes

__all__ = ["die_with_launcher", "free_port", "launch"]

STOP_GRACE_S = 10.0  # after SIGTERM (or SIGINT), how long a process has before SIGKILL
_PR_SET_PDEATHSIG = 1
LAUNCHER_PID = "JAXCNN_LAUNCHER_PID"  # set in the environment of the processes it starts


def free_port(host: str = "127.0.0.1") -> int:
    """A port of `host` that nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def die_with_launcher() -> None:
    """In a process the launcher started (LAUNCHER_PID set): be killed when the launcher dies
    (Linux's parent-death signal; set here rather than between fork and exec, where a
    multithreaded parent must not run Python), and end now if it has died already. SIGINT, the
    launcher's request to stop, raises KeyboardInterrupt even where a background shell started
    the launcher with SIGINT ignored."""
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher is None:
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the launcher's stop request
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if str(os.getppid()) != launcher:
        raise SystemExit("jaxcnn train: the launcher of this process has ended")


def _describe(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-rc).name}"
        return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


class _Tail:
    """The last lines of a child's stderr, read on a thread; process 0's are passed on too."""

    def __init__(self, stream: IO[str], echo: bool):
        self.lines: collections.deque[str] = collections.deque(maxlen=20)
        self._thread = threading.Thread(target=self._read, args=(stream, echo), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str], echo: bool) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            if echo:
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.write(line)
                    sys.stderr.flush()

    def last(self) -> str:
        self._thread.join(timeout=STOP_GRACE_S)
        reason = [ln for ln in self.lines if ln.strip()]
        return reason[-1].strip() if reason else "(nothing on stderr)"


def _spawn(argv: list[str], count: int, coordinator: str) -> list[subprocess.Popen]:
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env[LAUNCHER_PID] = str(os.getpid())
    children = []
    try:
        for i in range(count):
            cmd = [sys.executable, "-m", "jaxcnn.tools.cli", *argv,
                   "--coordinator", coordinator, "--num-processes", str(count),
                   "--process-id", str(i)]
            children.append(subprocess.Popen(
                cmd, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                stdout=None if i == 0 else subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True, errors="replace"))
    except BaseException:
        _stop(children, signal.SIGKILL)
        raise
    return children


def _stop(children: list[subprocess.Popen], sig: int) -> None:
    """Send `sig` to every child still running, give them STOP_GRACE_S, then SIGKILL; reap all."""
    for c in children:
        if c.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                c.send_signal(sig)
    for c in children:
        try:
            c.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()


@contextlib.contextmanager
def _interrupts_as_keyboard() -> Iterator[None]:
    """SIGTERM to the launcher reads as Ctrl-C (it is passed on to the processes as SIGINT)."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _wait_any(children: list[subprocess.Popen]) -> subprocess.Popen:
    """Block until one of `children` ends (os.wait: an event); return it, reaped."""
    by_pid = {c.pid: c for c in children}
    while True:
        pid, status = os.wait()
        child = by_pid.get(pid)
        if child is not None:
            child.returncode = os.waitstatus_to_exitcode(status)
            return child


def launch(argv: list[str], count: int, coordinator: str | None = None) -> int:
    """Run `jaxcnn train <argv>` as `count` processes of one run on this machine.

    Args:
      argv: the whole command line after `jaxcnn` (`train ... --processes P ...`); each process
        gets it with its own --coordinator, --num-processes and --process-id added.
      count: P >= 2.
      coordinator: "127.0.0.1:PORT" for process 0's coordination service (default: a free port).

    Returns:
      The exit status (module docstring).

    Raises:
      ValueError: a bad P, or a coordinator whose port is in use (before anything starts).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise ValueError(f"--processes must be an int >= 2; got {count!r}")
    if coordinator is None:
        coordinator = f"127.0.0.1:{free_port()}"
    host, port = processes.check_cluster(coordinator, count, 0)
    if processes.port_in_use(host, port):
        raise ValueError(f"--coordinator {coordinator}: port {port} is already in use on this "
                         f"machine; pick a free port or leave --coordinator out")
    children = _spawn(argv, count, coordinator)
    tails = [_Tail(c.stderr, echo=i == 0) for i, c in enumerate(children)]
    with _interrupts_as_keyboard():
        try:
            return _watch(children, tails)
        except KeyboardInterrupt:
            _stop(children, signal.SIGINT)
            print(f"jaxcnn train: interrupted; stopped all {count} processes "
                  f"(--resume continues from process 0's last checkpoint)", file=sys.stderr)
            return 130
        finally:
            _stop(children, signal.SIGKILL)


def _watch(children: list[subprocess.Popen], tails: list[_Tail]) -> int:
    """Wait for every child; at the first failure stop the rest and say why in one line."""
    running = list(children)
    while running:
        child = _wait_any(running)
        running.remove(child)
        if child.returncode == 0:
            continue
        i = children.index(child)
        _stop(running, signal.SIGTERM)
        rc = child.returncode if child.returncode > 0 else 1
        print(f"jaxcnn train: process {i} of {len(children)} {_describe(child.returncode)}: "
              f"{tails[i].last()}; stopped the other {len(children) - 1}", file=sys.stderr)
        return rc
    return 0
