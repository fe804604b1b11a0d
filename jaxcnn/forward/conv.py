"""Convolutions: the cross-correlation `conv2d` and the true convolution `convolve2d`.

Their rules are in `jaxcnn/backward/conv.py`, beside the same maths.
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
IMPLS = fast.IMPLS  # the formulations a conv op or layer can run: "conv", "gemm", "auto"
check_impl = fast.check_impl
per_example_rule = fast.per_example_rule  # the context per_example_grads traces under

__all__ = ["conv2d", "convolve2d"]


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
        y = lax.conv_general_dilated(
            x, w, g.win.stride, g.win.pads, rhs_dilation=g.win.dilation,
            dimension_numbers=NHWC, feature_group_count=g.groups, precision=precision)
    return y if b is None else y + b


def rot180(w: Array) -> Array:
    """The kernel rotated by 180 degrees in its two spatial axes (`rot180` of the overview)."""
    return w[::-1, ::-1]


def convolve2d(x: Array, w: Array, b: Array | None = None, *,
               stride: int | tuple[int, int] = 1, padding: Padding = "VALID",
               dilation: int | tuple[int, int] = 1, groups: int = 1,
               precision: Any = None, impl: str = "conv") -> Array:
    """True 2-D convolution: the cross-correlation `conv2d` with the kernel rotated 180 degrees.

    `y[n, i, j, o] = b[o] + sum x_pad[n, i*s + m*d, j*s + p*d, c] * w[kh-1-m, kw-1-p, c, o]`
    ("convolution is the same as cross-correlation with a flipped kernel").

    Args and Returns: as `conv2d`.
    """
    _geometry.conv("convolve2d", x, w, stride, padding, dilation, groups, b)
    return conv2d(x, rot180(w), b, stride=stride, padding=padding, dilation=dilation,
                  groups=groups, precision=precision, impl=impl)
