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
MEASURED_ON = "jaxlib 0.10.2 and 0.12.0.1, CPU"


def xla_may_abort(win: Window) -> bool:
    """Whether XLA:CPU (measured on jaxlib 0.10.2) may abort on the textbook dx convolution.

    The dx convolution spreads dy with `lhs_dilation = s`. When an axis has kernel 2, stride 2 and
    dilation 1, XLA's convolution operand swapper reads that axis as a "group" dimension and keeps
    its window while swapping the operands (it swaps when the other axis's kernel is wider than
    dy), builds an invalid convolution and fails a CHECK: the whole process dies. `jax.grad` of
    the forward dies the same way (still so on jaxlib 0.12.0.1). Measured on jaxlib 0.10.2: 11 of
    300 random configurations with such an axis aborted, none of 2,500 without one.
    """
    return any(k == 2 and s == 2 and d == 1
               for k, s, d in zip(win.size, win.stride, win.dilation))


def spread_apart_conv(dy: Array, wt_rot: Array, pads: list[tuple[int, int]], win: Window,
                      groups: int, dims: tuple[str, str, str], precision: Any) -> Array:
    """The dx convolution with the spread (interior padding s - 1), the padding and the flipped
    kernel done explicitly and kept apart from it by an optimization barrier, so XLA cannot fold
    them back into the lhs-dilated form that aborts: the same sum, `window_strides=1`, VALID."""
    spread = [(0, 0, 0), *((lo, hi, s - 1) for (lo, hi), s in zip(pads, win.stride)), (0, 0, 0)]
    dy_spread, wt_rot = lax.optimization_barrier(
        (lax.pad(dy, jnp.zeros((), dy.dtype), spread), wt_rot))
    return lax.conv_general_dilated(
        dy_spread, wt_rot, (1, 1), "VALID", rhs_dilation=win.dilation,
        dimension_numbers=dims, feature_group_count=groups, precision=precision)
