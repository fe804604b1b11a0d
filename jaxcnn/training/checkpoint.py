"""Checkpoints that survive a crash: a pytree's leaves and JSON metadata in one .npz file,
written to a temporary file in the same directory, flushed to disk, then renamed over the old one.
A reader therefore sees either the previous checkpoint or the new one, never half of one.

No pickle: loading rebuilds the tree from a template of the same structure (fresh params, state
and optimizer state), and checks every leaf's shape and dtype. The meta records a sha256 of the
arrays (`ARRAYS_SHA256`), so that `load` tells a damaged checkpoint ("corrupt": its bytes no longer
match what was written) from a file that never was one ("not a jaxcnn checkpoint").

Files are created with mode 0o666 less the umask, like any other file the run writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import jax
import numpy as np

ARRAYS_SHA256 = "arrays_sha256"
REMEDY = "restore a good copy, or start the run over (--overwrite)"


class CheckpointError(ValueError):
    """A file that cannot be resumed from: corrupt, truncated, or not a jaxcnn checkpoint."""


def arrays_digest(arrays: list[np.ndarray]) -> str:
    """sha256 over each array's index, dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for i, a in enumerate(arrays):
        a = np.ascontiguousarray(a)
        h.update(f"{i}:{a.dtype.str}:{a.shape}\n".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through `write(f)` so that readers see the old file or the whole new one.

    Args:
      path: the file to (re)place.
      write: writes the content into the binary file object it is given.

    The temporary file `<name>.<random>.tmp` beside `path` is created 0o666 less the umask,
    flushed and fsynced, renamed over `path`, and the rename made durable; on any error
    (KeyboardInterrupt included) it is removed.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save(path: str | Path, tree: Any, meta: dict[str, Any]) -> None:
    """Atomically write `tree`'s leaves (as NumPy arrays) and `meta` (JSON-serialisable).

    Args:
      path: the .npz file.
      tree: any pytree of arrays.
      meta: JSON-serialisable metadata; `ARRAYS_SHA256` is added to it.
    """
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]
    arrays = {f"leaf_{i:05d}": leaf for i, leaf in enumerate(leaves)}
    full = {**meta, ARRAYS_SHA256: arrays_digest(leaves)}
    arrays["meta"] = np.frombuffer(json.dumps(full).encode(), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_UNREADABLE = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)


def _read(path: Path, arrays: bool) -> tuple[dict[str, Any], list[np.ndarray]]:
    """(meta, leaves) of the file, or CheckpointError saying what is wrong with it."""
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint is empty (0 bytes; a write was cut short, "
                              f"or the disk was full); it cannot be resumed: {REMEDY}")
    with open(path, "rb") as f:  # FileNotFoundError / IsADirectoryError name the path
        is_zip = f.read(4) == b"PK\x03\x04"
    if not is_zip:
        raise CheckpointError(f"{path}: not a jaxcnn checkpoint (not an .npz file); {REMEDY}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise CheckpointError(f"{path}: not a jaxcnn checkpoint (an .npz without its "
                                      f"'meta' entry); {REMEDY}")
            meta = json.loads(bytes(z["meta"]).decode())
            names = sorted(k for k in z.files if k.startswith("leaf_"))
            stored = [z[k] for k in names] if arrays else []
    except CheckpointError:
        raise
    except _UNREADABLE as e:
        raise CheckpointError(f"{path}: the checkpoint is corrupt or truncated ({e}); it "
                              f"cannot be resumed: {REMEDY}") from None
    if not isinstance(meta, dict) or ARRAYS_SHA256 not in meta:
        raise CheckpointError(f"{path}: not a jaxcnn checkpoint of this version (its meta has no "
                              f"{ARRAYS_SHA256!r}); {REMEDY}")
    if arrays and arrays_digest(stored) != meta[ARRAYS_SHA256]:
        raise CheckpointError(f"{path}: the checkpoint is corrupt: its arrays do not match the "
                              f"sha256 recorded when it was written; it cannot be resumed: "
                              f"{REMEDY}")
    return meta, stored


def load_meta(path: str | Path) -> dict[str, Any]:
    """The meta of the checkpoint at `path`, without reading its arrays.

    Args:
      path: the .npz file.

    Returns:
      the meta dict (with `ARRAYS_SHA256`).

    Raises:
      FileNotFoundError: if `path` does not exist.
      CheckpointError: as `load` (but the arrays are not checked).
    """
    return _read(Path(path), arrays=False)[0]


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The meta of the checkpoint at `path` (its arrays unread and unchecked), or None if there
    is no readable checkpoint there.

    Args:
      path: the .npz file.

    Returns:
      the meta dict (with `ARRAYS_SHA256`), or None.
    """
    try:
        return load_meta(path)
    except (CheckpointError, OSError):
        return None


def load(path: str | Path, like: Any) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint into the structure of `like`; returns (tree, meta).

    Args:
      path: the .npz file written by `save`.
      like: a pytree of the structure, shapes and dtypes to restore (the values are unused).

    Returns:
      (the tree, the meta).

    Raises:
      FileNotFoundError: if `path` does not exist.
      CheckpointError: (a ValueError) naming the file, if it is empty, truncated or corrupt
        (its arrays fail the recorded sha256), not a jaxcnn checkpoint, or does not match the
        template (another model, optimizer or dtype).
    """
    path = Path(path)
    meta, stored = _read(path, arrays=True)
    template, treedef = jax.tree.flatten(like)
    if len(stored) != len(template):
        raise CheckpointError(
            f"{path}: holds {len(stored)} arrays but this model, optimizer and state need "
            f"{len(template)}; was it written by another configuration?")
    for i, (a, t) in enumerate(zip(stored, template)):
        if a.shape != t.shape or a.dtype != np.dtype(t.dtype):
            raise CheckpointError(f"{path}: array {i} is {a.shape} {a.dtype} but the template "
                                  f"needs {t.shape} {np.dtype(t.dtype)}")
    return jax.tree.unflatten(treedef, [jax.numpy.asarray(a) for a in stored]), meta
