"""The convolution gradients as shifted matrix products: the `impl="gemm"` alternative.

For each kernel offset (m, p) the forward reads one strided "tap" of the padded input,
`x_tap[n, i, j, c] = x_pad[n, i*s + m*d, j*s + p*d, c]`, so that

    y    = sum_{m,p} x_tap(m, p) @ w[m, p]               (N*O_h*O_w, C_in) @ (C_in, C_out)
    dW[m, p] = x_tap(m, p)^T @ dy                        one (C_in, C_out) GEMM per offset
    dx   = sum_{m,p} spread_{m,p}(dy @ w[m, p]^T)         the adjoint of taking the tap

With groups, each product is batched over the groups. These are the same sums as the
`lax.conv_general_dilated` rules in `jaxcnn.backward`, in another order; XLA:CPU runs them on its
matrix-multiply kernels, which for few channels beat its convolution kernels (see
experiments/PERFORMANCE.md). `prefer_gemm` is the `impl="auto"` rule measured there.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _checks

Array = jax.Array


def _tap(xp: Array, m: int, p: int, win: _checks.Window) -> Array:
    """x_pad[n, i*s + m*d, j*s + p*d, :] for every output (i, j): (N, O_h, O_w, C)."""
    n, _, _, c = xp.shape
    (sh, sw), (dh, dw), (oh, ow) = win.stride, win.dilation, win.spread
    return lax.slice(xp, (0, m * dh, p * dw, 0), (n, m * dh + oh, p * dw + ow, c),
                     (1, sh, sw, 1))


def _grouped(a: Array, groups: int) -> Array:
    """(N, O_h, O_w, C) -> (N * O_h * O_w, groups, C // groups)."""
    return a.reshape(-1, groups, a.shape[-1] // groups)


def dw(x: Array, dy: Array, g: _checks.Conv, precision: Any) -> Array:
    """dW of conv2d: (kh, kw, C_in // groups, C_out), one GEMM per kernel offset."""
    win = g.win
    xp = jnp.pad(x, ((0, 0), *win.pads, (0, 0)))
    taps = []
    for m in range(win.size[0]):
        for p in range(win.size[1]):
            t = _tap(xp, m, p, win)
            if g.groups == 1:  # (C_in, M) @ (M, C_out)
                taps.append(jnp.matmul(t.reshape(-1, t.shape[-1]).T,
                                       dy.reshape(-1, dy.shape[-1]), precision=precision))
            else:  # per group: (C_in/G, M) @ (M, C_out/G) -> (C_in/G, G * C_out/G)
                prod = lax.dot_general(_grouped(t, g.groups), _grouped(dy, g.groups),
                                       (((0,), (0,)), ((1,), (1,))), precision=precision)
                taps.append(prod.transpose(1, 0, 2).reshape(prod.shape[1], -1))
    return jnp.stack(taps).reshape(*win.size, *taps[0].shape)


def dx(dy: Array, w: Array, g: _checks.Conv, precision: Any) -> Array:
    """dx of conv2d: (N, H, W, C_in); each offset's `dy @ w[m, p]^T` spread back over the input
    rows that offset read (lax.pad with interior padding s - 1; negative pads crop the padding)."""
    win = g.win
    n, (h, wd) = dy.shape[0], win.in_hw
    out = None
    for m in range(win.size[0]):
        for p in range(win.size[1]):
            if g.groups == 1:
                v = jnp.matmul(dy, w[m, p].T, precision=precision)
            else:  # (M, G, C_out/G) x (C_in/G, G, C_out/G) -> (M, G, C_in/G)
                wg = w[m, p].reshape(w.shape[2], g.groups, -1)
                v = lax.dot_general(_grouped(dy, g.groups), wg, (((2,), (2,)), ((1,), (1,))),
                                    precision=precision)
                v = v.transpose(1, 0, 2).reshape(*dy.shape[:3], -1)
            cfg = [(0, 0, 0)]
            for off, s, d, (lo, _), size, o_s in zip((m, p), win.stride, win.dilation, win.pads,
                                                      (h, wd), win.spread):
                start = off * d - lo  # input row of this offset's first tap
                cfg.append((start, size - start - o_s, s - 1))
            v = lax.pad(v, jnp.zeros((), v.dtype), [*cfg, (0, 0, 0)])
            out = v if out is None else out + v
    assert out is not None and out.shape == (n, h, wd, w.shape[2] * g.groups)
    return out


def prefer_gemm(g: _checks.Conv, which: str) -> bool:
    """The `impl="auto"` rule: GEMMs on the CPU where they measured faster, else convolutions.

    Measured (experiments/PERFORMANCE.md) on XLA:CPU, jax 0.10.2: the GEMM form of dW wins when
    each tap's contraction is short in channels (C_in/groups <= 16) but not 1 (a 1-channel tap
    makes each GEMM a matrix-vector product); the GEMM form of dx wins for C_out/groups <= 32
    and always for strides > 1, where the convolution form needs an lhs dilation XLA:CPU runs on
    a slow path. Elsewhere (GPUs, TPUs) the convolution libraries are kept.
    """
    if jax.default_backend() != "cpu":
        return False
    if which == "dw":
        return 2 <= g.c_in // g.groups <= 16
    return g.c_out // g.groups <= 32 or max(g.win.stride) > 1
