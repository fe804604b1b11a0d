"""Forward operations of a CNN: pure functions on NHWC activations and HWIO kernels.

Every function here has a namesake in `jaxcnn.backward` holding its hand-written gradient.
Arguments are checked in Python before tracing (see `jaxcnn._checks`); convolutions and matrix
products run at `lax.Precision.HIGHEST` unless a `precision` is given or set around the call with
`jax.default_matmul_precision(...)` (see `precision_of`), so that float32 on GPUs does not silently
drop to TF32.

Shapes: `x` (N, H, W, C); conv kernel `w` (kh, kw, C_in // groups, C_out); dense `w` (D_in, D_out).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _checks, conv_gemm
from jaxcnn._checks import Padding

Array = jax.Array
NHWC = ("NHWC", "HWIO", "NHWC")
HIGHEST = lax.Precision.HIGHEST

__all__ = [
    "avg_pool", "batch_norm", "binary_cross_entropy", "conv2d", "convolve2d", "dense", "flatten",
    "l2_pool", "leaky_relu", "max_pool", "moments", "mse", "relu", "sigmoid",
    "sigmoid_binary_cross_entropy", "softmax", "softmax_cross_entropy", "tanh",
]


def precision_of(precision: Any) -> Any:
    """The precision a product runs at: `precision` when given; else `None` (JAX's configured
    default) inside `jax.default_matmul_precision(...)`; else `lax.Precision.HIGHEST`.

    Read at trace time, like JAX's own setting, so a jitted step traced inside
    `jax.default_matmul_precision("default")` runs its products (and their transposes, for
    `jax.grad`) at that precision: TF32 on recent NVIDIA GPUs, unchanged float32 on CPUs.
    """
    if precision is not None:
        return precision
    return None if jax.config.jax_default_matmul_precision is not None else HIGHEST


# ----------------------------------------------------------------------------- convolution
def conv2d(x: Array, w: Array, b: Array | None = None, *, stride: int | tuple[int, int] = 1,
           padding: Padding = "VALID", dilation: int | tuple[int, int] = 1, groups: int = 1,
           precision: Any = None, impl: str = "conv") -> Array:
    """2-D cross-correlation, what deep learning calls convolution (seed 002's Eq. for x^l).

    `y[n, i, j, o] = b[o] + sum_{m, p, c} x_pad[n, i*s + m*d, j*s + p*d, g*C_in/groups + c]
    * w[m, p, c, o]`, with `g` the group of output channel `o`.

    Args:
      x: (N, H, W, C_in).
      w: (kh, kw, C_in // groups, C_out). `groups == C_in` with `C_out = k * C_in` is depthwise.
      b: optional (C_out,).
      stride, dilation: int or (h, w) pair, >= 1.
      padding: "VALID", "SAME" (as XLA pads), int p, pair (ph, pw) (symmetric per axis, as torch
        reads it), or explicit ((top, bottom), (left, right)).
      impl: "conv" (`lax.conv_general_dilated`, the default), "gemm" (one product per kernel
        offset, `jaxcnn.conv_gemm`), or "auto" (the faster of the two for this backend and shape).
    Returns:
      y: (N, O_h, O_w, C_out), `O = (H + lo + hi - k_eff) // s + 1`, `k_eff = (k - 1) * d + 1`.
    """
    g = _checks.conv("conv2d", x, w, stride, padding, dilation, groups, b)
    precision = precision_of(precision)
    if _checks.impl("conv2d", impl, g, "forward"):
        y = conv_gemm.forward(x, w, g, precision)
    else:
        y = lax.conv_general_dilated(
            x, w, g.win.stride, g.win.pads, rhs_dilation=g.win.dilation,
            dimension_numbers=NHWC, feature_group_count=g.groups, precision=precision)
    return y if b is None else y + b


def rot180(w: Array) -> Array:
    """The kernel rotated by 180 degrees in its two spatial axes (seed 003's rot180)."""
    return w[::-1, ::-1]


def convolve2d(x: Array, w: Array, b: Array | None = None, *,
               stride: int | tuple[int, int] = 1, padding: Padding = "VALID",
               dilation: int | tuple[int, int] = 1, groups: int = 1,
               precision: Any = None, impl: str = "conv") -> Array:
    """True 2-D convolution: the cross-correlation `conv2d` with the kernel rotated 180 degrees.

    `y[n, i, j, o] = b[o] + sum x_pad[n, i*s + m*d, j*s + p*d, c] * w[kh-1-m, kw-1-p, c, o]`
    (seed 002: "convolution is the same as cross-correlation with a flipped kernel").
    Same arguments and shapes as `conv2d`.
    """
    _checks.conv("convolve2d", x, w, stride, padding, dilation, groups, b)
    return conv2d(x, rot180(w), b, stride=stride, padding=padding, dilation=dilation,
                  groups=groups, precision=precision, impl=impl)


# ----------------------------------------------------------------------------- dense, flatten
def dense(x: Array, w: Array, b: Array | None = None, *, precision: Any = None) -> Array:
    """Fully connected layer `y = x @ w + b` (seed 000's `Z2 = F . W2 + B2`).

    x: (N, D_in); w: (D_in, D_out); b: optional (D_out,). Returns y: (N, D_out).
    """
    _checks.dense("dense", x, w, b)
    y = jnp.matmul(x, w, precision=precision_of(precision))
    return y if b is None else y + b


def flatten(x: Array) -> Array:
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...), row-major (seed 000's `F = Flatten(P1)`)."""
    return x.reshape(_checks.flatten("flatten", x))


# ----------------------------------------------------------------------------- pooling
def _reduce_window(x: Array, init: float, op: Any, win: _checks.Window) -> Array:
    return lax.reduce_window(x, init, op, (1, *win.size, 1), (1, *win.stride, 1),
                             ((0, 0), *win.pads, (0, 0)))


def max_pool(x: Array, *, window: int | tuple[int, int] = 2,
             stride: int | tuple[int, int] | None = None, padding: Padding = "VALID") -> Array:
    """Max pooling (seed 000's `P1 = MaxPool(A1)`); pads with -inf; stride None means = window.

    x: (N, H, W, C) -> (N, O_h, O_w, C). Overlapping windows (stride < window) are allowed; every
    pad must be smaller than the window. Written as `lax.reduce_window` with a Python-scalar init so
    that `jax.grad` takes XLA's select-and-scatter path, whose tie rule `backward.max_pool` copies.
    """
    win = _checks.pool("max_pool", x, window, stride, padding)
    return _reduce_window(x, -np.inf, lax.max, win)


def avg_pool(x: Array, *, window: int | tuple[int, int] = 2,
             stride: int | tuple[int, int] | None = None, padding: Padding = "VALID",
             count_include_pad: bool = True) -> Array:
    """Average pooling: each output is the window's sum divided by the window area.

    With padding, `count_include_pad=True` (the default, as flax and torch) divides by the full
    area k_h * k_w, counting padded zeros; False divides by the number of real elements.
    x: (N, H, W, C) -> (N, O_h, O_w, C).
    """
    win = _checks.pool("avg_pool", x, window, stride, padding)
    counts = _checks.window_counts(win, count_include_pad).astype(x.dtype)
    return _reduce_window(x, 0.0, lax.add, win) / counts


def l2_pool(x: Array, *, window: int | tuple[int, int] = 2,
            stride: int | tuple[int, int] | None = None, padding: Padding = "VALID") -> Array:
    """L2-norm pooling (seed 002's third kind): `y = sqrt(sum_window x^2)`, zero-padded.

    x: (N, H, W, C) -> (N, O_h, O_w, C). The gradient `x / y` is taken as 0 where a window is all
    zeros (y = 0, common after ReLU); the double `where` below makes `jax.grad` agree with that.
    """
    win = _checks.pool("l2_pool", x, window, stride, padding)
    sq = _reduce_window(x * x, 0.0, lax.add, win)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)


# ----------------------------------------------------------------------------- activations
def _float(fn: str, x: Array) -> None:
    _checks.array(fn, "x", x)


def relu(x: Array) -> Array:
    """`max(x, 0)` elementwise (seed 000's `A1 = ReLU(Z1)`), any shape."""
    _float("relu", x)
    return jax.nn.relu(x)


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """`x` where `x >= 0`, else `negative_slope * x`; any shape."""
    _float("leaky_relu", x)
    return jnp.where(x >= 0, x, negative_slope * x)


def sigmoid(x: Array) -> Array:
    """`1 / (1 + exp(-x))` elementwise (seed 000's `A2 = Sigmoid(Z2)`), any shape."""
    _float("sigmoid", x)
    return jax.nn.sigmoid(x)


def tanh(x: Array) -> Array:
    """Hyperbolic tangent elementwise, any shape."""
    _float("tanh", x)
    return jnp.tanh(x)


def softmax(x: Array, axis: int = -1) -> Array:
    """`exp(x) / sum(exp(x))` along `axis` (max-subtracted for stability); any shape."""
    _float("softmax", x)
    return jax.nn.softmax(x, axis=axis)


# ----------------------------------------------------------------------------- normalization
def _mean(x: Array, axes: tuple[int, ...], axis_name: str | None) -> Array:
    """The mean over `axes`, and over the devices of a mapped `axis_name` (equal shards)."""
    m = jnp.mean(x, axes)
    return m if axis_name is None else lax.pmean(m, axis_name)


def moments(x: Array, *, axis_name: str | None = None) -> tuple[Array, Array]:
    """Per-channel mean and (biased) variance over every axis but the last: x (N, ..., C) ->
    two (C,) arrays. With `axis_name` (inside shard_map / pmap), over the whole global batch."""
    _float("moments", x)
    axes = tuple(range(x.ndim - 1))
    mean = _mean(x, axes, axis_name)
    return mean, _mean(jnp.square(x - mean), axes, axis_name)


def batch_norm(x: Array, gamma: Array, beta: Array, mean: Array | None = None,
               var: Array | None = None, *, eps: float = 1e-5,
               axis_name: str | None = None) -> Array:
    """Batch normalization (seed 003): `y = gamma * (x - mu) / sqrt(var + eps) + beta`, per channel.

    Training: mean and var None, so mu and var are the batch's own statistics over N (and H, W),
    and the gradient flows through them. Evaluation: the given running averages, as constants.
    x: (N, ..., C); gamma, beta, mean, var: (C,). Returns y with x's shape. With `axis_name`,
    training uses the statistics of the global batch sharded over that mapped axis.
    """
    _checks.batch_norm("batch_norm", x, gamma, beta, mean, var)
    if mean is None:
        mean, var = moments(x, axis_name=axis_name)
    return gamma * (x - mean) * lax.rsqrt(var + eps) + beta


# ----------------------------------------------------------------------------- losses
def binary_cross_entropy(p: Array, y: Array) -> Array:
    """Binary cross-entropy on probabilities, mean over the batch (seed 000's loss):

    `L = -1/N sum_n [y_n log p_n + (1 - y_n) log(1 - p_n)]`.
    p: (N,) or (N, 1) probabilities; y: (N,) labels in [0, 1]. Returns a scalar. Prefer
    `sigmoid_binary_cross_entropy` on logits: it is exact where p rounds to 0 or 1.
    """
    _checks.binary_labels("binary_cross_entropy", p, y, "p")
    p = p.reshape(y.shape)
    return -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log1p(-p))


def sigmoid_binary_cross_entropy(z: Array, y: Array) -> Array:
    """`binary_cross_entropy(sigmoid(z), y)` computed stably from logits, mean over the batch:

    `L = 1/N sum_n [max(z, 0) - z y + log(1 + exp(-|z|))]`.
    z: (N,) or (N, 1) logits; y: (N,) labels in [0, 1]. Returns a scalar.
    """
    _checks.binary_labels("sigmoid_binary_cross_entropy", z, y, "z")
    z = z.reshape(y.shape)
    return jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))))


def softmax_cross_entropy(z: Array, y: Array) -> Array:
    """Softmax cross-entropy on logits, mean over the batch (seed 003's `L = -sum y log y_hat`):

    `L = -1/N sum_n sum_k y_nk log softmax(z_n)_k`.
    z: (N, K) logits; y: (N,) int class ids, or (N, K) one-hot rows (or any distributions).
    """
    target = _checks.class_targets("softmax_cross_entropy", z, y)
    return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(z, axis=-1), axis=-1))


def mse(y_pred: Array, t: Array) -> Array:
    """Squared error as seed 002 writes it: `E = 1/2 sum_p (t_p - y_p)^2`, a sum, not a mean.

    y_pred, t: the same shape, any rank. Returns a scalar.
    """
    _checks.targets("mse", y_pred, t)
    return 0.5 * jnp.sum((t - y_pred) ** 2)
