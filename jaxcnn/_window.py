"""The elements a sliding window reads at one offset, and the adjoint that puts them back.

Shared by the pooling rules (jaxcnn.backward.pool) and the per-offset convolution
(jaxcnn.fast.products).
For a window `win` (see `jaxcnn._geometry.Window`) and a kernel offset (m, p), output (i, j) reads
padded-input row `i*s + m*d` and column `j*s + p*d`.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn._geometry import Window

Array = jax.Array


def offsets(win: Window) -> list[tuple[int, int]]:
    """Every kernel offset (m, p), in row-major order."""
    return list(itertools.product(range(win.size[0]), range(win.size[1])))


def tap(xp: Array, m: int, p: int, win: Window) -> Array:
    """x_pad[n, i*s + m*d, j*s + p*d, :] for every output (i, j): (N, O_h, O_w, C), from the
    padded input xp."""
    n, _, _, c = xp.shape
    (sh, sw), (dh, dw), (oh, ow) = win.stride, win.dilation, win.spread
    return lax.slice(xp, (0, m * dh, p * dw, 0), (n, m * dh + oh, p * dw + ow, c),
                     (1, sh, sw, 1))


def spread(v: Array, m: int, p: int, win: Window) -> Array:
    """The adjoint of `tap`, cropped to the unpadded input: v (N, O_h, O_w, C) goes to input rows
    `i*s + m*d - lo` (and likewise for columns) of a zero (N, H, W, C) array; lax.pad with
    interior padding s - 1, negative pads cropping the padding."""
    cfg = [(0, 0, 0)]
    for off, s, d, (lo, _), size, o_s in zip((m, p), win.stride, win.dilation, win.pads,
                                              win.in_hw, win.spread):
        start = off * d - lo
        cfg.append((start, size - start - o_s, s - 1))
    return lax.pad(v, jnp.zeros((), v.dtype), [*cfg, (0, 0, 0)])
