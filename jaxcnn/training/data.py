"""Datasets for the CNNs, NumPy only (no JAX, never any download).

Every loader returns a `Dataset` of NHWC float images `(N, H, W, C)` in the requested float dtype.
Multi-class labels are int32 class ids `(N,)`; the binary synthetic set has float 0./1. labels
`(N,)` in the image dtype. Images are standardised with one scalar mean and std taken from the
TRAIN split only (population std, computed in float64), so no test statistics leak into training.

Sources: scikit-learn's bundled 8x8 digits (also scaled to 32x32 RGB), MNIST / Fashion-MNIST from
IDX files and CIFAR-10 from its python batches the user already has on disk, and a synthetic
bar-orientation task sized for the 6x6 seed network. `load` also names the generated sets of
jaxcnn.training.synthetic, whose containers are not `Dataset`s but read the same (`DataSplit`):
"shapes" (x (N, 32, 32, 1), per-pixel labels y (N, 32, 32), 3 classes), "signals" (x (N, 128, 1),
y (N,), 4 classes) and "volumes" (x (N, 16, 16, 16, 1), y (N,), 3 classes); those are not
standardised. `check_model_fits` is `jaxcnn train`'s check that a model can train on a dataset.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.training import synthetic
from jaxcnn.training.cifar import read_cifar10
from jaxcnn.training.idx import read_idx
from jaxcnn.training.synthetic import _check_int, _float_dtype

__all__ = [
    "DataSplit", "Dataset", "batches", "check_model_fits", "digits32", "fingerprint", "load",
    "load_cifar10", "load_digits", "load_idx_dir", "num_batches", "read_idx", "synthetic_bars",
]

SPEC_FORMS = ("'digits', 'synthetic', 'mnist:DIR', 'fashion:DIR', 'digits32', 'cifar10:DIR', "
              "'shapes', 'signals', 'volumes'")
MAX_SEED = 2 ** 32 - 1  # scikit-learn's random_state and NumPy's legacy seeds stop here


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test split. x_*: (N, H, W, C) float; y_*: (N,) int32 class ids or float 0./1."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(
                    f"Dataset {self.name!r}: x_{split} must be (N, H, W, C) and y_{split} (N,); "
                    f"got {x.shape} and {y.shape}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"Dataset {self.name!r}: train images {self.x_train.shape[1:]} and "
                             f"test images {self.x_test.shape[1:]} differ in (H, W, C)")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        h, w, c = self.x_train.shape[1:]
        return (h, w, c)

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, num_classes={self.num_classes}, "
                f"x_train={self.x_train.shape} {self.x_train.dtype}, "
                f"y_train={self.y_train.shape} {self.y_train.dtype}, "
                f"x_test={self.x_test.shape}, y_test={self.y_test.shape})")


# Any train/test split `load` returns: each has x_/y_ train/test arrays, `name`, `num_classes`
# and `image_shape` (one x sample's shape: (H, W, C), (L, C) or (D, H, W, C)).
DataSplit = (Dataset | synthetic.SegmentationDataset | synthetic.Dataset1D
             | synthetic.Dataset3D)


# ----------------------------------------------------------------------------- helpers
_CHUNK = 4096  # images per chunk when standardising, to avoid float64 copies of all of MNIST


def _standardise(train: np.ndarray, test: np.ndarray, scale: float,
                 dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Scale both splits by `scale`, then standardise with the scaled train mean / std.

    Statistics are one scalar each, computed in float64 chunk by chunk. A constant train set
    (std 0) is only centred, not divided.
    """
    if train.size == 0:
        raise ValueError("cannot standardise: the train split is empty")
    chunks = range(0, len(train), _CHUNK)
    mean = sum(float(np.sum(train[i:i + _CHUNK], dtype=np.float64)) for i in chunks)
    mean = mean * scale / train.size
    var = sum(float(np.sum(np.square(train[i:i + _CHUNK].astype(np.float64) * scale - mean)))
              for i in chunks) / train.size
    std = math.sqrt(var) if var > 0 else 1.0

    def apply(x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape, dtype)
        for i in range(0, len(x), _CHUNK):
            out[i:i + _CHUNK] = (x[i:i + _CHUNK].astype(np.float64) * scale - mean) / std
        return out

    return apply(train), apply(test)


# ----------------------------------------------------------------------------- digits
def load_digits(test_fraction: float = 0.2, seed: int = 0, dtype: Any = np.float32) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, shipped with the package, no network).

    Stratified split seeded by `seed`; pixels 0..16 scaled to [0, 1], then standardised with the
    train mean / std. Returns x: (N, 8, 8, 1) `dtype`, y: (N,) int32 in 0..9, 10 classes.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    dt = _float_dtype(dtype)
    seed = _check_int("seed", seed, 0)
    if seed > MAX_SEED:
        raise ValueError(f"seed must be an int in 0..{MAX_SEED}; got {seed}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
    x, y = _sk_load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed)
    x_tr, x_te = _standardise(x_tr, x_te, 1.0 / 16.0, dt)
    return Dataset(x_tr.reshape(-1, 8, 8, 1), y_tr.astype(np.int32),
                   x_te.reshape(-1, 8, 8, 1), y_te.astype(np.int32), "digits", 10)


def digits32(seed: int = 0, dtype: Any = np.float32) -> Dataset:
    """The 8x8 digits of `load_digits` as 32x32 RGB images, the input resnet20 takes by default.

    Each pixel becomes a 4x4 block (nearest neighbour) and the one channel is repeated 3 times.
    Split and standardisation are `load_digits(seed=seed)`'s, unchanged (every value repeated 48
    times keeps the train mean 0 and std 1). Returns x: (N, 32, 32, 3) `dtype`, y: (N,) int32 in
    0..9, 10 classes, name "digits32".
    """
    d = load_digits(seed=seed, dtype=dtype)

    def up(x: np.ndarray) -> np.ndarray:  # (N, 8, 8, 1) -> (N, 32, 32, 3)
        return np.repeat(np.repeat(np.repeat(x, 4, axis=1), 4, axis=2), 3, axis=3)

    return Dataset(up(d.x_train), d.y_train, up(d.x_test), d.y_test, "digits32", 10)


# ----------------------------------------------------------------------------- IDX files
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


def _idx_candidates(stem: str) -> list[str]:
    """Names accepted for one standard file: raw, .gz, and the 'train-images.idx3-ubyte' form."""
    dotted = stem.replace("-idx", ".idx")
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def load_idx_dir(directory: str | Path, name: str = "mnist", seed: int = 0,
                 dtype: Any = np.float32) -> Dataset:
    """MNIST / Fashion-MNIST from the four standard IDX files in `directory` (raw or .gz).

    The official 60k/10k split is kept as is; `seed` is accepted for a uniform loader signature
    and unused. Pixels 0..255 are scaled to [0, 1], then standardised with the train mean / std.
    Returns x: (N, rows, cols, 1) `dtype`, y: (N,) int32 in 0..9, 10 classes, `name` as given.
    """
    dt = _float_dtype(dtype)
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory; expected one holding the IDX "
                                f"files {', '.join(IDX_FILES.values())} (raw or .gz)")
    paths: dict[str, Path] = {}
    missing = []
    for key, stem in IDX_FILES.items():
        names = _idx_candidates(stem)
        found = [directory / n for n in names if (directory / n).is_file()]
        if found:
            paths[key] = found[0]
        else:
            missing.append(f"{stem} (looked for {', '.join(names)})")
    if missing:
        raise FileNotFoundError(f"{directory}: missing IDX files: {'; '.join(missing)}")

    arrays = {key: read_idx(p) for key, p in paths.items()}
    for split in ("train", "test"):
        ip, lp = paths[f"{split}_images"], paths[f"{split}_labels"]
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{ip}: images must be 3-D uint8 (N, rows, cols); got "
                             f"{images.ndim}-D {images.dtype} {images.shape}")
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise ValueError(f"{lp}: labels must be 1-D uint8 (N,); got "
                             f"{labels.ndim}-D {labels.dtype} {labels.shape}")
        if len(images) == 0:
            raise ValueError(f"{ip}: holds 0 images; the {split} split must not be empty")
        if len(images) != len(labels):
            raise ValueError(f"image and label counts differ: {ip} has {len(images)} images, "
                             f"{lp} has {len(labels)} labels; expected equal counts")
        bad = np.flatnonzero(labels > 9)
        if bad.size:
            raise ValueError(f"{lp}: label value {labels[bad[0]]} at index {bad[0]} "
                             f"({bad.size} bad in all); expected class ids 0..9")
    tr, te = arrays["train_images"], arrays["test_images"]
    if tr.shape[1:] != te.shape[1:]:
        raise ValueError(f"image sizes differ: {paths['train_images']} has {tr.shape[1:]}, "
                         f"{paths['test_images']} has {te.shape[1:]}; expected the same")
    x_tr, x_te = _standardise(tr, te, 1.0 / 255.0, dt)
    return Dataset(x_tr[..., None], arrays["train_labels"].astype(np.int32),
                   x_te[..., None], arrays["test_labels"].astype(np.int32), name, 10)


# ----------------------------------------------------------------------------- CIFAR-10
def load_cifar10(directory: str | Path, seed: int = 0, dtype: Any = np.float32) -> Dataset:
    """CIFAR-10 from its python batches in `directory` (see `jaxcnn.training.cifar`: read with a
    restricted unpickler that runs nothing; never downloaded).

    The official 50k/10k split is kept; `seed` is unused (a uniform loader signature). Pixels
    0..255 are scaled to [0, 1], then standardised with ONE scalar train mean / std over all three
    channels, like every loader here (not per channel). Returns x: (N, 32, 32, 3) `dtype`, y: (N,)
    int32 in 0..9, 10 classes, name "cifar10".
    """
    dt = _float_dtype(dtype)
    x_tr, y_tr, x_te, y_te = read_cifar10(directory)
    x_tr, x_te = _standardise(x_tr, x_te, 1.0 / 255.0, dt)
    return Dataset(x_tr, y_tr, x_te, y_te, "cifar10", 10)


# ----------------------------------------------------------------------------- synthetic
def _bars(rng: np.random.Generator, n: int, size: int, noise: float,
          dt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    y = rng.permutation(np.arange(n) < n // 2)  # exactly n // 2 positives, shuffled
    where = rng.integers(0, size, n)
    x = np.zeros((n, size, size), np.float64)
    x[y, :, where[y]] = 1.0  # vertical bar: one whole column
    x[~y, where[~y], :] = 1.0  # horizontal bar: one whole row
    x += rng.normal(0.0, noise, x.shape)
    return x[..., None].astype(dt), y.astype(dt)


def synthetic_bars(n_train: int = 512, n_test: int = 256, size: int = 6, noise: float = 0.1,
                   seed: int = 0, dtype: Any = np.float32) -> Dataset:
    """Binary bar-orientation task for the 6x6 seed network (3x3 conv, ReLU, 2x2 pool, dense 4->1).

    Each image is a bar of value 1.0 on a zero background plus Gaussian noise (std `noise`) on
    every pixel: label 1.0 carries a vertical bar (one whole random column), label 0.0 a horizontal
    bar (one whole random row). Each split holds exactly n // 2 positives in shuffled order.
    Train and test come from independent streams (`default_rng([seed, 0])` / `[seed, 1]`), so the
    test set does not change with `n_train`. Not standardised. Returns x: (N, size, size, 1)
    `dtype`, y: (N,) `dtype` in {0., 1.}, num_classes 2.
    """
    dt = _float_dtype(dtype)
    n_train, n_test = _check_int("n_train", n_train, 1), _check_int("n_test", n_test, 1)
    size, seed = _check_int("size", size, 1), _check_int("seed", seed, 0)
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite std >= 0; got {noise!r}")
    x_tr, y_tr = _bars(np.random.default_rng([seed, 0]), n_train, size, noise, dt)
    x_te, y_te = _bars(np.random.default_rng([seed, 1]), n_test, size, noise, dt)
    return Dataset(x_tr, y_tr, x_te, y_te, "synthetic", 2)


# ----------------------------------------------------------------------------- batching
def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Number of batches `batches` yields for `n` examples."""
    n, batch_size = _check_int("n", n, 0), _check_int("batch_size", batch_size, 1)
    return n // batch_size if drop_last else -(-n // batch_size)


Batch = tuple[np.ndarray, np.ndarray]


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int, epoch: int,
            shuffle: bool = True, drop_last: bool = True) -> Iterator[Batch]:
    """Yield `(x[idx], y[idx])` batches of `batch_size` (the last one smaller if not drop_last).

    x: (N, ...), y: (N, ...). The order for epoch `epoch` is
    `np.random.default_rng([seed, epoch]).permutation(N)` (or 0..N-1 without shuffle), so a run
    resumed at some epoch sees exactly the same batches. Arguments are checked at the call, not at
    the first `next`.
    """
    x, y = np.asarray(x), np.asarray(y)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed, epoch = _check_int("seed", seed, 0), _check_int("epoch", epoch, 0)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length; got {len(x)} and {len(y)}")
    n = len(x)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    stop = num_batches(n, batch_size, drop_last) * batch_size

    def gen() -> Iterator[Batch]:
        for i in range(0, min(stop, n), batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]

    return gen()


# ----------------------------------------------------------------------------- identity
def fingerprint(ds: DataSplit) -> str:
    """sha256 over the name, the class count and the four arrays (dtype, shape and bytes) of a
    dataset: equal fingerprints mean the same images and labels, in the same order.

    Args:
      ds: the dataset: a `Dataset` or a synthetic container (`DataSplit`), x (N, ...), y (N, ...).

    Returns:
      the hex digest.
    """
    h = hashlib.sha256(f"{ds.name}:{ds.num_classes}\n".encode())
    for key in ("x_train", "y_train", "x_test", "y_test"):
        a = np.ascontiguousarray(getattr(ds, key))
        h.update(f"{key}:{a.dtype.str}:{a.shape}\n".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


# ----------------------------------------------------------------------------- CLI
GENERATED = {"shapes": synthetic.shapes_segmentation, "signals": synthetic.signals,
             "volumes": synthetic.volumes}  # spec: generator of jaxcnn.training.synthetic


def load(spec: str, seed: int = 0, dtype: Any = np.float32) -> DataSplit:
    """Dataset from its CLI form: 'digits', 'synthetic', 'mnist:DIR', 'fashion:DIR', 'digits32',
    'cifar10:DIR', or the generated sets of `jaxcnn.training.synthetic` at their default sizes:
    'shapes' (`shapes_segmentation()`), 'signals' (`signals()`), 'volumes' (`volumes()`)."""
    if not isinstance(spec, str):
        raise TypeError(f"the dataset spec must be a str, one of {SPEC_FORMS}; got {spec!r}")
    kind, sep, arg = spec.partition(":")
    if kind == "digits" and not sep:
        return load_digits(seed=seed, dtype=dtype)
    if kind == "synthetic" and not sep:
        return synthetic_bars(seed=seed, dtype=dtype)
    if kind in ("mnist", "fashion") and arg:
        return load_idx_dir(arg, name=kind, seed=seed, dtype=dtype)
    if kind == "digits32" and not sep:
        return digits32(seed=seed, dtype=dtype)
    if kind == "cifar10" and arg:
        return load_cifar10(arg, seed=seed, dtype=dtype)
    if kind in GENERATED and not sep:
        return GENERATED[kind](seed=seed, dtype=dtype)
    raise ValueError(f"unknown dataset spec {spec!r}; expected one of {SPEC_FORMS}")



_SAMPLES = {2: "signals", 3: "images", 4: "volumes"}  # one sample's rank: what it holds


def _labels_shape(shape: tuple[int, ...]) -> str:
    """(N,) or (N, 32, 32): a label array's shape with its batch axis named N."""
    return f"({', '.join(['N', *map(str, shape[1:])])}{',' if len(shape) == 1 else ''})"


def check_model_fits(model: Any, ds: DataSplit, *, model_spec: str, data_spec: str) -> None:
    """Refuse a model that cannot train on `ds` (the checks of `jaxcnn train`).

    The model's `input_shape` must be the data's `image_shape` (one sample: (H, W, C), (L, C) or
    (D, H, W, C)); its head must take the data's labels: their shape
    (`model.head.label_shape`: (N,), or (N, *S) for a per-position head, S the output's spatial
    axes), their kind (0./1. floats for a binary head, int class ids for a softmax head), and
    `ds.num_classes <= model.num_classes`.

    Args:
      model: a `jaxcnn.nn.network.Network` (its input_shape, output_shape, head, num_classes).
      ds: the data.
      model_spec, data_spec: the --model and --data the messages name.

    Raises:
      ValueError: naming both sides of the first mismatch.
    """
    m, d = f"model {model_spec!r}", f"--data {data_spec}"
    if ds.image_shape != model.input_shape:
        raise ValueError(
            f"{m} takes {_SAMPLES.get(len(model.input_shape), 'inputs')} of shape "
            f"{model.input_shape} but {d} has {_SAMPLES.get(len(ds.image_shape), 'inputs')} of "
            f"shape {ds.image_shape}")
    want = tuple(model.head.label_shape(len(ds.y_train), model.output_shape))
    if ds.y_train.shape != want:
        per = "a label per position" if len(want) > 1 else "one label per example"
        has = "a label per position" if ds.y_train.ndim > 1 else "one label per example"
        raise ValueError(f"{m} ({model.head.name}) takes {per}, labels of shape "
                         f"{_labels_shape(want)}, but {d} has {has}, labels of shape "
                         f"{_labels_shape(ds.y_train.shape)}")
    if not model.head.label_dtype_ok(ds.y_train.dtype) or ds.num_classes > model.num_classes:
        raise ValueError(f"{m} predicts {model.num_classes} classes "
                         f"({model.head.labels(model.num_classes)}) but {d} has "
                         f"{ds.num_classes} ({ds.y_train.dtype} labels)")
