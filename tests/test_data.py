"""jaxcnn.training.data: loaders, IDX reader errors, synthetic bars, seeded batching.

NumPy only: no jax import, no network; IDX files are written into tmp_path by the tests.
"""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from jaxcnn.training import data

IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B,
             np.dtype("i4"): 0x0C, np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def idx_bytes(a: np.ndarray) -> bytes:
    """Encode `a` in IDX format: 0 0 type ndim, big-endian uint32 dims, big-endian payload."""
    code = IDX_CODES[a.dtype.newbyteorder("=")]
    header = struct.pack(f">BBBB{a.ndim}I", 0, 0, code, a.ndim, *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write(path: Path, payload: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def make_idx_dir(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = False,
                 dotted: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the four standard files with random uint8 images (N, 4, 3) and labels 0..9."""
    rng = np.random.default_rng(seed)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 4, 3), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 4, 3), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8)}
    root.mkdir(parents=True, exist_ok=True)
    for key, stem in data.IDX_FILES.items():
        name = stem.replace("-idx", ".idx") if dotted else stem
        write(root / (name + (".gz" if gz else "")), idx_bytes(arrays[key]), gz)
    return arrays


def names(path: Path) -> str:
    return re.escape(str(path))


# ----------------------------------------------------------------------------- digits
def test_digits_shapes_dtypes_and_standardisation():
    d = data.load_digits()
    assert (d.name, d.num_classes, d.image_shape) == ("digits", 10, (8, 8, 1))
    assert d.x_train.shape == (1437, 8, 8, 1) and d.x_test.shape == (360, 8, 8, 1)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    assert d.y_test.dtype == np.int32 and set(np.unique(d.y_train)) == set(range(10))
    assert abs(d.x_train.mean()) < 1e-5 and abs(d.x_train.std() - 1) < 1e-5
    assert abs(d.x_test.mean()) < 0.1  # test set uses train statistics: close, not exact
    assert data.load_digits(dtype=np.float64).x_train.dtype == np.float64


def test_digits_stratified():
    d = data.load_digits(test_fraction=0.25, seed=3)
    p_tr = np.bincount(d.y_train, minlength=10) / len(d.y_train)
    p_te = np.bincount(d.y_test, minlength=10) / len(d.y_test)
    np.testing.assert_allclose(p_tr, p_te, atol=0.01)
    assert len(d.y_test) == 450


def test_digits_deterministic_per_seed():
    a, b, c = data.load_digits(seed=1), data.load_digits(seed=1), data.load_digits(seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)


def test_bad_dtype_and_fraction():
    with pytest.raises(ValueError, match="floating dtype"):
        data.load_digits(dtype=np.int32)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=1.5)


# ----------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, dtype, gz):
    a = (np.arange(24) - 7).reshape(2, 3, 4).astype(dtype)
    out = data.read_idx(write(tmp_path / "a.bin", idx_bytes(a), gz))  # name says nothing of gzip
    assert out.dtype == dtype.newbyteorder("=") and out.flags.writeable
    np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (True, True)])
def test_load_idx_dir_round_trip(tmp_path, gz, dotted):
    arrays = make_idx_dir(tmp_path, gz=gz, dotted=dotted)
    d = data.load_idx_dir(tmp_path, name="fashion")
    assert (d.name, d.num_classes, d.image_shape) == ("fashion", 10, (4, 3, 1))
    assert d.x_train.shape == (12, 4, 3, 1) and d.x_test.shape == (5, 4, 3, 1)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    np.testing.assert_array_equal(d.y_train, arrays["train_labels"])
    np.testing.assert_array_equal(d.y_test, arrays["test_labels"])
    scaled = arrays["train_images"] / 255.0
    want = (arrays["test_images"] / 255.0 - scaled.mean()) / scaled.std()
    np.testing.assert_allclose(d.x_test[..., 0], want, rtol=1e-5, atol=1e-5)
    assert abs(d.x_train.mean()) < 1e-5 and abs(d.x_train.std() - 1) < 1e-5
    np.testing.assert_array_equal(data.load(f"fashion:{tmp_path}").x_test, d.x_test)


def test_truncated_file(tmp_path):
    p = write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((2, 4, 4), np.uint8))[:-5])
    with pytest.raises(ValueError, match=names(p) + ".*truncated.*expected 32 .*got 27"):
        data.read_idx(p)


def test_trailing_bytes(tmp_path):
    p = write(tmp_path / "x.idx", idx_bytes(np.zeros(3, np.uint8)) + b"\0\0")
    with pytest.raises(ValueError, match=names(p) + ".*trailing bytes.*expected 3 .*got 5"):
        data.read_idx(p)


def test_wrong_magic_png(tmp_path):
    p = write(tmp_path / "t10k-images-idx3-ubyte", b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(ValueError, match=names(p) + r".*not an IDX file \(magic 0x89504e47.*"
                       "expected two zero bytes"):
        data.read_idx(p)


def test_wrong_type_byte(tmp_path):
    p = write(tmp_path / "x.idx", b"\0\0\x07\x01" + struct.pack(">I", 2) + b"ab")
    with pytest.raises(ValueError, match=names(p) + ".*unknown IDX type byte 0x07.*0x08 uint8"):
        data.read_idx(p)


@pytest.mark.parametrize("damage", ["cut in half", "crc byte flipped"])
def test_gzip_cut_in_half_or_corrupt(tmp_path, damage):
    blob = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(2, 10, 10))))
    if damage == "cut in half":
        blob = blob[: len(blob) // 2]
    else:
        blob[-6] ^= 0xFF
    p = write(tmp_path / "train-labels-idx1-ubyte.gz", bytes(blob))
    with pytest.raises(ValueError, match=names(p) + ".*corrupt or truncated gzip"):
        data.read_idx(p)


def test_label_count_mismatch(tmp_path):
    make_idx_dir(tmp_path)
    lp = write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(11, np.uint8)))
    ip = tmp_path / "train-images-idx3-ubyte"
    with pytest.raises(ValueError, match=f"{names(ip)} has 12 images, {names(lp)} has 11 labels"):
        data.load_idx_dir(tmp_path)


def test_label_value_out_of_range(tmp_path):
    make_idx_dir(tmp_path)
    labels = np.zeros(5, np.uint8)
    labels[3] = 12
    lp = write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(labels))
    with pytest.raises(ValueError, match=names(lp) + ".*label value 12 at index 3.*0..9"):
        data.load_idx_dir(tmp_path)


def test_images_must_be_3d_uint8(tmp_path):
    make_idx_dir(tmp_path)
    ip = write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((12, 12), np.uint8)))
    with pytest.raises(ValueError, match=names(ip) + ".*3-D uint8.*got 2-D"):
        data.load_idx_dir(tmp_path)


def test_missing_directory(tmp_path):
    d = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=names(d) + ".*no such directory"):
        data.load_idx_dir(d)
    with pytest.raises(FileNotFoundError, match=names(d)):
        data.load(f"mnist:{d}")


def test_directory_without_idx_files(tmp_path):
    (tmp_path / "README").write_text("hi")
    with pytest.raises(FileNotFoundError, match=names(tmp_path) + ".*missing IDX files: "
                       r"train-images-idx3-ubyte \(looked for .*train-images.idx3-ubyte.gz"):
        data.load_idx_dir(tmp_path)


def test_one_file_missing_named(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="missing IDX files: t10k-labels-idx1-ubyte") as e:
        data.load_idx_dir(tmp_path)
    assert "train-images" not in str(e.value)


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_bars_balanced_and_typed():
    d = data.synthetic_bars(n_train=64, n_test=32, dtype=np.float64)
    assert d.x_train.shape == (64, 6, 6, 1) and d.x_test.shape == (32, 6, 6, 1)
    assert d.y_train.dtype == np.float64 and d.x_train.dtype == np.float64
    assert set(np.unique(d.y_train)) == {0.0, 1.0} and d.y_train.sum() == 32
    assert d.y_test.sum() == 16 and d.num_classes == 2


def test_synthetic_bars_orientation():
    d = data.synthetic_bars(n_train=40, n_test=2, noise=0.0)
    x, y = d.x_train[..., 0], d.y_train
    cols, rows = (x == 1).all(axis=1).sum(1), (x == 1).all(axis=2).sum(1)
    np.testing.assert_array_equal(cols, y)  # one full column iff positive
    np.testing.assert_array_equal(rows, 1 - y)
    assert (x.sum((1, 2)) == 6).all()


def test_synthetic_bars_deterministic():
    a, b, c = (data.synthetic_bars(seed=s) for s in (4, 4, 5))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    np.testing.assert_array_equal(data.synthetic_bars(n_train=8, seed=4).x_test, a.x_test)


# ----------------------------------------------------------------------------- batching
def order(n=10, bs=3, **kw):
    x = np.arange(n)
    return [b[0].tolist() for b in data.batches(x, x * 10, bs, **{"seed": 0, "epoch": 0, **kw})]


def flat(batches_):
    return [i for b in batches_ for i in b]


def test_batches_same_seed_epoch_same_order():
    assert order(seed=1, epoch=2) == order(seed=1, epoch=2)
    assert order(seed=1, epoch=2) != order(seed=1, epoch=3)
    assert order(seed=1, epoch=2) != order(seed=2, epoch=2)
    perm = np.random.default_rng([1, 2]).permutation(10)
    assert flat(order(seed=1, epoch=2)) == perm[:9].tolist()


def test_batches_cover_epoch():
    got = order(drop_last=False)
    assert [len(b) for b in got] == [3, 3, 3, 1] == [3] * 3 + [1]
    assert sorted(flat(got)) == list(range(10))
    assert [len(b) for b in order()] == [3, 3, 3]
    assert order(shuffle=False, drop_last=False)[-1] == [9]


def test_batches_pairs_x_with_y():
    x = np.arange(10)
    for bx, by in data.batches(x, x * 10, 4, seed=0, epoch=1):
        np.testing.assert_array_equal(by, bx * 10)


@pytest.mark.parametrize("n,bs,drop,want", [(10, 3, True, 3), (10, 3, False, 4), (9, 3, False, 3),
                                            (2, 3, True, 0), (0, 3, False, 0)])
def test_num_batches(n, bs, drop, want):
    assert data.num_batches(n, bs, drop) == want
    assert len(list(data.batches(np.zeros(n), np.zeros(n), bs, seed=0, epoch=0,
                                 drop_last=drop))) == want


def test_batches_validation():
    x = np.zeros(4)
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(x, x, 0, seed=0, epoch=0)  # raises at the call, not at the first next()
    with pytest.raises(ValueError, match="batch_size"):
        data.num_batches(4, 0)
    with pytest.raises(ValueError, match=r"same length.*4 and 3"):
        data.batches(x, x[:3], 2, seed=0, epoch=0)


# ----------------------------------------------------------------------------- load
def test_load_specs():
    assert data.load("synthetic", seed=1).name == "synthetic"
    assert data.load("digits").image_shape == (8, 8, 1)
    for bad in ("cifar", "mnist", "mnist:", "digits:x", "shapes:32", "volumes:", "signal"):
        with pytest.raises(ValueError, match=r"unknown dataset spec.*'mnist:DIR', 'fashion:DIR'"
                                             r".*'shapes', 'signals', 'volumes'"):
            data.load(bad)


# ----------------------------------------------------------------------------- fingerprint
def test_fingerprint_tells_datasets_apart():
    a, b = data.synthetic_bars(seed=1), data.synthetic_bars(seed=1)
    assert data.fingerprint(a) == data.fingerprint(b) and len(data.fingerprint(a)) == 64
    assert data.fingerprint(data.synthetic_bars(seed=2)) != data.fingerprint(a)
    assert data.fingerprint(data.synthetic_bars(seed=1, dtype=np.float64)) != data.fingerprint(a)
    assert data.fingerprint(data.synthetic_bars(seed=1, noise=0.2)) != data.fingerprint(a)


def test_read_idx_max_bytes(tmp_path):
    p = write(tmp_path / "x.idx", idx_bytes(np.zeros((4, 4), np.uint8)))
    assert data.read_idx(p, max_bytes=16).shape == (4, 4)
    with pytest.raises(ValueError, match=names(p) + r".*declares shape \(4, 4\).*16 payload bytes"
                       ".*max_bytes=15"):
        data.read_idx(p, max_bytes=15)
