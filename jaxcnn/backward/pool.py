"""The rules of `jaxcnn/forward/pool.py`: routing dy back through the windows.

On 1, 2 or 3 spatial axes (x (N, *spatial, C), dy (N, *O, C)), each rule sums, over the window
offsets (m, p, ...), what that offset's tap of every window gets, spread back to the input rows
it read (`jaxcnn._window.spread`, the adjoint of `tap`). Global average pooling has one window,
the whole input: each position gets `dy / S`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _geometry, _window
from jaxcnn._geometry import Padding
from jaxcnn.backward._upstream import upstream
from jaxcnn.forward.pool import l2_pool as l2_pool_forward

Array = jax.Array

__all__ = ["avg_pool", "global_avg_pool", "l2_pool", "max_pool"]


def _pool_args(fn: str, dy: Array, x: Array, window: Any, stride: Any,
               padding: Padding) -> _geometry.Window:
    win = _geometry.pool_nd(fn, x, window, stride, padding)
    upstream(fn, dy, x, (x.shape[0], *win.out_hw, x.shape[-1]), "the forward output")
    return win


def max_pool(dy: Array, x: Array, *, window: int | tuple[int, ...] = 2,
             stride: int | tuple[int, ...] | None = None, padding: Padding = "VALID") -> Array:
    """Gradient of `forward.max_pool`: each window's dy goes to its maximum, the rest get zero.

    dy: (N, *O, C); x: (N, *spatial, C), 1, 2 or 3 spatial axes -> dx (N, *spatial, C). On ties
    the first maximum in row-major window order takes it all, as XLA's select-and-scatter (hence
    `jax.grad`) routes it, on every rank; overlapping windows add up. NaNs in a window route
    nothing.
    """
    win = _pool_args("backward.max_pool", dy, x, window, stride, padding)
    if _tiles(win):
        return _max_pool_tiles(dy, x, win)
    xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in
                                                                 win.pads), (0, 0, 0)])
    candidates = [_window.tap(xp, *off, win) for off in _window.offsets(win)]
    dx = jnp.zeros_like(x)
    for off, winner in zip(_window.offsets(win), _first_max(candidates)):
        dx = dx + _window.spread(jnp.where(winner, dy, 0), *off, win)
    return dx


def _first_max(candidates: list[Array]) -> list[Array]:
    """For each window element (candidates in row-major window order, each (N, *O, C)):
    where it is its window's first maximum. A window holding a NaN has none."""
    y = functools.reduce(jnp.maximum, candidates)
    taken, winners = jnp.zeros(y.shape, bool), []
    for c in candidates:
        winners.append((c == y) & ~taken)
        taken = taken | winners[-1]
    return winners


def _tiles(win: _geometry.Window) -> bool:
    """Whether the windows tile a 2-D input without overlap or padding (stride = window, e.g.
    the usual 2x2 pool with stride 2). 1 and 3 spatial axes take the general taps."""
    return (len(win.size) == 2 and win.stride == win.size and win.dilation == (1, 1)
            and win.pads == ((0, 0), (0, 0)))


def _max_pool_tiles(dy: Array, x: Array, win: _geometry.Window) -> Array:
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


def avg_pool(dy: Array, x: Array, *, window: int | tuple[int, ...] = 2,
             stride: int | tuple[int, ...] | None = None, padding: Padding = "VALID",
             count_include_pad: bool = True) -> Array:
    """Gradient of `forward.avg_pool`: each input gets `dy / count` from every window covering it.

    `count` is the window area, or with `count_include_pad=False` the number of real elements of
    that window. dy: (N, *O, C); x: (N, *spatial, C), 1, 2 or 3 spatial axes -> dx, x's shape.
    """
    win = _pool_args("backward.avg_pool", dy, x, window, stride, padding)
    share = dy / _geometry.window_counts_nd(win, count_include_pad).astype(dy.dtype)
    dx = jnp.zeros_like(x)
    for off in _window.offsets(win):
        dx = dx + _window.spread(share, *off, win)
    return dx


def l2_pool(dy: Array, x: Array, *, window: int | tuple[int, ...] = 2,
            stride: int | tuple[int, ...] | None = None, padding: Padding = "VALID") -> Array:
    """Gradient of `forward.l2_pool`: `y = sqrt(sum x^2)` gives `dx_i = sum_windows dy * x_i / y`.

    Windows with y = 0 pass no gradient. dy: (N, *O, C); x: (N, *spatial, C), 1, 2 or 3 spatial
    axes -> dx, x's shape.
    """
    win = _pool_args("backward.l2_pool", dy, x, window, stride, padding)
    y = l2_pool_forward(x, window=window, stride=stride, padding=padding)
    positive = y > 0
    dy_over_y = jnp.where(positive, dy / jnp.where(positive, y, 1), 0)
    spread = jnp.zeros_like(x)
    for off in _window.offsets(win):
        spread = spread + _window.spread(dy_over_y, *off, win)
    return x * spread


def global_avg_pool(dy: Array, x: Array) -> Array:
    """Gradient of `forward.global_avg_pool`: `y[n, c] = (1/S) sum_p x[n, p, c]` gives
    `dx[n, p, c] = dy[n, c] / S` at each of the S spatial positions p.

    Args:
      dy: (N, C); x: (N, *spatial, C) with 1, 2 or 3 spatial axes.

    Returns:
      dx: x's shape.
    """
    shape = _geometry.spatial("backward.global_avg_pool", "x", x)
    upstream("backward.global_avg_pool", dy, x, (shape[0], shape[-1]), "the forward output")
    positions = math.prod(shape[1:-1])
    per_position = (dy / positions).reshape(shape[0], *(1,) * (len(shape) - 2), shape[-1])
    return jnp.broadcast_to(per_position, shape)
