"""The elements a sliding window reads at one offset, and the adjoint that puts them back.

Shared by the pooling rules (jaxcnn.backward.pool) and the per-offset convolution
(jaxcnn.fast.products), on 1, 2 or 3 spatial axes: arrays are channels-last (N, *spatial, C).
For a window `win` (see `jaxcnn._geometry.Window`) and a kernel offset (m, p, ...), one entry
per spatial axis, output (i, j, ...) reads padded-input row `i*s + m*d`, column `j*s + p*d`, and
so on along every spatial axis. The offset is passed spread out before the window:
`tap(xp, m, p, win)` on 2 spatial axes, `tap(xp, m, win)` on 1, `tap(xp, *offset, win)` always.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn._geometry import Window

Array = jax.Array


def _split(fn: str, where: tuple[Any, ...]) -> tuple[tuple[int, ...], Window]:
    """(*offset, win) -> (offset, win), with one offset entry per spatial axis of the window."""
    *offset, win = where
    if len(offset) != len(win.size):
        raise TypeError(f"_window.{fn}: got the offset {tuple(offset)} for a window of "
                        f"{len(win.size)} spatial axes {win.size}; pass (*offset, win)")
    return tuple(offset), win


def offsets(win: Window) -> list[tuple[int, ...]]:
    """Every kernel offset (m, p, ...), one entry per spatial axis, in row-major order."""
    return list(itertools.product(*(range(k) for k in win.size)))


def tap(xp: Array, *where: Any) -> Array:
    """`tap(xp, *offset, win)`: x_pad[n, i*s + m*d, j*s + p*d, ..., :] for every output
    (i, j, ...), (N, *O, C), from the padded input xp (N, *padded spatial, C)."""
    offset, win = _split("tap", where)
    starts = tuple(m * d for m, d in zip(offset, win.dilation))
    limits = tuple(start + o_s for start, o_s in zip(starts, win.spread))
    return lax.slice(xp, (0, *starts, 0), (xp.shape[0], *limits, xp.shape[-1]),
                     (1, *win.stride, 1))


def spread(v: Array, *where: Any) -> Array:
    """`spread(v, *offset, win)`, the adjoint of `tap`, cropped to the unpadded input: v
    (N, *O, C) goes to input rows `i*s + m*d - lo` (and likewise along every spatial axis) of a
    zero (N, *spatial, C) array; lax.pad with interior padding s - 1, negative pads cropping the
    padding."""
    offset, win = _split("spread", where)
    cfg = [(0, 0, 0)]
    for off, s, d, (lo, _), size, o_s in zip(offset, win.stride, win.dilation, win.pads,
                                              win.in_hw, win.spread):
        start = off * d - lo
        cfg.append((start, size - start - o_s, s - 1))
    return lax.pad(v, jnp.zeros((), v.dtype), [*cfg, (0, 0, 0)])
