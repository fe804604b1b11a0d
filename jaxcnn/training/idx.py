"""The IDX file format of MNIST and Fashion-MNIST, read without trusting its header.

Header: two zero bytes, a type byte, a dimension count D, then D big-endian uint32 sizes; the
payload must be exactly prod(sizes) * itemsize bytes. Files are streamed (raw, or gzip detected by
its magic bytes): never more than the declared payload plus one byte is read, and a declared size
over `max_bytes` is refused before anything is allocated.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_TYPE_NAMES = "0x08 uint8, 0x09 int8, 0x0b int16, 0x0c int32, 0x0d float32, 0x0e float64"


MAX_IDX_BYTES = 1 << 32  # 4 GiB: MNIST's largest file holds 47 MB


def read_idx(path: str | Path, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read one IDX file (raw, or gzip detected by its magic bytes 1f 8b, not by the name).

    Header: two zero bytes, a type byte, a dimension count D, then D big-endian uint32 sizes; the
    payload must be exactly prod(sizes) * itemsize bytes. The file is streamed: the header is read
    first, then at most the declared payload and one byte more (to detect trailing data), so a
    gzip file that inflates to far more than its header declares is never inflated in full.

    Args:
      path: the file.
      max_bytes: the largest payload the header may declare (default 4 GiB).

    Returns:
      An array of the declared shape in the native-endian version of the file's dtype (uint8,
      int8, int16, int32, float32, float64).

    Raises:
      ValueError: naming `path`, for anything malformed.
      FileNotFoundError: if it is absent.
    """
    path = Path(path)
    with open(path, "rb") as raw_file:
        gz = raw_file.read(2) == b"\x1f\x8b"
        raw_file.seek(0)
        size = os.fstat(raw_file.fileno()).st_size
        if not gz:
            return _read_idx_stream(path, raw_file, "file", size, max_bytes)
        try:
            with gzip.GzipFile(fileobj=raw_file, mode="rb") as f:
                return _read_idx_stream(path, f, "gunzipped content", None, max_bytes)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip file ({e}); expected a complete "
                             "gzip stream holding an IDX file") from None


def _read_exactly(f: Any, n: int) -> bytes:
    """Up to n bytes from f, fewer only at the end of the stream; read in 16 MiB pieces, so that
    memory grows with what the stream holds, not with what a header claims."""
    parts, left = [], n
    while left > 0:
        part = f.read(min(left, 1 << 24))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _read_idx_stream(path: Path, f: Any, what: str, size: int | None,
                     max_bytes: int) -> np.ndarray:
    """The IDX array in the stream f; `size` is the file's length when known (raw files)."""
    head = _read_exactly(f, 4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        more = f.read(1)
        of = f" of {size} bytes" if size is not None else ""
        raise ValueError(
            f"{path}: not an IDX file (magic 0x{head.hex()}{'…' if more else ''} in {what}{of}); "
            "expected two zero bytes, a type byte and a dimension count")
    type_byte, ndim = head[2], head[3]
    if type_byte not in IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type byte 0x{type_byte:02x}; expected one of "
                         f"{_TYPE_NAMES}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX dimension count is 0; expected at least 1")
    header = 4 + 4 * ndim
    dims = _read_exactly(f, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions need {header} header "
                         f"bytes, the {what} has {4 + len(dims)}")
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
    dt = IDX_TYPES[type_byte]
    expected = math.prod(shape) * dt.itemsize
    if expected > max_bytes:
        raise ValueError(f"{path}: the IDX header declares shape {shape} of {dt.name}, "
                         f"{expected} payload bytes, more than max_bytes={max_bytes}; a damaged "
                         "or hostile file?")
    if size is not None and size - header != expected:  # raw: the length says it all, unread
        actual = size - header
        problem = "truncated IDX data" if actual < expected else "trailing bytes after IDX data"
        raise ValueError(f"{path}: {problem}: expected {expected} payload bytes for shape {shape} "
                         f"of {dt.name}, got {actual}")
    payload = _read_exactly(f, expected + 1)
    if len(payload) != expected:
        problem, got = (("truncated IDX data", str(len(payload))) if len(payload) < expected
                        else ("trailing bytes after IDX data", f"more than {expected}"))
        raise ValueError(f"{path}: {problem}: expected {expected} payload bytes for shape {shape} "
                         f"of {dt.name} in the {what}, got {got}")
    flat = np.frombuffer(payload, dt, math.prod(shape))
    return flat.reshape(shape).astype(dt.newbyteorder("="))  # native-endian, writable copy
