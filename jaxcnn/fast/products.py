"""Convolutions and their gradients as shifted matrix products: the `impl="gemm"` formulation.

For each kernel offset (m, p) the forward reads one strided "tap" of the padded input,
`x_tap[n, i, j, c] = x_pad[n, i*s + m*d, j*s + p*d, c]`, so that

    y        = sum_{m,p} x_tap(m, p) @ w[m, p]            (N*O_h*O_w, C_in) @ (C_in, C_out)
    dW[m, p] = x_tap(m, p)^T @ dy                         one (C_in, C_out) GEMM per offset
    dx       = sum_{m,p} spread_{m,p}(dy @ w[m, p]^T)     the adjoint of taking the tap

With groups, each product is batched over the groups. Where every group has a single input
channel (C_in = 1, or depthwise) the products degenerate to broadcast multiplies and sums, which
XLA fuses into one loop. These are the sums of `jaxcnn.forward.conv2d` and of the
`lax.conv_general_dilated` rules in `jaxcnn.backward.conv`, in another order. Which form runs
where is `jaxcnn.fast.auto`'s measured rule.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _geometry, _window

Array = jax.Array


def _padded(x: Array, win: _geometry.Window) -> Array:
    return jnp.pad(x, ((0, 0), *win.pads, (0, 0)))


def _per_output_channel(t: Array, g: _geometry.Conv) -> Array:
    """A one-channel-per-group tap (..., C_in) repeated to line up with the outputs (..., C_out):
    output channel o reads input channel o // (C_out / groups)."""
    return jnp.repeat(t, g.c_out // g.groups, axis=-1) if g.c_in > 1 else t


def _grouped(a: Array, groups: int) -> Array:
    """(N, O_h, O_w, C) -> (N * O_h * O_w, groups, C // groups)."""
    return a.reshape(-1, groups, a.shape[-1] // groups)


def forward(x: Array, w: Array, g: _geometry.Conv, precision: Any) -> Array:
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
    return computed_once(out) if g.c_in == g.groups else out


def computed_once(y: Array) -> Array:
    """y itself, as the product y @ I on the CPU, so that XLA computes it once.

    XLA:CPU fuses a cheap elementwise producer, such as the broadcast form's k*k-term sum, into
    every elementwise consumer and recomputes it there: in LeNet-5's step the ReLU mask and the
    max-pool backward recomputed conv1's 25-term sums for every element they read (2.4 ms of a
    12 ms step). It never fuses a matrix product into its consumers, and it removes
    optimization barriers before fusion, so the product is the barrier that holds. Exact for
    finite y (y_j * 1 plus exact zeros, at HIGHEST precision); an infinite y_j, an overflowed
    sum, turns the other channels of its pixel into NaN.
    """
    if jax.default_backend() != "cpu":
        return y
    return jnp.matmul(y, jnp.eye(y.shape[-1], dtype=y.dtype), precision=lax.Precision.HIGHEST)


def dw(x: Array, dy: Array, g: _geometry.Conv, precision: Any) -> Array:
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


def dx(dy: Array, w: Array, g: _geometry.Conv, precision: Any) -> Array:
    """dx of conv2d: (N, H, W, C_in); each offset's `dy @ w[m, p]^T` spread back over the input
    rows that offset read (lax.pad with interior padding s - 1; negative pads crop the padding).
    Without groups the k*k products are one: `dy @ [w[0, 0]^T | w[0, 1]^T | ...]`, (M, C_out) @
    (C_out, k*k*C_in), then spread offset by offset (col2im)."""
    win, out = g.win, None
    if g.groups == 1 and g.c_in > 1:
        kh, kw, c_in, c_out = w.shape
        z = jnp.matmul(dy, w.transpose(3, 0, 1, 2).reshape(c_out, kh * kw * c_in),
                       precision=precision).reshape(*dy.shape[:3], kh, kw, c_in)
    for m, p in _window.offsets(win):
        if g.c_in == g.groups:  # sum over each group's outputs of dy * w
            v = (dy * w[m, p, 0]).reshape(*dy.shape[:3], g.c_in, -1).sum(-1)
        elif g.groups == 1:
            v = z[..., m, p, :]
        else:  # (M, G, C_out/G) x (C_in/G, G, C_out/G) -> (M, G, C_in/G)
            wg = w[m, p].reshape(w.shape[2], g.groups, -1)
            v = lax.dot_general(_grouped(dy, g.groups), wg, (((2,), (2,)), ((1,), (1,))),
                                precision=precision)
            v = v.transpose(1, 0, 2).reshape(*dy.shape[:3], g.c_in)
        v = _window.spread(v, m, p, win)
        out = v if out is None else out + v
    return computed_once(out)
