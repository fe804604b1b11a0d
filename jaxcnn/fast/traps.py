"""XLA traps the conv rules step around, keyed to the versions they were measured on.

tests/test_xla_traps.py runs the known cases in subprocesses and tells when a jaxlib upgrade
changes what happens.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn._geometry import Window

Array = jax.Array
MEASURED_ON = "jaxlib 0.10.2, 0.12.0.1 and 0.12.1, CPU"


def xla_may_abort(win: Window) -> bool:
    """Whether XLA:CPU (measured on jaxlib 0.10.2) may abort on the textbook dx convolution.

    The dx convolution spreads dy with `lhs_dilation = s`. When an axis has kernel 2, stride 2 and
    dilation 1, XLA's convolution operand swapper reads that axis as a "group" dimension and keeps
    its window while swapping the operands (it swaps when another axis's kernel is wider than
    dy), builds an invalid convolution and fails a CHECK: the whole process dies. `jax.grad` of
    the forward dies the same way (still so on jaxlib 0.12.0.1). Measured on jaxlib 0.10.2, random
    configurations each run in a subprocess (jax.grad of the forward, the unguarded textbook dx
    and dw, and jax.vjp of a transposed convolution written as that dx; the three abort on the
    same configurations):

      2 spatial axes: 11 of 300 with such an axis aborted, none of 2,500 without one;
      3 spatial axes: 14 of 300 with such an axis (test-run XLA flags), 4 of 100 (XLA's
        defaults), none of 300 without one;
      1 spatial axis: none of 500 with such an axis (300 with the test-run flags, 200 with
        XLA's defaults), none of 600 without: there is no other axis for the swapper to read.

    So the predicate holds for 2 and 3 spatial axes only (any window with 1 axis: False).
    """
    return len(win.size) >= 2 and any(
        k == 2 and s == 2 and d == 1 for k, s, d in zip(win.size, win.stride, win.dilation))


def spread_apart_conv(dy: Array, wt_rot: Array, pads: list[tuple[int, int]], win: Window,
                      groups: int, dims: tuple[str, str, str], precision: Any) -> Array:
    """The dx convolution with the spread (interior padding s - 1), the padding and the flipped
    kernel done explicitly and kept apart from it by an optimization barrier, so XLA cannot fold
    them back into the lhs-dilated form that aborts: the same sum, `window_strides=1`, VALID, on
    any number of spatial axes (pads and win.stride have one entry per axis)."""
    spread = [(0, 0, 0), *((lo, hi, s - 1) for (lo, hi), s in zip(pads, win.stride)), (0, 0, 0)]
    dy_spread, wt_rot = lax.optimization_barrier(
        (lax.pad(dy, jnp.zeros((), dy.dtype), spread), wt_rot))
    return lax.conv_general_dilated(
        dy_spread, wt_rot, (1,) * len(win.stride), "VALID", rhs_dilation=win.dilation,
        dimension_numbers=dims, feature_group_count=groups, precision=precision)
