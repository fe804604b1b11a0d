"""`jaxcnn train` from the command line: a short run, and bad input answered with exit status 2
and one line on stderr (no traceback)."""

import gzip
import json

import pytest

from jaxcnn.tools import cli


def test_short_run_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--model", "seed", "--data", "synthetic", "--epochs", "2",
                     "--batch-size", "16", "--lr", "0.05", "--out", str(out), "--quiet",
                     "--check-grads"])
    assert code == 0
    assert "test accuracy" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["model"] == "seed"
    kinds = [json.loads(line)["kind"] for line in (out / "metrics.jsonl").open()]
    assert kinds.count("epoch") == 2 and "step" in kinds
    for name in ("checkpoint.npz", "curves.png", "filters.png", "grad_norms.png"):
        assert (out / name).stat().st_size > 0


def _write_idx_images(path, n=4):
    header = bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (5).to_bytes(4, "big") * 2
    with gzip.open(path, "wb") as f:
        f.write(header + bytes(n * 25))


@pytest.mark.parametrize("argv, message", [
    (["--model", "nosuch"], "unknown model 'nosuch'"),
    (["--batch-size", "0"], "--batch-size must be >= 1; got 0"),
    (["--lr", "-0.1"], "the learning rate must be > 0; got -0.1"),
    (["--model", "lenet5"], "model 'lenet5' takes images of shape (28, 28, 1) but --data "
                            "digits has images of shape (8, 8, 1)"),
    (["--data", "mnist:{tmp}"], "missing IDX files"),
    (["--data", "mnist:{tmp}/nonexistent"], "no such directory"),
    (["--data", "imagenet"], "imagenet"),
    (["--epochs", "0"], "--epochs must be >= 1; got 0"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    _write_idx_images(tmp_path / "train-images-idx3-ubyte.gz")  # only one of the four files
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = cli.main(["train", "--out", str(tmp_path / "out"), "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_argparse_errors_exit_2(capsys):
    assert cli.main(["train", "--grad", "numeric"]) == 2
    assert "invalid choice" in capsys.readouterr().err
