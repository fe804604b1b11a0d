"""Checkpoints that survive a crash: a pytree's leaves and JSON metadata in one .npz file,
written to a temporary file in the same directory, flushed to disk, then renamed over the old one.
A reader therefore sees either the previous checkpoint or the new one, never half of one.

No pickle: loading rebuilds the tree from a template of the same structure (fresh params, state
and optimizer state), and checks every leaf's shape and dtype. The meta records a sha256 of the
arrays (`ARRAYS_SHA256`), so that `load` tells a damaged checkpoint ("corrupt": its bytes no longer
match what was written) from a file that never was one ("not a jaxcnn checkpoint").

Files are created with mode 0o666 less the umask, like any other file the run writes. A
checkpoint is opened only if it is a regular file (`safefiles.open_regular`: a link, a FIFO, a
directory is refused, naming it), and each .npy entry's header is checked before its data is
read: against the template's leaf (its shape and dtype), `MAX_META_BYTES` for the meta, and the
zip entry's size (which must lie inside the file: entries are stored, not compressed, as
`np.savez` writes them), so that a crafted header declaring 10**12 elements allocates nothing.
A failed write (a full disk) raises a `safefiles.WriteError` naming the file and saying that the
previous one is intact and the temporary removed.
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

from jaxcnn.training import safefiles

ARRAYS_SHA256 = "arrays_sha256"
REMEDY = "restore a good copy, or start the run over (--overwrite)"
MAX_META_BYTES = 1 << 20  # the meta is JSON of ~1 KB (the config, epoch, step, two digests)


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
      path: the file to (re)place; refused if it exists and is not a regular file.
      write: writes the content into the binary file object it is given.

    The temporary file `<name>.<random>.tmp` beside `path` is created 0o666 less the umask
    (O_EXCL | O_NOFOLLOW: never through a link), flushed and fsynced, renamed over `path`, and
    the rename made durable; on any error (KeyboardInterrupt included) it is removed.

    Raises:
      safefiles.WriteError: (an OSError with the cause's errno) naming `path`, for a write that
        failed (ENOSPC, EDQUOT, EROFS, EFBIG, ...), saying the previous file is intact.
      safefiles.NotARegularFileError: if `path` is a link, a directory, a FIFO, ...
    """
    path = Path(path)
    safefiles.check_replaceable(path)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o666)
    except OSError as e:
        raise safefiles.WriteError(e, f"{path}: cannot be written: creating its temporary file "
                                      f"{tmp.name} failed ({safefiles.reason(e)}); "
                                      f"{_previous(path)}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        removed = _remove_quietly(tmp)
        if isinstance(e, OSError) and not isinstance(e, safefiles.WriteError):
            raise safefiles.WriteError(e, f"{path}: writing it failed ({safefiles.reason(e)}); "
                                          f"{_previous(path)}; the temporary file {tmp.name} "
                                          f"{removed}") from e
        raise
    _fsync_dir(path.parent)


def _previous(path: Path) -> str:
    """What a failed write left at `path`: the previous file, or nothing."""
    if os.path.lexists(path):
        return f"the previous {path.name} is intact"
    return f"there was no previous {path.name}"


def _remove_quietly(tmp: Path) -> str:
    """Unlink `tmp`; says "was removed", or why not."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError as e:
        return f"could not be removed ({safefiles.reason(e)}): delete it"
    return "was removed"


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


def _entry(path: Path, z: zipfile.ZipFile, name: str, size: int, like: Any = None
           ) -> np.ndarray:
    """The array in entry `name` of the open .npz `z` (of `size` bytes on disk), its header
    checked before the data is read: the entry stored (uncompressed) inside the file, the shape
    and dtype `like`'s if given, the declared bytes what the entry holds (and for the meta, at
    most MAX_META_BYTES)."""
    info, where = z.getinfo(name), f"{path}: entry {name!r}"
    if info.compress_type != zipfile.ZIP_STORED or info.header_offset + info.file_size > size:
        raise CheckpointError(f"{where} is compressed or extends past the end of the file (a "
                              f"checkpoint's are stored, inside it); {REMEDY}")
    with z.open(info) as f:
        try:
            shape, fortran, dtype = safefiles.read_npy_header(f, where=where)
            if like is not None and (shape != tuple(like.shape) or dtype != np.dtype(like.dtype)):
                raise CheckpointError(f"{path}: array {int(name[5:10])} is {shape} {dtype} but "
                                      f"the template needs {tuple(like.shape)} "
                                      f"{np.dtype(like.dtype)}")
            safefiles.check_npy_size(shape, dtype, where=where, holds=info.file_size - f.tell(),
                                     max_bytes=MAX_META_BYTES if like is None else info.file_size,
                                     bound="MAX_META_BYTES" if like is None else "the entry")
        except CheckpointError:
            raise
        except ValueError as e:
            raise CheckpointError(f"{e}; it cannot be resumed: {REMEDY}") from None
        data = f.read()
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _read(path: Path, like: list[Any] | None) -> tuple[dict[str, Any], list[np.ndarray]]:
    """(meta, leaves) of the file (the leaves only if `like`, the flat template, is given), or
    CheckpointError saying what is wrong with it."""
    with os.fdopen(safefiles.open_regular(path), "rb") as f:  # FileNotFoundError names it
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CheckpointError(f"{path}: the checkpoint is empty (0 bytes; a write was cut "
                                  f"short, or the disk was full); it cannot be resumed: {REMEDY}")
        if f.read(4) != b"PK\x03\x04":
            raise CheckpointError(f"{path}: not a jaxcnn checkpoint (not an .npz file); {REMEDY}")
        try:
            with zipfile.ZipFile(f) as z:
                meta, stored = _entries(path, z, size, like)
        except CheckpointError:
            raise
        except _UNREADABLE as e:
            raise CheckpointError(f"{path}: the checkpoint is corrupt or truncated "
                                  f"({str(e)[:300]}); it cannot be resumed: {REMEDY}") from None
    if not isinstance(meta, dict) or ARRAYS_SHA256 not in meta:
        raise CheckpointError(f"{path}: not a jaxcnn checkpoint of this version (its meta has no "
                              f"{ARRAYS_SHA256!r}); {REMEDY}")
    if like is not None and arrays_digest(stored) != meta[ARRAYS_SHA256]:
        raise CheckpointError(f"{path}: the checkpoint is corrupt: its arrays do not match the "
                              f"sha256 recorded when it was written; it cannot be resumed: "
                              f"{REMEDY}")
    return meta, stored


def _entries(path: Path, z: zipfile.ZipFile, size: int, like: list[Any] | None
             ) -> tuple[Any, list[np.ndarray]]:
    """(the decoded meta, the leaves if `like` is given) of the open .npz `z`."""
    files = z.namelist()
    if "meta.npy" not in files:
        raise CheckpointError(f"{path}: not a jaxcnn checkpoint (an .npz without its 'meta' "
                              f"entry); {REMEDY}")
    meta = json.loads(_entry(path, z, "meta.npy", size).tobytes())
    if like is None:
        return meta, []
    names = sorted(n for n in files if n.startswith("leaf_") and n.endswith(".npy"))
    if len(names) != len(like):
        raise CheckpointError(
            f"{path}: holds {len(names)} arrays but this model, optimizer and state need "
            f"{len(like)}; was it written by another configuration?")
    return meta, [_entry(path, z, n, size, like=t) for n, t in zip(names, like)]


def load_meta(path: str | Path) -> dict[str, Any]:
    """The meta of the checkpoint at `path`, without reading its arrays.

    Args:
      path: the .npz file.

    Returns:
      the meta dict (with `ARRAYS_SHA256`).

    Raises:
      FileNotFoundError: if `path` does not exist.
      CheckpointError: as `load` (but the arrays are not checked).
      safefiles.NotARegularFileError: if `path` is a link, a FIFO, a directory, ...
    """
    return _read(Path(path), None)[0]


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
    except (ValueError, OSError):  # CheckpointError, NotARegularFileError, ...
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
        template (another model, optimizer or dtype), checked on each entry's .npy header
        before its data is read.
      safefiles.NotARegularFileError: if `path` is a link, a FIFO, a directory, ...
    """
    template, treedef = jax.tree.flatten(like)
    meta, stored = _read(Path(path), template)
    return jax.tree.unflatten(treedef, [jax.numpy.asarray(a) for a in stored]), meta
