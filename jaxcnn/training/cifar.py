"""CIFAR-10's python batches, read from a directory the user already has, never downloaded.

The batches (`cifar-10-batches-py/`: `data_batch_1` .. `data_batch_5`, `test_batch`; the optional
`batches.meta` is not needed and not read) are pickles. They are never unpickled as such: a
restricted `pickle.Unpickler` resolves only the few globals the real files need (numpy's array
reconstructors and `numpy.dtype` for plain numeric dtypes, `_codecs.encode` for latin-1, an empty
`bytes()`), each through a wrapper that checks its arguments, and refuses every other global before
anything is called, so a pickle built to run `os.system` fails with a ValueError and runs nothing.
Before that, `jaxcnn.training.picklescan.scan` checks the opcode stream without building
anything (only the opcodes a batch uses; bounded op count, nesting, memo use and sizes), so that
a crafted few-KB file cannot crash or hang the process while it is unpickled, hashed or printed;
messages show user data only cut short (`_short`). The result must then be exactly what a batch
holds: a dict with the byte-string keys b"data" (uint8 (n, 3072)) and b"labels" (a list of n ints
in 0..9), optionally b"batch_label" and b"filenames", nothing else. A row is channel-first: 1024
red, 1024 green, 1024 blue values, each plane row-major 32x32; `read_batch` returns NHWC
(n, 32, 32, 3).

This module reads files only (NumPy, no JAX); `jaxcnn.training.data.load_cifar10` turns the
arrays into a standardised `Dataset`.
"""

from __future__ import annotations

import io
import os
import pickle
import reprlib
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.training import picklescan, safefiles

__all__ = ["CLASS_NAMES", "MAX_BATCH_BYTES", "SUBDIR", "TEST_BATCH", "TRAIN_BATCHES",
           "read_batch", "read_cifar10"]

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
SUBDIR = "cifar-10-batches-py"  # what the official archive extracts to
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")
ROW = 3 * 32 * 32  # one image: 3 channel planes of 32x32
MAX_BATCH_BYTES = 1 << 28  # 256 MiB; a real batch is ~31 MB (~62 MB re-pickled with protocol 2)
REQUIRED_KEYS = (b"data", b"labels")
OPTIONAL_KEYS = (b"batch_label", b"filenames")
EXPECTED = ("a CIFAR-10 python batch: a dict with the keys b'data' (uint8 (n, 3072)) and "
            "b'labels' (a list of n ints in 0..9), optionally b'batch_label' and b'filenames'")
NOT_DOWNLOADED = ("nothing is downloaded: extract cifar-10-python.tar.gz (from "
                  "https://www.cs.toronto.edu/~kriz/cifar.html) and name the directory")


# ----------------------------------------------------------------------------- the unpickler
class _ShortRepr(reprlib.Repr):
    """reprlib.Repr that also cuts bytes and bytearrays short before formatting them."""

    def repr_bytes(self, x: bytes, level: int) -> str:
        head = repr(x[:self.maxstring])
        return head if len(x) <= self.maxstring else f"{head}... ({len(x)} bytes)"

    repr_bytearray = repr_bytes

    def repr_int(self, x: int, level: int) -> str:
        return repr(x) if x.bit_length() <= 64 else f"<an int of {x.bit_length()} bits>"


_REPR = _ShortRepr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 40, 40, 3


def _short(obj: Any) -> str:
    """`repr(obj)` cut to at most ~200 characters, without formatting more than it shows."""
    return _REPR.repr(obj)[:200]


class _Refused(pickle.UnpicklingError):
    """A global, or an argument to an allowed one, that a CIFAR-10 batch never holds."""


class _Global:
    """What `find_class` hands out: calls `fn` (None: not callable), and refuses BUILD, so a
    pickle can neither set attributes on it nor call, say, numpy.ndarray((10**12,)) itself."""

    __slots__ = ("fn", "name")

    def __init__(self, name: str, fn: Any = None) -> None:
        self.name, self.fn = name, fn

    def __call__(self, *args: Any) -> Any:
        if self.fn is None:
            raise _Refused(f"calling {self.name} is not allowed")
        return self.fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise _Refused(f"setting the state of {self.name} is not allowed")

    def __repr__(self) -> str:
        return self.name


_NDARRAY = _Global("numpy.ndarray")  # only ever the first argument of _reconstruct


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's `_reconstruct(ndarray, (0,), b'b')`: the empty array that BUILD then fills."""
    if subtype is not _NDARRAY or type(shape) is not tuple or shape != (0,) \
            or typecode not in (b"b", "b"):
        raise _Refused(f"numpy _reconstruct{_short((subtype, shape, typecode))}: only "
                       "(numpy.ndarray, (0,), b'b') is allowed")
    return np.empty(0, np.int8)


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """`numpy.dtype(spec, align, copy)` for a plain bool / int / uint / float dtype only."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    dt = np.dtype(spec) if isinstance(spec, str) and len(spec) <= 4 else None
    if dt is None or dt.kind not in "biuf" or dt.fields is not None:
        raise _Refused(f"numpy.dtype({_short(spec)}): only plain numeric dtypes are allowed")
    return dt


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 `_frombuffer(buf, dtype, shape, order)` for in-band bytes only."""
    if (not isinstance(buf, bytes | bytearray) or not isinstance(dtype, np.dtype)
            or not isinstance(shape, tuple) or order not in ("C", "F")):
        raise _Refused("numpy _frombuffer: only in-band bytes of a numeric dtype are allowed")
    return np.frombuffer(buf, dtype).reshape(shape, order=order)


def _latin1(text: Any, encoding: Any) -> bytes:
    """`_codecs.encode(text, 'latin1')`, how Python 3 pickles bytes with protocol 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode(..., {_short(encoding)}): only a str to latin1 is "
                       "allowed")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """`bytes()`, how Python 3 pickles b'' with protocol 2; any argument is refused."""
    if args:
        raise _Refused("bytes(...) with arguments is not allowed")
    return b""


_ALLOWED = {(module, name): _Global(f"{module}.{name}", fn) for module, name, fn in [
    ("numpy.core.multiarray", "_reconstruct", _reconstruct),  # NumPy 1 (and the real files)
    ("numpy._core.multiarray", "_reconstruct", _reconstruct),  # NumPy 2
    ("numpy.core.numeric", "_frombuffer", _frombuffer),  # protocol 5
    ("numpy._core.numeric", "_frombuffer", _frombuffer),
    ("numpy", "dtype", _dtype),
    ("_codecs", "encode", _latin1),  # bytes, pickled by Python 3 with protocol 2
    ("__builtin__", "bytes", _empty_bytes),  # b'', the same
    ("builtins", "bytes", _empty_bytes),
]}
_ALLOWED["numpy", "ndarray"] = _NDARRAY


class _BatchUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only `_ALLOWED`'s globals; persistent ids are refused too."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"refused the global {module}.{name}, which a CIFAR-10 batch never "
                           "holds (only numpy arrays, bytes, lists and ints)") from None


def _unpickle(path: Path) -> Any:
    """The object pickled in `path`: its opcodes checked by `picklescan.scan`, then loaded
    through `_BatchUnpickler` with encoding='bytes'."""
    with os.fdopen(safefiles.open_regular(path, follow=True), "rb") as f:  # a FIFO: refused
        size = os.fstat(f.fileno()).st_size
        if size > MAX_BATCH_BYTES:
            raise ValueError(f"{path}: {size} bytes, more than MAX_BATCH_BYTES={MAX_BATCH_BYTES}; "
                             f"expected {EXPECTED} (about 31 MB)")
        raw = f.read(MAX_BATCH_BYTES + 1)
    try:
        end = picklescan.scan(raw, _ALLOWED)
    except picklescan.PickleRefusedError as e:
        raise ValueError(f"{path}: {e}; nothing in it was run. Expected {EXPECTED}") from None
    except picklescan.PickleUnreadableError as e:
        raise ValueError(f"{path}: not a readable pickle ({e}); expected {EXPECTED}") from None
    if end != len(raw):
        raise ValueError(f"{path}: {len(raw) - end} trailing bytes after the pickle; "
                         f"expected {EXPECTED}")
    try:
        return _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as e:
        raise ValueError(f"{path}: {e}; nothing in it was run. Expected {EXPECTED}") from None
    except Exception as e:  # bad numpy state, an unhashable key, ...
        raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: "
                         f"{str(e)[:200]}); expected {EXPECTED}") from None


# ----------------------------------------------------------------------------- one batch
def _checked(path: Path, obj: Any) -> tuple[np.ndarray, list[int]]:
    """(data, labels) of an unpickled batch, after checking it is exactly what a batch holds."""
    if type(obj) is not dict:
        raise ValueError(f"{path}: holds a {type(obj).__name__}; expected {EXPECTED}")
    keys = set(obj)
    missing = [k for k in REQUIRED_KEYS if k not in keys]
    extra = keys - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)
    if missing or extra:
        raise ValueError(f"{path}: a dict with the keys {_short(sorted(map(_short, keys)))}; "
                         f"missing {missing}, unexpected {_short(sorted(map(_short, extra)))}; "
                         f"expected {EXPECTED}")
    data, labels = obj[b"data"], obj[b"labels"]
    if type(data) is not np.ndarray or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != ROW:
        what = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise ValueError(f"{path}: b'data' is a {what}; expected a uint8 array (n, {ROW}): "
                         "n rows of 1024 red, 1024 green, 1024 blue values")
    n = len(data)
    if type(labels) is not list or len(labels) != n:
        what = (f"a list of {len(labels)}" if type(labels) is list
                else f"a {type(labels).__name__}")
        raise ValueError(f"{path}: b'labels' is {what}; expected a list of {n} ints in 0..9, "
                         f"one per row of b'data'")
    bad = next((i for i, v in enumerate(labels) if type(v) is not int or not 0 <= v <= 9), None)
    if bad is not None:
        raise ValueError(f"{path}: b'labels'[{bad}] is {_short(labels[bad])}; expected class ids "
                         "0..9 (ints)")
    return data, labels


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (`data_batch_1`, ..., `test_batch`), checked and made NHWC.

    Args:
      path: the batch file.

    Returns:
      (x, y): x uint8 (n, 32, 32, 3), NHWC (each channel-first row reshaped to (3, 32, 32) and
      transposed); y int32 (n,) class ids in 0..9.

    Raises:
      ValueError: naming `path`, for anything that is not exactly a batch (a foreign or malicious
        pickle, one that `picklescan.scan` refuses, a truncated file, wrong keys, shapes, dtypes
        or labels), or that is not a regular file (a FIFO, a directory).
      FileNotFoundError: if `path` is absent.
    """
    path = Path(path)
    data, labels = _checked(path, _unpickle(path))
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, np.asarray(labels, np.int32).reshape(len(x))


# ----------------------------------------------------------------------------- the directory
def _batch_dir(directory: str | Path) -> Path:
    """The directory that holds the batches: `directory`, or its `cifar-10-batches-py/`."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory; expected one holding the "
                                f"CIFAR-10 python batches {', '.join(TRAIN_BATCHES)}, "
                                f"{TEST_BATCH} ({NOT_DOWNLOADED})")
    if not (directory / TRAIN_BATCHES[0]).exists() and (directory / SUBDIR).is_dir():
        directory = directory / SUBDIR
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (directory / n).is_file()]
    if missing:
        archive = [p.name for p in directory.glob("cifar-10-python.tar*")]
        hint = f"; found {archive[0]}: extract it first" if archive else ""
        raise FileNotFoundError(f"{directory}: missing CIFAR-10 batch files: "
                                f"{', '.join(missing)}{hint} ({NOT_DOWNLOADED})")
    return directory


def read_cifar10(directory: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The official CIFAR-10 split from the python batches in `directory`, unscaled.

    Args:
      directory: holds `data_batch_1` .. `data_batch_5` and `test_batch`, or holds the extracted
        `cifar-10-batches-py/` that does.

    Returns:
      (x_train, y_train, x_test, y_test): x uint8 (N, 32, 32, 3) NHWC, y int32 (N,) in 0..9; the
      train split is the five data batches in order (50000 images in the real files), the test
      split `test_batch` (10000).

    Raises:
      FileNotFoundError: naming the directory or the missing files (nothing is downloaded).
      ValueError: naming the file, for any malformed batch; naming the directory, if a split
        holds no image.
    """
    directory = _batch_dir(directory)
    train = [read_batch(directory / n) for n in TRAIN_BATCHES]
    x_te, y_te = read_batch(directory / TEST_BATCH)
    x_tr = np.concatenate([x for x, _ in train])
    y_tr = np.concatenate([y for _, y in train])
    for split, x, names in (("train", x_tr, ", ".join(TRAIN_BATCHES)), ("test", x_te, TEST_BATCH)):
        if len(x) == 0:
            raise ValueError(f"{directory}: the {split} split ({names}) holds 0 images; expected "
                             "at least one")
    return x_tr, y_tr, x_te, y_te
