"""jaxcnn.training.synthetic: shapes segmentation, 1-D signals, 3-D volumes; and data.digits32.

NumPy only, no network, small sizes. With the module's NOISE set to 0 the geometry of every
generated object is checked exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxcnn.training import data, synthetic

SMALL = {  # generator: the keyword arguments of a small but complete set
    "shapes": (synthetic.shapes_segmentation, dict(n_train=40, n_test=12, size=16)),
    "signals": (synthetic.signals, dict(n_train=40, n_test=12, length=64)),
    "volumes": (synthetic.volumes, dict(n_train=30, n_test=9, size=10)),
}


def arrays(ds) -> list[np.ndarray]:
    return [ds.x_train, ds.y_train, ds.x_test, ds.y_test]


def same_bytes(a, b) -> bool:
    return all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
               for x, y in zip(arrays(a), arrays(b)))


# ----------------------------------------------------------------------------- all three
@pytest.mark.parametrize("kind", SMALL)
def test_deterministic_per_seed(kind):
    make, kw = SMALL[kind]
    a, b, c = make(seed=3, **kw), make(seed=3, **kw), make(seed=4, **kw)
    assert same_bytes(a, b) and data.fingerprint(a) == data.fingerprint(b)
    assert not np.array_equal(a.x_train, c.x_train) and not np.array_equal(a.x_test, c.x_test)
    assert data.fingerprint(a) != data.fingerprint(c)
    # the test split has its own stream: it does not move with n_train
    more = make(seed=3, **{**kw, "n_train": kw["n_train"] + 5})
    np.testing.assert_array_equal(more.x_test, a.x_test)
    np.testing.assert_array_equal(more.y_test, a.y_test)


EXPECTED = {  # kind: (container, x sample shape, y sample shape, num_classes)
    "shapes": (synthetic.SegmentationDataset, (16, 16, 1), (16, 16), 3),
    "signals": (synthetic.Dataset1D, (64, 1), (), 4),
    "volumes": (synthetic.Dataset3D, (10, 10, 10, 1), (), 3),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", SMALL)
def test_shapes_and_dtypes(kind, dtype):
    make, kw = SMALL[kind]
    cls, x_shape, y_shape, k = EXPECTED[kind]
    ds = make(dtype=dtype, **kw)
    assert type(ds) is cls and ds.name == kind and ds.num_classes == k
    assert ds.x_train.shape == (kw["n_train"], *x_shape) and ds.sample_shape == x_shape
    assert ds.image_shape == x_shape  # what run._setup compares with a model's input_shape
    assert ds.x_test.shape == (kw["n_test"], *x_shape)
    assert ds.y_train.shape == (kw["n_train"], *y_shape)
    assert ds.y_test.shape == (kw["n_test"], *y_shape)
    assert ds.x_train.dtype == dtype and ds.x_test.dtype == dtype
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert np.isfinite(ds.x_train).all()
    assert set(np.unique(ds.y_train)) == set(range(k))
    assert kind in repr(ds) and str(x_shape[0]) in repr(ds)


@pytest.mark.parametrize("kind", ["signals", "volumes"])
def test_classes_are_balanced(kind):
    make, kw = SMALL[kind]
    k = EXPECTED[kind][3]
    for n in (kw["n_train"], 7, 13):
        counts = np.bincount(make(**{**kw, "n_train": n}).y_train, minlength=k)
        assert counts.sum() == n and counts.max() - counts.min() <= (0 if n % k == 0 else 1)
    assert not np.all(np.diff(make(**kw).y_train) >= 0)  # shuffled, not sorted


@pytest.mark.parametrize("bad, words", [
    (dict(n_train=0), "n_train must be an int >= 1"),
    (dict(n_test=1.5), "n_test must be an int"),
    (dict(seed=-1), "seed must be an int >= 0"),
    (dict(dtype=np.int32), "floating dtype"),
])
@pytest.mark.parametrize("kind", SMALL)
def test_bad_arguments(kind, bad, words):
    make, kw = SMALL[kind]
    with pytest.raises(ValueError, match=words):
        make(**{**kw, **bad})


def test_sizes_too_small_are_refused():
    with pytest.raises(ValueError, match="size must be an int >= 12"):
        synthetic.shapes_segmentation(size=8)
    with pytest.raises(ValueError, match="length must be an int >= 32"):
        synthetic.signals(length=16)
    with pytest.raises(ValueError, match="size must be an int >= 8"):
        synthetic.volumes(size=4)


def test_containers_check_their_shapes():
    x, y = np.zeros((2, 4, 4, 1)), np.zeros((2, 4, 4), np.int32)
    synthetic.SegmentationDataset(x, y, x, y, "s", 3)
    assert synthetic.SegmentationDataset(x, y, x, y, "s", 3).image_shape == (4, 4, 1)
    with pytest.raises(ValueError, match=r"train needs x \(N, H, W, C\) and y \(N, H, W\)"):
        synthetic.SegmentationDataset(x, y[:, :3], x, y, "s", 3)
    with pytest.raises(ValueError, match=r"test needs .*got x \(2, 4, 4, 1\) and y \(2,\)"):
        synthetic.SegmentationDataset(x, y, x, y[:, 0, 0], "s", 3)
    with pytest.raises(ValueError, match=r"Dataset1D 'v': train needs x \(N, L, C\) and y \(N,\)"):
        synthetic.Dataset1D(x, y[:, 0, 0], x, y[:, 0, 0], "v", 3)
    with pytest.raises(ValueError, match="differ"):
        synthetic.Dataset3D(np.zeros((2, 3, 3, 3, 1)), y[:, 0, 0], np.zeros((2, 3, 3, 4, 1)),
                            y[:, 0, 0], "v", 3)


# ----------------------------------------------------------------------------- geometry
@pytest.fixture
def noiseless(monkeypatch):
    monkeypatch.setattr(synthetic, "NOISE", 0.0)


def test_segmentation_masks(noiseless):
    ds = synthetic.shapes_segmentation(n_train=64, n_test=8, size=24, seed=1)
    x, y = ds.x_train[..., 0], ds.y_train
    assert set(np.unique(y)) == {0, 1, 2} and synthetic.SHAPE_CLASSES[1:] == ("disc", "square")
    np.testing.assert_array_equal(y > 0, x > 0)  # the masks are exactly where the shapes are
    for img, mask in zip(x, y):
        assert (mask == 1).any() and (mask == 2).any()  # one disc and one square per image
        assert len(np.unique(img[mask == 1])) == 1 and len(np.unique(img[mask == 2])) == 1
        rows, cols = np.nonzero(mask == 2)  # the square fills its bounding box, exactly
        assert (mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1] == 2).all()
        assert rows.max() - rows.min() == cols.max() - cols.min()
        rows, cols = np.nonzero(mask == 1)  # the disc does not fill its box
        box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert (box == 1).mean() < 0.95 or box.size <= 9
        near = np.pad(mask == 2, 1)  # the square grown by one pixel (8-neighbourhood) ...
        near = np.any([np.roll(np.roll(near, dy, 0), dx, 1) for dy in (-1, 0, 1)
                       for dx in (-1, 0, 1)], axis=0)[1:-1, 1:-1]
        assert not (near & (mask == 1)).any()  # ... does not touch the disc
    ratio = (y == 1).sum() / (y == 2).sum()
    assert 0.85 < ratio < 1.15, ratio  # both classes cover about the same area


def test_segmentation_with_noise_keeps_the_masks_informative():
    ds = synthetic.shapes_segmentation(seed=2)
    x, y = ds.x_train[..., 0], ds.y_train
    assert abs(x[y == 0].mean()) < 0.02 and 0.9 < x[y > 0].mean() < 1.1
    assert 0.2 < x[y == 0].std() < 0.3
    assert ds.image_shape == (32, 32, 1) and len(ds.y_test) == 128


def test_signal_waveforms(noiseless):
    ds = synthetic.signals(n_train=80, n_test=4, length=128, seed=5)
    x, y = ds.x_train[..., 0].astype(np.float64), ds.y_train
    amp = np.abs(x).max(axis=1)
    assert (amp > 0.49).all() and (amp < 1.51).all()
    square = x[y == 1]  # two levels, +-amplitude
    np.testing.assert_allclose(np.abs(square), np.abs(square[:, :1]) * np.ones_like(square),
                               rtol=1e-6)
    saw = x[y == 2]  # rising ramps: most steps are the same small rise, a few big drops
    steps = np.diff(saw, axis=1)
    assert ((steps > 0).mean(axis=1) > 0.9).all() and (steps.min(axis=1) < -0.5).all()

    def zero_crossings(s):  # per half of the window
        sign = np.signbit(s)
        return (sign[:, 1:64] != sign[:, :63]).sum(1), (sign[:, 65:] != sign[:, 64:-1]).sum(1)

    first, second = zero_crossings(x[y == 3])  # the chirp speeds up ...
    assert (second > first).all()
    first, second = zero_crossings(x[y == 0])  # ... a sine does not
    assert (np.abs(second - first) <= 1).all()


def test_volume_solids(noiseless):
    ds = synthetic.volumes(n_train=60, n_test=3, size=16, seed=7)
    x, y = ds.x_train[..., 0], ds.y_train
    assert synthetic.VOLUME_KINDS == ("sphere", "cube", "rod")
    for vol, kind in zip(x, y):
        inside = vol > 0
        assert inside.any() and len(np.unique(vol[inside])) == 1
        idx = np.nonzero(inside)
        extent = np.array([i.max() - i.min() + 1 for i in idx])
        box = inside[tuple(slice(i.min(), i.max() + 1) for i in idx)]
        if kind == 0:  # a sphere: round, about 4/3 pi r^3 / (2r)^3 = 0.52 of its box
            assert box.mean() < 0.8 and extent.max() - extent.min() <= 1
        elif kind == 1:  # a cube: fills its box, equal sides
            assert box.all() and extent.max() == extent.min()
        else:  # a rod: fills its box, long along one axis
            assert box.all() and extent.max() >= 3 * np.sort(extent)[1]


# ----------------------------------------------------------------------------- digits32
def test_digits32_is_the_8x8_digits_repeated():
    d8, d32 = data.load_digits(seed=3), data.digits32(seed=3)
    assert (d32.name, d32.num_classes, d32.image_shape) == ("digits32", 10, (32, 32, 3))
    assert d32.x_train.dtype == np.float32 and d32.y_train.dtype == np.int32
    for a, b in ((d8.x_train, d32.x_train), (d8.x_test, d32.x_test)):
        blocks = b.reshape(len(b), 8, 4, 8, 4, 3)  # (N, i, a, j, b, c): pixel (4i + a, 4j + b)
        np.testing.assert_array_equal(blocks, np.broadcast_to(
            a.reshape(len(a), 8, 1, 8, 1, 1), blocks.shape))
    np.testing.assert_array_equal(d32.y_train, d8.y_train)
    np.testing.assert_array_equal(d32.y_test, d8.y_test)
    # standardised with train statistics only: train exactly, test only about
    assert abs(d32.x_train.mean()) < 1e-5 and abs(d32.x_train.std() - 1) < 1e-5
    assert 1e-4 < abs(d32.x_test.mean()) < 0.1
    assert data.fingerprint(data.load("digits32", seed=3)) == data.fingerprint(d32)
    assert "'digits32'" in data.SPEC_FORMS
    assert data.digits32(dtype=np.float64).x_test.dtype == np.float64
    with pytest.raises(ValueError, match="unknown dataset spec"):
        data.load("digits32:x")
