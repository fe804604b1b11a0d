"""`jaxcnn gradcheck` on the built-in models: with its defaults every model passes (in training
mode too where the model has BatchNorm or Dropout), and every rule of `jaxcnn.backward` that a
built-in model reaches, sabotaged, fails it; finite differences alone catch a sabotage too.

The models whose check at the defaults takes minutes under the suite's compile flags (resnet20,
resnet20-gn, unet, cnn3d: about 20 s to 10 minutes each) are the `slow` group, run apart with
`pytest -m slow`; their gradients are checked against autodiff and central differences in the
default suite by tests/test_resnet.py and tests/test_new_models.py at small batches.
"""

from __future__ import annotations

import pytest

from jaxcnn.nn import models
from jaxcnn.nn.combinators import kinds
from jaxcnn.tools import gradcheck

SLOW = ("resnet20", "resnet20-gn", "unet", "cnn3d")


def _modes(name: str) -> list[bool]:
    """[False], and True as well where training mode differs (BatchNorm, Dropout)."""
    m = models.get(name)
    trains = {"BatchNorm", "Dropout"} & {k for layer in m.layers for k in kinds(layer)}
    return [False, True] if trains else [False]


def _cases(names) -> list:
    return [pytest.param(n, t, id=f"{n}-{'train' if t else 'eval'}")
            for n in names for t in _modes(n)]


def _passes_with_defaults(name: str, train: bool) -> None:
    rows, header = gradcheck.gradcheck(name, train=train)
    table = gradcheck.format_table(rows, header, "float64", 8)
    assert table.splitlines()[-1].startswith("PASS"), table
    assert all(r.kinks is not None for r in rows[1:])
    assert "finite-difference coordinates drawn were not evaluated" in table


@pytest.mark.parametrize("name, train", _cases(n for n in models.MODELS if n not in SLOW))
def test_every_model_passes_gradcheck_with_its_defaults(name, train):
    _passes_with_defaults(name, train)


@pytest.mark.slow
@pytest.mark.parametrize("name, train", _cases(SLOW))
def test_the_big_models_pass_gradcheck_with_their_defaults(name, train):
    """resnet20 at the defaults: 4 of its 520 coordinates straddle a kink (measured); read
    anyway, they failed 4 leaves with relative errors 1.7e-6 to 1.9e-5."""
    _passes_with_defaults(name, train)


# the cheapest built-in model calling each rule that a built-in layer or head reaches (the norm
# layers call jaxcnn.backward.norm's helpers, the blocks add and split themselves: batch_norm,
# group_norm, add and concat are never called, and `--sabotage` says so)
REACHED = {"conv2d": "seed", "dense": "seed", "flatten": "seed", "max_pool": "seed",
           "relu": "seed", "sigmoid_binary_cross_entropy": "seed", "conv1d": "cnn1d",
           "global_avg_pool": "cnn1d", "softmax_cross_entropy": "cnn1d", "tanh": "tempered",
           "conv3d": "cnn3d", "conv_transpose2d": "unet", "pixel_softmax_cross_entropy": "unet"}


@pytest.mark.parametrize("rule", sorted(REACHED))
def test_every_reached_rule_sabotaged_fails(rule):
    """float32 (autodiff only: one compile each), batch 1. The layers without parameters take
    their rule when built: gradcheck builds the model for the manual pass inside the sabotage."""
    rows, header = gradcheck.gradcheck(REACHED[rule], dtype="float32", batch=1, sabotage=rule)
    assert f"jaxcnn.backward.{rule}" in header
    assert any(r.finite and not r.ok for r in rows[1:]), rows


@pytest.mark.parametrize("rule", ["relu", "max_pool"])
def test_finite_differences_alone_catch_a_sabotage(monkeypatch, rule):
    """Autodiff ignored: the seed net's rule off by 1e-4 (100 times the finite-difference
    tolerance) fails leaves against finite differences, kinks masked or not."""
    monkeypatch.setattr(gradcheck, "SABOTAGE_FACTOR", 1e5)  # 1 + 1e5 * 1e-9
    rows, _ = gradcheck.gradcheck("seed", sabotage=rule)
    _, tol_fd = gradcheck.TOLERANCES["float64"]
    assert {r.path for r in rows if r.rel_fd is not None and r.rel_fd > tol_fd} == \
        {"['conv']['b']", "['conv']['w']"}
