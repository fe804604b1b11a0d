"""Convolutions and their gradients as shifted matrix products: the `impl="gemm"` formulation.

For each kernel offset (m, p) the forward reads one strided "tap" of the padded input,
`x_tap[n, i, j, c] = x_pad[n, i*s + m*d, j*s + p*d, c]`, so that

    y        = sum_{m,p} x_tap(m, p) @ w[m, p]            (N*O_h*O_w, C_in) @ (C_in, C_out)
    dW[m, p] = x_tap(m, p)^T @ dy                         one (C_in, C_out) GEMM per offset
    dx       = sum_{m,p} spread_{m,p}(dy @ w[m, p]^T)     the adjoint of taking the tap

With groups, each product is batched over the groups. Where every group has a single input
channel (C_in = 1, or depthwise) the products degenerate to broadcast multiplies and sums, which
XLA fuses into one loop. These are the sums of `jaxcnn.forward.conv2d` and of the
`lax.conv_general_dilated` rules in `jaxcnn.backward`, in another order. `prefer_gemm` is the
`impl="auto"` rule, measured in experiments/PERFORMANCE.md.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _checks, _window

Array = jax.Array
BARRIER = False


def _padded(x: Array, win: _checks.Window) -> Array:
    return jnp.pad(x, ((0, 0), *win.pads, (0, 0)))


def _per_output_channel(t: Array, g: _checks.Conv) -> Array:
    """A one-channel-per-group tap (..., C_in) repeated to line up with the outputs (..., C_out):
    output channel o reads input channel o // (C_out / groups)."""
    return jnp.repeat(t, g.c_out // g.groups, axis=-1) if g.c_in > 1 else t


def _grouped(a: Array, groups: int) -> Array:
    """(N, O_h, O_w, C) -> (N * O_h * O_w, groups, C // groups)."""
    return a.reshape(-1, groups, a.shape[-1] // groups)


def forward(x: Array, w: Array, g: _checks.Conv, precision: Any) -> Array:
    """y = conv2d(x, w) without bias: (N, O_h, O_w, C_out), one product per kernel offset."""
    xp, out = _padded(x, g.win), None
    for m, p in _window.offsets(g.win):
        t = _window.tap(xp, m, p, g.win)
        if g.c_in == g.groups:  # one input channel per group: broadcast multiply
            v = _per_output_channel(t, g) * w[m, p, 0]
        elif g.groups == 1:
            v = jnp.matmul(t, w[m, p], precision=precision)
        else:  # (M, G, C_in/G) x (C_in/G, G, C_out/G) -> (M, G, C_out/G)
            v = lax.dot_general(_grouped(t, g.groups), w[m, p].reshape(-1, g.groups,
                                                                      g.c_out // g.groups),
                                (((2,), (0,)), ((1,), (1,))), precision=precision)
            v = v.transpose(1, 0, 2).reshape(*t.shape[:3], g.c_out)
        out = v if out is None else out + v
    return out


def dw(x: Array, dy: Array, g: _checks.Conv, precision: Any) -> Array:
    """dW of conv2d: (kh, kw, C_in // groups, C_out), one product per kernel offset."""
    xp, taps = _padded(x, g.win), []
    for m, p in _window.offsets(g.win):
        t = _window.tap(xp, m, p, g.win)
        if g.c_in == g.groups:  # sum_{n,i,j} x_tap * dy, channel by channel
            taps.append(jnp.sum(_per_output_channel(t, g) * dy, axis=(0, 1, 2))[None])
        elif g.groups == 1:  # (C_in, M) @ (M, C_out)
            taps.append(jnp.matmul(t.reshape(-1, g.c_in).T, dy.reshape(-1, g.c_out),
                                   precision=precision))
        else:  # per group: (C_in/G, M) @ (M, C_out/G) -> (C_in/G, G * C_out/G)
            prod = lax.dot_general(_grouped(t, g.groups), _grouped(dy, g.groups),
                                   (((0,), (0,)), ((1,), (1,))), precision=precision)
            taps.append(prod.transpose(1, 0, 2).reshape(prod.shape[1], -1))
    return jnp.stack(taps).reshape(*g.win.size, *taps[0].shape)


def dx(dy: Array, w: Array, g: _checks.Conv, precision: Any) -> Array:
    """dx of conv2d: (N, H, W, C_in); each offset's `dy @ w[m, p]^T` spread back over the input
    rows that offset read (lax.pad with interior padding s - 1; negative pads crop the padding)."""
    win, out = g.win, None
    for m, p in _window.offsets(win):
        if g.c_in == g.groups:  # sum over each group's outputs of dy * w
            v = (dy * w[m, p, 0]).reshape(*dy.shape[:3], g.c_in, -1).sum(-1)
        elif g.groups == 1:
            v = jnp.matmul(dy, w[m, p].T, precision=precision)
        else:  # (M, G, C_out/G) x (C_in/G, G, C_out/G) -> (M, G, C_in/G)
            wg = w[m, p].reshape(w.shape[2], g.groups, -1)
            v = lax.dot_general(_grouped(dy, g.groups), wg, (((2,), (2,)), ((1,), (1,))),
                                precision=precision)
            v = v.transpose(1, 0, 2).reshape(*dy.shape[:3], g.c_in)
        v = _window.spread(v, m, p, win)
        out = v if out is None else out + v
    return out


def prefer_gemm(g: _checks.Conv, which: str, per_example: bool = False) -> bool:
    """The `impl="auto"` rule: per-offset products where they measured faster inside whole
    training steps, XLA's convolutions elsewhere (experiments/PERFORMANCE.md, rule by rule).

    which: "forward", "dx" or "dw". Products win where each group has one input channel (the
    first layer of a grey-scale net, depthwise layers): XLA:CPU runs those convolutions at a few
    GFLOP/s and cuDNN's grouped convolutions are slow too, while the broadcast form fuses into
    one loop. On the CPU, dx also wins for strides > 1, where the convolution form needs an lhs
    dilation; elsewhere on the CPU, and for dw of a one-channel input, XLA's convolutions win:
    inside a whole step the products' elementwise tails fuse with their neighbours and recompute
    them. A 1x1 convolution with stride 1 and no groups is a single matrix product: on the CPU
    all three of its ops run as one. On GPUs (and TPUs, by the same rule, unmeasured) every op
    of a one-channel-per-group convolution runs as products, every other convolution through
    the backend's library.

    per_example: the rule for one example per call under `vmap` (`train.per_example_grads`).
    There XLA turns each example's dw convolution into one group of a grouped convolution, slow
    on XLA:CPU, while the products become batched matrix products: on the CPU, dw runs as
    products wherever x has more than one channel.
    """
    one_channel = g.c_in // g.groups == 1
    if jax.default_backend() != "cpu":
        return one_channel
    if g.win.size == (1, 1) and g.win.stride == (1, 1) and g.groups == 1:
        return True  # a pointwise convolution is one matrix product
    if per_example and which == "dw" and g.c_in > 1:
        return True
    if which == "forward":
        return one_channel
    if which == "dw":
        return one_channel and g.c_in > 1
    return (one_channel and g.c_in > 1) or max(g.win.stride) > 1
