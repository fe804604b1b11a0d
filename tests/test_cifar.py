"""jaxcnn.training.cifar and data.load_cifar10: CIFAR-10's python batches, read safely.

NumPy only, no network: every batch is written into tmp_path by the tests in the real format (a
pickled dict with byte-string keys, a uint8 (n, 3072) array of channel-first rows and a list of
labels), a few images per batch. Hostile files (foreign, malicious, truncated, mis-shaped) must be
refused with a ValueError naming the file, and a malicious pickle must run nothing.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jaxcnn.training import cifar, data

TRAIN_COUNTS = (3, 2, 4, 1, 2)  # images per data_batch_1 .. data_batch_5
N_TEST = 3


def rows(images: np.ndarray) -> np.ndarray:
    """NHWC uint8 (n, 32, 32, 3) -> the file's channel-first rows (n, 3072)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072)


def batch(images: np.ndarray, labels: Any, label: bytes = b"training batch") -> dict:
    return {b"batch_label": label, b"labels": labels, b"data": rows(images),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}


def dump(path: Path, obj: Any, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def make_cifar_dir(root: Path, protocol: int = 2, seed: int = 0,
                   counts: tuple[int, ...] = TRAIN_COUNTS, n_test: int = N_TEST) -> dict:
    """Write the six batches with random images; return their NHWC images and labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in [*zip(cifar.TRAIN_BATCHES, counts), (cifar.TEST_BATCH, n_test)]:
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        dump(root / name, batch(images, labels), protocol)
        out[name] = (images, labels)
    return out


def names(path: Path) -> str:
    return re.escape(str(path))


class Py2Pickler(pickle._Pickler):
    """Writes like Python 2 did for the real files: every str and bytes as a BINSTRING."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_string(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        op = (pickle.SHORT_BINSTRING + bytes([len(raw)]) if len(raw) < 256
              else pickle.BINSTRING + struct.pack("<i", len(raw)))
        self.write(op + raw)
        self.memoize(obj)

    dispatch[str] = save_string
    dispatch[bytes] = save_string


def py2_pickle(obj: Any) -> bytes:
    """`obj` pickled as Python 2 with NumPy 1 wrote CIFAR-10: protocol 2, BINSTRINGs, and the
    reconstructor under its old module name numpy.core.multiarray."""
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


# ----------------------------------------------------------------------------- reading
@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_reads_the_official_split_in_order(tmp_path, protocol):
    written = make_cifar_dir(tmp_path, protocol=protocol)
    x_tr, y_tr, x_te, y_te = cifar.read_cifar10(tmp_path)
    train = [written[n] for n in cifar.TRAIN_BATCHES]
    np.testing.assert_array_equal(x_tr, np.concatenate([im for im, _ in train]))
    np.testing.assert_array_equal(y_tr, np.concatenate([lb for _, lb in train]))
    np.testing.assert_array_equal(x_te, written[cifar.TEST_BATCH][0])
    np.testing.assert_array_equal(y_te, written[cifar.TEST_BATCH][1])
    assert x_tr.shape == (sum(TRAIN_COUNTS), 32, 32, 3) and x_te.shape == (N_TEST, 32, 32, 3)
    assert x_tr.dtype == np.uint8 and y_tr.dtype == np.int32 and y_te.dtype == np.int32
    assert x_tr.flags.c_contiguous


def test_rows_are_channel_first_planes(tmp_path):
    """Value v at row offset 1024 c + 32 h + w lands at NHWC (h, w, c)."""
    row = np.zeros((2, 3072), np.uint8)
    for v, (h, w, c) in enumerate([(3, 17, 2), (0, 1, 0), (31, 0, 1)], start=1):
        row[0, 1024 * c + 32 * h + w] = 50 * v
    row[1, 1024 * 1 + 32 * 5 + 9] = 255
    path = dump(tmp_path / "b", {b"data": row, b"labels": [4, 7]})
    x, y = cifar.read_batch(path)
    assert x.shape == (2, 32, 32, 3) and list(y) == [4, 7]
    assert (x[0, 3, 17, 2], x[0, 0, 1, 0], x[0, 31, 0, 1], x[1, 5, 9, 1]) == (50, 100, 150, 255)
    assert np.count_nonzero(x) == 4


def test_python2_style_batches_load(tmp_path):
    """The real files: BINSTRING keys and data, numpy.core.multiarray._reconstruct."""
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    payload = py2_pickle(batch(images, [3, 9]))
    assert b"numpy.core.multiarray\n_reconstruct" in payload and b"_codecs" not in payload
    (tmp_path / "b").write_bytes(payload)
    x, y = cifar.read_batch(tmp_path / "b")
    np.testing.assert_array_equal(x, images)
    assert list(y) == [3, 9]


def test_the_extracted_subdirectory_is_found(tmp_path):
    written = make_cifar_dir(tmp_path / cifar.SUBDIR)
    x_tr, *_ = cifar.read_cifar10(tmp_path)
    np.testing.assert_array_equal(x_tr[:3], written["data_batch_1"][0])


# ----------------------------------------------------------------------------- the Dataset
def test_load_cifar10_standardises_with_train_statistics_only(tmp_path):
    written = make_cifar_dir(tmp_path / "a", seed=0)
    ds = data.load_cifar10(tmp_path / "a")
    assert (ds.name, ds.num_classes, ds.image_shape) == ("cifar10", 10, (32, 32, 3))
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    train = np.concatenate([written[n][0] for n in cifar.TRAIN_BATCHES]) / 255.0
    mean, std = train.mean(), train.std()  # one scalar over all three channels
    assert abs(ds.x_train.mean()) < 1e-5 and abs(ds.x_train.std() - 1) < 1e-5
    expected_test = (written[cifar.TEST_BATCH][0] / 255.0 - mean) / std
    np.testing.assert_allclose(ds.x_test, expected_test, rtol=1e-5, atol=1e-5)
    # other test images: the train half is unchanged (no test statistic leaks into it)
    make_cifar_dir(tmp_path / "b", seed=0)
    dump(tmp_path / "b" / cifar.TEST_BATCH,
         batch(np.full((5, 32, 32, 3), 255, np.uint8), [0] * 5))
    other = data.load_cifar10(tmp_path / "b", dtype=np.float64)
    np.testing.assert_allclose(other.x_train, ds.x_train, rtol=1e-5, atol=1e-5)
    assert other.x_test.dtype == np.float64 and other.x_test.shape == (5, 32, 32, 3)
    with pytest.raises(ValueError, match="floating dtype"):
        data.load_cifar10(tmp_path / "a", dtype=np.int32)


def test_load_spec(tmp_path):
    make_cifar_dir(tmp_path)
    a, b = data.load(f"cifar10:{tmp_path}"), data.load_cifar10(tmp_path)
    assert data.fingerprint(a) == data.fingerprint(b)
    assert "'cifar10:DIR'" in data.SPEC_FORMS and "load_cifar10" in data.__all__
    for bad in ("cifar10", "cifar10:", "cifar"):
        with pytest.raises(ValueError, match=r"unknown dataset spec.*'cifar10:DIR'"):
            data.load(bad)


# ----------------------------------------------------------------------------- hostile files
class Evil:
    """Unpickling this calls os.system(cmd): what a hostile "batch" would do."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple:
        return (os.system, (self.cmd,))


def test_a_pickle_that_would_call_os_system_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    make_cifar_dir(tmp_path)
    for protocol in (0, 2, pickle.DEFAULT_PROTOCOL):
        payload = pickle.dumps({b"data": Evil(f"touch {marker}"), b"labels": []},
                               protocol=protocol)
        assert any(isinstance(arg, str) and "system" in arg  # it really names os.system
                   for _, arg, _ in pickletools.genops(payload))
        (tmp_path / "data_batch_2").write_bytes(payload)
        with pytest.raises(ValueError, match=names(tmp_path / "data_batch_2")
                           + r".*refused the global (posix|nt|os)\.system.*nothing in it was run"):
            data.load_cifar10(tmp_path)
        assert not marker.exists()


FORBIDDEN_GLOBALS = [
    b"cbuiltins\neval\n(S'1+1'\ntR.",  # protocol 0 by hand
    b"c__builtin__\nexec\n(S'x=1'\ntR.",
    b"csubprocess\nPopen\n((S'true'\nltR.",
    b"cnumpy\nload\n(S'/etc/passwd'\ntR.",
    b"ccopyreg\n_reconstructor\n(cbuiltins\nobject\nNtR.",
]


@pytest.mark.parametrize("payload", FORBIDDEN_GLOBALS)
def test_any_other_global_is_refused(tmp_path, payload):
    (tmp_path / "b").write_bytes(payload)
    with pytest.raises(ValueError, match=names(tmp_path / "b") + ".*refused the global"):
        cifar.read_batch(tmp_path / "b")


ABUSED_GLOBALS = [  # (pickle by hand, protocol 0, the refusal): allowed globals misused
    (b"cnumpy\nndarray\n(I1000000000000\ntR.", "calling numpy.ndarray is not allowed"),
    (b"cnumpy\ndtype\n}(S'x'\nI1\nub.", "setting the state of numpy.dtype is not allowed"),
    (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\ndtype\n(I0\ntS'b'\ntR.",
     r"only \(numpy.ndarray, \(0,\), b'b'\) is allowed"),
    (b"cnumpy._core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I99999999\ntS'b'\ntR.",
     "only"),
    (b"c_codecs\nencode\n(Vx\nVzlib_codec\ntR.", "only a str to latin1 is allowed"),
    (b"c__builtin__\nbytes\n(I100000000000\ntR.", r"bytes\(...\) with arguments"),
    (b"cnumpy\ndtype\n(S'V8'\ntR.", "only plain numeric dtypes"),
    (b"cnumpy._core.numeric\n_frombuffer\n(Vabc\nNNNtR.", "only in-band bytes"),
]


@pytest.mark.parametrize("payload, words", ABUSED_GLOBALS)
def test_allowed_globals_check_their_arguments(tmp_path, payload, words):
    (tmp_path / "b").write_bytes(payload)
    with pytest.raises(ValueError, match=names(tmp_path / "b") + ".*" + words):
        cifar.read_batch(tmp_path / "b")


def _valid(protocol: int = 2) -> bytes:
    images = np.zeros((2, 32, 32, 3), np.uint8)
    return pickle.dumps(batch(images, [1, 2]), protocol=protocol)


def _dict(**changes: Any) -> dict:
    d = batch(np.zeros((2, 32, 32, 3), np.uint8), [1, 2])
    d.update({k.encode(): v for k, v in changes.items()})
    return d


# (id, bytes of the file, words the error must hold)
BAD_FILES = [
    ("a list", pickle.dumps([1, 2, 3]), "holds a list"),
    ("a set", pickle.dumps({1, 2}, protocol=4), "opcode EMPTY_SET at byte 11: not an opcode"),
    ("an OrderedDict", pickle.dumps(collections.OrderedDict(a=1)),
     "refused the global collections.OrderedDict"),
    ("cifar-100 keys", pickle.dumps({b"data": np.zeros((1, 3072), np.uint8),
                                     b"fine_labels": [1], b"coarse_labels": [0]}),
     r"missing \[b'labels'\]"),
    ("str keys", pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [1]}),
     "missing"),
    ("truncated", _valid()[:3000], "not a readable pickle"),
    ("truncated protocol 5", _valid(5)[:-40], "not a readable pickle"),
    ("trailing bytes", _valid() + b"junk", "4 trailing bytes"),
    ("not a pickle", b"this is a text file, not a batch\n" * 5, "not a readable pickle"),
    ("empty", b"", "not a readable pickle"),
    ("wrong data shape", pickle.dumps(_dict(data=np.zeros((2, 1024), np.uint8))),
     r"uint8 array of shape \(2, 1024\); expected a uint8 array \(n, 3072\)"),
    ("float data", pickle.dumps(_dict(data=np.zeros((2, 3072), np.float32))),
     "float32 array of shape"),
    ("data as bytes", pickle.dumps(_dict(data=bytes(6144))), "b'data' is a bytes"),
    ("object data", pickle.dumps(_dict(data=np.array([None, 1], dtype=object))),
     r"numpy.dtype\('O8'\): only plain numeric"),
    ("label 10", pickle.dumps(_dict(labels=[1, 10])), r"b'labels'\[1\] is 10; expected"),
    ("label -1", pickle.dumps(_dict(labels=[-1, 0])), r"b'labels'\[0\] is -1"),
    ("label True", pickle.dumps(_dict(labels=[0, True])), r"b'labels'\[1\] is True"),
    ("label 2.0", pickle.dumps(_dict(labels=[2.0, 1])), r"b'labels'\[0\] is 2.0"),
    ("one label short", pickle.dumps(_dict(labels=[1])), "a list of 1; expected a list of 2"),
    ("labels as an array", pickle.dumps(_dict(labels=np.array([1, 2]))), "b'labels' is a ndarray"),
]


@pytest.mark.parametrize("payload, words", [(p, w) for _, p, w in BAD_FILES],
                         ids=[i for i, _, _ in BAD_FILES])
def test_malformed_batches_are_refused_naming_the_file(tmp_path, payload, words):
    make_cifar_dir(tmp_path)
    bad = tmp_path / "data_batch_3"
    bad.write_bytes(payload)
    with pytest.raises(ValueError, match=names(bad) + ".*" + words):
        data.load_cifar10(tmp_path)


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    make_cifar_dir(tmp_path)
    monkeypatch.setattr(cifar, "MAX_BATCH_BYTES", 1000)
    with pytest.raises(ValueError, match=names(tmp_path / "data_batch_1") + ".*MAX_BATCH_BYTES"):
        cifar.read_cifar10(tmp_path)


def test_missing_files_and_directories(tmp_path):
    make_cifar_dir(tmp_path / "d")
    (tmp_path / "d" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing CIFAR-10 batch files: test_batch "
                       r"\(nothing is downloaded"):
        data.load_cifar10(tmp_path / "d")
    (tmp_path / "d" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4, test_batch"):
        data.load(f"cifar10:{tmp_path / 'd'}")
    with pytest.raises(FileNotFoundError, match=names(tmp_path / "nope")
                       + ".*no such directory.*nothing is downloaded"):
        data.load_cifar10(tmp_path / "nope")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(FileNotFoundError,
                       match=r"found cifar-10-python\.tar\.gz: extract it first"):
        data.load_cifar10(tmp_path / "e")


def test_an_empty_split_is_refused(tmp_path):
    make_cifar_dir(tmp_path, counts=(0, 0, 0, 0, 0))
    with pytest.raises(ValueError, match=names(tmp_path) + r": the train split .* holds 0 images"):
        data.load_cifar10(tmp_path)
