"""The proof tools cannot pass a wrong answer: `grads.compare`, `finite_difference_grad`,
`jaxcnn gradcheck` and `--check-grads` fail on non-finite values, on an empty comparison and on a
deliberately wrong backward rule, and pass on the real rules."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn.nn import grads, models
from jaxcnn.nn.network import Network
from jaxcnn.tools import cli, gradcheck

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def seed_problem():
    """The seed net off its ReLU kinks, a batch of 3, float64."""
    m = models.seed_cnn()
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape),
                          m.init(jax.random.key(0), jnp.float64))
    x = jnp.asarray(rng.standard_normal((3, 6, 6, 1)))
    y = jnp.asarray([0.0, 1.0, 1.0])
    return m, params, x, y


# ----------------------------------------------------------------------------- compare
def test_compare_fails_a_nan_reference():
    rows = grads.compare({"a": [1.0, 2.0]}, {"a": [NAN, NAN]})
    assert len(rows) == 2
    for r in rows:
        assert not r.finite and r.nonfinite == 1
        assert r.max_rel == INF and r.max_abs == INF and not r.within(1e-9)


@pytest.mark.parametrize("a, b", [
    ([1.0, NAN], [1.0, 2.0]),        # NaN in the checked side
    ([1.0, 2.0], [1.0, INF]),        # inf in the reference
    ([NAN, 2.0], [1.0, NAN]),        # non-finite on both sides, in different places
    ([NAN, 2.0], [NAN, 2.0]),        # the same NaN on both sides is no agreement either
    ([-INF, 2.0], [-INF, 2.0]),
], ids=["nan-a", "inf-b", "mismatched", "same-nan", "same-inf"])
def test_compare_fails_any_non_finite_entry(a, b):
    (row,) = grads.compare({"g": np.array(a)}, {"g": np.array(b)})
    assert not row.finite and row.nonfinite >= 1
    assert row.max_rel == INF and not row.within(1.0)


def test_compare_passes_equal_finite_trees_and_measures_differences():
    a = {"w": np.array([1.0, 2.0, -3.0]), "b": np.array([0.5])}
    exact = grads.compare(a, a)
    assert all(r.finite and r.within(0.0) and r.cosine == 1.0 for r in exact)
    b = {"w": np.array([1.0, 2.0, -3.0 * (1 + 1e-6)]), "b": np.array([0.5])}
    (rb, rw) = grads.compare(a, b)  # leaves in key order: b, w
    assert rb.max_rel == 0.0 and rw.compared == 3
    np.testing.assert_allclose(rw.max_rel, 1e-6, rtol=1e-5)
    assert rw.within(2e-6) and not rw.within(1e-7)


def test_compare_mask_separates_not_evaluated_from_a_nan_result():
    a = {"g": np.array([1.0, 2.0, 3.0])}
    evaluated = {"g": np.array([True, False, True])}
    skipped = {"g": np.array([1.0, NAN, 3.0])}    # the NaN is a coordinate never evaluated
    (row,) = grads.compare(a, skipped, mask=evaluated)
    assert row.finite and row.compared == 2 and row.max_rel == 0.0
    wrong = {"g": np.array([1.0, NAN, NAN])}      # an evaluated coordinate came out NaN
    (row,) = grads.compare(a, wrong, mask=evaluated)
    assert not row.finite and row.max_rel == INF
    # without the mask nothing is assumed skipped: the NaN fails
    (row,) = grads.compare(a, skipped)
    assert not row.finite


def test_compare_a_leaf_with_nothing_evaluated_fails():
    a = {"g": np.array([1.0, 2.0])}
    (row,) = grads.compare(a, {"g": np.array([NAN, NAN])}, mask={"g": np.array([False, False])})
    assert row.compared == 0 and not row.finite and row.max_rel == INF


def test_compare_checks_every_entry_of_a_even_where_b_was_not_evaluated():
    (row,) = grads.compare({"g": np.array([1.0, NAN])}, {"g": np.array([1.0, NAN])},
                           mask={"g": np.array([True, False])})
    assert not row.finite and row.max_rel == INF


def test_max_over_rows_picks_the_non_finite_leaf():
    """`check_gradients` in training/run.py takes `max(rows, key=max_rel)`: a NaN key there would
    be skipped when it is not first; a non-finite leaf reports inf."""
    rows = grads.compare({"a": np.array([1.0]), "b": np.array([NAN])},
                         {"a": np.array([1.1]), "b": np.array([1.0])})
    worst = max(rows, key=lambda r: r.max_rel)
    assert worst.path == "['b']" and not worst.max_rel <= 1e-9


def test_format_table_marks_non_finite_rows():
    rows = grads.compare({"a": np.array([1.0]), "b": np.array([NAN])},
                         {"a": np.array([1.0]), "b": np.array([1.0])})
    table = grads.format_table(rows).splitlines()
    assert "non-finite" not in table[1] and "non-finite" in table[2]


# ----------------------------------------------------------------------------- finite differences
def test_finite_differences_return_the_evaluated_mask(seed_problem):
    m, params, x, y = seed_problem
    fd, evaluated = grads.finite_difference_grad(m, params, x, y, max_per_leaf=2,
                                                 return_mask=True)
    assert jax.tree.structure(evaluated) == jax.tree.structure(params)
    for f, e, p in zip(jax.tree.leaves(fd), jax.tree.leaves(evaluated), jax.tree.leaves(params)):
        assert e.dtype == bool and e.shape == p.shape
        assert e.sum() == min(2, p.size)
        assert np.isfinite(f[e]).all() and np.isnan(f[~e]).all()
    _, manual = grads.manual_grad(m, params, x, y)
    rows = grads.compare(manual, fd, mask=evaluated)
    assert all(r.finite and r.within(1e-6) for r in rows), rows
    # the NaN placeholders fail a comparison that is not told which coordinates were evaluated
    assert not all(r.finite for r in grads.compare(manual, fd))


def test_finite_differences_keep_a_nan_loss_visible(seed_problem):
    m, params, x, y = seed_problem
    nan_params = jax.tree.map(lambda p: p * NAN, params)
    fd, evaluated = grads.finite_difference_grad(m, nan_params, x, y, max_per_leaf=1,
                                                 return_mask=True)
    assert all(e.sum() == 1 for e in jax.tree.leaves(evaluated))
    _, manual = grads.manual_grad(m, params, x, y)
    assert not any(r.finite for r in grads.compare(manual, fd, mask=evaluated))


# ----------------------------------------------------------------------------- gradcheck
def _scaled_dw(rule, scale):
    def wrong(dy, x, w, **opts):
        dx, dw, db = rule(dy, x, w, **opts)
        return dx, dw * scale, db
    return wrong


def test_gradcheck_passes_the_real_rules_and_names_the_model_once():
    rows, header = gradcheck.gradcheck("seed", fd_per_leaf=3)
    assert all(r.ok and r.finite for r in rows), rows
    assert [r.path for r in rows] == ["loss", "['conv']['b']", "['conv']['w']",
                                      "['dense']['b']", "['dense']['w']"]
    first = header.splitlines()[0]
    assert header.count("seed_cnn") == 1 and "seed_cnn" in first and "seed:" not in header
    table = gradcheck.format_table(rows, header, "float64", 3)
    assert table.rstrip().splitlines()[-1].startswith("PASS")


def _with_head(monkeypatch, **head_fields):
    """models.get builds every model with its head's fields replaced (functions of the real
    head, passed as `real`)."""
    real_get = models.get

    def get(name, *, impl="conv"):
        m = real_get(name, impl=impl)
        fields = {k: partial(f, m.head) for k, f in head_fields.items()}
        return Network(m.name, m.layers, m.input_shape, m.head._replace(**fields))

    monkeypatch.setattr(models, "get", get)


def test_gradcheck_all_nan_fails_and_the_cli_exits_1(monkeypatch, capsys):
    """The original report: NaN loss and NaN gradients on both sides printed PASS, exit 0."""
    _with_head(monkeypatch, loss=lambda h, z, y: h.loss(z, y) * NAN,
               delta=lambda h, z, y: h.delta(z, y) * NAN)
    rows, header = gradcheck.gradcheck("seed", fd_per_leaf=2)
    assert len(rows) == 5 and not any(r.ok or r.finite for r in rows)
    table = gradcheck.format_table(rows, header, "float64", 2)
    assert table.rstrip().splitlines()[-1].startswith("FAIL") and "non-finite" in table
    assert cli.main(["gradcheck", "--model", "seed", "--fd-per-leaf", "2"]) == 1
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].startswith("FAIL: 5 of 5") and "PASS" not in out
    # float32 has no finite differences: the non-finite values alone fail it
    rows, _ = gradcheck.gradcheck("seed", dtype="float32")
    assert not any(r.ok for r in rows)


def test_gradcheck_fails_nan_manual_gradients(monkeypatch, capsys):
    monkeypatch.setattr(jaxcnn.backward, "relu", lambda dy, y: dy * NAN)
    assert cli.main(["gradcheck", "--model", "seed", "--fd-per-leaf", "1"]) == 1
    verdict = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert verdict == "FAIL: 2 of 5 checks out of tolerance: ['conv']['b'], ['conv']['w']"


def test_gradcheck_fails_nan_autodiff_gradients_with_a_finite_loss(monkeypatch):
    """The manual side is finite; jax.grad of the loss is NaN (the where-trap: the branch not
    taken has a NaN derivative)."""
    _with_head(monkeypatch, loss=lambda h, z, y: jnp.where(
        True, h.loss(z, y), jnp.sqrt(-jnp.abs(z).sum() - 1.0)))
    rows, _ = gradcheck.gradcheck("seed", dtype="float32")
    assert rows[0].path == "loss" and rows[0].ok
    assert all(not r.ok and not r.finite for r in rows[1:]), rows


def test_gradcheck_fails_a_conv_rule_with_a_scaled_dw(monkeypatch):
    # Conv2D's backward looks the rule up on jaxcnn.backward at each call
    monkeypatch.setattr(jaxcnn.backward, "conv2d",
                        _scaled_dw(jaxcnn.backward.conv2d, 1 + 1e-6))
    rows, header = gradcheck.gradcheck("seed", fd_per_leaf=2)
    bad = {r.path for r in rows if not r.ok}
    assert bad == {"['conv']['w']"}, rows
    (w,) = [r for r in rows if r.path == "['conv']['w']"]
    assert w.finite and 1e-7 < w.rel_autodiff < 1e-5
    table = gradcheck.format_table(rows, header, "float64", 2)
    assert table.rstrip().splitlines()[-1] == \
        "FAIL: 1 of 5 checks out of tolerance: ['conv']['w']"


def test_gradcheck_fails_a_wrong_layer_rule_through_the_cli(monkeypatch, capsys):
    """The dense layer's own rule (not the jaxcnn.backward function) returns 2 dw."""
    real = models.get

    def get(name, *, impl="conv"):
        m = real(name, impl=impl)
        layers = list(m.layers)
        dense = layers[-1]

        def backward(dy, params, x, residual):
            dx, g = dense.backward(dy, params, x, residual)
            return dx, {**g, "w": 2 * g["w"]}

        layers[-1] = dense._replace(backward=backward)
        return Network(m.name, layers, m.input_shape, m.head)

    monkeypatch.setattr(models, "get", get)
    assert cli.main(["gradcheck", "--model", "seed", "--fd-per-leaf", "2"]) == 1
    verdict = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert verdict.startswith("FAIL") and "['dense']['w']" in verdict
    assert "['conv']" not in verdict  # the conv rule sees the right delta: dx is untouched


def test_gradcheck_fails_a_non_finite_loss_with_finite_equal_gradients(monkeypatch):
    """A loss head whose value overflows but whose gradients do not: the loss row fails."""
    _with_head(monkeypatch, loss=lambda h, z, y: h.loss(z, y) + jnp.inf)
    rows, _ = gradcheck.gradcheck("seed", fd_per_leaf=1, dtype="float32")
    assert [r.path for r in rows if not r.ok] == ["loss"]
    assert all(r.finite for r in rows[1:])


def test_gradcheck_fails_non_finite_finite_differences(monkeypatch):
    """NaN at a coordinate finite differences did evaluate fails the check."""
    real = grads.finite_difference_grad

    def nan_fd(*args, **kw):
        fd, evaluated = real(*args, **kw)
        return jax.tree.map(lambda f, e: np.where(e, NAN, f), fd, evaluated), evaluated

    monkeypatch.setattr(grads, "finite_difference_grad", nan_fd)
    rows, _ = gradcheck.gradcheck("seed", fd_per_leaf=1)
    assert rows[0].ok  # the loss itself is fine
    assert not any(r.ok for r in rows[1:]) and not any(r.finite for r in rows[1:])


def test_gradcheck_sabotage_fails_then_the_rule_is_restored():
    rows, header = gradcheck.gradcheck("seed", fd_per_leaf=1, sabotage="dense")
    assert {r.path for r in rows if not r.ok} >= {"['dense']['w']", "['dense']['b']"}
    assert "sabotage" in header and "jaxcnn.backward.dense" in header
    assert jaxcnn.backward.dense is jaxcnn.backward.linear.dense
    rows, _ = gradcheck.gradcheck("seed", dtype="float32", sabotage="conv2d")
    assert {r.path for r in rows if not r.ok} == {"['conv']['w']", "['conv']['b']"}


def test_gradcheck_of_a_new_model_through_the_cli(capsys):
    """cnn1d (Conv1D, GroupNorm, GlobalAvgPool on (N, 128, 1) signals) passes at batch 2: its
    header names the 1-D layout, every leaf has a row and the verdict is PASS (exit 0)."""
    assert cli.main(["gradcheck", "--model", "cnn1d", "--batch", "2", "--fd-per-leaf", "2"]) == 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[1] == ("input x (N, 128, 1), layout (N, W, C); labels y (N,) holding int class "
                        "ids in [0, 4)")
    rows = [line for line in lines if line.startswith(("loss ", "['"))]
    assert len(rows) == 11 and all(line.endswith(" ok") for line in rows), rows
    assert lines[-1] == "PASS: the loss and all 10 parameter leaves within tolerance"


@pytest.mark.parametrize("name, line", [
    ("unet", "input x (N, 32, 32, 1), layout (N, H, W, C); labels y (N, 32, 32) holding int "
             "class ids in [0, 3)"),
    ("cnn3d", "input x (N, 16, 16, 16, 1), layout (N, D, H, W, C); labels y (N,) holding int "
              "class ids in [0, 3)"),
], ids=["unet", "cnn3d"])
def test_gradcheck_header_names_any_input_rank_and_the_labels(name, line):
    """The header of the U-Net (per-pixel labels) and the 3-D CNN, built, not run (their
    gradient checks are in tests/test_new_models.py), and the shapes of the batch gradcheck
    draws: x (N, *input_shape), y from model.head.random_labels."""
    m = models.get(name)
    params = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.float64))
    header = gradcheck._header(m, params, "float64", 2, 0, False, 0.05, 1.0, 1.0, None, 1.0)
    assert header.splitlines()[1] == line
    _, _, x, y, _ = gradcheck._check_point(m, jnp.float32, 2, 0, 0.0)
    assert x.shape == (2, *m.input_shape) and y.shape == m.head.label_shape(2, m.output_shape)


# ----------------------------------------------------------------------------- --check-grads
def test_check_gradients_stops_on_a_non_finite_leaf(monkeypatch, seed_problem):
    from jaxcnn.training import run

    m, params, x, y = seed_problem
    real = grads.manual_grad

    def nan_in_dense_w(*args, **kw):  # the last leaf: not the first row max() looks at
        loss, g = real(*args, **kw)
        return loss, {**g, "dense": {**g["dense"], "w": g["dense"]["w"] * NAN}}

    assert run.check_gradients(m, params, {}, x, y, None, "float64") <= 1e-9
    monkeypatch.setattr(grads, "manual_grad", nan_in_dense_w)
    with pytest.raises(run.TrainingStoppedError, match=r"\['dense'\]\['w'\]"):
        run.check_gradients(m, params, {}, x, y, None, "float64")
