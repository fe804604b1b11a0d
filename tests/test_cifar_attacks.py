"""Crafted CIFAR-10 "batches" of a few KB that crashed or hung the reader (issue 23, item 11), and
the bounds of jaxcnn.training.picklescan that now stop them before anything is unpickled.

Each attack runs `cifar.read_batch` in a child process with a memory limit (RLIMIT_AS) and a
timeout, so that a crash (SIGSEGV), a hang or a runaway allocation fails the test instead of
ending or stalling pytest. The child imports only jaxcnn/training/cifar.py and picklescan.py
(stub packages, no jax), so each costs ~0.2 s. Before the fix: a tuple nested 10**6 deep killed
the child with SIGSEGV when the dict hashed it, 10**5 deep gave a RecursionError traceback, a
tuple doubled 50 times through memo references hung hashing it (as a key) and grew without bound
printing it (as a label), a memo index of 2**31 and a 2**60-byte BINBYTES8 reached MemoryError,
a huge int label or a 1 MB string label made the message unbounded or lose the file's name.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxcnn.training import cifar, picklescan

from helpers import run_child

ROOT = Path(__file__).resolve().parents[1]
P = pickle
# A hang guard, not a timing: each child does well under 1 s of work (import numpy, read a file
# of at most 1 MB); an attack that gets through hangs for ever (2**50 hashes) or dies.
HANG_GUARD = 60
CHILD_MEMORY = 1 << 29  # 512 MiB of address space: numpy needs ~140 MiB
MARKER = b"\xab" * 8

CHILD = r"""
import resource, sys, types
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # before anything is imported or read
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
root, path = sys.argv[1], sys.argv[2]
for name in ("jaxcnn", "jaxcnn.training"):  # the reader alone: jaxcnn/__init__ imports jax
    package = types.ModuleType(name)
    package.__path__ = [root + "/" + name.replace(".", "/")]
    sys.modules[name] = package
from jaxcnn.training import cifar
try:
    x, y = cifar.read_batch(path)
except ValueError as e:
    sys.stdout.write("REFUSED " + str(e))
    raise SystemExit(0)
sys.stdout.write(f"LOADED {x.shape} {y.tolist()!r:.200}")
"""


def _put(i: int) -> bytes:
    return P.LONG_BINPUT + struct.pack("<I", 100000 + i)  # far above the batch's own indices


def _get(i: int) -> bytes:
    return P.LONG_BINGET + struct.pack("<I", 100000 + i)


def doubled(k: int = 50) -> bytes:
    """Ops leaving t_k on the stack: t_0 = (b'x',), t_{i+1} = (t_i, t_i) through the memo: 2**k
    leaves in ~10 k bytes."""
    ops = P.SHORT_BINBYTES + b"\x01x" + P.TUPLE1 + _put(0)
    return ops + b"".join(_get(i) + P.TUPLE2 + _put(i + 1) for i in range(k))


def as_label(ops: bytes) -> bytes:
    """A valid one-image batch (protocol 3) whose one label is the object `ops` build."""
    raw = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [MARKER]}, protocol=3)
    needle = P.SHORT_BINBYTES + bytes([len(MARKER)]) + MARKER
    assert raw.count(needle) == 1
    return raw.replace(needle, ops)


def as_key(ops: bytes) -> bytes:
    """{<the object `ops` build>: None}: the dict hashes it as it is unpickled."""
    return P.PROTO + b"\x02" + P.EMPTY_DICT + ops + P.NONE + P.SETITEM + P.STOP


def huge_int(bits: int) -> bytes:
    return P.LONG4 + struct.pack("<i", bits // 8) + b"\x01" * (bits // 8)


SELF_LIST = P.EMPTY_LIST + _put(0) + _get(0) + P.APPEND  # L = [L]

# (id, payload, words the refusal must hold)
ATTACKS = [
    ("tuple key 10**6 deep (SIGSEGV)", as_key(P.NONE + P.TUPLE1 * 10**6), "MAX_DEPTH=8"),
    ("tuple label 10**5 deep", as_label(P.NONE + P.TUPLE1 * 10**5), "MAX_DEPTH=8"),
    ("list label 10**5 deep", as_label(P.EMPTY_LIST * 10**5 + P.APPEND * (10**5 - 1)),
     "MAX_DEPTH=8"),
    ("10**5 nested MARKs", as_label(P.MARK * 10**5 + P.NONE + P.TUPLE * 10**5), "MAX_MARKS=8"),
    ("memo-doubled tuple hashed as a key", as_key(doubled()), "fetches a tuple from the memo"),
    ("memo-doubled tuple printed as a label", as_label(doubled()),
     "fetches a tuple from the memo"),
    ("a list holding itself", as_label(SELF_LIST), "fetches a list from the memo"),
    ("memo index 2**31 - 1", P.PROTO + b"\x04" + P.NONE + P.LONG_BINPUT + b"\xff\xff\xff\x7f"
     + P.STOP, "memo index 2147483647 out of 0..1048575"),
    ("BINBYTES8 of 2**60 bytes", P.PROTO + b"\x04" + P.BINBYTES8 + struct.pack("<Q", 1 << 60)
     + b"x" * 16 + P.STOP, "not a readable pickle"),
    ("LONG4 of 2**31 - 1 bytes", P.PROTO + b"\x02" + P.LONG4 + b"\xff\xff\xff\x7f" + b"\x01" * 16
     + P.STOP, "not a readable pickle"),
    ("a 10**6-bit int label", as_label(huge_int(10**6)), "bits (more than MAX_INT_BITS=64)"),
    ("a 1 MB str label", as_label(P.BINUNICODE + struct.pack("<I", 10**6) + b"A" * 10**6),
     "b'labels'[0] is 'AAAA"),
]


@pytest.mark.parametrize("payload, words", [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_a_crafted_batch_is_refused_without_crash_hang_or_runaway_memory(tmp_path, payload,
                                                                         words):
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    assert len(payload) < 1_100_000
    done = run_child([sys.executable, "-c", CHILD, str(ROOT), str(path), str(CHILD_MEMORY)],
                     timeout=HANG_GUARD, capture_output=True, text=True,
                     env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"})
    assert done.returncode == 0, (f"the reader died (rc {done.returncode}; -11 is SIGSEGV): "
                                  f"{done.stderr[-1500:]}")
    out = done.stdout
    assert out.startswith(f"REFUSED {path}: "), out[:500]
    assert words in out, out[:1000]
    assert len(out) < 1500 and "MemoryError" not in out and "Traceback" not in done.stderr, out


# ----------------------------------------------------------------------------- the bounds
def refused(raw: bytes) -> str:
    with pytest.raises(picklescan.PickleRefusedError) as e:
        picklescan.scan(raw, cifar._ALLOWED)
    return str(e.value)


def nested(depth: int) -> bytes:
    return P.PROTO + b"\x02" + P.NONE + P.TUPLE1 * depth + P.STOP


def test_nesting_up_to_max_depth_passes_one_more_is_refused():
    assert picklescan.scan(nested(picklescan.MAX_DEPTH), ()) == len(nested(picklescan.MAX_DEPTH))
    assert "nested more than MAX_DEPTH=8" in refused(nested(picklescan.MAX_DEPTH + 1))
    lists = P.EMPTY_LIST * 9 + P.APPEND * 8 + P.STOP  # depth grows by APPEND into a list too
    assert "opcode APPEND at byte 16" in refused(lists)


def test_marks_ints_frames_and_the_op_count_are_bounded(monkeypatch):
    marks = P.MARK * 9 + P.NONE + P.TUPLE * 9 + P.STOP
    assert "opcode MARK at byte 8: more than MAX_MARKS=8" in refused(marks)
    assert "an int of 65 bits" in refused(P.LONG1 + b"\x09" + b"\x01" * 9 + P.STOP)
    assert picklescan.scan(P.LONG1 + b"\x08" + b"\x01" * 8 + P.STOP, ()) == 11
    with pytest.raises(picklescan.PickleUnreadableError, match="a frame of 1024 bytes, more"):
        picklescan.scan(P.PROTO + b"\x04" + P.FRAME + struct.pack("<Q", 1024) + P.NONE + P.STOP,
                        ())
    monkeypatch.setattr(picklescan, "MAX_OPS", 100)
    many = P.EMPTY_LIST + P.MARK + P.NONE * 200 + P.APPENDS + P.STOP
    assert "opcode NONE at byte 100: more than MAX_OPS=100 opcodes" in refused(many)


@pytest.mark.parametrize("raw, words", [
    (P.EMPTY_SET + P.STOP, "opcode EMPTY_SET at byte 0: not an opcode"),
    (P.NONE + P.DUP + P.TUPLE2 + P.STOP, "opcode DUP"),
    (b"cbuiltins\nlist\n)\x81.", "refused the global builtins.list"),  # GLOBAL, then NEWOBJ
    (P.PROTO + b"\x04\x8c\x05posix\x8c\x06system\x93" + P.STOP, "refused the global posix.system"),
    (P.PROTO + b"\x04" + P.NONE + P.NONE + P.STACK_GLOBAL + P.STOP, "other than two strings"),
    (P.EMPTY_DICT + P.EMPTY_TUPLE + P.NONE + P.SETITEM + P.STOP, "a dict key must not be a"),
    (P.NONE + P.EMPTY_TUPLE + P.REDUCE + P.STOP,
     "opcode REDUCE at byte 2: applies to a plain value, not a global"),
    (P.EMPTY_LIST + P.NONE + P.BUILD + P.STOP, "opcode BUILD at byte 2: applies to a list"),
])
def test_what_a_batch_never_holds_is_refused_before_it_is_built(raw, words):
    assert words in refused(raw)


@pytest.mark.parametrize("raw, words", [
    (P.TUPLE + P.STOP, "no MARK to pop to"),
    (P.NONE + P.NONE + P.STOP, "other than one item on its stack"),
    (P.APPEND + P.STOP, "too few items"),
    (P.BINGET + b"\x03" + P.STOP, "memo index 3 was never stored"),
    (P.NONE, "pickle exhausted before seeing STOP"),
    (b"\xff.", "unknown"),
])
def test_malformed_streams_are_unreadable(raw, words):
    with pytest.raises(picklescan.PickleUnreadableError, match=words):
        picklescan.scan(raw, ())


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_batches_with_filenames_pass_under_every_protocol(tmp_path, protocol):
    """A batch as the real files hold it (50 images, filenames, a batch label), re-pickled."""
    rng = np.random.default_rng(protocol)
    images = rng.integers(0, 256, (50, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, 50)]
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": labels, b"data": images,
             b"filenames": [f"cat_s_{i:06d}.png".encode() for i in range(50)]}
    raw = pickle.dumps(batch, protocol=protocol)
    counts = {op.name for op, _, _ in pickletools.genops(io.BytesIO(raw))}
    assert counts <= picklescan.ALLOWED_OPS, counts - picklescan.ALLOWED_OPS
    assert picklescan.scan(raw, cifar._ALLOWED) == len(raw)
    (tmp_path / "b").write_bytes(raw)
    x, y = cifar.read_batch(tmp_path / "b")
    assert x.shape == (50, 32, 32, 3) and y.tolist() == labels
