"""How a `jaxcnn` command meets its terminal (jaxcnn.tools.cli): output streams whose reader
may leave without changing the exit status, and XLA's C++ log lines kept off stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import jax


def quiet_xla_logs() -> None:
    """Keep XLA's C++ log lines off stderr for this process, unless TF_CPP_MIN_LOG_LEVEL or
    JAX_LOGGING_LEVEL is set (the user's choice then holds).

    XLA logs notes such as "Constant folding an instruction is taking > 1s" at ERROR level,
    though they are no error; real errors still reach the user as Python exceptions. jax's
    `jax_logging_level` CRITICAL sets the C++ minimum level to FATAL, even after jaxlib is
    loaded (TF_CPP_MIN_LOG_LEVEL is read only when it loads, before any command can set it).
    A jax without the option is left as is. `import jax` itself sets TF_CPP_MIN_LOG_LEVEL to "1"
    when it is unset (jax/__init__.py, 0.10.2 and 0.12.x: `os.environ.setdefault`), so "1" reads
    as jax's default, any other value as the user's.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1") != "1" or "JAX_LOGGING_LEVEL" in os.environ:
        return
    with contextlib.suppress(AttributeError, ValueError):
        jax.config.update("jax_logging_level", "CRITICAL")


class _DropWhenGone:
    """A text stream that drops what is written once its reader has gone (BrokenPipeError),
    pointing its file descriptor at /dev/null so that the interpreter's last flush succeeds."""

    def __init__(self, stream: TextIO):
        self._stream, self.gone = stream, False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._leave()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._leave()

    def _leave(self) -> None:
        self.gone = True
        with contextlib.suppress(AttributeError, OSError, ValueError):  # no real fd (a test's)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)


@contextlib.contextmanager
def readers_may_leave() -> Iterator[None]:
    """sys.stdout and sys.stderr as `_DropWhenGone` streams while a command runs (`jaxcnn train
    2>&1 | head -1`: the run goes on and its exit status still tells how it ended)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _DropWhenGone(sys.stdout), _DropWhenGone(sys.stderr)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = saved


def say(line: str) -> None:
    """print, flushed line by line (a reader that has gone: see `readers_may_leave`)."""
    print(line, flush=True)
