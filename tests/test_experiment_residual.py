"""experiments/residual_vs_plain.py on a tiny configuration (1 block, 4 channels, 1 epoch,
float64) into tmp_path, as tests/test_experiments.py runs the other experiments: the exit
status, the PNG, the JSON's structure, and the gradient norms it records against `jax.grad` of
the same nets' loss, computed here."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from test_experiments import is_png, load, outputs

from jaxcnn.training import data

TINY = ["--blocks", "1", "--channels", "4", "--epochs", "1", "--grad-batch", "16",
        "--n-train", "64", "--batch-size", "32", "--dtype", "float64"]


def test_residual_vs_plain_tiny(tmp_path, capsys):
    fig, js, out = outputs(tmp_path, "residual_vs_plain")
    mod = load("residual_vs_plain")
    assert mod.main([*TINY, *out]) == 0
    assert is_png(fig)
    assert "| plain |" in capsys.readouterr().out
    result = json.loads(js.read_text())
    assert result["config"]["blocks"] == 1 and result["config"]["dtype"] == "float64"
    by_name = {r["name"]: r for r in result["results"]}
    assert set(by_name) == {"plain", "residual"}
    labels = ["conv", "block1.conv1", "block1.conv2", "dense"]
    ds = data.load_digits(seed=0, dtype=np.float64)
    x, y = jnp.asarray(ds.x_train[:16]), jnp.asarray(ds.y_train[:16])
    inits = []
    for name, r in by_name.items():
        assert r["layers"] == labels
        assert [s["epoch"] for s in r["snapshots"]] == [0, 1] and len(r["epochs"]) == 1
        assert all(math.isfinite(v) and v > 0 for s in r["snapshots"] for v in s["norms"])
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["manual_vs_autodiff_max_rel_diff"] <= 1e-9
        assert set(r["epochs"][0]["layer_grad_norms"]) >= {"conv", "block1", "dense"}
        # the recorded norms at init against jax.grad of the same net's loss, here
        model = mod.build(name == "residual", 1, 4, "batch")
        params = model.init(jax.random.key(0), jnp.float64)
        inits.append(params)
        g = jax.jit(jax.grad(lambda p, m=model: m.loss(p, x, y, state=m.init_state(jnp.float64),
                                                       train=True)))(params)
        ref = [g["conv"]["w"], g["block1"]["f"]["conv1"]["w"], g["block1"]["f"]["conv2"]["w"],
               g["dense"]["w"]]
        np.testing.assert_allclose(r["snapshots"][0]["norms"], [np.linalg.norm(v) for v in ref],
                                   rtol=1e-9, err_msg=name)
    # one key, one params tree: both nets start from the same weights
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), *inits))
    plain, res = (by_name[n]["snapshots"][0]["norms"] for n in ("plain", "residual"))
    assert plain != res  # the same weights, different gradients: the shortcut is the difference
