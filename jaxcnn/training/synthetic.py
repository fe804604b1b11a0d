"""Synthetic datasets the code generates, for models beyond image classification (NumPy only).

* `shapes_segmentation`: a disc and a square on a noisy background, with per-pixel masks.
* `signals`: noisy 1-D waveforms of four kinds.
* `volumes`: a sphere, a cube or a rod in a noisy 3-D volume.

Every set is deterministic from its seed: the train split is drawn from
`np.random.default_rng([seed, 0])`, the test split from `default_rng([seed, 1])`, so the test set
does not change with `n_train`. Classes are balanced (counts differ by at most one) and shuffled.
None of these is standardised: backgrounds are zero-mean noise and the objects have values in
[0.5, 1.5] before noise. Each is a `jaxcnn.training.data.load` spec at its default sizes
("shapes", "signals", "volumes"), which `jaxcnn train` trains on; their containers have the
`image_shape` (one sample's shape), `name`, `num_classes` and arrays that `data.fingerprint`,
`data.batches` and the run loop read. The digits at 32x32x3 are `jaxcnn.training.data.digits32`.
This module imports nothing else from the package (`data` imports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = ["SHAPE_CLASSES", "SIGNAL_KINDS", "VOLUME_KINDS", "Dataset1D", "Dataset3D",
           "SegmentationDataset", "shapes_segmentation", "signals", "volumes"]

SHAPE_CLASSES = ("background", "disc", "square")
SIGNAL_KINDS = ("sine", "square", "sawtooth", "chirp")
VOLUME_KINDS = ("sphere", "cube", "rod")
NOISE = 0.25  # std of the Gaussian noise added to every pixel / sample / voxel


# ----------------------------------------------------------------------------- checks
def _float_dtype(dtype: Any) -> np.dtype:
    """`dtype` as a NumPy floating dtype, else a ValueError (shared with jaxcnn.training.data)."""
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"dtype must be a floating dtype (float16/32/64); got {dt}")
    return dt


def _check_int(name: str, value: Any, minimum: int) -> int:
    """`value` as an int >= `minimum` (bools refused), else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- containers
@dataclass(frozen=True, eq=False, repr=False)
class _Split:
    """A train/test split whose arrays have the axes `X_AXES` and `Y_AXES` (checked)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int

    X_AXES: ClassVar[tuple[str, ...]] = ()
    Y_AXES: ClassVar[tuple[str, ...]] = ("N",)

    def __post_init__(self) -> None:
        y_axes = ", ".join(self.Y_AXES) + ("," if len(self.Y_AXES) == 1 else "")
        want = f"x ({', '.join(self.X_AXES)}) and y ({y_axes})"
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            ok = x.ndim == len(self.X_AXES) and y.ndim == len(self.Y_AXES) and len(x) == len(y)
            if ok and len(self.Y_AXES) > 1:  # per-pixel labels: y's axes are x's but C
                ok = y.shape[1:] == x.shape[1:-1]
            if not ok:
                raise ValueError(f"{type(self).__name__} {self.name!r}: {split} needs {want}; "
                                 f"got x {x.shape} and y {y.shape}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{type(self).__name__} {self.name!r}: train samples "
                             f"{self.x_train.shape[1:]} and test samples "
                             f"{self.x_test.shape[1:]} differ")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one x sample (all axes but N): (H, W, C), (L, C) or (D, H, W, C)."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One sample's shape, as `data.Dataset.image_shape` names it (= `sample_shape`): what
        a model's `input_shape` must equal."""
        return self.sample_shape

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, num_classes={self.num_classes}, "
                f"x_train={self.x_train.shape} {self.x_train.dtype}, "
                f"y_train={self.y_train.shape} {self.y_train.dtype}, "
                f"x_test={self.x_test.shape}, y_test={self.y_test.shape})")


@dataclass(frozen=True, eq=False, repr=False)
class SegmentationDataset(_Split):
    """A train/test split with per-pixel labels. x_*: (N, H, W, C) float; y_*: (N, H, W) int32
    class ids in 0..num_classes-1. `jaxcnn.training.data.fingerprint` accepts it."""

    X_AXES: ClassVar[tuple[str, ...]] = ("N", "H", "W", "C")
    Y_AXES: ClassVar[tuple[str, ...]] = ("N", "H", "W")


@dataclass(frozen=True, eq=False, repr=False)
class Dataset1D(_Split):
    """A train/test split of 1-D signals. x_*: (N, L, C) float; y_*: (N,) int32 class ids."""

    X_AXES: ClassVar[tuple[str, ...]] = ("N", "L", "C")


@dataclass(frozen=True, eq=False, repr=False)
class Dataset3D(_Split):
    """A train/test split of volumes. x_*: (N, D, H, W, C) float; y_*: (N,) int32 class ids."""

    X_AXES: ClassVar[tuple[str, ...]] = ("N", "D", "H", "W", "C")


# ----------------------------------------------------------------------------- helpers
def _args(dtype: Any, seed: int, **sizes: tuple[int, int]) -> tuple[np.dtype, int, list[int]]:
    """The checked dtype, seed and sizes ({name: (value, minimum)})."""
    dt, seed = _float_dtype(dtype), _check_int("seed", seed, 0)
    return dt, seed, [_check_int(k, v, lo) for k, (v, lo) in sizes.items()]


def _labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """(n,) int32 class ids 0..k-1, balanced (counts differ by at most one), shuffled."""
    return rng.permutation(np.arange(n) % k).astype(np.int32)


def _splits(make: Any, seed: int, n_train: int, n_test: int) -> tuple[Any, Any]:
    """`make(rng, n)` for train (`default_rng([seed, 0])`) and test (`[seed, 1]`)."""
    return (make(np.random.default_rng([seed, 0]), n_train),
            make(np.random.default_rng([seed, 1]), n_test))


# ----------------------------------------------------------------------------- segmentation
def _place_two(rng: np.random.Generator, half: np.ndarray, size: int) -> np.ndarray:
    """Centres (2, 2) (y, x) of two boxes of half-extents `half` (2,) inside [0, size), the
    boxes two pixels apart (so a pixel apart once snapped to the grid; redrawn up to 100 times,
    overlap is allowed after that)."""
    for _ in range(100):
        c = rng.uniform(half[:, None], size - half[:, None], (2, 2))
        if np.any(np.abs(c[0] - c[1]) >= half.sum() + 2.0):
            break
    return c


def _shapes(rng: np.random.Generator, n: int, size: int,
            dt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    grid = np.arange(size) + 0.5  # pixel centres
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    r = rng.uniform(size / 10, size / 5, (n, 2))  # the disc's radius, the square's equal-area one
    side = np.maximum(2, np.rint(r[:, 1] * math.sqrt(math.pi))).astype(int)  # area ~ pi r^2
    value = rng.uniform(0.5, 1.5, (n, 2))
    x = np.zeros((n, size, size))
    y = np.zeros((n, size, size), np.int32)
    for i in range(n):
        radius, s = r[i, 0], int(side[i])
        (cy0, cx0), (cy1, cx1) = _place_two(rng, np.array([radius, s / 2]), size)
        disc = (yy - cy0) ** 2 + (xx - cx0) ** 2 <= radius ** 2
        top, left = (int(np.clip(np.rint(c - s / 2), 0, size - s)) for c in (cy1, cx1))
        square = (slice(top, top + s), slice(left, left + s))  # on the pixel grid
        x[i][disc], y[i][disc] = value[i, 0], 1
        x[i][square], y[i][square] = value[i, 1], 2
    x += rng.normal(0.0, NOISE, x.shape)
    return x[..., None].astype(dt), y


def shapes_segmentation(n_train: int = 512, n_test: int = 128, size: int = 32, seed: int = 0,
                        dtype: Any = np.float32) -> SegmentationDataset:
    """Segment a disc and a square on a noisy background, pixel by pixel.

    Every image holds exactly one filled disc (class 1) and one filled axis-aligned square
    (class 2, aligned to the pixel grid) on background (class 0), their bounding boxes at least a
    pixel apart. The disc's radius and the square's equal-area radius r (side round(r sqrt(pi)),
    at least 2 pixels) are drawn independently from U[size/10, size/5], so both classes cover
    about the same area; each shape's value is
    U[0.5, 1.5] and every pixel gets N(0, 0.25^2) noise. Brightness and size say nothing about
    the class: a model must learn the shape (round or cornered) and label every pixel.

    Args:
      n_train, n_test: images per split (>= 1).
      size: H = W (>= 12).
      seed: train from `default_rng([seed, 0])`, test from `[seed, 1]`.
      dtype: float dtype of x.

    Returns:
      A `SegmentationDataset` named "shapes": x (N, size, size, 1) `dtype`, y (N, size, size)
      int32 in {0, 1, 2} (see `SHAPE_CLASSES`), num_classes 3.
    """
    dt, seed, (n_train, n_test, size) = _args(
        dtype, seed, n_train=(n_train, 1), n_test=(n_test, 1), size=(size, 12))
    (x_tr, y_tr), (x_te, y_te) = _splits(lambda rng, n: _shapes(rng, n, size, dt), seed,
                                         n_train, n_test)
    return SegmentationDataset(x_tr, y_tr, x_te, y_te, "shapes", len(SHAPE_CLASSES))


# ----------------------------------------------------------------------------- signals
def _waves(rng: np.random.Generator, n: int, length: int,
           dt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(rng, n, len(SIGNAL_KINDS))
    t = np.arange(length) / length  # the window is [0, 1)
    f0 = rng.uniform(2.0, 4.0, (n, 1))  # cycles per window
    f1 = f0 * rng.uniform(2.0, 3.0, (n, 1))  # the chirp's final frequency
    phase, amp = rng.uniform(0.0, 1.0, (n, 1)), rng.uniform(0.5, 1.5, (n, 1))
    chirp = (y == 3)[:, None]
    cycles = f0 * t + np.where(chirp, (f1 - f0) * t ** 2 / 2, 0.0) + phase
    frac = cycles % 1.0
    kinds = [np.sin(2 * np.pi * cycles), np.where(frac < 0.5, 1.0, -1.0), 2 * frac - 1,
             np.sin(2 * np.pi * cycles)]
    wave = np.choose(y[:, None], kinds)
    x = amp * wave + rng.normal(0.0, NOISE, (n, length))
    return x[..., None].astype(dt), y


def signals(n_train: int = 1024, n_test: int = 256, length: int = 128, seed: int = 0,
            dtype: Any = np.float32) -> Dataset1D:
    """Classify noisy 1-D waveforms: sine, square, sawtooth or chirp.

    Each signal is amplitude U[0.5, 1.5] times a waveform of f0 ~ U[2, 4] cycles per window and a
    random phase, plus N(0, 0.25^2) noise per sample: a sine, a square wave (+-1), a rising
    sawtooth (-1 to 1), or a linear chirp whose frequency sweeps from f0 to f0 * U[2, 3]. A model
    must learn the waveform's shape (and, for the chirp, that its frequency changes), whatever
    the amplitude, frequency and phase.

    Args:
      n_train, n_test: signals per split (>= 1).
      length: L, samples per signal (>= 32, enough for the chirp's highest frequency).
      seed: train from `default_rng([seed, 0])`, test from `[seed, 1]`.
      dtype: float dtype of x.

    Returns:
      A `Dataset1D` named "signals": x (N, length, 1) `dtype`, y (N,) int32 in 0..3 (see
      `SIGNAL_KINDS`), num_classes 4.
    """
    dt, seed, (n_train, n_test, length) = _args(
        dtype, seed, n_train=(n_train, 1), n_test=(n_test, 1), length=(length, 32))
    (x_tr, y_tr), (x_te, y_te) = _splits(lambda rng, n: _waves(rng, n, length, dt), seed,
                                         n_train, n_test)
    return Dataset1D(x_tr, y_tr, x_te, y_te, "signals", len(SIGNAL_KINDS))


# ----------------------------------------------------------------------------- volumes
def _solids(rng: np.random.Generator, n: int, size: int,
            dt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(rng, n, len(VOLUME_KINDS))
    r = rng.uniform(0.15, 0.25, n) * size  # the sphere's radius, the cube's equal-volume one
    side = np.repeat(np.maximum(2, np.rint(r * (4 * math.pi / 3) ** (1 / 3)))[:, None], 3, 1)
    rods = np.flatnonzero(y == 2)
    side[rods] = np.maximum(1, np.rint(rng.uniform(0.1, 0.16, (len(rods), 1)) * size))
    side[rods, rng.integers(0, 3, len(rods))] = np.rint(rng.uniform(0.6, 0.9, len(rods)) * size)
    half = np.where((y == 0)[:, None], r[:, None], side / 2)  # (n, 3) along (D, H, W)
    centre = rng.uniform(half, size - half)  # the solid lies wholly inside the volume
    grid = np.arange(size)
    u = [(grid + 0.5 - centre[:, a, None]) / r[:, None] for a in range(3)]  # (n, size)
    ball = u[0][:, :, None, None] ** 2 + u[1][:, None, :, None] ** 2 + u[2][:, None, None, :] ** 2
    lo = np.clip(np.rint(centre - side / 2), 0, size - side)  # boxes on the voxel grid
    m = [(grid >= lo[:, a, None]) & (grid < (lo + side)[:, a, None]) for a in range(3)]
    box = m[0][:, :, None, None] & m[1][:, None, :, None] & m[2][:, None, None, :]
    inside = np.where((y == 0)[:, None, None, None], ball <= 1.0, box)
    x = inside * rng.uniform(0.5, 1.5, (n, 1, 1, 1))
    x = x + rng.normal(0.0, NOISE, x.shape)
    return x[..., None].astype(dt), y


def volumes(n_train: int = 256, n_test: int = 64, size: int = 16, seed: int = 0,
            dtype: Any = np.float32) -> Dataset3D:
    """Classify the solid in a noisy volume: sphere, cube or rod.

    A sphere of radius r ~ U[0.15, 0.25] * size, a cube of about the same volume as a sphere of
    such a radius (side round(r (4 pi / 3)^(1/3)) voxels, at least 2), or a rod (a square bar
    round(U[0.1, 0.16] * size) voxels wide, at least 1, and round(U[0.6, 0.9] * size) long along
    a random axis); cube and rod lie on the voxel grid; each is placed uniformly wholly inside the
    volume; value U[0.5, 1.5] inside, N(0, 0.25^2) noise on every voxel. A model must tell the
    three shapes apart in 3-D (a sphere from a cube of the same volume, a rod from both) wherever
    they are.

    Args:
      n_train, n_test: volumes per split (>= 1).
      size: D = H = W (>= 8).
      seed: train from `default_rng([seed, 0])`, test from `[seed, 1]`.
      dtype: float dtype of x.

    Returns:
      A `Dataset3D` named "volumes": x (N, size, size, size, 1) `dtype`, y (N,) int32 in 0..2
      (see `VOLUME_KINDS`), num_classes 3.
    """
    dt, seed, (n_train, n_test, size) = _args(
        dtype, seed, n_train=(n_train, 1), n_test=(n_test, 1), size=(size, 8))
    (x_tr, y_tr), (x_te, y_te) = _splits(lambda rng, n: _solids(rng, n, size, dt), seed,
                                         n_train, n_test)
    return Dataset3D(x_tr, y_tr, x_te, y_te, "volumes", len(VOLUME_KINDS))
