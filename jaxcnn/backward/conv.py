"""The rules of `jaxcnn/forward/conv.py`: dx, dw and db of a convolution (1, 2 or 3 spatial axes)
and of a transposed convolution.

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
Every spatial axis adds its own (m, i) pair to the sums; the rules are one call for any number.

A transposed convolution `y = conv_transpose(x, w)` (torch's, channels-last) is the dx rule
above applied to x, for the convolution `conv(y, w)` it transposes (pads (p, p - op) per axis:
its input then has exactly the transposed output's size O):

    y[n, h, o] = sum_{i, m : i*s + m*d - p = h} sum_c x[n, i, c] * w[m, o, c]

so its rules are that convolution's other two rules:

  * dx keeps (n, i, c) free: dx[n, i, c] = sum_{m, o} dy_pad[n, i*s + m*d, o] * w[m, o, c], the
    forward convolution of dy with w, pads (p, p - output_padding). The last output_padding
    rows of y are reached by no x element (only the bias), so no dx reads them: where
    output_padding > p the high pad is negative and crops them;
  * dw keeps (m, o, c) free: dw[m, o, c] = sum_{n, i} dy_pad[n, i*s + m*d, o] * x[n, i, c], the
    conv dW rule with the roles of x and dy exchanged;
  * db[o] = sum_{n, h} dy[n, h, o].
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
from jaxcnn.forward.conv import (
    SPATIAL,
    Ints,
    conv_forward,
    dx_conv,
    dx_conv_params,
    rot180,
    uses_products,
)

Array = jax.Array

__all__ = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "convolve2d"]


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


def conv1d(dy: Array, x: Array, w: Array, *, stride: Ints = 1, padding: Padding = "VALID",
           dilation: Ints = 1, groups: int = 1, precision: Any = None,
           impl: str = "conv") -> tuple[Array, Array, Array]:
    """Gradients of `forward.conv1d(x, w, b)`: conv2d's rules on one spatial axis.

    Args:
      dy: (N, O, C_out); x: (N, W, C_in); w: (kw, C_in // groups, C_out); the forward's options
        (impl checked; every impl runs the `lax.conv_general_dilated` rules below).

    Returns:
      (dx (N, W, C_in), dw (kw, C_in // groups, C_out), db (C_out,)).
    """
    return _conv_grads("backward.conv1d", dy, x, w, stride, padding, dilation, groups,
                       precision, impl, spatial=1)


def conv3d(dy: Array, x: Array, w: Array, *, stride: Ints = 1, padding: Padding = "VALID",
           dilation: Ints = 1, groups: int = 1, precision: Any = None,
           impl: str = "conv") -> tuple[Array, Array, Array]:
    """Gradients of `forward.conv3d(x, w, b)`: conv2d's rules on three spatial axes.

    Args:
      dy: (N, O_d, O_h, O_w, C_out); x: (N, D, H, W, C_in); w: (kd, kh, kw, C_in // groups,
        C_out); the forward's options (impl checked, as conv1d).

    Returns:
      (dx (N, D, H, W, C_in), dw (kd, kh, kw, C_in // groups, C_out), db (C_out,)).
    """
    return _conv_grads("backward.conv3d", dy, x, w, stride, padding, dilation, groups,
                       precision, impl, spatial=3)


def _conv_grads(fn: str, dy: Array, x: Array, w: Array, stride: Any, padding: Padding,
                dilation: Any, groups: int, precision: Any, impl: str,
                spatial: int = 2) -> tuple[Array, Array, Array]:
    g = _geometry.conv(fn, x, w, stride, padding, dilation, groups, spatial=spatial)
    upstream(fn, dy, x, g.out_shape, "the forward output")
    precision = precision_of(precision)
    dx = (fast.products.dx(dy, w, g, precision) if uses_products(fn, impl, g, "dx")
          else conv_dx(dy, w, g, precision))
    dw = (fast.products.dw(x, dy, g, precision) if uses_products(fn, impl, g, "dw")
          else conv_dw(x, dy, g, precision))
    return dx, dw, jnp.sum(dy, axis=tuple(range(spatial + 1)))


def conv_dx(dy: Array, w: Array, g: _geometry.Conv, precision: Any) -> Array:
    """dx of a convolution for a checked geometry `g`: (N, *O, C_out) -> (N, *H, C_in).

    Per axis: `conv_general_dilated(dy, rot180(w^T), window_strides=1, lhs_dilation=s,
    rhs_dilation=d, padding=(k_eff - 1 - lo, H - O_s + lo))`, `O_s = (O - 1) * s + 1`, the kernel
    flipped along every spatial axis. The lhs dilation spreads dy back over the stride grid;
    input rows the stride never read receive exactly zero. Where XLA would abort on that form
    (`fast.traps.xla_may_abort`), the same sum with the spread done apart from the convolution.
    The computation is `forward.conv.dx_conv` (the forward of a transposed convolution), with
    the keyword arguments `dx_conv_params(g)`.
    """
    return dx_conv(dy, w, g, precision, dx_conv_params(g))


def conv_dw(x: Array, dy: Array, g: _geometry.Conv, precision: Any) -> Array:
    """dw of a convolution for a checked geometry `g`: -> (*k, C_in // groups, C_out).

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
    sp = SPATIAL[len(pads)]
    return dict(window_strides=win.dilation, padding=pads, rhs_dilation=win.stride,
                dimension_numbers=(f"C{sp}N", f"I{sp}O", f"{sp}NC"), batch_group_count=g.groups)


def convolve2d(dy: Array, x: Array, w: Array, *, stride: int | tuple[int, int] = 1,
               padding: Padding = "VALID", dilation: int | tuple[int, int] = 1,
               groups: int = 1, precision: Any = None,
               impl: str = "conv") -> tuple[Array, Array, Array]:
    """Gradients of the true convolution `forward.convolve2d(x, w, b)`.

    The convolution is `conv2d` with `rot180(w)`, so dx is the correlation's dx taken with
    rot180(w) (a correlation of dy with w itself), and dw is rot180 of the correlation's dw
    (the overview's `dL/dF = dL/dO * rot180(I)` read the other way round).

    Args and Returns: as `conv2d`: dy (N, O_h, O_w, C_out), x (N, H, W, C_in), w (kh, kw,
    C_in // groups, C_out) -> (dx (N, H, W, C_in), dw (kh, kw, C_in // groups, C_out), db
    (C_out,)).
    """
    _geometry.array("backward.convolve2d", "w", w, 4, "(kh, kw, C_in // groups, C_out) (HWIO)")
    dx, dw, db = _conv_grads("backward.convolve2d", dy, x, rot180(w), stride, padding, dilation,
                             groups, precision, impl)
    return dx, rot180(dw), db


# ----------------------------------------------------------------------------- transposed
def conv_transpose1d(dy: Array, x: Array, w: Array, *, stride: Ints = 1, padding: Ints = 0,
                     output_padding: Ints = 0, dilation: Ints = 1,
                     groups: int = 1) -> tuple[Array, Array, Array]:
    """Gradients of `forward.conv_transpose1d(x, w, b)` (see the module docstring).

      dx = conv1d(dy, w) with pads (p, p - output_padding): the convolution transposed;
      dw = the conv dW rule with x and dy exchanged: sum_{n,i} dy_pad[n, i*s + m*d, o] x[n, i, c];
      db = dy summed over N and W.

    Args:
      dy: (N, O, C_out); x: (N, W, C_in); w: (kw, C_out // groups, C_in); the forward's options.

    Returns:
      (dx (N, W, C_in), dw (kw, C_out // groups, C_in), db (C_out,)).
    """
    return _conv_transpose_grads("backward.conv_transpose1d", 1, dy, x, w, stride, padding,
                                 output_padding, dilation, groups)


def conv_transpose2d(dy: Array, x: Array, w: Array, *, stride: Ints = 1, padding: Ints = 0,
                     output_padding: Ints = 0, dilation: Ints = 1,
                     groups: int = 1) -> tuple[Array, Array, Array]:
    """Gradients of `forward.conv_transpose2d(x, w, b)`: dx = conv2d(dy, w) with pads
    (p, p - output_padding) per axis, dw = the conv dW rule with x and dy exchanged, db = dy
    summed over N, H, W.

    Args:
      dy: (N, O_h, O_w, C_out); x: (N, H, W, C_in); w: (kh, kw, C_out // groups, C_in); the
        forward's options.

    Returns:
      (dx (N, H, W, C_in), dw (kh, kw, C_out // groups, C_in), db (C_out,)).
    """
    return _conv_transpose_grads("backward.conv_transpose2d", 2, dy, x, w, stride, padding,
                                 output_padding, dilation, groups)


def conv_transpose3d(dy: Array, x: Array, w: Array, *, stride: Ints = 1, padding: Ints = 0,
                     output_padding: Ints = 0, dilation: Ints = 1,
                     groups: int = 1) -> tuple[Array, Array, Array]:
    """Gradients of `forward.conv_transpose3d(x, w, b)`: the rules of conv_transpose2d on three
    spatial axes.

    Args:
      dy: (N, O_d, O_h, O_w, C_out); x: (N, D, H, W, C_in); w: (kd, kh, kw, C_out // groups,
        C_in); the forward's options.

    Returns:
      (dx (N, D, H, W, C_in), dw (kd, kh, kw, C_out // groups, C_in), db (C_out,)).
    """
    return _conv_transpose_grads("backward.conv_transpose3d", 3, dy, x, w, stride, padding,
                                 output_padding, dilation, groups)


def _conv_transpose_grads(fn: str, spatial: int, dy: Array, x: Array, w: Array, stride: Any,
                          padding: Any, output_padding: Any, dilation: Any,
                          groups: int) -> tuple[Array, Array, Array]:
    t = _geometry.conv_transpose(fn, x, w, stride, padding, output_padding, dilation, groups,
                                 spatial=spatial)
    upstream(fn, dy, x, t.out_shape, "the forward output")
    precision = precision_of(None)
    dx = conv_forward(dy, w, t.conv, precision)  # the transposed convolution, forward
    dw = conv_dw(dy, x, t.conv, precision)  # its dW rule, x and dy exchanged
    return dx, dw, jnp.sum(dy, axis=tuple(range(spatial + 1)))
