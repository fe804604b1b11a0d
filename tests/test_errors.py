"""Bad input fails in Python, before tracing, with a message that names the argument and what it
needs; never with an XLA error."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import backward as B  # noqa: N812
from jaxcnn import forward as F  # noqa: N812

x = np.zeros((2, 6, 6, 3))
w = np.zeros((3, 3, 3, 4))
f32 = np.zeros((2, 6, 6, 3), np.float32)
z = np.zeros((4, 3))

CASES = [
    # conv2d: ranks, channels, groups
    ("conv-x-rank", lambda: F.conv2d(x[0], w), ValueError, "conv2d: x must be a 4-D array (N, H, W, C); got shape (6, 6, 3)"),
    ("conv-w-rank", lambda: F.conv2d(x, w[0]), ValueError, "conv2d: w must be a 4-D array (kh, kw"),
    ("conv-channels", lambda: F.conv2d(x, np.zeros((3, 3, 4, 2))), ValueError, "x has 3 channels but w expects 4 (w.shape[2] * groups"),
    ("conv-groups-cin", lambda: F.conv2d(x, np.zeros((3, 3, 1, 4)), groups=2), ValueError, "groups=2 must divide the 3 input channels of x"),
    ("conv-groups-cout", lambda: F.conv2d(np.zeros((1, 6, 6, 4)), np.zeros((3, 3, 2, 3)), groups=2), ValueError, "groups=2 must divide the 3 output channels of w"),
    ("conv-groups-zero", lambda: F.conv2d(x, w, groups=0), ValueError, "groups must be >= 1"),
    ("conv-groups-type", lambda: F.conv2d(x, w, groups=1.0), TypeError, "groups must be an int"),
    ("conv-kernel-too-big", lambda: F.conv2d(x, np.zeros((7, 3, 3, 4))), ValueError, "kernel spans (7, 3) but the padded input is only (6, 6)"),
    ("conv-dilated-too-big", lambda: F.conv2d(x, w, dilation=3), ValueError, "kernel spans (7, 7) (dilated by (3, 3))"),
    ("conv-stride-zero", lambda: F.conv2d(x, w, stride=0), ValueError, "stride must be >= 1 on both axes; got (0, 0)"),
    ("conv-stride-negative", lambda: F.conv2d(x, w, stride=(1, -2)), ValueError, "stride must be >= 1"),
    ("conv-stride-type", lambda: F.conv2d(x, w, stride="2"), TypeError, "stride must be an int or a pair of ints"),
    ("conv-dilation-zero", lambda: F.conv2d(x, w, dilation=(0, 1)), ValueError, "dilation must be >= 1"),
    ("conv-padding-string", lambda: F.conv2d(x, w, padding="FULL"), ValueError, "padding must be \"VALID\", \"SAME\""),
    ("conv-padding-negative", lambda: F.conv2d(x, w, padding=-1), ValueError, "padding must be >= 0"),
    ("conv-padding-shape", lambda: F.conv2d(x, w, padding=(1, 2, 3)), TypeError, "padding must be"),
    ("conv-int-dtype", lambda: F.conv2d(x.astype(np.int32), w), TypeError, "x must have a floating-point dtype; got int32"),
    ("conv-not-array", lambda: F.conv2d(x.tolist(), w), TypeError, "x must be a JAX or NumPy array; got list"),
    ("conv-dtype-mix", lambda: F.conv2d(f32, w), TypeError, "x is float32, w is float64"),
    ("conv-bias-shape", lambda: F.conv2d(x, w, np.zeros(3)), ValueError, "b has shape (3,) but one bias per output channel of w has shape (4,)"),
    ("conv-dy-shape", lambda: B.conv2d(np.zeros((2, 5, 5, 4)), x, w), ValueError, "backward.conv2d: dy has shape (2, 5, 5, 4) but the forward output has shape (2, 4, 4, 4)"),
    ("conv-dy-rank", lambda: B.conv2d(np.zeros((2, 4, 4)), x, w), ValueError, "backward.conv2d: dy must be a 4-D array"),
    ("convolve-channels", lambda: F.convolve2d(x, np.zeros((3, 3, 2, 2))), ValueError, "convolve2d: x has 3 channels but w expects 2"),
    # dense, flatten
    ("dense-features", lambda: F.dense(z, np.zeros((4, 2))), ValueError, "dense: x has 3 features but w expects 4 (w.shape[0])"),
    ("dense-x-rank", lambda: F.dense(x, np.zeros((4, 2))), ValueError, "dense: x must be a 2-D array (N, D_in)"),
    ("dense-bias", lambda: F.dense(z, np.zeros((3, 2)), np.zeros(3)), ValueError, "b has shape (3,) but one bias per output of w has shape (2,)"),
    ("dense-dy", lambda: B.dense(np.zeros((4, 3)), z, np.zeros((3, 2))), ValueError, "backward.dense: dy has shape (4, 3) but the forward output has shape (4, 2)"),
    ("flatten-rank", lambda: F.flatten(np.zeros(5)), ValueError, "flatten: x must have a batch axis"),
    ("flatten-dy", lambda: B.flatten(np.zeros((2, 10)), x), ValueError, "backward.flatten: dy has shape (2, 10) but the forward output has shape (2, 108)"),
    # pooling
    ("pool-window-zero", lambda: F.max_pool(x, window=0), ValueError, "max_pool: window must be >= 1"),
    ("pool-stride-zero", lambda: F.avg_pool(x, window=2, stride=(0, 1)), ValueError, "avg_pool: stride must be >= 1"),
    ("pool-window-too-big", lambda: F.max_pool(x, window=7), ValueError, "max_pool: the window spans (7, 7) but the padded input is only (6, 6)"),
    ("pool-pad-too-big", lambda: F.l2_pool(x, window=2, padding=2), ValueError, "l2_pool: padding ((2, 2), (2, 2)) must be smaller than the window (2, 2)"),
    ("pool-x-rank", lambda: F.avg_pool(x[0, ..., 0]), ValueError, "avg_pool: x must be (N, *spatial, C) with 1, 2 or 3 spatial axes (rank 3 to 5); got shape (6, 6)"),
    ("pool-dy", lambda: B.max_pool(np.zeros((2, 2, 2, 3)), x), ValueError, "backward.max_pool: dy has shape (2, 2, 2, 3) but the forward output has shape (2, 3, 3, 3)"),
    ("pool-padding-string", lambda: F.max_pool(x, padding="same-ish"), ValueError, "max_pool: padding must be"),
    # activations
    ("relu-int", lambda: F.relu(np.arange(3)), TypeError, "relu: x must have a floating-point dtype"),
    ("sigmoid-dy", lambda: B.sigmoid(np.zeros((2, 3)), np.zeros((3, 2))), ValueError, "backward.sigmoid: dy has shape (2, 3) but x has shape (3, 2)"),
    ("tanh-dtype-mix", lambda: B.tanh(np.zeros(3, np.float32), np.zeros(3)), TypeError, "dy is float32, x is float64"),
    # losses and labels
    ("ce-label-range", lambda: F.softmax_cross_entropy(z, np.array([0, 1, 3, 2])), ValueError, "softmax_cross_entropy: y must hold class ids in [0, 3); got values in [0, 3]"),
    ("ce-label-negative", lambda: B.softmax_cross_entropy(1.0, z, np.array([0, -1, 1, 2])), ValueError, "class ids in [0, 3)"),
    ("ce-label-shape", lambda: F.softmax_cross_entropy(z, np.array([0, 1])), ValueError, "y has shape (2,) but z has 4 rows; it needs one class id per example, shape (4,)"),
    ("ce-onehot-shape", lambda: F.softmax_cross_entropy(z, np.zeros((4, 2))), ValueError, "y has shape (4, 2) but z has shape (4, 3)"),
    ("ce-logits-rank", lambda: F.softmax_cross_entropy(z[:, 0], np.array([0, 1, 1, 0])), ValueError, "z must be a 2-D array (N, K) logits"),
    ("bce-label-range", lambda: F.sigmoid_binary_cross_entropy(z[:, :1], np.array([0, 1, 2.0, 0])), ValueError, "y must hold labels in [0, 1]; got values in [0.0, 2.0]"),
    ("bce-pred-shape", lambda: F.binary_cross_entropy(z, np.zeros(4)), ValueError, "p must have shape (N,) or (N, 1); got (4, 3)"),
    ("bce-label-count", lambda: B.sigmoid_binary_cross_entropy(1.0, z[:, 0], np.zeros(3)), ValueError, "y has shape (3,) but z has 4 rows"),
    ("mse-shape", lambda: F.mse(z, np.zeros((3, 4))), ValueError, "mse: t has shape (3, 4) but y_pred has shape (4, 3)"),
    ("loss-dl-scalar", lambda: B.mse(np.ones(2), z, z), ValueError, "backward.mse: dl must be a scalar"),
    # formulation
    ("conv-impl", lambda: F.conv2d(x, w, impl="fast"), ValueError, "conv2d: impl must be one of conv, gemm, auto; got 'fast'"),
    ("backward-impl", lambda: B.conv2d(np.zeros((2, 4, 4, 4)), x, w, impl="im2col"), ValueError, "backward.conv2d: impl must be one of conv, gemm, auto; got 'im2col'"),
]


@pytest.mark.parametrize("fn, exc, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(fn, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        fn()


def test_errors_come_from_python_under_jit_too():
    """Shapes are static, so the same checks run while tracing: jit raises the same message."""
    with pytest.raises(ValueError, match=re.escape("x has 3 channels but w expects 4")):
        jax.jit(F.conv2d)(jnp.asarray(x), jnp.zeros((3, 3, 4, 2)))
    with pytest.raises(ValueError, match=re.escape("dy has shape (2, 5, 5, 4)")):
        jax.jit(B.conv2d)(jnp.zeros((2, 5, 5, 4)), jnp.asarray(x), jnp.asarray(w))


def test_label_values_are_checked_only_when_known():
    """Under jit the labels are traced, so their range cannot be checked; shapes still are."""
    loss = jax.jit(F.softmax_cross_entropy)(jnp.zeros((2, 3)), jnp.array([0, 2]))
    assert np.isfinite(loss)
