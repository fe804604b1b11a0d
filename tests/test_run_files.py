"""Files of a run that are not files, .npy headers that declare more than they hold, a full disk
(issue 23, items 12, 13 and the disk-full part of 16), and one `jaxcnn train` per item, the
CIFAR reader's of item 11 included, in a child process: exit status 2 and one line naming the file.

Before the fix: `--resume` hung for ever on a FIFO checkpoint.npz; a `.lock` that was a symbolic
link (or a hard link) had its target overwritten with the pid, and metrics.jsonl and config.json
were read and appended through links; a checkpoint entry whose header declared 10**12 elements
reached numpy's allocation (MemoryError, a traceback); a full disk said "[Errno 28] No space left
on device" without the file or what was left of it; a crafted CIFAR batch killed `jaxcnn train`
with SIGSEGV.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import secrets
import shutil
import signal
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from jaxcnn.training import checkpoint, rundir, safefiles
from jaxcnn.training import run as trainer

from helpers import run_child

ROOT = Path(__file__).resolve().parents[1]
# A hang guard, not a timing: the `jaxcnn train` children take 3-8 s on an idle 2-core machine
# (import, compile); the bug they guard against (a FIFO) hangs for ever.
HANG_GUARD = 300
TINY = ["--model", "seed", "--data", "synthetic", "--batch-size", "64", "--quiet"]
CFG = trainer.TrainConfig(model="seed", data="synthetic", epochs=1, batch_size=64)
Refused = safefiles.NotARegularFileError


@contextlib.contextmanager
def no_hang(seconds: float = 30) -> Iterator[None]:
    """Raise TimeoutError in this (main) thread if the body takes longer than `seconds`: an
    open() blocked on a FIFO is interrupted instead of stalling pytest."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def cli_child(*argv: object, env: dict | None = None, driver: str | None = None):
    """`python -m jaxcnn.tools.cli <argv>` (or `python -c driver <argv>`) in a child process."""
    head = ["-c", driver] if driver else ["-m", "jaxcnn.tools.cli"]
    return run_child([sys.executable, *head, *map(str, argv)], timeout=HANG_GUARD, cwd=ROOT,
                     capture_output=True, text=True, env={**os.environ, **(env or {})})


def one_line_refusal(done, *words: str) -> str:
    """Exit status 2, one line on stderr (no traceback) holding every word."""
    err = done.stderr
    assert done.returncode == 2, (done.returncode, err[-3000:])
    assert err.count("\n") == 1 and err.startswith("jaxcnn train: error: "), err[-3000:]
    for w in words:
        assert w in err, (w, err)
    return err


def small_checkpoint(path: Path) -> dict:
    tree = {"w": np.arange(9, dtype=np.float32).reshape(3, 3), "b": np.zeros(3, np.float32)}
    checkpoint.save(path, tree, {"epoch": 1})
    return tree


def rewrite_entry(path: Path, name: str, blob: bytes) -> None:
    """Replace one entry of the .npz `path` by `blob`, the zip otherwise as np.savez writes it."""
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    entries[name] = blob
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n, data in entries.items():
            z.writestr(n, data)


def npy_declaring(shape: tuple[int, ...], dtype: str, data: bytes) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False,
                                             "shape": shape})
    return f.getvalue() + data


# ----------------------------------------------------------------------------- 12. not files
def test_a_fifo_checkpoint_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "checkpoint.npz"
    os.mkfifo(fifo)
    with no_hang():
        with pytest.raises(Refused, match=re.escape(f"{fifo}: is a named pipe (FIFO), not a")):
            checkpoint.load_meta(fifo)
        with pytest.raises(Refused, match="named pipe"):
            checkpoint.load(fifo, {"w": np.zeros(3)})
        assert checkpoint.read_meta(fifo) is None
        with pytest.raises(Refused, match="named pipe"):
            checkpoint.save(fifo, {"w": np.zeros(3)}, {})


def test_a_directory_in_place_of_the_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoint.npz"
    ckpt.mkdir()
    with pytest.raises(Refused, match=re.escape(f"{ckpt}: is a directory, not a regular file")):
        checkpoint.load_meta(ckpt)
    with pytest.raises(Refused, match="is a directory"):
        checkpoint.save(ckpt, {"w": np.zeros(3)}, {})
    with pytest.raises(Refused, match="is a directory"):
        rundir.clear(tmp_path)
    assert ckpt.is_dir() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("how", ["symlink", "dangling symlink", "hard link", "fifo"])
def test_a_lock_that_is_not_a_plain_file_is_refused_its_target_untouched(tmp_path, how):
    out, victim = tmp_path / "run", tmp_path / "victim"
    out.mkdir()
    if how != "dangling symlink":
        victim.write_bytes(b"someone's file\n")
    if how == "fifo":
        os.mkfifo(out / ".lock")
    else:
        (os.link if how == "hard link" else os.symlink)(victim, out / ".lock")
    what = {"symlink": "a symbolic link", "dangling symlink": "a symbolic link",
            "hard link": "a file with 2 hard links", "fifo": "a named pipe"}[how]
    with no_hang(), pytest.raises(Refused, match=re.escape(f"{out / '.lock'}: is {what}")), \
            rundir.locked(out):
        pytest.fail("the lock was taken")
    if how == "dangling symlink":
        assert not victim.exists()
    elif how != "fifo":
        assert victim.read_bytes() == b"someone's file\n"


def test_symlinked_metrics_and_config_are_refused_their_targets_untouched(tmp_path):
    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_bytes(b'{"kind": "epoch", "epoch": 1}\n')
    (out / "metrics.jsonl").symlink_to(victim)
    (out / "config.json").symlink_to(victim)
    for call in (lambda: rundir.MetricsLog(out / "metrics.jsonl"),
                 lambda: rundir.MetricsLog(out / "metrics.jsonl", fresh=True),
                 lambda: rundir.read_metrics(out / "metrics.jsonl"),
                 lambda: rundir.truncate_metrics(out / "metrics.jsonl", 0)):
        with pytest.raises(Refused, match=re.escape(f"{out / 'metrics.jsonl'}: is a symbolic")):
            call()
    linked = re.escape(f"{out / 'config.json'}: is a symbolic link")
    with pytest.raises(Refused, match=linked):
        rundir.config_problem(out)
    with pytest.raises(Refused, match=linked):
        rundir.write_config(out, {"epochs": 1})
    assert victim.read_bytes() == b'{"kind": "epoch", "epoch": 1}\n'
    rundir.clear(out)  # --overwrite removes the links themselves, never their target
    assert not os.path.lexists(out / "metrics.jsonl") and victim.exists()


def test_a_planted_temporary_is_not_written_through(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    monkeypatch.setattr(secrets, "token_hex", lambda n: "feedfacecafe")
    (tmp_path / "checkpoint.npz.feedfacecafe.tmp").symlink_to(victim)
    with pytest.raises(safefiles.WriteError, match=re.escape(
            "creating its temporary file checkpoint.npz.feedfacecafe.tmp failed (File exists); "
            "there was no previous checkpoint.npz")):
        checkpoint.save(tmp_path / "checkpoint.npz", {"w": np.zeros(3)}, {})
    assert victim.read_bytes() == b"precious"


# ----------------------------------------------------------------------------- 13. .npy sizes
def test_a_leaf_header_declaring_10_12_elements_is_refused_before_allocating(tmp_path):
    path = tmp_path / "checkpoint.npz"
    tree = small_checkpoint(path)
    rewrite_entry(path, "leaf_00000.npy", npy_declaring((10**12,), "<f4", bytes(12)))
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(
            f"{path}: array 0 is (1000000000000,) float32 but the template needs (3,) float32")):
        checkpoint.load(path, tree)


@pytest.mark.parametrize("entry, blob, words", [
    ("meta.npy", npy_declaring((10**12,), "|u1", b"{}"),
     "'meta.npy': declares a uint8 array of shape (1000000000000,) (1000000000000 bytes), "
     "more than MAX_META_BYTES (1048576 bytes); refused unread"),
    ("meta.npy", npy_declaring((100,), "|u1", b"{}"), "(100 bytes) but holds 2 bytes"),
    ("leaf_00001.npy", npy_declaring((3, 4), "<f4", bytes(36)),
     "array 1 is (3, 4) float32 but the template needs (3, 3) float32"),
    ("leaf_00001.npy", npy_declaring((3, 3), "<f4", bytes(40)), "(36 bytes) but holds 40"),
    ("leaf_00001.npy", npy_declaring((-3, -3), "<f4", bytes(36)), "a negative length"),
    ("leaf_00001.npy", npy_declaring((3, 3), "|O", bytes(72)), "holds Python objects"),
])
def test_npy_headers_are_checked_against_the_entry_and_the_bound(tmp_path, entry, blob, words):
    path = tmp_path / "checkpoint.npz"
    tree = small_checkpoint(path)
    rewrite_entry(path, entry, blob)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(path, tree)
    assert str(e.value).startswith(f"{path}: ") and words in str(e.value), str(e.value)


def test_a_compressed_entry_is_refused(tmp_path):
    path = tmp_path / "checkpoint.npz"
    tree = small_checkpoint(path)
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in entries.items():
            z.writestr(n, data)
    with pytest.raises(checkpoint.CheckpointError, match=r"'meta\.npy' is compressed"):
        checkpoint.load(path, tree)


def test_load_npy_checks_the_header_before_reading(tmp_path):
    path = tmp_path / "image.npy"
    path.write_bytes(npy_declaring((10**6, 10**6), "<f8", bytes(288)))
    with pytest.raises(ValueError, match=re.escape(
            f"{path}: declares a float64 array of shape (1000000, 1000000) (8000000000000 "
            "bytes), more than --image (a 6x6 array) (288 bytes); refused unread")):
        safefiles.load_npy(path, max_bytes=288, bound="--image (a 6x6 array)")
    np.save(path, np.arange(36.0).reshape(6, 6))
    np.testing.assert_array_equal(safefiles.load_npy(path, max_bytes=288),
                                  np.arange(36.0).reshape(6, 6))


# ----------------------------------------------------------------------------- 16. disk full
def _full_disk(after: int):
    """A np.savez that writes `after` bytes, then fails as a full disk does."""
    def savez(f, **arrays):
        f.write(b"PK\x03\x04" + bytes(after))
        f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return savez


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    small_checkpoint(path)
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint.np, "savez", _full_disk(5000))
    with pytest.raises(safefiles.WriteError) as e:
        checkpoint.save(path, {"w": np.ones(3)}, {"epoch": 2})
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert str(e.value).startswith(f"{path}: writing it failed (No space left on device); the "
                                   "previous checkpoint.npz is intact; the temporary file "
                                   "checkpoint.npz."), str(e.value)
    assert str(e.value).endswith(".tmp was removed")
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]
    fresh = tmp_path / "sub" / "checkpoint.npz"
    fresh.parent.mkdir()
    with pytest.raises(safefiles.WriteError, match=r"there was no previous checkpoint\.npz"):
        checkpoint.save(fresh, {"w": np.ones(3)}, {})
    assert not list(fresh.parent.iterdir())


def test_a_full_disk_while_appending_metrics_names_the_file(tmp_path):
    log = rundir.MetricsLog(tmp_path / "metrics.jsonl", fresh=True)
    log.append({"kind": "epoch", "epoch": 1})

    class Full(io.StringIO):
        def flush(self) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real, log._f = log._f, Full()
    with pytest.raises(safefiles.WriteError, match=re.escape(
            f"{tmp_path / 'metrics.jsonl'}: appending a record failed (No space left on "
            "device); the records before it are intact")):
        log.append({"kind": "epoch", "epoch": 2})
    real.close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"kind": "epoch", "epoch": 1}\n'


# ----------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch run of the seed network, trained in this process."""
    out = tmp_path_factory.mktemp("finished") / "run"
    trainer.fit(CFG, out, progress=False, log=lambda line: None)
    return out


def test_cli_a_crafted_cifar_batch_exits_2(tmp_path):
    for name in ("data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (tmp_path / name).write_bytes(b"")
    bomb = tmp_path / "data_batch_1"  # a tuple 10**6 deep as a dict key: SIGSEGV when hashed
    bomb.write_bytes(b"\x80\x02}N" + b"\x85" * 10**6 + b"Ns.")
    done = cli_child("train", "--model", "seed", "--data", f"cifar10:{tmp_path}",
                     "--out", tmp_path / "out")
    one_line_refusal(done, f"{bomb}: opcode TUPLE1 at byte", "MAX_DEPTH=8",
                     "nothing in it was run")


def test_cli_resume_from_a_fifo_checkpoint_exits_2_without_waiting(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / "checkpoint.npz")
    done = cli_child("train", *TINY, "--epochs", "1", "--out", out, "--resume")
    one_line_refusal(done, f"{out / 'checkpoint.npz'}: is a named pipe (FIFO)")


def test_cli_resume_from_a_leaf_declaring_10_12_elements_exits_2(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns(".lock"))
    rewrite_entry(out / "checkpoint.npz", "leaf_00000.npy",
                  npy_declaring((10**12,), "<f4", bytes(4)))
    metrics = (out / "metrics.jsonl").read_bytes()
    done = cli_child("train", *TINY, "--epochs", "1", "--out", out, "--resume",
                     env={"JAX_ENABLE_X64": "1"})  # as in this process, which wrote the run
    one_line_refusal(done, f"{out / 'checkpoint.npz'}: array 0 is (1000000000000,) float32 but "
                     "the template needs (")
    assert (out / "metrics.jsonl").read_bytes() == metrics


FULL_AFTER_FIRST_CHECKPOINT = r"""
import os, resource, signal, sys
from pathlib import Path

from jaxcnn.tools import cli

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past RLIMIT_FSIZE, write() fails with EFBIG
real_replace = os.replace


def replace(src, dst, *args, **kw):
    real_replace(src, dst, *args, **kw)
    if Path(dst).name == "checkpoint.npz":  # then the disk is all but full: 2 KB a file
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY))


os.replace = replace
raise SystemExit(cli.main(sys.argv[1:]))
"""


def test_cli_a_full_disk_names_the_checkpoint_and_keeps_the_previous_one(tmp_path):
    out = tmp_path / "run"
    done = cli_child("train", *TINY, "--epochs", "2", "--out", out,
                     driver=FULL_AFTER_FIRST_CHECKPOINT)
    err = one_line_refusal(done, f"{out / 'checkpoint.npz'}: writing it failed (File too large)",
                           "the previous checkpoint.npz is intact", ".tmp was removed")
    assert "Errno" not in err
    assert checkpoint.load_meta(out / "checkpoint.npz")["epoch"] == 1
    assert not list(out.glob("*.tmp"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "epoch" and records[-1]["epoch"] == 2  # logged, then the save
