"""Pooling: max, average and L2-norm pooling over windows of an (N, *spatial, C) input with 1, 2
or 3 spatial axes ((N, L, C), (N, H, W, C), (N, D, H, W, C)), and global average pooling over
every spatial axis.

Window, stride and padding take one entry per spatial axis (an int means the same on every
axis): on 1 axis window (2,) and padding ((lo, hi),); a pair (a, b) there is an error."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _geometry
from jaxcnn._geometry import Padding

Array = jax.Array

__all__ = ["avg_pool", "global_avg_pool", "l2_pool", "max_pool"]


def _reduce_window(x: Array, init: float, op: Any, win: _geometry.Window) -> Array:
    return lax.reduce_window(x, init, op, (1, *win.size, 1), (1, *win.stride, 1),
                             ((0, 0), *win.pads, (0, 0)))


def max_pool(x: Array, *, window: int | tuple[int, ...] = 2,
             stride: int | tuple[int, ...] | None = None, padding: Padding = "VALID") -> Array:
    """Max pooling (the worked example's `P1 = MaxPool(A1)`): `y = max over each window`.

    Pads with -inf. Overlapping windows (stride < window) are allowed; every pad must be smaller
    than the window. Written as `lax.reduce_window` with a Python-scalar init so that `jax.grad`
    takes XLA's select-and-scatter path, whose tie rule `backward.max_pool` copies.

    Args:
      x: (N, *spatial, C) with 1, 2 or 3 spatial axes.
      window, stride: an int or one int per spatial axis ((h, w) on 2); stride None means =
        window.
      padding: as `conv2d`, with one entry per spatial axis: "VALID", "SAME", an int, one int
        per axis (symmetric) or one (lo, hi) pair per axis.

    Returns:
      y: (N, *O, C), O = (size + lo + hi - window) // stride + 1 per spatial axis.
    """
    win = _geometry.pool_nd("max_pool", x, window, stride, padding)
    return _reduce_window(x, -np.inf, lax.max, win)


def avg_pool(x: Array, *, window: int | tuple[int, ...] = 2,
             stride: int | tuple[int, ...] | None = None, padding: Padding = "VALID",
             count_include_pad: bool = True) -> Array:
    """Average pooling: `y = sum over each window / count`.

    With padding, `count_include_pad=True` (the default, as flax and torch) divides by the full
    area (k_h * k_w on 2 axes, the product of the window on any), counting padded zeros; False
    divides by the number of real elements.

    Args:
      x: (N, *spatial, C) with 1, 2 or 3 spatial axes; window, stride, padding: as `max_pool`.

    Returns:
      y: (N, *O, C).
    """
    win = _geometry.pool_nd("avg_pool", x, window, stride, padding)
    counts = _geometry.window_counts_nd(win, count_include_pad).astype(x.dtype)
    return _reduce_window(x, 0.0, lax.add, win) / counts


def l2_pool(x: Array, *, window: int | tuple[int, ...] = 2,
            stride: int | tuple[int, ...] | None = None, padding: Padding = "VALID") -> Array:
    """L2-norm pooling, the third kind of the general derivation: `y = sqrt(sum_window x^2)`.

    Zero-padded. The gradient `x / y` is taken as 0 where a window is all zeros (y = 0, common
    after ReLU); the double `where` below makes `jax.grad` agree with that.

    Args:
      x: (N, *spatial, C) with 1, 2 or 3 spatial axes; window, stride, padding: as `max_pool`.

    Returns:
      y: (N, *O, C).
    """
    win = _geometry.pool_nd("l2_pool", x, window, stride, padding)
    sq = _reduce_window(x * x, 0.0, lax.add, win)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)


def global_avg_pool(x: Array) -> Array:
    """Global average pooling: `y[n, c] = (1/S) sum_p x[n, p, c]`, the mean over the S positions.

    Args:
      x: (N, *spatial, C) with 1, 2 or 3 spatial axes.

    Returns:
      y: (N, C).
    """
    shape = _geometry.spatial("global_avg_pool", "x", x)
    return jnp.mean(x, tuple(range(1, len(shape) - 1)))
