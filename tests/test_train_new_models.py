"""`jaxcnn train` on the models beyond image classification: unet on "shapes" (per-pixel labels),
cnn1d on "signals", cnn3d on "volumes"; the mean IoU of a per-position head; the refusal of a
model that cannot train on the data.

The runs use small slices of the synthetic sets (`data.load` patched), a few steps each.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models
from jaxcnn.nn import layers
from jaxcnn.nn.heads import PIXEL_SOFTMAX
from jaxcnn.nn.network import Network
from jaxcnn.training import data, synthetic
from jaxcnn.training import run as trainer
from jaxcnn.training import steps as train_steps

SPECS = {  # spec: (container, x sample shape, y sample shape, classes, n_train, n_test)
    "shapes": (synthetic.SegmentationDataset, (32, 32, 1), (32, 32), 3, 512, 128),
    "signals": (synthetic.Dataset1D, (128, 1), (), 4, 1024, 256),
    "volumes": (synthetic.Dataset3D, (16, 16, 16, 1), (), 3, 256, 64),
}


@pytest.mark.parametrize("spec", SPECS)
def test_the_specs_load_with_their_shapes(spec):
    cls, x_shape, y_shape, k, n_train, n_test = SPECS[spec]
    ds = data.load(spec, seed=2, dtype=np.float64)
    assert type(ds) is cls and ds.name == spec and ds.num_classes == k
    assert ds.image_shape == x_shape and ds.x_train.shape == (n_train, *x_shape)
    assert ds.x_test.shape == (n_test, *x_shape) and ds.x_train.dtype == np.float64
    assert ds.y_train.shape == (n_train, *y_shape) and ds.y_test.shape == (n_test, *y_shape)
    assert ds.y_train.dtype == np.int32 and set(np.unique(ds.y_train)) == set(range(k))
    assert data.fingerprint(ds) == data.fingerprint(data.GENERATED[spec](seed=2,
                                                                          dtype=np.float64))
    assert data.fingerprint(ds) != data.fingerprint(data.load(spec, seed=3, dtype=np.float64))
    assert f"'{spec}'" in data.SPEC_FORMS
    with pytest.raises(ValueError, match=f"unknown dataset spec '{spec}:x'"):
        data.load(f"{spec}:x")


def test_the_containers_batch_like_a_dataset():
    ds = synthetic.shapes_segmentation(n_train=10, n_test=3, size=12)
    got = list(data.batches(ds.x_train, ds.y_train, 4, seed=1, epoch=2))
    order = np.random.default_rng([1, 2]).permutation(10)[:8]
    assert [b[0].shape for b in got] == [(4, 12, 12, 1)] * 2
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), ds.y_train[order])


# ----------------------------------------------------------------------------- mean IoU
def numpy_mean_iou(pred: np.ndarray, y: np.ndarray, k: int) -> float:
    ious = []
    for c in range(k):
        union = np.sum((pred == c) | (y == c))
        if union:
            ious.append(np.sum((pred == c) & (y == c)) / union)
    return float(np.mean(ious))


def test_mean_iou_against_numpy_with_a_class_absent_from_both():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, (5, 6, 7))  # classes 0..2 of K = 5: 3 and 4 are absent from y ...
    pred = np.where(rng.random(y.shape) < 0.3, rng.integers(0, 4, y.shape), y)  # ... 4 from both
    assert 3 in pred and 4 not in pred and 4 not in y
    inter, union = jax.device_get(train_steps.iou_counts(jnp.asarray(pred), jnp.asarray(y), 5))
    for c in range(5):
        assert inter[c] == np.sum((pred == c) & (y == c))
        assert union[c] == np.sum((pred == c) | (y == c))
    assert union[4] == 0 and inter[3] == 0 < union[3]  # class 3: predicted, never present
    want = numpy_mean_iou(pred, y, 5)
    assert train_steps.mean_iou(pred, y, 5) == pytest.approx(want, rel=1e-12)
    assert train_steps.mean_iou(y, y, 5) == 1.0
    assert np.isnan(train_steps.mean_iou_from_counts(np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match="pred and y must have the same shape"):
        train_steps.mean_iou(pred, y[:, :2], 5)


def test_evaluate_sums_the_iou_counts_over_the_whole_set():
    """Two batches of 3: the IoU of the summed counts, not a mean of the batches' IoUs. The
    network: a 1x1 convolution to 3 logits per pixel, the per-pixel softmax head."""
    model = Network("pixels", [layers.Conv2D(3, 1, name="conv")], (5, 4, 2), PIXEL_SOFTMAX)
    params = model.init(jax.random.key(1), jnp.float64)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 5, 4, 2)), rng.integers(0, 3, (6, 5, 4)).astype(np.int32)
    y[:3] = 0  # the batches' class mixes differ
    got = train_steps.evaluate(model, params, {}, x, y, batch_size=3)
    w, b = (np.asarray(params["conv"][k]) for k in ("w", "b"))
    logits = np.einsum("nhwc,ck->nhwk", x, w[0, 0]) + b
    pred = logits.argmax(-1)
    assert set(np.unique(pred)) == {0, 1, 2}
    assert got["mean_iou"] == pytest.approx(numpy_mean_iou(pred, y, 3), rel=1e-12)
    assert got["accuracy"] == pytest.approx(np.mean(pred == y), rel=1e-6)  # float32 means
    per_batch = np.mean([numpy_mean_iou(pred[i:i + 3], y[i:i + 3], 3) for i in (0, 3)])
    assert abs(got["mean_iou"] - per_batch) > 1e-3  # the two differ here


# ----------------------------------------------------------------------------- fit
SMALL = {  # model: (spec, its small slice)
    "unet": ("shapes", lambda: synthetic.shapes_segmentation(n_train=16, n_test=6)),
    "cnn1d": ("signals", lambda: synthetic.signals(n_train=32, n_test=12)),
    "cnn3d": ("volumes", lambda: synthetic.volumes(n_train=12, n_test=6)),
}


@pytest.fixture
def small_data(monkeypatch):
    """`data.load` of the small slices; the plots only recorded (the kernel `_plots` picks)."""
    real, drawn = data.load, []

    def load(spec, seed=0, dtype=np.float32):
        made = {s: make for s, make in SMALL.values()}
        return made[spec]() if spec in made else real(spec, seed=seed, dtype=dtype)

    monkeypatch.setattr(data, "load", load)
    monkeypatch.setattr(trainer.plots, "plot_run", lambda out, w: drawn.append(w) or [])
    return drawn


@pytest.mark.parametrize("name", SMALL)
def test_fit_trains_each_new_model(tmp_path, small_data, name):
    spec, make = SMALL[name]
    cfg = trainer.TrainConfig(model=name, data=spec, batch_size=4, epochs=3, lr=5e-3,
                              log_every=1)
    lines = []
    summary = trainer.fit(cfg, tmp_path, progress=False, log=lines.append)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().split("\n")
               if line]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3] and (tmp_path / trainer.CHECKPOINT).exists()
    losses = [r["loss"] for r in records if r["kind"] == "step"]
    assert len(losses) == 3 * (len(make().x_train) // 4)
    assert np.isfinite(losses).all() and epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert 0 <= summary["test_accuracy"] <= 1 and summary["epoch"] == 3
    per_pixel = name == "unet"
    assert ("test_mean_iou" in epochs[-1]) == per_pixel == ("test_mean_iou" in summary)
    assert ("test mean IoU" in lines[2]) == per_pixel and lines[2].startswith("epoch 3:")
    if per_pixel:
        assert 0 < summary["test_mean_iou"] <= 1
        assert epochs[-1]["test_mean_iou"] == summary["test_mean_iou"]
    # the filters drawn: the first convolution's kernel (unet's inside enc1), of any rank
    kernel = small_data[0]
    assert kernel.shape == {"unet": (3, 3, 1, 8), "cnn1d": (7, 1, 16),
                            "cnn3d": (3, 3, 3, 1, 8)}[name]
    if per_pixel:
        np.testing.assert_array_equal(kernel, summary["params"]["enc1"]["conv1"]["w"])
    # resuming a finished run checks the container's fingerprint and trains nothing
    lines.clear()
    trainer.fit(cfg, tmp_path, resume=True, progress=False, log=lines.append)
    assert any("all 3 epochs were already done" in line for line in lines)


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("model, spec, message", [
    ("unet", "digits", "model 'unet' takes images of shape (32, 32, 1) but --data digits has "
                       "images of shape (8, 8, 1)"),
    ("cnn1d", "shapes", "model 'cnn1d' takes signals of shape (128, 1) but --data shapes has "
                        "images of shape (32, 32, 1)"),
    ("cnn3d", "signals", "model 'cnn3d' takes volumes of shape (16, 16, 16, 1) but --data "
                         "signals has signals of shape (128, 1)"),
    ("lenet5-digits", "volumes", "takes images of shape (8, 8, 1) but --data volumes has "
                                 "volumes of shape (16, 16, 16, 1)"),
    (lambda: models.unet(3, (8, 8, 1)), "digits",
     "(per-position softmax + cross-entropy) takes a label per position, labels of shape "
     "(N, 8, 8), but --data digits has one label per example, labels of shape (N,)"),
    (lambda: models.lenet5((32, 32, 1), 3), "shapes",
     "(softmax + cross-entropy) takes one label per example, labels of shape (N,), but --data "
     "shapes has a label per position, labels of shape (N, 32, 32)"),
    (lambda: models.unet(2, (32, 32, 1)), "shapes",
     "predicts 2 classes (int class ids in [0, 2)) but --data shapes has 3 (int32 labels)"),
])
def test_a_model_that_does_not_fit_the_data_is_refused(tmp_path, model, spec, message):
    net = model() if callable(model) else None
    cfg = trainer.TrainConfig(model=model if net is None else "custom:build", data=spec)
    with pytest.raises(ValueError, match=re.escape(message)):
        trainer.fit(cfg, tmp_path, model=net, progress=False)
    assert not any(tmp_path.iterdir())  # refused before the directory is touched
