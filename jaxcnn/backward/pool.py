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

    dy: (N, *O, C); x: (N, *spatial, C), 1, 2 or 3 spatial axes -> dx (N, *spatial, C). On
    ties the first maximum in row-major window order takes it all, as XLA's select-and-scatter
    (hence `jax.grad`) routes it, on every rank; overlapping windows add up. A window holding a
    NaN routes nothing (jax.grad routes it to an element chosen by XLA's `>=` scan, which a NaN
    breaks).

    Windows of up to `PAIRWISE_MAX` elements (2x2, 3x3, 2x2x2): the window's elements are read
    as K strided taps of the -inf-padded x (`_window.tap`), tap k wins iff it is > every
    earlier tap and >= every later one (`_first_max`), and its dy is spread back to the input
    rows it read (`_window.spread`). Larger windows, whose K taps would make the program grow
    with K (a 16x16 window: 256 of them): each window's winner as one flat index, found by
    `lax.reduce_window` one spatial axis at a time (`_winner_index`), its dy scatter-added
    there (`_max_pool_by_index`): cost in the sum of the window's sides, not their product.

    Robust under any composition (docs/xla_traps.md, section 6): the winner is decided inside
    one computation (comparisons of the taps with each other, or one reduction), never against
    a maximum computed elsewhere, and x is never read through a reshaped view (XLA:CPU 0.10.2
    can write a fused consumer's output over a buffer it still reads through one).
    """
    win = _pool_args("backward.max_pool", dy, x, window, stride, padding)
    return (_max_pool_by_taps if by_taps(win) else _max_pool_by_index)(dy, x, win)


def by_taps(win: _geometry.Window) -> bool:
    """Whether `max_pool` decides a window's winner among its taps (windows of at most
    PAIRWISE_MAX elements), or by one (value, index) reduction (larger ones)."""
    return math.prod(win.size) <= PAIRWISE_MAX


PAIRWISE_MAX = 9  # measured on XLA:CPU (jaxcnn.tools.bench_pool): taps win up to 3x3, by_index past


def winner_index(x: Array, *, window: int | tuple[int, ...] = 2,
                 stride: int | tuple[int, ...] | None = None,
                 padding: Padding = "VALID") -> Array:
    """Where `max_pool`'s rule routes each window's dy, as a flat index into the padded
    spatial axes, (N, *O, C) int32: the first maximum in row-major window order (equal to the
    taps' `_first_max` on every window without a NaN). For tools that need the rule's
    decisions (`jaxcnn.nn.layers.MaxPool`'s kinks).

    Args:
      x: (N, *spatial, C), 1, 2 or 3 spatial axes; window, stride, padding: as `max_pool`.
    """
    return _winner_index(x, _geometry.pool_nd("max_pool", x, window, stride, padding))[1]


def _max_pool_by_taps(dy: Array, x: Array, win: _geometry.Window) -> Array:
    """`max_pool`'s routing for small windows: the K taps' winners (`_first_max`), each tap's
    routed dy spread back to the rows it read. dy: (N, *O, C); x: (N, *spatial, C) -> dx."""
    dx = jnp.zeros_like(x)
    for off, winner in zip(_window.offsets(win), _first_max(_taps(x, win))):
        dx = dx + _window.spread(jnp.where(winner, dy, 0), *off, win)
    return dx


def _taps(x: Array, win: _geometry.Window) -> list[Array]:
    """The K window taps of the -inf-padded x, row-major window order, each (N, *O, C):
    strided slices (`_window.tap`), never a reshaped view of x."""
    xp = _padded(x, win)
    return [_window.tap(xp, *off, win) for off in _window.offsets(win)]


def _padded(x: Array, win: _geometry.Window) -> Array:
    return lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in
                                                                win.pads), (0, 0, 0)])


def _first_max(taps: list[Array]) -> list[Array]:
    """For the K taps of every window (row-major window order, each (N, *O, C)): K masks, true
    where that tap is its window's first maximum: tap k is > every earlier tap and >= every
    later one. Exactly one is true per window, none in a window holding a NaN.

    The winner is decided by comparing the taps with each other only, never with a maximum
    computed elsewhere (`t == max(taps)` depends on two computations of one float agreeing to
    the bit). K^2 comparisons, which XLA fuses into one loop: the fastest form on XLA:CPU up to
    `PAIRWISE_MAX` taps.
    """
    return [functools.reduce(jnp.logical_and, [t > u for u in taps[:i]]
                             + [t >= u for u in taps[i + 1:]], jnp.ones(t.shape, bool))
            for i, t in enumerate(taps)]


def _max_pool_by_index(dy: Array, x: Array, win: _geometry.Window) -> Array:
    """`max_pool`'s routing for large windows: each window's winner as a flat index into the
    padded x (`_winner_index`), its dy scatter-added there, the padding cropped. The same
    routing as the taps (ties to the first maximum in row-major window order; a window holding
    a NaN routes nothing); overlapping windows add in window order, as XLA's
    select-and-scatter (equal to `jax.vjp` bit for bit on XLA:CPU). On a GPU the scatter of
    overlapping windows adds atomically, in no fixed order (rounding may differ run to run).
    dy: (N, *O, C); x: (N, *spatial, C) -> dx, x's shape."""
    best, index = _winner_index(x, win)
    n, c = x.shape[0], x.shape[-1]
    padded = tuple(h + lo + hi for h, (lo, hi) in zip(x.shape[1:-1], win.pads))
    routed = jnp.where(best == best, dy, 0).reshape(n, -1, c)  # a NaN window routes nothing
    rows, chans = jnp.arange(n)[:, None, None], jnp.arange(c)[None, None, :]
    dxp = jnp.zeros((n, math.prod(padded), c), x.dtype).at[
        rows, index.reshape(n, -1, c), chans].add(routed, mode="promise_in_bounds")
    start = (0, *(lo for lo, _ in win.pads), 0)
    return lax.slice(dxp.reshape(n, *padded, c), start,
                     tuple(a + b for a, b in zip(start, x.shape)))


def _winner_index(x: Array, win: _geometry.Window) -> tuple[Array, Array]:
    """(max, flat index into the padded spatial axes of its first occurrence), each (N, *O, C),
    of every window of the -inf-padded x; the max is NaN in a window holding a NaN.

    (value, index) pairs are reduced by `lax.reduce_window` under a total order (NaN highest,
    then the larger value, then the smaller index), whose maximum is separable: reduced over
    the window along the last spatial axis, then the one before, ..., it is the maximum over
    the whole window, its index the first in row-major window order among equal values. One
    reduction decides each window: nothing is compared with a value computed elsewhere.
    """
    # piecewise constant in x: no tangent (jax.jvp, hence hvp, would otherwise differentiate
    # reduce_window through its int32 operand, which JAX cannot)
    xp = _padded(lax.stop_gradient(x), win)
    index = jnp.zeros(xp.shape, jnp.int32)  # flat position: fits, padded sizes are int32-bounded
    for axis in range(1, xp.ndim - 1):
        index = index * xp.shape[axis] + lax.broadcasted_iota(jnp.int32, xp.shape, axis)
    best, init = xp, (jnp.array(-jnp.inf, x.dtype), jnp.array(jnp.iinfo(jnp.int32).max, jnp.int32))
    for axis in reversed(range(len(win.size))):
        dims, strides = [1] * xp.ndim, [1] * xp.ndim
        dims[axis + 1], strides[axis + 1] = win.size[axis], win.stride[axis]
        best, index = lax.reduce_window((best, index), init, _first_of, dims, strides, "VALID")
    return best, index


def _first_of(a: tuple[Array, Array], b: tuple[Array, Array]) -> tuple[Array, Array]:
    """The larger of two (value, index) pairs under the total order of `_winner_index`."""
    (va, ia), (vb, ib) = a, b
    nan_a, nan_b = va != va, vb != vb
    a_wins = (nan_a & ~nan_b) | (va > vb) | (((va == vb) | (nan_a & nan_b)) & (ia < ib))
    return jnp.where(a_wins, va, vb), jnp.where(a_wins, ia, ib)


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
