"""The rules of `jaxcnn/forward/conv.py`: dx, dw and db of a convolution.

One contraction, three transposes. The forward is a single sum over the padded input,

    y[n, i, o] = sum_{m, c} x_pad[n, i*s + m*d, c] * w[m, c, o]      (one spatial axis shown)

and each gradient is the same sum with another operand left free (the view JAX's own
convolution transpose rules take of their two transposes):

  * dw keeps (m, c, o) free and contracts dy with x over (n, i):
        dw[m, c, o] = sum_{n, i} x_pad[n, i*s + m*d, c] * dy[n, i, o]
    a correlation of x with dy, where dy plays the kernel: its taps are s apart (rhs dilation
    s) and the offsets m are d apart (window stride d);
  * dx keeps (n, h, c) free and contracts dy with w over (i, o), for every input row h:
        dx[n, h, c] = sum_{i, m : i*s + m*d - lo = h} sum_o dy[n, i, o] * w[m, c, o]
    Put dy on the stride grid (lhs dilation s: row i goes to i*s, zeros between), and the
    condition reads h + lo - m*d = i*s: a correlation of the spread dy with the kernel flipped
    in m (rot180) and its channels swapped (c <-> o), padded by k_eff - 1 - lo in front. Rows h
    that no (i, m) reaches get exactly zero;
  * db contracts dy over (n, i): db[o] = sum_{n, i} dy[n, i, o].

The worked example's `dW1 = conv(X, dZ1)` and `dB1 = sum(dZ1)` are the first and last lines.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _geometry, fast
from jaxcnn._geometry import Padding
from jaxcnn._precision import precision_of
from jaxcnn.backward._upstream import upstream
from jaxcnn.forward.conv import rot180

Array = jax.Array

__all__ = ["conv2d", "convolve2d"]


def conv2d(dy: Array, x: Array, w: Array, *, stride: int | tuple[int, int] = 1,
           padding: Padding = "VALID", dilation: int | tuple[int, int] = 1, groups: int = 1,
           precision: Any = None, impl: str = "conv") -> tuple[Array, Array, Array]:
    """Gradients of `forward.conv2d(x, w, b)`.

      dx = the "full" correlation of dy, spread over the stride grid, with w rotated 180 degrees
           and its in/out channels swapped ("a convolution with the flipped kernel");
      dw = the correlation of x with dy (the worked example's `dW1 = conv(X, dZ1)`);
      db = dy summed over N, H, W (`dB1 = sum(dZ1)`), returned even without a bias.

    Args:
      dy: (N, O_h, O_w, C_out), the upstream gradient.
      x: (N, H, W, C_in); w: (kh, kw, C_in // groups, C_out); the forward's options.
      impl: "conv" (default) computes dx and dw as the `lax.conv_general_dilated` calls below;
        "gemm" as one matrix product per kernel offset (`jaxcnn.fast.products`); "auto" picks,
        for dx and dw separately, the form measured faster (`jaxcnn.fast.auto`). All three give
        the same sums, in different orders.

    Returns:
      (dx (N, H, W, C_in), dw (kh, kw, C_in // groups, C_out), db (C_out,)).
    """
    return _conv_grads("backward.conv2d", dy, x, w, stride, padding, dilation, groups,
                       precision, impl)


def _conv_grads(fn: str, dy: Array, x: Array, w: Array, stride: Any, padding: Padding,
                dilation: Any, groups: int, precision: Any,
                impl: str) -> tuple[Array, Array, Array]:
    g = _geometry.conv(fn, x, w, stride, padding, dilation, groups)
    upstream(fn, dy, x, g.out_shape, "the forward output")
    precision = precision_of(precision)
    dx = (fast.products.dx(dy, w, g, precision) if fast.uses_products(fn, impl, g, "dx")
          else conv_dx(dy, w, g, precision))
    dw = (fast.products.dw(x, dy, g, precision) if fast.uses_products(fn, impl, g, "dw")
          else conv_dw(x, dy, g, precision))
    return dx, dw, jnp.sum(dy, axis=(0, 1, 2))


def conv_dx(dy: Array, w: Array, g: _geometry.Conv, precision: Any) -> Array:
    """dx of conv2d for a checked geometry `g`: (N, O_h, O_w, C_out) -> (N, H, W, C_in).

    Per axis: `conv_general_dilated(dy, rot180(w^T), window_strides=1, lhs_dilation=s,
    rhs_dilation=d, padding=(k_eff - 1 - lo, H - O_s + lo))`, `O_s = (O - 1) * s + 1`. The lhs
    dilation spreads dy back over the stride grid; input rows the stride never read receive
    exactly zero. Where XLA would abort on that form (`fast.traps.xla_may_abort`), the same sum
    with the spread done apart from the convolution.
    """
    win, groups = g.win, g.groups
    kh, kw, c_in_g, c_out = w.shape
    # HWIO (kh, kw, C_in/G, C_out) -> (kh, kw, C_in, C_out/G), read as HWOI: the roles of the
    # channels swap, and group j's output block becomes group j's input block.
    wt = (w.reshape(kh, kw, c_in_g, groups, c_out // groups).transpose(0, 1, 3, 2, 4)
          .reshape(kh, kw, groups * c_in_g, c_out // groups))
    params = dx_conv_params(g)
    if params.pop("spread_apart"):
        return fast.traps.spread_apart_conv(dy, rot180(wt), params["padding"], win, groups,
                                            params["dimension_numbers"], precision)
    return lax.conv_general_dilated(dy, rot180(wt), **params, precision=precision)


def dx_conv_params(g: _geometry.Conv) -> dict[str, Any]:
    """The `lax.conv_general_dilated` keyword arguments of `conv_dx` for a checked geometry `g`
    (what `jaxcnn explain` prints), plus `spread_apart`: whether XLA may abort on that form
    (`fast.traps.xla_may_abort`), so that the rule spreads dy apart from the convolution.

    Returns:
      dict(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, spread_apart); padding per axis `(k_eff - 1 - lo, H - O_s + lo)`.
    """
    win = g.win
    pads = [(e - 1 - lo, h - o_s + lo)
            for e, (lo, _), h, o_s in zip(win.eff, win.pads, win.in_hw, win.spread)]
    return dict(window_strides=(1, 1), padding=pads, lhs_dilation=win.stride,
                rhs_dilation=win.dilation, dimension_numbers=("NHWC", "HWOI", "NHWC"),
                feature_group_count=g.groups, spread_apart=fast.traps.xla_may_abort(win))


def conv_dw(x: Array, dy: Array, g: _geometry.Conv, precision: Any) -> Array:
    """dw of conv2d for a checked geometry `g`: -> (kh, kw, C_in // groups, C_out).

    `dw[m, p, c, o] = sum_{n, i, j} x_pad[n, i*s + m*d, j*s + p*d, c] * dy[n, i, j, o]`: a
    correlation of x with dy, batch and channel roles swapped, `window_strides=d`,
    `rhs_dilation=s`, padding `(lo, O_s - H + k_eff - 1 - lo)`; a negative high pad crops the
    input rows the stride skipped. Groups pair x's channel block j with dy's block j
    (`batch_group_count`).
    """
    return lax.conv_general_dilated(x, dy, **dw_conv_params(g), precision=precision)


def dw_conv_params(g: _geometry.Conv) -> dict[str, Any]:
    """The `lax.conv_general_dilated` keyword arguments of `conv_dw` for a checked geometry `g`
    (what `jaxcnn explain` prints).

    Returns:
      dict(window_strides=d, padding, rhs_dilation=s, dimension_numbers, batch_group_count);
      padding per axis `(lo, O_s - H + k_eff - 1 - lo)`.
    """
    win = g.win
    pads = [(lo, o_s - h + e - 1 - lo)
            for (lo, _), o_s, h, e in zip(win.pads, win.spread, win.in_hw, win.eff)]
    return dict(window_strides=win.dilation, padding=pads, rhs_dilation=win.stride,
                dimension_numbers=("CHWN", "IHWO", "HWNC"), batch_group_count=g.groups)


def convolve2d(dy: Array, x: Array, w: Array, *, stride: int | tuple[int, int] = 1,
               padding: Padding = "VALID", dilation: int | tuple[int, int] = 1,
               groups: int = 1, precision: Any = None,
               impl: str = "conv") -> tuple[Array, Array, Array]:
    """Gradients of the true convolution `forward.convolve2d(x, w, b)`.

    The convolution is `conv2d` with `rot180(w)`, so dx is the correlation's dx taken with
    rot180(w) (a correlation of dy with w itself), and dw is rot180 of the correlation's dw
    (the overview's `dL/dF = dL/dO * rot180(I)` read the other way round).

    Args and Returns: as `conv2d`.
    """
    _geometry.array("backward.convolve2d", "w", w, 4, "(kh, kw, C_in // groups, C_out) (HWIO)")
    dx, dw, db = _conv_grads("backward.convolve2d", dy, x, rot180(w), stride, padding, dilation,
                             groups, precision, impl)
    return dx, rot180(dw), db
