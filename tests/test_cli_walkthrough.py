"""The `jaxcnn` command line: the seed walkthrough and the gradient check.

Most cases call `cli.main` in-process; one runs the installed console script in a subprocess.
"""

import json
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn.backward
from jaxcnn import models
from jaxcnn.tools import cli, walkthrough

from helpers import run_child


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def walk_result():
    """`walkthrough.run(seed=3, label=0)`, computed once for the module."""
    return walkthrough.run(seed=3, label=0.0)


def test_json_matches_an_independent_jax_grad(capsys):
    code, out, err = run_cli(capsys, "walkthrough", "--json", "--seed", "3", "--label", "0")
    assert code == 0, err
    res = json.loads(out)  # JSON only: nothing else on stdout
    assert res["ok"] and res["max_abs_diff"] <= 1e-12 and res["network_max_abs_diff"] <= 1e-12
    # rebuild the same network, params and image from the public pieces, then ask jax.grad
    model = models.seed_cnn()
    params = model.init(jax.random.key(3), jnp.float64)
    np.testing.assert_array_equal(res["params"]["W1"], np.asarray(params["conv"]["w"])[:, :, 0, 0])
    X = jnp.asarray(res["forward"]["X"]["value"], jnp.float64).reshape(1, 6, 6, 1)
    np.testing.assert_array_equal(X[0, :, :, 0], walkthrough.default_image(3))
    Y = jnp.array([0.0])
    g = jax.grad(model.loss)(params, X, Y)
    for name, ref in [("dW1", g["conv"]["w"]), ("dB1", g["conv"]["b"]),
                      ("dW2", g["dense"]["w"]), ("dB2", g["dense"]["b"])]:
        manual = np.reshape(res["backward"][name]["manual"], ref.shape)
        np.testing.assert_allclose(manual, ref, rtol=0, atol=1e-12, err_msg=name)
    assert abs(res["forward"]["L"]["value"] - float(model.loss(params, X, Y))) <= 1e-12
    table = {row["name"]: row for row in res["parameters"]}
    assert len(table) == 15
    assert table["W1[1,2]"]["manual"] == pytest.approx(float(g["conv"]["w"][1, 2, 0, 0]), abs=1e-12)
    assert table["W2[3]"]["autodiff"] == pytest.approx(float(g["dense"]["w"][3, 0]), abs=1e-12)


def test_result_holds_every_tensor_in_order(walk_result):
    assert list(walk_result["forward"]) == ["X", "Z1", "A1", "P1", "F", "Z2", "A2", "L"]
    assert list(walk_result["backward"]) == ["dL/dA2", "dA2/dZ2", "dZ2", "dW2", "dB2", "dF", "dP1",
                                           "dA1", "dZ1", "dB1", "dW1"]
    assert walk_result["backward"]["dW1"]["formula"] == "dW1 = conv(X, dZ1)"
    assert walk_result["backward"]["dZ1"]["formula"] == "dZ1 = dA1 * (Z1 > 0)"
    assert np.shape(walk_result["forward"]["Z1"]["value"]) == (4, 4)
    assert np.shape(walk_result["backward"]["dA1"]["manual"]) == (4, 4)
    json.dumps(walk_result)  # plain data only


def test_text_lists_every_tensor_and_a_verdict(capsys):
    code, out, err = run_cli(capsys, "walkthrough")
    assert code == 0, err
    lines = out.splitlines()
    assert max(map(len, lines)) <= 100
    assert "Z1 = conv(X, W1) + B1  (4x4)" in out
    positions = [out.index(f"  {formula}") for formula in walkthrough.BACKWARD.values()]
    assert positions == sorted(positions)  # in the seeds' order
    assert out.count("max |manual - autodiff| = ") == 11
    assert sum(line.lstrip().startswith(("W1[", "B1 ", "W2[", "B2 ")) for line in lines) == 15
    assert lines[-1].startswith("PASS: ")


def test_plot_writes_a_png(capsys, tmp_path):
    path = tmp_path / "walk.png"
    code, out, err = run_cli(capsys, "walkthrough", "--plot", str(path), "--json")
    assert code == 0, err
    json.loads(out)  # --plot does not spoil --json
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_image_file(capsys, tmp_path):
    image = np.zeros((6, 6, 1))
    image[:, 3] = 1.0
    np.save(tmp_path / "bar.npy", image)
    code, out, err = run_cli(capsys, "walkthrough", "--image", str(tmp_path / "bar.npy"), "--json")
    assert code == 0, err
    assert json.loads(out)["forward"]["X"]["value"] == image[:, :, 0].tolist()


@pytest.mark.parametrize("argv, words", [
    (["--image", "{tmp}/small.npy"], "(6, 6)"),
    (["--image", "{tmp}/missing.npy"], "missing.npy"),
    (["--image", "{tmp}/text.npy"], "text.npy"),
    (["--label", "0.5"], "0 or 1"),
])
def test_bad_walkthrough_input_exits_2(capsys, tmp_path, argv, words):
    np.save(tmp_path / "small.npy", np.zeros((5, 5)))
    (tmp_path / "text.npy").write_text("not an array")
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, out, err = run_cli(capsys, "walkthrough", *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err


def test_console_script_in_a_subprocess(tmp_path):
    exe = shutil.which("jaxcnn")
    cmd = [exe, "walkthrough"] if exe else [sys.executable, "-m", "jaxcnn.tools.cli", "walkthrough"]
    proc = run_child(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().splitlines()[-1].startswith("PASS")


def test_gradcheck_seed_float64_passes(capsys):
    code, out, err = run_cli(capsys, "gradcheck", "--model", "seed", "--dtype", "float64")
    assert code == 0, out + err
    assert "['conv']['w']" in out and "['dense']['b']" in out
    assert out.rstrip().splitlines()[-1].startswith("PASS")


def test_gradcheck_float32_has_no_finite_differences(capsys):
    code, out, err = run_cli(capsys, "gradcheck", "--model", "seed", "--dtype", "float32",
                             "--train", "--batch", "3")
    assert code == 0, out + err
    assert "no finite differences in float32" in out


def test_gradcheck_catches_a_wrong_backward_rule(capsys, monkeypatch):
    # layers capture backward.relu when a model is built; gradcheck builds it inside main
    monkeypatch.setattr(jaxcnn.backward, "relu", lambda dy, x: 2 * dy * (x > 0))
    code, out, err = run_cli(capsys, "gradcheck", "--model", "seed")
    assert code == 1, out + err
    verdict = out.rstrip().splitlines()[-1]
    assert verdict.startswith("FAIL") and "['conv']['w']" in verdict and "['conv']['b']" in verdict
    assert "['dense']" not in verdict  # the dense layer sits after the ReLU: still right
    # the walkthrough's cross-check against the generic network backprop catches it too
    code, out, err = run_cli(capsys, "walkthrough")
    assert code == 1 and out.rstrip().splitlines()[-1].startswith("FAIL")


def test_gradcheck_unknown_model_exits_2(capsys):
    code, out, err = run_cli(capsys, "gradcheck", "--model", "nosuch")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "nosuch" in err and "seed" in err


def test_argparse_errors_exit_2(capsys):
    assert run_cli(capsys, "nosuch")[0] == 2
    assert run_cli(capsys, "gradcheck")[0] == 2  # --model is required
    assert run_cli(capsys, "gradcheck", "--model", "seed", "--dtype", "float16")[0] == 2
