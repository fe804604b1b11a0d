"""Numerics that must not blame the rule (issue 23, item 18).

- An image that overflows float64 (1e308) made walkthrough report "FAIL: max |manual - jax.grad|
  = nan", as if the rule were wrong; one that saturates the sigmoid (1e30: A2 rounds to 1, so
  dL/dA2 = (A2 - Y) / (A2 (1 - A2)) is 0/0 on both sides) likewise. Now the verdict says that
  float64 failed, not the rule, and the exit status stays 1.
- A complex image was cast to float (its imaginary part dropped) and PASSed; complex arrays are
  refused with a TypeError naming the argument (the image; x of a network and of the ops).
- `manual_grad` on an empty batch returned a NaN loss; every network path refuses N = 0 with a
  ValueError naming x (manual, autodiff, per-example, clipped/DP sums).
- A NaN inside a max-pool window routes nothing (tests/test_maxpool_ties.py; docs/design.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn
from jaxcnn import backward, forward
from jaxcnn.nn import grads, models
from jaxcnn.tools import cli, walkthrough
from jaxcnn.training import dp

SEED = models.seed_cnn()
PARAMS = SEED.init(jax.random.key(0))


# ----------------------------------------------------------------------------- the walkthrough
def test_an_image_that_overflows_float64_is_said_to_overflow(capsys, tmp_path):
    result = walkthrough.run(image=np.full((6, 6), 1e308))
    assert not result["ok"]
    assert result["numerics"].startswith("the input overflows float64: Z1 = conv(X, W1) + B1")
    np.save(tmp_path / "big.npy", np.full((6, 6), 1e308))
    assert cli.main(["walkthrough", "--image", str(tmp_path / "big.npy")]) == 1  # still a FAIL
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("FAIL: the input overflows float64"), last
    assert "says nothing about the rule" in last, last


def test_a_saturated_sigmoid_is_not_blamed_on_the_rule():
    result = walkthrough.run(image=np.full((6, 6), 1e30))  # A2 rounds to exactly 1.0
    assert not result["ok"] and result["forward"]["A2"]["value"] == 1.0
    line = walkthrough.verdict(result)
    assert line.startswith("FAIL: float64 cannot hold every gradient of this input"), line
    assert "says nothing about the rule" in line


def test_a_real_disagreement_is_still_blamed(monkeypatch):
    """Non-finite on one side only is the rule's fault: no numerics excuse."""
    real = walkthrough.seed_backward

    def broken(params, fwd, y):
        g = real(params, fwd, y)
        return {**g, "dW1": g["dW1"] * jnp.nan}

    monkeypatch.setattr(walkthrough, "seed_backward", broken)
    result = walkthrough.run()
    assert not result["ok"] and result["numerics"] is None
    assert walkthrough.verdict(result).startswith("FAIL: max |manual - jax.grad| = nan")


def test_an_ordinary_image_passes_with_no_numerics_note():
    result = walkthrough.run()
    assert result["ok"] and result["numerics"] is None
    assert walkthrough.verdict(result).startswith("PASS: max |manual - jax.grad|")


def test_a_complex_image_is_refused_not_cast(capsys, tmp_path):
    with pytest.raises(TypeError, match=r"the image must hold real numbers; got a complex "
                                        r"array \(complex128\)"):
        walkthrough.run(image=np.full((6, 6), 1 + 1j))
    path = tmp_path / "complex.npy"
    np.save(path, np.full((6, 6), 1 + 0j))  # even with no imaginary part: never cast
    assert cli.main(["walkthrough", "--image", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "complex" in err, err


# ----------------------------------------------------------------------------- complex inputs
@pytest.mark.parametrize("call", [
    lambda z: SEED.check_input(z),
    lambda z: forward.conv2d(z, jnp.ones((3, 3, 1, 1), z.dtype)),
    lambda z: forward.max_pool(z),
    lambda z: forward.relu(z),
    lambda z: backward.max_pool(jnp.ones((1, 3, 3, 1), z.dtype), z),
    lambda z: backward.conv2d(jnp.ones((1, 4, 4, 1), z.dtype), z,
                              jnp.ones((3, 3, 1, 1), z.dtype)),
], ids=["network", "conv2d", "max_pool", "relu", "backward.max_pool", "backward.conv2d"])
def test_complex_x_is_a_type_error_naming_x(call):
    z = jnp.ones((1, 6, 6, 1), jnp.complex64)
    with pytest.raises(TypeError, match=r"x must have a floating-point dtype; got complex64"):
        call(z)


# ----------------------------------------------------------------------------- empty batches
EMPTY_X, EMPTY_Y = jnp.zeros((0, 6, 6, 1), jnp.float32), jnp.zeros((0,), jnp.float32)
EMPTY = "seed_cnn: x holds no examples (shape (0, 6, 6, 1)); N must be >= 1"


@pytest.mark.parametrize("call", [
    lambda: jaxcnn.manual_grad(SEED, PARAMS, EMPTY_X, EMPTY_Y),
    lambda: jaxcnn.autodiff_grad(SEED, PARAMS, EMPTY_X, EMPTY_Y),
    lambda: SEED.loss(PARAMS, EMPTY_X, EMPTY_Y),
    lambda: SEED.apply(PARAMS, EMPTY_X),
    lambda: jaxcnn.per_example_grads(SEED, PARAMS, EMPTY_X, EMPTY_Y),
    lambda: jaxcnn.per_example_grad_norms(SEED, PARAMS, EMPTY_X, EMPTY_Y),
    lambda: jaxcnn.clipped_grad(SEED, PARAMS, EMPTY_X, EMPTY_Y, clip_norm=1.0),
    lambda: dp.dp_step_fn(SEED, optax.sgd(0.1), clip_norm=1.0, noise_multiplier=1.0,
                          expected_batch_size=4.0)(
        PARAMS, {}, optax.sgd(0.1).init(PARAMS), (EMPTY_X, EMPTY_Y, jnp.zeros((0,))),
        jax.random.key(0)),
    lambda: grads.finite_difference_grad(SEED, PARAMS, EMPTY_X, EMPTY_Y),
], ids=["manual_grad", "autodiff_grad", "loss", "apply", "per_example_grads",
        "per_example_grad_norms", "clipped_grad", "dp_step", "finite_differences"])
def test_an_empty_batch_is_refused_naming_x(call):
    with pytest.raises(ValueError, match=r"seed_cnn: x holds no examples \(shape \(0, 6, 6, "
                                         r"1\)\); N must be >= 1"):
        call()


def test_a_batch_of_one_is_fine():
    loss, _ = jaxcnn.manual_grad(SEED, PARAMS, jnp.ones((1, 6, 6, 1), jnp.float32),
                                 jnp.ones((1,), jnp.float32))
    assert np.isfinite(float(loss))
