"""The output directory of a training run: its lock, its files, and what a resume must match.

    .lock            held (fcntl.flock) by the run writing here, and holding its pid
    config.json      the TrainConfig, as run (written atomically)
    metrics.jsonl    one JSON record per line ("kind": "step" or "epoch", each with its "epoch"),
                     appended and flushed line by line
    checkpoint.npz   see jaxcnn.training.checkpoint; its meta holds the run's own record of the
                     configuration and a fingerprint of the data, which a resume must match
    curves.png, filters.png, grad_norms.png   (jaxcnn.training.plots)

A crash can leave a partial last line in metrics.jsonl (dropped on resume) and a temporary
`*.tmp` file of an atomic write (removed when the next run takes the lock); it cannot leave a
half-written checkpoint or config.json.

Each of these files must be a regular file (`jaxcnn.training.safefiles`): a symbolic link, a
FIFO, a directory in its place is refused with a message naming it, never followed, read or
written through (a `.lock` linked to someone's file would otherwise be overwritten with a pid);
the lock and metrics.jsonl, written in place, must also have a single hard link. A write that
fails (a full disk) names the file and says what is intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jaxcnn.training import checkpoint, safefiles

LOCK, CONFIG, METRICS, CHECKPOINT = ".lock", "config.json", "metrics.jsonl", "checkpoint.npz"
PLOTS = ("curves.png", "filters.png", "grad_norms.png")
MAY_CHANGE_ON_RESUME = ("epochs",)


class RunDirError(ValueError):
    """The output directory cannot be used as asked (in use, holds a run, does not match)."""


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold `out/.lock` (an exclusive flock, released by the kernel if the process dies) for the
    duration; writes this process's pid into it.

    Args:
      out: the run directory (it must exist).

    Raises:
      RunDirError: naming the holder's pid, if another process holds the lock.
      safefiles.NotARegularFileError: if `out/.lock` is a symbolic link (it is not followed: its
        target is untouched), a FIFO, a directory, ..., or has several hard links.
    """
    fd = safefiles.open_regular(out / LOCK, os.O_RDWR | os.O_CREAT, single_link=True)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirError(f"{out} is in use by another jaxcnn run (pid {pid} holds "
                              f"{out / LOCK}); wait for it to end, or choose another --out"
                              ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            raise safefiles.WriteError(e, f"{out / LOCK}: writing this run's pid failed "
                                          f"({safefiles.reason(e)})") from e
        yield
    finally:
        os.close(fd)  # releases the lock


def check_start(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over a run's files unless told to (`overwrite`).

    Args:
      out: the run directory (it need not exist).
      resume: continue the run in `out`.
      overwrite: start over, deleting the run in `out`.

    Raises:
      RunDirError: both flags, `out` is not a directory, or it holds a run and neither flag.
    """
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: --resume continues the "
                          f"run in {out}, --overwrite deletes it and starts over")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out}: exists and is not a directory")
    held = [name for name in (CHECKPOINT, METRICS) if (out / name).exists()]
    if held and not resume and not overwrite:
        raise RunDirError(f"{out} already holds a run ({', '.join(held)}); --resume continues "
                          "it, --overwrite deletes it and starts over, or choose another --out")


def clear(out: Path) -> None:
    """Delete a run's files from `out` (not the lock) and any temporary file of a killed write."""
    for name in (CHECKPOINT, METRICS, CONFIG, *PLOTS):
        safefiles.remove(out / name)
    remove_temps(out)


def remove_temps(out: Path) -> None:
    """Delete the temporary files that a process killed during an atomic write leaves behind
    (only call it while holding the lock: nobody else is writing)."""
    for name in (CHECKPOINT, CONFIG, METRICS):
        for tmp in out.glob(f"{name}.*.tmp"):
            safefiles.remove(tmp)


def start_fresh(out: Path, config: dict[str, Any]) -> None:
    """Clear `out` (`clear`), then write config.json and an empty metrics.jsonl."""
    clear(out)
    write_config(out, config)
    MetricsLog(out / METRICS, fresh=True).close()


def continue_after(out: Path, epoch: int, config: dict[str, Any],
                   log: Callable[[str], None]) -> None:
    """Make `out`'s files those of a run that has just finished epoch `epoch`: metrics.jsonl
    cut back to it (`truncate_metrics`, which checks every line before it writes), config.json
    rewritten (saying so where it was unreadable).

    Args:
      out: the run directory.
      epoch: the checkpoint's epoch.
      config: the run's configuration.
      log: where the notes go.
    """
    metrics = out / METRICS
    problem = config_problem(out)
    dropped = truncate_metrics(metrics, epoch)
    if dropped is not None:
        log(f"dropped the partial last line {dropped} of {metrics} (a crash mid-write)")
    if problem:
        log(f"{problem}; rewritten from the checkpoint's record")
    write_config(out, config)


# ----------------------------------------------------------------------------- config
def write_config(out: Path, config: dict[str, Any]) -> None:
    """Atomically write `config` as out/config.json."""
    text = json.dumps(config, indent=1).encode()
    checkpoint.atomic_write(out / CONFIG, lambda f: f.write(text))


def config_problem(out: Path) -> str | None:
    """None if out/config.json is absent or readable JSON, else what is wrong, naming the file
    and the line."""
    path = out / CONFIG
    try:
        json.loads(safefiles.read_bytes(path))  # a link, FIFO, ...: NotARegularFileError
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        return f"{path}, line {e.lineno}: not JSON ({e.msg})"
    except (OSError, UnicodeDecodeError) as e:
        return f"{path}: unreadable ({e})"
    return None


def _show(value: Any) -> str:
    return "unset" if value is _UNSET else json.dumps(value)


_UNSET = object()


def check_resumable(ckpt: Path, meta: dict[str, Any], config: dict[str, Any], data_sha256: str,
                    data_spec: str) -> tuple[int, int]:
    """Check that the checkpoint was written by this configuration on these data.

    Args:
      ckpt: the checkpoint's path (for messages).
      meta: its meta (`checkpoint.load_meta`).
      config: the configuration asked for now (`dataclasses.asdict(TrainConfig)`).
      data_sha256: `data.fingerprint` of the data now.
      data_spec: the --data spec, for messages.

    Returns:
      (epoch, step) after which the checkpoint was written.

    Raises:
      RunDirError: naming every setting that differs (only `MAY_CHANGE_ON_RESUME` may), other
        data, or an --epochs below the checkpoint's epoch.
    """
    saved, epoch, step = meta.get("config"), meta.get("epoch"), meta.get("step")
    if not isinstance(saved, dict) or not isinstance(epoch, int) or not isinstance(step, int):
        raise RunDirError(f"{ckpt}: its meta lacks the run's config, epoch or step; not a "
                          f"checkpoint of `jaxcnn train`? {checkpoint.REMEDY}")
    keys = [*config, *(k for k in saved if k not in config)]
    diffs = [f"--{k.replace('_', '-')} (checkpoint {_show(saved.get(k, _UNSET))}, now "
             f"{_show(config.get(k, _UNSET))})" for k in keys
             if k not in MAY_CHANGE_ON_RESUME and saved.get(k, _UNSET) != config.get(k, _UNSET)]
    if diffs:
        raise RunDirError(f"{ckpt}: --resume needs the settings this checkpoint was written with "
                          f"(only --epochs may change, and only with --schedule constant); they "
                          f"differ in {', '.join(diffs)}")
    if meta.get("data_sha256") != data_sha256:
        then = str(meta.get("data_sha256"))[:12]
        raise RunDirError(f"{ckpt}: was trained on other data than --data {data_spec} gives now "
                          f"(sha256 {then}... then, {data_sha256[:12]}... now); --resume needs "
                          "the same images and labels")
    if epoch > config["epochs"]:
        raise RunDirError(f"{ckpt}: holds epoch {epoch} but --epochs is {config['epochs']}; "
                          f"resume with --epochs {epoch} or more")
    return epoch, step


def check_horizon(ckpt: Path, saved_epochs: int, done: int, epochs: int, schedule: str) -> None:
    """Refuse a resume that changes `epochs` when the schedule depends on it (cosine: laid out
    over all the epochs), since it would not end with an uninterrupted run's parameters.

    Args:
      ckpt: the checkpoint (for the message).
      saved_epochs: the `epochs` it was written under.
      done: the epochs it holds.
      epochs, schedule: the --epochs and --schedule asked for now.

    Raises:
      RunDirError: naming both epoch counts and the ways to go on.
    """
    if schedule == "constant" or saved_epochs == epochs:
        return
    raise RunDirError(
        f"{ckpt}: --epochs {epochs}: this run's {schedule} learning-rate schedule is laid "
        f"out over its --epochs {saved_epochs} (it holds epoch {done}), so continuing it to "
        f"{epochs} would not give the parameters of an uninterrupted {epochs}-epoch run; "
        f"resume with --epochs {saved_epochs}, or start a {epochs}-epoch run afresh "
        f"(--overwrite or another --out); only --schedule constant runs may change --epochs "
        f"on resume")


# ----------------------------------------------------------------------------- metrics
def read_metrics(path: Path, *, drop_partial_tail: bool = False
                 ) -> tuple[list[tuple[str, dict]], int | None]:
    """The records of a metrics.jsonl, each with its line as written.

    Args:
      path: the file.
      drop_partial_tail: a last line that lacks its newline and is not JSON (a crash mid-write)
        is dropped instead of refused.

    Returns:
      ([(line, record)], the number of the dropped line or None).

    Raises:
      RunDirError: naming the file and the line of a line that is not a JSON record with an
        int "epoch" and a "kind" of "step" or "epoch".
      safefiles.NotARegularFileError: if `path` is a link, a FIFO, a directory, ...
    """
    text = safefiles.read_bytes(path).decode("utf-8", errors="replace")
    rows = text.split("\n")
    out, dropped = [], None
    for n, line in enumerate(rows, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if drop_partial_tail and n == len(rows):  # the last piece had no newline
                dropped = n
                break
            raise RunDirError(f"{path}, line {n}: not a JSON record ({e.msg}, column {e.colno}); "
                              "fix or delete that line") from None
        if not (isinstance(record, dict) and type(record.get("epoch")) is int
                and record.get("kind") in ("step", "epoch")):
            raise RunDirError(f"{path}, line {n}: a metrics record needs an int 'epoch' and a "
                              f"'kind' of 'step' or 'epoch'; got {line[:60]!r}")
        out.append((line, record))
    return out, dropped


def truncate_metrics(path: Path, epoch: int) -> int | None:
    """Keep only the records of epochs up to `epoch` (a crashed run may have logged part of the
    next one), dropping a partial last line; rewrites the file atomically if anything goes.

    Args:
      path: metrics.jsonl (absent: nothing to do).
      epoch: the last finished epoch (the checkpoint's).

    Returns:
      the number of the partial last line dropped, or None.
    """
    if not os.path.lexists(path):
        return None
    rows, dropped = read_metrics(path, drop_partial_tail=True)
    keep = [line for line, record in rows if record["epoch"] <= epoch]
    if dropped is not None or len(keep) != len(rows):
        text = "".join(line + "\n" for line in keep).encode()
        checkpoint.atomic_write(path, lambda f: f.write(text))
    return dropped


class MetricsLog:
    """metrics.jsonl opened for appending; every record is one line, flushed when written.

    Args:
      path: the file: created if absent, emptied if `fresh`; refused (NotARegularFileError) if
        it is a link, a FIFO, a directory, ..., or has several hard links.
      fresh: start it empty.

    A record that cannot be written (a full disk) raises `safefiles.WriteError` naming the file;
    the records before it are intact (a partial last line is dropped on resume).
    """

    def __init__(self, path: Path, *, fresh: bool = False):
        self.path = Path(path)
        fd = safefiles.open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                    single_link=True)
        if fresh:
            os.ftruncate(fd, 0)
        self._f = os.fdopen(fd, "a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        """Write `record` as one JSON line and flush it."""
        try:
            self._f.write(json.dumps(record) + "\n")
            self._f.flush()
        except OSError as e:
            raise safefiles.WriteError(e, f"{self.path}: appending a record failed "
                                          f"({safefiles.reason(e)}); the records before it are "
                                          "intact (a partial last line is dropped on resume)"
                                       ) from e

    def close(self) -> None:
        """Close the file (a write that failed already was reported by `append`)."""
        try:
            self._f.close()
        except OSError:
            if not self._f.closed:
                raise

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
