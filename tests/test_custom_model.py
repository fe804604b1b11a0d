"""Your own model from the command line: `jaxcnn train --model my_module:build`."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from jaxcnn.nn import lookup
from jaxcnn.tools import cli

MODULE = textwrap.dedent('''
    from jaxcnn.nn.layers import Conv2D, Dense, Flatten, MaxPool, ReLU
    from jaxcnn.nn.network import SOFTMAX, Network


    def build():
        """A small CNN of your own for the bundled 8x8 digits."""
        return Network("my_cnn", [
            Conv2D(8, 3, padding="SAME", name="c1"), ReLU(name="r1"), MaxPool(2, name="p1"),
            Flatten(name="flat"), Dense(10, name="out"),
        ], (8, 8, 1), SOFTMAX)


    def not_a_network():
        return 42
''')


@pytest.fixture
def my_module(tmp_path, monkeypatch):
    (tmp_path / "my_models_for_test.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    yield "my_models_for_test"
    sys.modules.pop("my_models_for_test", None)


def test_a_custom_model_trains_from_the_cli(my_module, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--model", f"{my_module}:build", "--epochs", "2",
                     "--batch-size", "64", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"epoch"' in line and '"kind": "epoch"' in line]
    assert [e["epoch"] for e in epochs] == [1, 2]
    # it learns: the test loss falls and the accuracy is well above chance (0.1 for ten classes)
    assert epochs[1]["test_loss"] < epochs[0]["test_loss"] and epochs[-1]["test_accuracy"] > 0.2
    assert json.loads((out / "config.json").read_text())["model"] == f"{my_module}:build"
    assert cli.main(["gradcheck", "--model", f"{my_module}:build", "--batch", "2"]) == 0


def test_a_custom_model_with_impl(my_module):
    net = lookup.model(f"{my_module}:build", impl="gemm")
    assert net.name == "my_cnn" and net.layers[0].spec["impl"] == "gemm"


@pytest.mark.parametrize("spec, words", [
    ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
    ("{m}:missing", "has no function 'missing'"),
    ("{m}:not_a_network", "not_a_network() returned int, not a jaxcnn.nn.network.Network"),
    ("not a spec", "unknown model 'not a spec'"),
])
def test_bad_custom_model_specs_exit_2(my_module, capsys, spec, words):
    assert cli.main(["train", "--model", spec.format(m=my_module), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
