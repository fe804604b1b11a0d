"""`jaxcnn walkthrough --block residual`: one residual basic block, every backward tensor by its
rule beside jax.grad's, the shortcut's and the branch's input gradients and their sum.

The reference here is independent of jaxcnn's forward: the block written out in plain
`jax.numpy` / `lax.conv_general_dilated`, differentiated by `jax.grad` and checked by a central
difference. A sabotaged rule must turn the verdict to FAIL (exit 1), at the tensor it computes.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxcnn.backward
from jaxcnn.tools import cli, gradcheck, walkthrough, walkthrough_residual

TOL = walkthrough_residual.TOL


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def result():
    """`walkthrough_residual.run(seed=0)`, computed once for the module."""
    return walkthrough_residual.run(0)


def reference_loss(p, x):
    """L = 1/2 sum(Y^2) of y = relu(BN2(conv2(relu(BN1(conv1(x))))) + x), written out."""
    def conv(a, w):
        return lax.conv_general_dilated(a, w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=lax.Precision.HIGHEST)

    def bn(z, g, b):
        mean, var = z.mean((0, 1, 2)), z.var((0, 1, 2))
        return g * (z - mean) / jnp.sqrt(var + 1e-5) + b

    a1 = jax.nn.relu(bn(conv(x, p["W1"]), p["gamma1"], p["beta1"]))
    y = jax.nn.relu(bn(conv(a1, p["W2"]), p["gamma2"], p["beta2"]) + x)
    return 0.5 * jnp.sum(y * y)


def test_passes_and_matches_an_independent_jax_grad(result):
    assert result["ok"] and result["max_abs_diff"] <= TOL
    assert result["network_max_abs_diff"] <= TOL and result["forward_max_abs_diff"] <= TOL
    assert all(b["max_abs_diff"] <= TOL for b in result["backward"].values())
    x = np.asarray(result["forward"]["X"]["value"])
    np.testing.assert_array_equal(x, np.random.default_rng(0).standard_normal((2, 4, 4, 2)))
    p = {k: jnp.asarray(v) for k, v in result["params"].items()}
    loss, (gp, gx) = jax.value_and_grad(reference_loss, argnums=(0, 1))(p, jnp.asarray(x))
    assert abs(float(loss) - result["forward"]["L"]["value"]) <= 1e-12 * float(loss)
    b = result["backward"]
    np.testing.assert_allclose(b["dx"]["manual"], gx, rtol=1e-9, atol=1e-12)
    for name in walkthrough_residual.PARAMS:
        np.testing.assert_allclose(b["d" + name]["manual"], gp[name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    # and a central difference of the reference along a fixed direction of x
    v = np.random.default_rng(1).standard_normal(x.shape)
    h = 1e-6
    fd = (reference_loss(p, x + h * v) - reference_loss(p, x - h * v)) / (2 * h)
    assert float(fd) == pytest.approx(float(np.vdot(b["dx"]["manual"], v)), rel=1e-6)


def test_the_two_paths_and_their_sum(result):
    b = result["backward"]
    assert b["dx_shortcut"]["path"] == "shortcut" and b["dx_f"]["path"] == "branch"
    ds, shortcut = np.asarray(b["dS"]["manual"]), np.asarray(b["dx_shortcut"]["manual"])
    branch, dx = np.asarray(b["dx_f"]["manual"]), np.asarray(b["dx"]["manual"])
    np.testing.assert_array_equal(shortcut, ds)  # the identity passes dS through
    np.testing.assert_array_equal(dx, branch + shortcut)
    # jax.grad through each path alone (the other path's x held fixed) gives each term
    np.testing.assert_allclose(b["dx_f"]["autodiff"], branch, rtol=0, atol=TOL)
    np.testing.assert_allclose(b["dx_shortcut"]["autodiff"], shortcut, rtol=0, atol=TOL)
    assert result["paths"]["dx"] == pytest.approx(np.linalg.norm(dx))
    assert list(result["forward"]) == ["X", "Z1", "BN1", "A1", "Z2", "BN2", "S", "Y", "L"]
    json.dumps(result)  # plain data only


def test_cli_text_shows_each_rule_and_the_join(capsys, result):
    code, out, err = run_cli(capsys, "walkthrough", "--block", "residual")
    assert code == 0, err
    assert out == walkthrough_residual.format_text(result) + "\n"
    lines = out.splitlines()
    assert max(map(len, lines)) <= 100
    explicit = ["  S = BN2 + X  (the join: residual branch + identity shortcut)",
                "  [join] dS = dY * (S > 0)",
                "  [shortcut] dx_shortcut = dS",
                "  [branch] dBN2 = dS",
                "  [branch] dZ2 = gamma2 / (M sigma2)",
                "  [branch] dW2 = conv(A1, dZ2)",
                "  [branch] dBN1 = dA1 * (BN1 > 0)",
                "  [branch] dx_f = full conv(dZ1, rot180(W1)",
                "  [branch] dW1 = conv(X, dZ1)",
                "  [join] dx = dx_f + dx_shortcut"]
    positions = [out.index(s) for s in explicit]
    assert positions == sorted(positions)
    assert out.count("max |manual - autodiff| = ") == len(walkthrough_residual.BACKWARD)
    assert "manual: backward.batch_norm" in out and "manual: backward.add" in out
    assert "(shortcut)" in out and "(branch)" in out and "(sum)" in out
    assert lines[-1].startswith("PASS: ") and "tolerance 1e-12" in lines[-1]
    code, out, err = run_cli(capsys, "walkthrough", "--block", "residual", "--json")
    assert code == 0 and json.loads(out)["ok"]


@pytest.mark.parametrize("rule, right, wrong", [
    ("add", ["dY", "dS"], ["dBN2", "dx_shortcut", "dx"]),
    ("batch_norm", ["dS", "dBN2", "dx_shortcut"], ["dZ2", "dgamma2", "dbeta2", "dx_f", "dW1"]),
    ("conv2d", ["dBN2", "dZ2", "dgamma2"], ["dA1", "dW2", "dx_f"]),
    ("relu", ["dY"], ["dS", "dx_shortcut", "dBN1"]),
])
def test_a_sabotaged_rule_fails_where_it_acts(capsys, rule, right, wrong):
    with gradcheck.sabotaged(rule, 1 + 1e-6) as calls:
        code, out, err = run_cli(capsys, "walkthrough", "--block", "residual", "--json")
    assert calls[0] >= 1 and code == 1, err
    res = json.loads(out)
    assert not res["ok"]
    b = res["backward"]
    assert all(b[n]["max_abs_diff"] <= TOL for n in right), rule
    assert all(b[n]["max_abs_diff"] > TOL for n in wrong), rule


def test_a_wrong_batch_norm_rule_prints_fail(capsys, monkeypatch):
    real = jaxcnn.backward.batch_norm

    def wrong(*args, **kw):  # dgamma twice over, dx and dbeta right
        dx, dgamma, dbeta = real(*args, **kw)
        return dx, 2 * dgamma, dbeta

    monkeypatch.setattr(jaxcnn.backward, "batch_norm", wrong)
    code, out, err = run_cli(capsys, "walkthrough", "--block", "residual")
    assert code == 1, err
    assert out.rstrip().splitlines()[-1].startswith("FAIL: ")
    table = {line.split()[0]: line for line in out.splitlines() if line.startswith("  dgamma")}
    assert float(table["dgamma1"].split()[-1]) > TOL and float(table["dgamma2"].split()[-1]) > TOL


def test_default_block_is_the_seed_walkthrough(capsys):
    code, out, err = run_cli(capsys, "walkthrough")
    assert code == 0, err
    assert out == walkthrough.format_text(walkthrough.run()) + "\n"
    assert run_cli(capsys, "walkthrough", "--block", "seed") == (0, out, "")


@pytest.mark.parametrize("argv, flag", [
    (["--label", "0"], "--label"), (["--image", "x.npy"], "--image"),
    (["--plot", "x.png"], "--plot"), (["--block", "dense"], "--block"),
])
def test_seed_only_options_and_bad_blocks_exit_2(capsys, argv, flag):
    code, out, err = run_cli(capsys, "walkthrough", "--block", "residual", *argv)
    assert code == 2 and out == "" and flag in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
