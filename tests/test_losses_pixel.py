"""The per-position losses and the heads built on them, against jax.grad and central differences
(float64), and the softplus form of the binary cross-entropy at an exact 0 logit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import backward, forward
from jaxcnn.nn.heads import BINARY, PIXEL_BINARY, PIXEL_SOFTMAX, REGRESSION, SOFTMAX

RNG = np.random.default_rng(7)


def _fd(f, z, h=1e-6):
    """Central differences of the scalar f at z, every element."""
    flat = np.asarray(z, np.float64).ravel()
    out = np.empty_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = h
        out[i] = (f(jnp.asarray((flat + e).reshape(z.shape)))
                  - f(jnp.asarray((flat - e).reshape(z.shape)))) / (2 * h)
    return out.reshape(z.shape)


CASES = [  # (name, z shape, y maker)
    ("pixel_softmax_cross_entropy", (2, 3, 4, 5), lambda: RNG.integers(0, 5, (2, 3, 4))),
    ("pixel_softmax_cross_entropy", (3, 7, 2), lambda: RNG.integers(0, 2, (3, 7))),
    ("pixel_sigmoid_binary_cross_entropy", (2, 3, 4, 1),
     lambda: RNG.integers(0, 2, (2, 3, 4)).astype(np.float64)),
    ("pixel_sigmoid_binary_cross_entropy", (2, 2, 3, 2),
     lambda: RNG.uniform(0, 1, (2, 2, 3, 2))),  # z (N, *S) with soft labels
]


@pytest.mark.parametrize("name,z_shape,make_y", CASES)
def test_pixel_loss_rule_equals_autodiff_and_finite_differences(name, z_shape, make_y):
    z = jnp.asarray(RNG.standard_normal(z_shape))
    y = jnp.asarray(make_y())
    f = getattr(forward, name)
    manual = getattr(backward, name)(1.0, z, y)
    np.testing.assert_allclose(manual, jax.grad(f)(z, y), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(manual, _fd(lambda zz: float(f(zz, y)), z), rtol=1e-6, atol=1e-9)
    # under jit and vmap (a batch of batches) the rule is the same function
    np.testing.assert_allclose(jax.jit(getattr(backward, name))(1.0, z, y), manual, rtol=1e-12)


def test_pixel_softmax_is_the_mean_of_each_examples_mean_over_pixels():
    z = jnp.asarray(RNG.standard_normal((3, 4, 4, 3)))
    y = jnp.asarray(RNG.integers(0, 3, (3, 4, 4)))
    per_example = [forward.softmax_cross_entropy(z[i].reshape(-1, 3), y[i].reshape(-1))
                   for i in range(3)]
    np.testing.assert_allclose(forward.pixel_softmax_cross_entropy(z, y), np.mean(per_example),
                               rtol=1e-12)


@pytest.mark.parametrize("f", ["sigmoid_binary_cross_entropy",
                               "pixel_sigmoid_binary_cross_entropy"])
def test_autodiff_of_the_binary_loss_is_right_at_an_exact_zero_logit(f):
    """jax.grad of max(z, 0) - z y + log1p(exp(-|z|)) at z = 0 gives -y, not 1/2 - y (jax
    0.10.2: abs' (0) taken as 1, maximum's tie split in half); the loss is written with
    logaddexp so that autodiff agrees with the rule and with finite differences there."""
    shape = (4, 1) if f == "sigmoid_binary_cross_entropy" else (2, 2, 2, 1)
    z = jnp.zeros(shape)
    y = jnp.asarray(RNG.integers(0, 2, shape[:-1] if len(shape) > 2 else (4,)), jnp.float64)
    fn = getattr(forward, f)
    auto = jax.grad(fn)(z, y)
    np.testing.assert_allclose(auto, getattr(backward, f)(1.0, z, y), rtol=1e-12)
    np.testing.assert_allclose(auto, _fd(lambda zz: float(fn(zz, y)), z), rtol=1e-6)
    # the old form's autodiff is what this guards against: a test that tells when it changes
    old = lambda zz: jnp.mean(jnp.maximum(zz, 0) - zz * y.reshape(zz.shape)
                              + jnp.log1p(jnp.exp(-jnp.abs(zz))))
    assert not np.allclose(jax.grad(old)(z), auto), "the max/abs form is right at 0 again"


@pytest.mark.parametrize("head,out_shape", [(BINARY, (1,)), (SOFTMAX, (4,)),
                                            (PIXEL_BINARY, (3, 3, 1)),
                                            (PIXEL_SOFTMAX, (3, 5, 4)), (REGRESSION, (6, 2))])
def test_head_delta_is_the_gradient_of_its_loss(head, out_shape):
    z = jnp.asarray(RNG.standard_normal((3, *out_shape)))
    y = jnp.asarray(head.random_labels(RNG, 3, out_shape, np.float64))
    assert y.shape == head.label_shape(3, out_shape)
    np.testing.assert_allclose(head.delta(z, y), jax.grad(head.loss)(z, y), rtol=1e-9,
                               atol=1e-15)
    assert head.predict(z).shape == (y.shape if head.kind != "regression" else z.shape)


def test_regression_head_is_seed_002s_half_squared_error_per_example():
    z = jnp.asarray(RNG.standard_normal((4, 5)))
    t = jnp.asarray(RNG.standard_normal((4, 5)))
    per_example = 0.5 * np.sum((np.asarray(t) - np.asarray(z)) ** 2, axis=1)
    np.testing.assert_allclose(REGRESSION.loss(z, t), per_example.mean(), rtol=1e-12)
    np.testing.assert_allclose(REGRESSION.delta(z, t), (z - t) / 4, rtol=1e-12)


BAD = [
    (lambda: forward.pixel_softmax_cross_entropy(jnp.zeros((2, 5)), jnp.zeros(2, jnp.int32)),
     ValueError, ["pixel_softmax_cross_entropy", "(N, *S, K)", "(2, 5)"]),
    (lambda: forward.pixel_softmax_cross_entropy(jnp.zeros((2, 3, 3, 4)),
                                                 jnp.zeros((2, 3, 4), jnp.int32)),
     ValueError, ["y", "(2, 3, 4)", "(2, 3, 3, 4)"]),
    (lambda: forward.pixel_softmax_cross_entropy(jnp.zeros((2, 3, 3, 4)), jnp.zeros((2, 3, 3))),
     TypeError, ["y", "int class ids", "float"]),
    (lambda: forward.pixel_softmax_cross_entropy(jnp.zeros((1, 2, 2, 3)),
                                                 jnp.full((1, 2, 2), 3, jnp.int32)),
     ValueError, ["class ids in [0, 3)", "[3, 3]"]),
    (lambda: forward.pixel_sigmoid_binary_cross_entropy(jnp.zeros((1, 2, 2, 2)),
                                                        jnp.zeros((1, 2, 2))),
     ValueError, ["one logit per position", "(1, 2, 2, 2)"]),
    (lambda: backward.pixel_sigmoid_binary_cross_entropy(1.0, jnp.zeros((1, 2, 2, 1)),
                                                         jnp.full((1, 2, 2), 2.0)),
     ValueError, ["backward.pixel_sigmoid_binary_cross_entropy", "[0, 1]", "2.0"]),
]


@pytest.mark.parametrize("call,err,words", BAD)
def test_pixel_losses_refuse_bad_input_naming_it(call, err, words):
    with pytest.raises(err) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))
