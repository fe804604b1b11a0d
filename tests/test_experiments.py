"""The experiment scripts in experiments/: each `main` in-process with tiny settings, writing
under tmp_path; the exit status, a PNG figure, and each script's key claim."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxcnn.training import data

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load(name: str):
    """experiments/<name>.py as a module (experiments/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def outputs(tmp_path: Path, name: str) -> tuple[Path, Path, list[str]]:
    fig, js = tmp_path / f"{name}.png", tmp_path / f"{name}.json"
    return fig, js, ["--figure", str(fig), "--json", str(js)]


def test_seed_manual_vs_autodiff(tmp_path, capsys):
    fig, js, out = outputs(tmp_path, "seed")
    mod = load("seed_manual_vs_autodiff")
    assert mod.main(["--epochs", "2", "--n-train", "128", "--dtype", "float32", "float64",
                     *out]) == 0
    assert is_png(fig)
    assert "| float64 |" in capsys.readouterr().out
    results = {r["dtype"]: r for r in json.loads(js.read_text())["results"]}
    assert results["float64"]["steps"] == 8
    assert results["float64"]["max_abs_loss_diff"] <= 1e-9
    assert results["float64"]["max_rel_param_diff"] <= 1e-9
    assert results["float32"]["max_rel_loss_diff"] <= 1e-4
    assert results["float32"]["max_rel_param_diff"] <= 1e-4
    for r in results.values():
        assert r["manual_test_accuracy"] == r["autodiff_test_accuracy"]


def test_digits(tmp_path, capsys):
    fig, js, out = outputs(tmp_path, "digits")
    mod = load("digits")
    assert mod.main(["--epochs", "1", "--seeds", "0", "--runs-dir", str(tmp_path / "runs"),
                     *out]) == 0
    assert is_png(fig)
    assert "| **mean** |" in capsys.readouterr().out
    result = json.loads(js.read_text())
    assert result["config"]["epochs"] == 1 and result["seeds"] == [0]
    assert result["test_accuracy"]["mean"] > 0.5  # one epoch is far above chance (0.1)
    assert (tmp_path / "runs" / "seed0" / "metrics.jsonl").is_file()


def test_vanishing_gradients(tmp_path):
    fig, js, out = outputs(tmp_path, "vanishing")
    mod = load("vanishing_gradients")
    assert mod.main(["--steps", "2", "--grad-batch", "64", "--no-explode", *out]) == 0
    assert is_png(fig)
    results = {r["name"]: r for r in json.loads(js.read_text())["results"]}
    sigmoid, relu = results["sigmoid, He normal"], results["ReLU, He normal"]
    # the same init scheme: the sigmoid stack's first-layer gradient vanishes, the ReLU one's not
    assert sigmoid["init"]["ratio_first_last"] < 1e-2
    assert relu["init"]["ratio_first_last"] > 1e-2
    assert results["sigmoid, Glorot normal"]["init"]["ratio_first_last"] < 1e-2


def idx_bytes(a: np.ndarray) -> bytes:
    """uint8 array -> IDX: 0 0 0x08 ndim, big-endian uint32 dims, the bytes."""
    return struct.pack(f">BBBB{a.ndim}I", 0, 0, 0x08, a.ndim, *a.shape) + a.tobytes()


def fake_mnist(root: Path, n_train: int = 64, n_test: int = 32) -> Path:
    """The four standard files with random 28x28 uint8 images and labels 0..9 (training images
    raw, test images gzipped, to cover both)."""
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8)}
    root.mkdir(parents=True)
    for key, stem in data.IDX_FILES.items():
        payload = idx_bytes(arrays[key])
        if key.startswith("test"):
            (root / (stem + ".gz")).write_bytes(gzip.compress(payload))
        else:
            (root / stem).write_bytes(payload)
    return root


def test_mnist_lenet5_fake_idx(tmp_path, capsys):
    fig, js, out = outputs(tmp_path, "mnist")
    mod = load("mnist_lenet5")
    root = fake_mnist(tmp_path / "idx")
    assert mod.main([str(root), "--epochs", "1", "--batch-size", "32", "--log-every", "1",
                     *out]) == 0
    assert is_png(fig)
    assert "| 1 |" in capsys.readouterr().out
    result = json.loads(js.read_text())
    assert result["config"]["model"] == "lenet5" and len(result["epochs"]) == 1
    # a fraction of the 32 fake test images, and the last epoch's figure
    acc = result["test_accuracy"]
    assert acc == result["epochs"][-1]["test_accuracy"]
    assert abs(acc * 32 - round(acc * 32)) < 1e-9


@pytest.mark.parametrize("case", ["no dir", "empty dir", "one file missing"])
def test_mnist_lenet5_missing_files(tmp_path, capsys, case):
    mod = load("mnist_lenet5")
    fig, js, out = outputs(tmp_path, "mnist")
    if case == "no dir":
        argv = []
    elif case == "empty dir":
        (tmp_path / "empty").mkdir()
        argv = [str(tmp_path / "empty")]
    else:
        root = fake_mnist(tmp_path / "idx", n_train=4, n_test=2)
        (root / "train-labels-idx1-ubyte").unlink()
        argv = [str(root)]
    assert mod.main([*argv, *out]) == 2
    err = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte" in err and "Nothing is downloaded" in err
    if case == "one file missing":
        assert "lacks train-labels-idx1-ubyte." in err
    assert not fig.exists() and not js.exists()
