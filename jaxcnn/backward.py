"""The hand-written backward pass: one rule per function of `jaxcnn.forward`, same names.

`backward.<op>(dy, *forward_inputs, **forward_options)` takes the upstream gradient `dy = dL/dy`
first, then the forward's inputs and options, and returns `dL/d(input)` for each array input of the
forward, in order. Losses take the upstream scalar `dl` (1.0 for the loss itself) and return the
gradient of the prediction only: labels are data, not parameters.

No rule here asks JAX for a derivative: each is written out from the maths beside it, and tested
against `jax.vjp` of the forward (tests/test_backward.py).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _checks, _window, conv_gemm, forward
from jaxcnn._checks import Padding
from jaxcnn.forward import precision_of, rot180

Array = jax.Array

__all__ = [
    "avg_pool", "batch_norm", "binary_cross_entropy", "conv2d", "convolve2d", "dense", "flatten",
    "l2_pool", "leaky_relu", "max_pool", "mse", "relu", "sigmoid",
    "sigmoid_binary_cross_entropy", "softmax", "softmax_cross_entropy", "tanh",
]


def _upstream(fn: str, dy: Any, like: Array, shape: tuple[int, ...], what: str) -> None:
    _checks.array(fn, "dy", dy, len(shape))
    _checks.same_dtype(fn, dy=dy, x=like)
    _checks.shape_is(fn, "dy", dy, shape, what)


# ----------------------------------------------------------------------------- convolution
def conv2d(dy: Array, x: Array, w: Array, *, stride: int | tuple[int, int] = 1,
           padding: Padding = "VALID", dilation: int | tuple[int, int] = 1, groups: int = 1,
           precision: Any = None, impl: str = "conv") -> tuple[Array, Array, Array]:
    """Gradients of `forward.conv2d(x, w, b)`.

    dy: (N, O_h, O_w, C_out); x: (N, H, W, C_in); w: (kh, kw, C_in // groups, C_out).
    Returns (dx (N, H, W, C_in), dw (kh, kw, C_in // groups, C_out), db (C_out,)):

      dx = the "full" correlation of dy, spread over the stride grid, with w rotated 180 degrees
           and its in/out channels swapped (seed 002: "a convolution with the flipped kernel");
      dw = the correlation of x with dy (seed 000: `dW1 = conv(X, dZ1)`);
      db = dy summed over N, H, W (seed 000: `dB1 = sum(dZ1)`), returned even without a bias.

    impl: "conv" (default) computes dx and dw as the `lax.conv_general_dilated` calls below;
    "gemm" as one matrix product per kernel offset (`jaxcnn.conv_gemm`); "auto" picks, for dx
    and dw separately, the form measured faster for this backend and shape
    (`conv_gemm.prefer_gemm`). All three give the same sums, in different orders.
    """
    return _conv_grads("backward.conv2d", dy, x, w, stride, padding, dilation, groups,
                       precision, impl)


def _conv_grads(fn: str, dy: Array, x: Array, w: Array, stride: Any, padding: Padding,
                dilation: Any, groups: int, precision: Any,
                impl: str) -> tuple[Array, Array, Array]:
    g = _checks.conv(fn, x, w, stride, padding, dilation, groups)
    _upstream(fn, dy, x, g.out_shape, "the forward output")
    precision = precision_of(precision)
    dx = (conv_gemm.dx(dy, w, g, precision) if _checks.impl(fn, impl, g, "dx")
          else _conv_dx(dy, w, g, precision))
    dw = (conv_gemm.dw(x, dy, g, precision) if _checks.impl(fn, impl, g, "dw")
          else _conv_dw(x, dy, g, precision))
    return dx, dw, jnp.sum(dy, axis=(0, 1, 2))


def xla_may_abort(win: _checks.Window) -> bool:
    """Whether XLA:CPU (jaxlib 0.10.x) may abort on the textbook dx convolution for this window.

    The dx convolution spreads dy with `lhs_dilation = s`. When an axis has kernel 2, stride 2 and
    dilation 1, XLA's convolution operand swapper reads that axis as a "group" dimension and keeps
    its window while swapping the operands (it swaps when the other axis's kernel is wider than
    dy), builds an invalid convolution and fails a CHECK: the whole process dies. `jax.grad` of
    the forward dies the same way. Measured on jaxlib 0.10.2: 11 of 300 random configurations
    with such an axis aborted, none of 2,500 without one. tests/test_xla_traps.py keeps known
    cases and tells when a jaxlib upgrade changes this.
    """
    return any(k == 2 and s == 2 and d == 1
               for k, s, d in zip(win.size, win.stride, win.dilation))


def _conv_dx(dy: Array, w: Array, g: _checks.Conv, precision: Any) -> Array:
    """dx of conv2d for a checked geometry `g`: (N, O_h, O_w, C_out) -> (N, H, W, C_in).

    Per axis: `conv_general_dilated(dy, rot180(w^T), window_strides=1, lhs_dilation=s,
    rhs_dilation=d, padding=(k_eff - 1 - lo, H - O_s + lo))`. The lhs dilation spreads dy back
    over the stride grid; input rows the stride never read receive exactly zero.
    """
    win, groups = g.win, g.groups
    kh, kw, c_in_g, c_out = w.shape
    # HWIO (kh, kw, C_in/G, C_out) -> (kh, kw, C_in, C_out/G), read as HWOI: the roles of the
    # channels swap, and group j's output block becomes group j's input block.
    wt = (w.reshape(kh, kw, c_in_g, groups, c_out // groups).transpose(0, 1, 3, 2, 4)
          .reshape(kh, kw, groups * c_in_g, c_out // groups))
    pads = [(e - 1 - lo, h - o_s + lo)
            for e, (lo, _), h, o_s in zip(win.eff, win.pads, win.in_hw, win.spread)]
    dims = ("NHWC", "HWOI", "NHWC")
    if xla_may_abort(win):
        # The same convolution with the spread, the padding and the flip done explicitly and kept
        # apart from it by an optimization barrier, so XLA cannot fold them back in.
        spread = [(0, 0, 0), *((lo, hi, s - 1) for (lo, hi), s in zip(pads, win.stride)),
                  (0, 0, 0)]
        dy_spread, wt_rot = lax.optimization_barrier(
            (lax.pad(dy, jnp.zeros((), dy.dtype), spread), rot180(wt)))
        return lax.conv_general_dilated(
            dy_spread, wt_rot, (1, 1), "VALID", rhs_dilation=win.dilation,
            dimension_numbers=dims, feature_group_count=groups, precision=precision)
    return lax.conv_general_dilated(
        dy, rot180(wt), (1, 1), pads, lhs_dilation=win.stride, rhs_dilation=win.dilation,
        dimension_numbers=dims, feature_group_count=groups, precision=precision)


def _conv_dw(x: Array, dy: Array, g: _checks.Conv, precision: Any) -> Array:
    """dw of conv2d for a checked geometry `g`: -> (kh, kw, C_in // groups, C_out).

    `dw[m, p, c, o] = sum_{n, i, j} x_pad[n, i*s + m*d, j*s + p*d, c] * dy[n, i, j, o]`: a
    correlation of x with dy, batch and channel roles swapped, `window_strides=d`,
    `rhs_dilation=s`, padding `(lo, O_s - H + k_eff - 1 - lo)`; a negative high pad crops the
    input rows the stride skipped. Groups pair x's channel block j with dy's block j.
    """
    win = g.win
    pads = [(lo, o_s - h + e - 1 - lo)
            for (lo, _), o_s, h, e in zip(win.pads, win.spread, win.in_hw, win.eff)]
    return lax.conv_general_dilated(
        x, dy, win.dilation, pads, rhs_dilation=win.stride,
        dimension_numbers=("CHWN", "IHWO", "HWNC"), batch_group_count=g.groups,
        precision=precision)


def convolve2d(dy: Array, x: Array, w: Array, *, stride: int | tuple[int, int] = 1,
               padding: Padding = "VALID", dilation: int | tuple[int, int] = 1,
               groups: int = 1, precision: Any = None,
               impl: str = "conv") -> tuple[Array, Array, Array]:
    """Gradients of the true convolution `forward.convolve2d(x, w, b)`; shapes as `conv2d`.

    The convolution is `conv2d` with `rot180(w)`, so dx is the correlation's dx taken with
    rot180(w) (a correlation of dy with w itself), and dw is rot180 of the correlation's dw
    (seed 003's `dL/dF = dL/dO * rot180(I)` read the other way round).
    """
    _checks.array("backward.convolve2d", "w", w, 4, "(kh, kw, C_in // groups, C_out) (HWIO)")
    dx, dw, db = _conv_grads("backward.convolve2d", dy, x, rot180(w), stride, padding, dilation,
                             groups, precision, impl)
    return dx, rot180(dw), db


# ----------------------------------------------------------------------------- dense, flatten
def dense(dy: Array, x: Array, w: Array, *,
          precision: Any = None) -> tuple[Array, Array, Array]:
    """Gradients of `y = x @ w + b` (seed 000: `dW2 = F^T (A2 - Y)`, `dB2 = sum(A2 - Y)`).

    dy: (N, D_out); x: (N, D_in); w: (D_in, D_out).
    Returns (dx = dy w^T (N, D_in), dw = x^T dy (D_in, D_out), db = sum_n dy (D_out,)).
    """
    _checks.dense("backward.dense", x, w, None)
    _upstream("backward.dense", dy, x, (x.shape[0], w.shape[1]), "the forward output")
    precision = precision_of(precision)
    return (jnp.matmul(dy, w.T, precision=precision), jnp.matmul(x.T, dy, precision=precision),
            jnp.sum(dy, axis=0))


def flatten(dy: Array, x: Array) -> Array:
    """Flatten has no parameters; its gradient is dy reshaped back to x's shape (seed 001)."""
    out_shape = _checks.flatten("backward.flatten", x)
    _upstream("backward.flatten", dy, x, out_shape, "the forward output")
    return dy.reshape(x.shape)


# ----------------------------------------------------------------------------- pooling
def _pool_args(fn: str, dy: Array, x: Array, window: Any, stride: Any,
               padding: Padding) -> _checks.Window:
    win = _checks.pool(fn, x, window, stride, padding)
    _upstream(fn, dy, x, (x.shape[0], *win.out_hw, x.shape[3]), "the forward output")
    return win


def max_pool(dy: Array, x: Array, *, window: int | tuple[int, int] = 2,
             stride: int | tuple[int, int] | None = None, padding: Padding = "VALID") -> Array:
    """Gradient of `forward.max_pool`: each window's dy goes to its maximum, the rest get zero.

    dy: (N, O_h, O_w, C); x: (N, H, W, C) -> dx (N, H, W, C). On ties the first maximum in
    row-major window order takes it all, as XLA's select-and-scatter (hence `jax.grad`) routes it;
    overlapping windows add up. NaNs in a window route nothing.
    """
    win = _pool_args("backward.max_pool", dy, x, window, stride, padding)
    if _tiles(win):
        return _max_pool_tiles(dy, x, win)
    xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in
                                                                 win.pads), (0, 0, 0)])
    candidates = [_window.tap(xp, i, j, win) for i, j in _window.offsets(win)]
    dx = jnp.zeros_like(x)
    for (i, j), winner in zip(_window.offsets(win), _first_max(candidates)):
        dx = dx + _window.spread(jnp.where(winner, dy, 0), i, j, win)
    return dx


def _first_max(candidates: list[Array]) -> list[Array]:
    """For each window element (candidates in row-major window order, each (N, O_h, O_w, C)):
    where it is its window's first maximum. A window holding a NaN has none."""
    y = functools.reduce(jnp.maximum, candidates)
    taken, winners = jnp.zeros(y.shape, bool), []
    for c in candidates:
        winners.append((c == y) & ~taken)
        taken = taken | winners[-1]
    return winners


def _tiles(win: _checks.Window) -> bool:
    """Whether the windows tile the input without overlap or padding (stride = window, e.g. the
    usual 2x2 pool with stride 2)."""
    return (win.stride == win.size and win.dilation == (1, 1)
            and win.pads == ((0, 0), (0, 0)))


def _max_pool_tiles(dy: Array, x: Array, win: _checks.Window) -> Array:
    """`max_pool`'s rule for tiling windows: the same first-maximum routing, with the window's
    elements read off a (N, O_h, k_h, O_w, k_w, C) view of x and the routed dy stacked back into
    that view, instead of strided taps and interior-padded spreads. Rows and columns that no
    window reads (VALID with H % k != 0) get zero."""
    (kh, kw), (oh, ow) = win.size, win.out_hw
    n, h, w, c = x.shape
    xt = x[:, :oh * kh, :ow * kw].reshape(n, oh, kh, ow, kw, c)
    taps = [xt[:, :, i, :, j] for i in range(kh) for j in range(kw)]  # each (N, O_h, O_w, C)
    routed = [jnp.where(winner, dy, 0) for winner in _first_max(taps)]
    rows = [jnp.stack(routed[i * kw:(i + 1) * kw], axis=3).reshape(n, oh, ow * kw, c)
            for i in range(kh)]  # each (N, O_h, O_w * k_w, C)
    dx = jnp.stack(rows, axis=2).reshape(n, oh * kh, ow * kw, c)
    return jnp.pad(dx, ((0, 0), (0, h - oh * kh), (0, w - ow * kw), (0, 0)))


def avg_pool(dy: Array, x: Array, *, window: int | tuple[int, int] = 2,
             stride: int | tuple[int, int] | None = None, padding: Padding = "VALID",
             count_include_pad: bool = True) -> Array:
    """Gradient of `forward.avg_pool`: each input gets `dy / count` from every window covering it.

    `count` is the window area, or with `count_include_pad=False` the number of real elements of
    that window. dy: (N, O_h, O_w, C); x: (N, H, W, C) -> dx (N, H, W, C).
    """
    win = _pool_args("backward.avg_pool", dy, x, window, stride, padding)
    share = dy / _checks.window_counts(win, count_include_pad).astype(dy.dtype)
    dx = jnp.zeros_like(x)
    for i, j in _window.offsets(win):
        dx = dx + _window.spread(share, i, j, win)
    return dx


def l2_pool(dy: Array, x: Array, *, window: int | tuple[int, int] = 2,
            stride: int | tuple[int, int] | None = None, padding: Padding = "VALID") -> Array:
    """Gradient of `forward.l2_pool`: `y = sqrt(sum x^2)` gives `dx_i = sum_windows dy * x_i / y`.

    Windows with y = 0 pass no gradient. dy: (N, O_h, O_w, C); x: (N, H, W, C) -> (N, H, W, C).
    """
    win = _pool_args("backward.l2_pool", dy, x, window, stride, padding)
    y = forward.l2_pool(x, window=window, stride=stride, padding=padding)
    positive = y > 0
    dy_over_y = jnp.where(positive, dy / jnp.where(positive, y, 1), 0)
    spread = jnp.zeros_like(x)
    for i, j in _window.offsets(win):
        spread = spread + _window.spread(dy_over_y, i, j, win)
    return x * spread


# ----------------------------------------------------------------------------- activations
def _act(fn: str, dy: Array, x: Array) -> None:
    _checks.array(fn, "x", x)
    _upstream(fn, dy, x, tuple(x.shape), "x")


def relu(dy: Array, x: Array) -> Array:
    """`dx = dy * (x > 0)`: ReLU passes the gradient where it was active (0 at 0, as jax.nn).

    `x` may as well be the output `relu(x)`, which is > 0 at exactly the same places."""
    _act("backward.relu", dy, x)
    return jnp.where(x > 0, dy, 0)


def leaky_relu(dy: Array, x: Array, negative_slope: float = 0.01) -> Array:
    """`dx = dy` where `x >= 0`, else `negative_slope * dy`."""
    _act("backward.leaky_relu", dy, x)
    return jnp.where(x >= 0, dy, negative_slope * dy)


def sigmoid(dy: Array, x: Array) -> Array:
    """`dx = dy * s * (1 - s)` with `s = sigmoid(x)` (seed 000's dA2/dZ2)."""
    _act("backward.sigmoid", dy, x)
    s = jax.nn.sigmoid(x)
    return dy * s * (1 - s)


def tanh(dy: Array, x: Array) -> Array:
    """`dx = dy * (1 - t^2)` with `t = tanh(x)`."""
    _act("backward.tanh", dy, x)
    t = jnp.tanh(x)
    return dy * (1 - t * t)


def softmax(dy: Array, x: Array, axis: int = -1) -> Array:
    """`dx = s * (dy - sum(dy * s))` along `axis`, with `s = softmax(x)` (the Jacobian
    `diag(s) - s s^T` applied to dy)."""
    _act("backward.softmax", dy, x)
    s = jax.nn.softmax(x, axis=axis)
    return s * (dy - jnp.sum(dy * s, axis=axis, keepdims=True))


# ----------------------------------------------------------------------------- normalization
def batch_norm(dy: Array, x: Array, gamma: Array, beta: Array, mean: Array | None = None,
               var: Array | None = None, *, eps: float = 1e-5,
               axis_name: str | None = None) -> tuple[Array, Array, Array]:
    """Gradients of `forward.batch_norm`: (dx (x's shape), dgamma (C,), dbeta (C,)).

    With `x_hat = (x - mu) / sigma`, `sigma = sqrt(var + eps)` and sums over the M = N*H*W
    elements of each channel: `dbeta = sum dy`, `dgamma = sum dy * x_hat`, and

      training (batch statistics, which depend on x):
          dx = gamma / (M sigma) * (M dy - sum dy - x_hat * sum(dy * x_hat));
      evaluation (running averages, constants): dx = gamma * dy / sigma.

    mean and var are running statistics, not parameters: no gradient is returned for them.

    With `axis_name` (data parallel, equal shards of a global batch, each device holding the
    gradient of its own shard's mean loss), the statistics and the two sums in dx are averaged
    over the devices: `dx = gamma / (m sigma) * (m dy - pmean(sum dy) - x_hat pmean(sum dy x_hat))`
    with m the local count, which is the global rule scaled as the local losses are.
    """
    _checks.batch_norm("backward.batch_norm", x, gamma, beta, mean, var)
    _upstream("backward.batch_norm", dy, x, tuple(x.shape), "x")
    axes = tuple(range(x.ndim - 1))
    training = mean is None
    if training:
        mean, var = forward.moments(x, axis_name=axis_name)
    inv_sigma = lax.rsqrt(var + eps)
    x_hat = (x - mean) * inv_sigma
    dbeta = jnp.sum(dy, axes)
    dgamma = jnp.sum(dy * x_hat, axes)
    if not training:
        return gamma * inv_sigma * dy, dgamma, dbeta
    m = x.size // x.shape[-1]
    sum_dy, sum_dy_xhat = ((dbeta, dgamma) if axis_name is None else
                           (lax.pmean(dbeta, axis_name), lax.pmean(dgamma, axis_name)))
    dx = gamma * inv_sigma / m * (m * dy - sum_dy - x_hat * sum_dy_xhat)
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------- losses
def _scalar(fn: str, dl: Any, like: Array) -> Array:
    dl = jnp.asarray(dl, like.dtype)
    if dl.shape != ():
        raise ValueError(f"{fn}: dl must be a scalar (the upstream gradient of the loss, "
                         f"usually 1.0); got shape {dl.shape}")
    return dl


def binary_cross_entropy(dl: Array | float, p: Array, y: Array) -> Array:
    """`dL/dp = dl * (p - y) / (p (1 - p)) / N` for the batch-mean BCE on probabilities.

    p: (N,) or (N, 1); y: (N,). Returns dp with p's shape.
    """
    _checks.binary_labels("backward.binary_cross_entropy", p, y, "p")
    dl = _scalar("backward.binary_cross_entropy", dl, p)
    pf = p.reshape(y.shape)
    return (dl * (pf - y) / (pf * (1 - pf)) / y.shape[0]).reshape(p.shape)


def sigmoid_binary_cross_entropy(dl: Array | float, z: Array, y: Array) -> Array:
    """`dL/dz = dl * (sigmoid(z) - y) / N`: seed 000's `dZ2 = A2 - Y`, averaged over the batch.

    z: (N,) or (N, 1) logits; y: (N,). Returns dz with z's shape.
    """
    _checks.binary_labels("backward.sigmoid_binary_cross_entropy", z, y, "z")
    dl = _scalar("backward.sigmoid_binary_cross_entropy", dl, z)
    a = jax.nn.sigmoid(z.reshape(y.shape))
    return (dl * (a - y) / y.shape[0]).reshape(z.shape)


def softmax_cross_entropy(dl: Array | float, z: Array, y: Array) -> Array:
    """`dL/dz = dl * (softmax(z) * sum_k(y) - y) / N`, which is `softmax(z) - onehot(y)` for
    one-hot or integer labels. z: (N, K); y: (N,) int or (N, K). Returns dz (N, K)."""
    target = _checks.class_targets("backward.softmax_cross_entropy", z, y)
    dl = _scalar("backward.softmax_cross_entropy", dl, z)
    s = jax.nn.softmax(z, axis=-1)
    return dl * (s * jnp.sum(target, axis=-1, keepdims=True) - target) / z.shape[0]


def mse(dl: Array | float, y_pred: Array, t: Array) -> Array:
    """`dE/dy = dl * (y - t)` for seed 002's `E = 1/2 sum (t - y)^2`. Returns dy, y_pred's shape."""
    _checks.targets("backward.mse", y_pred, t)
    return _scalar("backward.mse", dl, y_pred) * (y_pred - t)
