"""Files that must be files: opened without following a symbolic link or waiting on a named pipe,
written so that a failure says what is left, and .npy headers checked before allocating.

A run directory may sit in a shared folder. A `.lock` replaced by a symbolic link to someone's
file would have that file overwritten with a pid; a `checkpoint.npz` that is a named pipe (FIFO)
would hang `--resume` in open() forever. So every file of a run is opened here with O_NOFOLLOW
(a link is refused, never followed) and O_NONBLOCK (opening a FIFO returns at once), then
fstat-ed: anything but a regular file is refused with a `NotARegularFileError` (a ValueError)
naming it and saying what it is. Files written in place (the lock, metrics.jsonl) must also have
a single hard link. A file that is replaced by a rename is checked with lstat first
(`check_replaceable`): rename never follows a link, but a link there is no file of the run.

`WriteError` (an OSError) is what a failed write (a full disk: ENOSPC, EDQUOT; EROFS, EFBIG, ...)
becomes: its message names the file and says what is intact. `read_npy_header` and
`check_npy_size` check the array a .npy header declares against the bytes actually there and a
stated bound before anything is allocated (a header can declare 10**12 elements in 128 bytes);
`load_npy` reads a .npy file so.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

__all__ = ["NotARegularFileError", "WriteError", "check_npy_size", "check_replaceable",
           "describe", "load_npy", "open_regular", "read_bytes", "read_npy_header", "reason",
           "remove"]

_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotARegularFileError(ValueError):
    """A path that should be a regular file is a link, a directory, a FIFO, a device, ..."""


class WriteError(OSError):
    """A write that failed, saying which file and what is left intact; `errno` is the cause's."""

    def __init__(self, cause: OSError, message: str) -> None:
        super().__init__(cause.errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def describe(mode: int) -> str:
    """What a non-regular file is ("a symbolic link", "a named pipe (FIFO)", ...), from st_mode."""
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def reason(e: OSError) -> str:
    """An OSError's cause in words, without repeating the file name ("No space left on device")."""
    return e.strerror or str(e) or type(e).__name__


def _refuse(path: Path, what: str) -> NotARegularFileError:
    return NotARegularFileError(f"{path}: is {what}, not a regular file; refused (a link is "
                                "never followed, a pipe or device never read): remove or "
                                "rename it")


def open_regular(path: str | Path, flags: int = os.O_RDONLY, *, follow: bool = False,
                 single_link: bool = False) -> int:
    """os.open(path, flags) for a regular file only; returns the descriptor (close it).

    Args:
      path: the file.
      flags: os.O_RDONLY, os.O_RDWR | os.O_CREAT, ...; O_NOFOLLOW (unless `follow`), O_NONBLOCK
        and O_CLOEXEC are added (O_NONBLOCK has no effect on a regular file).
      follow: follow a symbolic link (for input the user names, which may be a link).
      single_link: refuse a file with more than one hard link (a file about to be written in
        place: another name could be someone else's file).

    Raises:
      NotARegularFileError: naming `path`, if it is a link (unless `follow`), a directory, a
        FIFO, a socket or a device, or has several hard links when `single_link`.
      FileNotFoundError, PermissionError, ...: as os.open.
    """
    path = Path(path)
    extra = os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags | extra, 0o666)
    except OSError as e:  # ELOOP (a link), EISDIR, ENXIO (a FIFO opened to write), ...
        try:
            mode = (os.stat if follow else os.lstat)(path).st_mode
        except OSError:
            raise e from None
        if stat.S_ISREG(mode):
            raise
        raise _refuse(path, describe(mode)) from None
    st = os.fstat(fd)
    problem = (None if stat.S_ISREG(st.st_mode) else describe(st.st_mode)) or (
        f"a file with {st.st_nlink} hard links" if single_link and st.st_nlink != 1 else None)
    if problem:
        os.close(fd)
        raise _refuse(path, problem)
    return fd


def read_bytes(path: str | Path, *, follow: bool = False) -> bytes:
    """The bytes of the regular file `path` (`open_regular`'s checks, then read whole)."""
    with os.fdopen(open_regular(path, follow=follow), "rb") as f:
        return f.read()


def check_replaceable(path: str | Path) -> None:
    """Refuse (NotARegularFileError) if `path` exists and is not a regular file: a link, a
    directory, a FIFO there is nothing a run writes, so it is not silently replaced."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise _refuse(Path(path), describe(mode))


def remove(path: str | Path) -> None:
    """Unlink `path` if it exists (a link itself, never its target); a directory is refused."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise _refuse(Path(path), "a directory") from None
    except PermissionError:
        if not os.path.isdir(path) or os.path.islink(path):
            raise
        raise _refuse(Path(path), "a directory") from None


def read_npy_header(f: IO[bytes], *, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the .npy header at `f`'s position, nothing allocated.

    Raises:
      ValueError: naming `where`, for a bad magic or header, an object dtype or a negative length.
    """
    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = npy_format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise ValueError(f"{where}: holds Python objects ({dtype}); only numeric arrays are read")
    if any(n < 0 for n in shape):
        raise ValueError(f"{where}: declares the shape {shape}, with a negative length")
    return shape, fortran, dtype


def check_npy_size(shape: tuple[int, ...], dtype: np.dtype, *, where: str, holds: int,
                   max_bytes: int, bound: str) -> int:
    """The data bytes a .npy header declares, checked before anything is allocated.

    Args:
      shape, dtype: from `read_npy_header`.
      where: names the file (and entry) in messages.
      holds: the bytes that follow the header in the file or zip entry.
      max_bytes: the most data bytes allowed; bound: what states it, for messages
        ("MAX_META_BYTES", "--image (a 6x6 array)", ...).

    Raises:
      ValueError: naming `where`, if more than `max_bytes` or other than `holds` are declared.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    declared = f"declares a {dtype} array of shape {shape} ({nbytes} bytes)"
    if nbytes > max_bytes:
        raise ValueError(f"{where}: {declared}, more than {bound} ({max_bytes} bytes); refused "
                         "unread")
    if nbytes != holds:
        raise ValueError(f"{where}: {declared} but holds {holds} bytes after its header; "
                         "truncated or damaged")
    return nbytes


def load_npy(path: str | Path, *, max_bytes: int, bound: str = "max_bytes",
             follow: bool = True) -> np.ndarray:
    """A .npy file's array, its header checked (`check_npy_size`) against the file's size and
    `max_bytes` before the data is read (np.load allocates what the header declares first).

    Args:
      path: the .npy file (a regular file; a link to one if `follow`).
      max_bytes, bound: the most data bytes allowed, and what states it (for messages).

    Returns:
      the array, of the declared shape and dtype.

    Raises:
      ValueError: naming `path` (see `read_npy_header`, `check_npy_size`);
        NotARegularFileError, OSError.
    """
    with os.fdopen(open_regular(path, follow=follow), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        shape, fortran, dtype = read_npy_header(f, where=str(path))
        check_npy_size(shape, dtype, where=str(path), holds=size - f.tell(), max_bytes=max_bytes,
                       bound=bound)
        data = f.read()
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
