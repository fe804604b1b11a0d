"""Convolutions: the cross-correlations `conv1d`, `conv2d`, `conv3d`, the true convolution
`convolve2d`, and the transposed convolutions `conv_transpose1d`, `conv_transpose2d`,
`conv_transpose3d`.

Their rules are in `jaxcnn/backward/conv.py`, beside the same maths. A transposed convolution
is the dX rule of the convolution it transposes, so that rule's computation (`dx_conv_params`,
`dx_conv`) lives here, below both: `backward.conv` takes dx of conv{1,2,3}d from it, the
forward of conv_transpose{1,2,3}d is it.
"""

from __future__ import annotations

from typing import Any

import jax
from jax import lax

from jaxcnn import _geometry, fast
from jaxcnn._geometry import Padding
from jaxcnn._precision import precision_of

Array = jax.Array
NHWC = ("NHWC", "HWIO", "NHWC")
SPATIAL = {1: "W", 2: "HW", 3: "DHW"}  # the letters of the spatial axes in dimension numbers
IMPLS = fast.IMPLS  # the formulations a conv op or layer can run: "conv", "gemm", "auto"
check_impl = fast.check_impl
per_example_rule = fast.per_example_rule  # the context per_example_grads traces under
Ints = int | tuple[int, ...]

__all__ = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "convolve2d"]


def channels_last(n: int, kernel: str = "IO") -> tuple[str, str, str]:
    """Dimension numbers of a channels-last convolution on n spatial axes: ("NHWC", "HWIO",
    "NHWC") for n = 2 and kernel "IO"; kernel "OI" reads w with its channel axes swapped."""
    sp = SPATIAL[n]
    return f"N{sp}C", f"{sp}{kernel}", f"N{sp}C"


def uses_products(fn: str, impl: str, g: _geometry.Conv, which: str) -> bool:
    """`fast.uses_products` for a 2-D convolution. The per-offset products (fast/) are 2-D only:
    on 1 or 3 spatial axes `impl` is still checked, and every impl runs the XLA form."""
    if len(g.win.size) != 2:
        check_impl(fn, impl)
        return False
    return fast.uses_products(fn, impl, g, which)


def conv_forward(x: Array, w: Array, g: _geometry.Conv, precision: Any) -> Array:
    """y = the cross-correlation of x with w (no bias) for a checked geometry `g`, any number of
    spatial axes: one `lax.conv_general_dilated` (for 2-D exactly conv2d's call)."""
    win = g.win
    return lax.conv_general_dilated(
        x, w, win.stride, win.pads, rhs_dilation=win.dilation,
        dimension_numbers=channels_last(len(win.size)), feature_group_count=g.groups,
        precision=precision)


def conv2d(x: Array, w: Array, b: Array | None = None, *, stride: int | tuple[int, int] = 1,
           padding: Padding = "VALID", dilation: int | tuple[int, int] = 1, groups: int = 1,
           precision: Any = None, impl: str = "conv") -> Array:
    """2-D cross-correlation, what deep learning calls convolution.

    `y[n, i, j, o] = b[o] + sum_{m, p, c} x_pad[n, i*s + m*d, j*s + p*d, g*C_in/groups + c]
    * w[m, p, c, o]`, with `g` the group of output channel `o` (the worked example's
    `Z1 = conv(X, W1) + B1`).

    Args:
      x: (N, H, W, C_in).
      w: (kh, kw, C_in // groups, C_out). `groups == C_in` with `C_out = k * C_in` is depthwise.
      b: optional (C_out,).
      stride, dilation: int or (h, w) pair, >= 1.
      padding: "VALID", "SAME" (as XLA pads), int p, pair (ph, pw) (symmetric per axis, as torch
        reads it), or explicit ((top, bottom), (left, right)).
      precision: of the products (see `jaxcnn._precision.precision_of`).
      impl: "conv" (`lax.conv_general_dilated`, the default), "gemm" (one product per kernel
        offset, `jaxcnn.fast.products`), or "auto" (the form measured faster for this backend
        and shape, `jaxcnn.fast.auto`).

    Returns:
      y: (N, O_h, O_w, C_out), `O = (H + lo + hi - k_eff) // s + 1`, `k_eff = (k - 1) * d + 1`.
    """
    g = _geometry.conv("conv2d", x, w, stride, padding, dilation, groups, b)
    precision = precision_of(precision)
    if fast.uses_products("conv2d", impl, g, "forward"):
        y = fast.products.forward(x, w, g, precision)
    else:
        y = conv_forward(x, w, g, precision)
    return y if b is None else y + b


def conv1d(x: Array, w: Array, b: Array | None = None, *, stride: Ints = 1,
           padding: Padding = "VALID", dilation: Ints = 1, groups: int = 1,
           precision: Any = None, impl: str = "conv") -> Array:
    """1-D cross-correlation: `y[n, i, o] = b[o] + sum_{m, c} x_pad[n, i*s + m*d, c] * w[m, c, o]`
    (grouped as conv2d).

    Args:
      x: (N, W, C_in); w: (kw, C_in // groups, C_out); b: optional (C_out,).
      stride, dilation: int or (s,), >= 1 (a tuple has one entry).
      padding: "VALID", "SAME", int p, (p,), or ((lo, hi),).
      precision: as conv2d.
      impl: checked as conv2d's; the per-offset products are 2-D, so every impl runs
        `lax.conv_general_dilated` here.

    Returns:
      y: (N, O, C_out), `O = (W + lo + hi - k_eff) // s + 1`.
    """
    return _conv_nd("conv1d", 1, x, w, b, stride, padding, dilation, groups, precision, impl)


def conv3d(x: Array, w: Array, b: Array | None = None, *, stride: Ints = 1,
           padding: Padding = "VALID", dilation: Ints = 1, groups: int = 1,
           precision: Any = None, impl: str = "conv") -> Array:
    """3-D cross-correlation: `y[n, i, j, l, o] = b[o] + sum x_pad[n, i*s_d + m*d_d,
    j*s_h + p*d_h, l*s_w + q*d_w, c] * w[m, p, q, c, o]` (grouped as conv2d).

    Args:
      x: (N, D, H, W, C_in); w: (kd, kh, kw, C_in // groups, C_out); b: optional (C_out,).
      stride, dilation: int or (d, h, w), >= 1.
      padding: "VALID", "SAME", int p, (pd, ph, pw), or ((lo, hi), (lo, hi), (lo, hi)).
      precision, impl: as conv1d (every impl runs `lax.conv_general_dilated`).

    Returns:
      y: (N, O_d, O_h, O_w, C_out).
    """
    return _conv_nd("conv3d", 3, x, w, b, stride, padding, dilation, groups, precision, impl)


def _conv_nd(fn: str, spatial: int, x: Array, w: Array, b: Array | None, stride: Any,
             padding: Padding, dilation: Any, groups: int, precision: Any, impl: str) -> Array:
    g = _geometry.conv(fn, x, w, stride, padding, dilation, groups, b, spatial=spatial)
    uses_products(fn, impl, g, "forward")  # checks impl; False off two axes
    y = conv_forward(x, w, g, precision_of(precision))
    return y if b is None else y + b


def rot180(w: Array) -> Array:
    """The kernel rotated by 180 degrees in its two spatial axes (`rot180` of the overview)."""
    return w[::-1, ::-1]


def flip(w: Array, n: int) -> Array:
    """The kernel reversed along its n spatial axes (rot180 for n = 2)."""
    return w[(slice(None, None, -1),) * n]


def convolve2d(x: Array, w: Array, b: Array | None = None, *,
               stride: int | tuple[int, int] = 1, padding: Padding = "VALID",
               dilation: int | tuple[int, int] = 1, groups: int = 1,
               precision: Any = None, impl: str = "conv") -> Array:
    """True 2-D convolution: the cross-correlation `conv2d` with the kernel rotated 180 degrees.

    `y[n, i, j, o] = b[o] + sum x_pad[n, i*s + m*d, j*s + p*d, c] * w[kh-1-m, kw-1-p, c, o]`
    ("convolution is the same as cross-correlation with a flipped kernel").

    Args and Returns: as `conv2d`: x (N, H, W, C_in), w (kh, kw, C_in // groups, C_out), b
    (C_out,) -> y (N, O_h, O_w, C_out).
    """
    _geometry.conv("convolve2d", x, w, stride, padding, dilation, groups, b)
    return conv2d(x, rot180(w), b, stride=stride, padding=padding, dilation=dilation,
                  groups=groups, precision=precision, impl=impl)


# ----------------------------------------------------------------------------- the dX rule
def dx_conv_params(g: _geometry.Conv) -> dict[str, Any]:
    """The `lax.conv_general_dilated` keyword arguments of the conv dX rule for a checked
    geometry `g` (what `jaxcnn explain` prints, as `backward.conv.dx_conv_params`), plus
    `spread_apart`: whether the rule spreads dy apart from the convolution, where XLA may abort
    on the lhs-dilated form (`fast.traps.xla_may_abort`) or, on 3 axes, where that measured
    faster (`spread_is_faster`; never on 1 or 2 axes).

    Returns:
      dict(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, spread_apart); padding per axis `(k_eff - 1 - lo, H - O_s + lo)`.
    """
    win = g.win
    pads = [(e - 1 - lo, h - o_s + lo)
            for e, (lo, _), h, o_s in zip(win.eff, win.pads, win.in_hw, win.spread)]
    return dict(window_strides=(1,) * len(pads), padding=pads, lhs_dilation=win.stride,
                rhs_dilation=win.dilation, dimension_numbers=channels_last(len(pads), "OI"),
                feature_group_count=g.groups,
                spread_apart=fast.traps.xla_may_abort(win) or spread_is_faster(g))


def spread_is_faster(g: _geometry.Conv) -> bool:
    """Whether the conv dX rule (conv3d's dx, conv_transpose3d's forward) runs faster with dy
    spread explicitly (`fast.traps.spread_apart_conv`) than as the lhs-dilated convolution.

    Measured on XLA:CPU (jaxlib 0.10.2, float32, jit, XLA's default flags; lhs-dilated vs spread,
    ms): conv_transpose3d of x (2, 8, 8, 8, 16) -> 8 channels, stride 2, kernel 3: 36.5 vs 8.4;
    kernel 4: 90.2 vs 20.1; (4, 12, 12, 12, 32) -> 16: 546.5 vs 125.8; 2 groups (8 dy channels
    each): 31.0 vs 7.4; 4 per group: 49.4 vs 33.4; but 2 per group: 44.7 vs 55.2, depthwise:
    32.4 vs 48.7, one dy channel: 2.4 vs 3.0. On 1 and 2 axes the lhs-dilated form wins (2-D
    (16, 32, 32, 64), kernel 3, stride 2: 12.8 vs 96.8 ms; 1-D (32, 1024, 64): 5.7 vs 7.9), and
    with stride 1 the two are the same convolution. Elsewhere than the CPU: unmeasured, False.

    So: 3 spatial axes, a stride > 1 and at least 4 channels of dy (g.c_out) per group.
    """
    return (len(g.win.size) == 3 and max(g.win.stride) > 1 and g.c_out // g.groups >= 4
            and jax.default_backend() == "cpu")


def dx_conv(dy: Array, w: Array, g: _geometry.Conv, precision: Any,
            params: dict[str, Any]) -> Array:
    """The conv dX rule: (N, *O, C_out) -> (N, *H, C_in) for a checked geometry `g` and its
    `dx_conv_params` (see `backward.conv.conv_dx` for the maths).

    The correlation of dy, spread over the stride grid (lhs dilation s), with w flipped along
    every spatial axis and its channels regrouped: (*k, C_in/G, C_out) -> (*k, C_in, C_out/G),
    read with I and O swapped, so group j's output block becomes group j's input block. Where
    `params["spread_apart"]`, the same sum with the spread done apart (`fast.traps`).
    """
    n, groups = len(g.win.size), g.groups
    *k, c_in_g, c_out = w.shape
    wt = (w.reshape(*k, c_in_g, groups, c_out // groups)
          .transpose(*range(n), n + 1, n, n + 2).reshape(*k, groups * c_in_g, c_out // groups))
    params = dict(params)
    if params.pop("spread_apart"):
        return fast.traps.spread_apart_conv(dy, flip(wt, n), params["padding"], g.win, groups,
                                            params["dimension_numbers"], precision)
    return lax.conv_general_dilated(dy, flip(wt, n), **params, precision=precision)


# ----------------------------------------------------------------------------- transposed
def conv_transpose1d(x: Array, w: Array, b: Array | None = None, *, stride: Ints = 1,
                     padding: Ints = 0, output_padding: Ints = 0, dilation: Ints = 1,
                     groups: int = 1) -> Array:
    """1-D transposed convolution (torch's `conv_transpose1d`, channels-last).

    The scatter-add `y[n, i*s + m*d - p, g, o] += sum_c x[n, i, g, c] * w[m, o, g, c]` (per group
    g of the channels), i.e. the dX of `conv1d(y, w, padding=p)`: the correlation of x, spread
    over the stride grid, with w flipped and its channels swapped (`dx_conv`).

    Args:
      x: (N, W, C_in).
      w: (kw, C_out // groups, C_in): the kernel of the convolution this one transposes (torch's
        weight (C_in, C_out // groups, kw) with its axes moved).
      b: optional (C_out,).
      stride, dilation: int or (s,), >= 1.
      padding: int or (p,), >= 0, symmetric: the transposed convolution's padding.
      output_padding: int or (op,), 0 <= op < max(stride, dilation): rows added at the end,
        picking the output size the stride left ambiguous.
      groups: as conv1d (C_in and C_out divisible by it).

    Returns:
      y: (N, O, C_out), `O = (W - 1) * s - 2 * p + d * (k - 1) + output_padding + 1`.
    """
    return _conv_transpose("conv_transpose1d", 1, x, w, b, stride, padding, output_padding,
                           dilation, groups)


def conv_transpose2d(x: Array, w: Array, b: Array | None = None, *, stride: Ints = 1,
                     padding: Ints = 0, output_padding: Ints = 0, dilation: Ints = 1,
                     groups: int = 1) -> Array:
    """2-D transposed convolution (torch's `conv_transpose2d`, channels-last): the dX of
    `conv2d(y, w, padding=p)`, so that `conv_transpose2d(dy, w, padding=p)` is conv2d's dx for
    output_padding < stride (output_padding picks which input size).

    Args:
      x: (N, H, W, C_in); w: (kh, kw, C_out // groups, C_in), the kernel of the convolution
        transposed (torch's (C_in, C_out // groups, kh, kw) with its axes moved); b: (C_out,).
      stride, dilation: int or (h, w) pair, >= 1; padding: int or (ph, pw), >= 0, symmetric;
      output_padding: int or pair, each < max(stride, dilation) on its axis; groups: as conv2d.

    Returns:
      y: (N, O_h, O_w, C_out), `O = (H - 1) * s - 2 * p + d * (k - 1) + output_padding + 1`.
    """
    return _conv_transpose("conv_transpose2d", 2, x, w, b, stride, padding, output_padding,
                           dilation, groups)


def conv_transpose3d(x: Array, w: Array, b: Array | None = None, *, stride: Ints = 1,
                     padding: Ints = 0, output_padding: Ints = 0, dilation: Ints = 1,
                     groups: int = 1) -> Array:
    """3-D transposed convolution (torch's `conv_transpose3d`, channels-last): the dX of
    `conv3d(y, w, padding=p)`.

    Args:
      x: (N, D, H, W, C_in); w: (kd, kh, kw, C_out // groups, C_in); b: optional (C_out,).
      stride, dilation, padding, output_padding: an int or 3 ints (d, h, w), as
        conv_transpose2d; groups: as conv3d.

    Returns:
      y: (N, O_d, O_h, O_w, C_out), O per axis as conv_transpose2d.
    """
    return _conv_transpose("conv_transpose3d", 3, x, w, b, stride, padding, output_padding,
                           dilation, groups)


def _conv_transpose(fn: str, spatial: int, x: Array, w: Array, b: Array | None, stride: Any,
                    padding: Any, output_padding: Any, dilation: Any, groups: int) -> Array:
    t = _geometry.conv_transpose(fn, x, w, stride, padding, output_padding, dilation, groups, b,
                                 spatial=spatial)
    y = dx_conv(x, w, t.conv, precision_of(None), dx_conv_params(t.conv))
    return y if b is None else y + b
