"""Size limits checked before anything is allocated or handed to XLA.

Every shape an op derives from its arguments (a padded input, an output, the spread input of a
transposed convolution) is checked here, on static shapes, before JAX traces anything: a size
past the bound is a `ValueError` naming the argument that made it, quoting the size and the
bound, never an allocation that fails (MemoryError) or an XLA check that aborts the whole
process ("overflow in static extent product", seen with `forward.conv2d(x, w, padding=2**40)`).

The bound, `MAX_ELEMENTS = 2**31 - 1`, on every axis of such a shape and on its element count:
the largest count a signed 32-bit integer holds. JAX's default integer type is int32 (without
`jax_enable_x64`), so positions in a longer axis or array (`jnp.arange`, `argmax`, the flat
indices of a gather or scatter) do not fit it, and XLA's kernels index with int32 where they
can; 2**31 float32 elements are 8 GiB, past any activation of this package's networks; and a
shape within it is far from the int64 product whose overflow makes XLA abort.

The tools that make arrays from a count (`jaxcnn bench`, `jaxcnn gradcheck`) check it with
`batch`: against the tool's own cap (each states why), the bound above for each of the batch's
activations, and the device's memory for all of them together.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import jax

MAX_ELEMENTS = 2**31 - 1  # per axis and per array of a derived shape: int32's largest count
WHY = "the int32 index limit of JAX and XLA, jaxcnn._bounds.MAX_ELEMENTS"


def option(fn: str, name: str, value: Sequence[int]) -> None:
    """Every entry of an option (stride, dilation, window, scale) at most MAX_ELEMENTS.

    Raises:
      ValueError: naming `name`, quoting the value and the bound.
    """
    if max(value) > MAX_ELEMENTS:
        raise ValueError(f"{fn}: {name} must be at most {MAX_ELEMENTS:,} on every axis ({WHY}); "
                         f"got {tuple(value)}")


def extents(fn: str, name: str, sizes: Sequence[int], what: str) -> None:
    """Sizes per spatial axis (a padded input's, a dilated window's span) at most MAX_ELEMENTS.

    Args:
      fn: the op, for the message; name: the argument that made them (e.g. "padding 5");
      sizes: one per spatial axis; what: what they are the sizes of.

    Raises:
      ValueError: a size > MAX_ELEMENTS, naming `name` and quoting the size and the bound.
    """
    for axis, value in enumerate(sizes):
        if value > MAX_ELEMENTS:
            raise ValueError(f"{fn}: {name}: {what} on spatial axis {axis} would be {value:,}; "
                             f"it must be at most {MAX_ELEMENTS:,} ({WHY})")


def elements(fn: str, name: str, shape: Sequence[int], what: str) -> None:
    """An array of `shape` holding at most MAX_ELEMENTS elements (and every axis within it).

    Args:
      fn: the op; name: the argument(s) that made the shape; shape: the array's; what: the
      array, e.g. "the output (N, O_h, O_w, C_out)".

    Raises:
      ValueError: too many elements, naming `name` and quoting the shape, the count and the bound.
    """
    count = math.prod(int(n) for n in shape)
    if count > MAX_ELEMENTS or max(shape, default=0) > MAX_ELEMENTS:
        raise ValueError(f"{fn}: {name}: {what} would have shape {tuple(shape)}, {count:,} "
                         f"elements; an array may hold at most {MAX_ELEMENTS:,} ({WHY})")


def padded(fn: str, padding: object, shape: Sequence[int],
           pads: Sequence[tuple[int, int]]) -> None:
    """The padded input (N, *padded, C) of x's `shape`, which XLA pads and the max-pool rule
    builds, within MAX_ELEMENTS; only where there is padding (else it is x itself).

    Raises:
      ValueError: naming the padding, quoting the padded shape, its count and the bound.
    """
    if any(lo or hi for lo, hi in pads):
        sizes = (n + lo + hi for n, (lo, hi) in zip(shape[1:-1], pads))
        elements(fn, f"padding {padding!r}", (shape[0], *sizes, shape[-1]),
                 "the padded input (N, *padded, C)")


def memory_bytes() -> int | None:
    """The memory of the default device in bytes: the machine's physical memory on the CPU,
    XLA's `bytes_limit` on an accelerator; None where it cannot be read."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        return (dev.memory_stats() or {}).get("bytes_limit")
    except Exception:  # a backend without memory statistics: no memory check
        return None


def batch(fn: str, flag: str, value: int, example_shapes: Sequence[Sequence[int]],
          itemsize: int, cap: int, cap_reason: str, copies: int = 1) -> None:
    """A batch size a tool makes arrays of: at most `cap`; every activation of the batch an
    array within MAX_ELEMENTS; all of them, `copies` times over, within the device's memory.

    Args:
      fn: the tool; flag: the option that set it (e.g. "--batch"); value: the batch size.
      example_shapes: what one example keeps through a step, e.g. its input's shape and every
        layer's output's: their batch-sized arrays are a lower bound of what the step needs.
      itemsize: bytes per element; cap: the tool's fixed cap; cap_reason: why, for the message;
      copies: how many such sets of activations the tool keeps at once.

    Raises:
      ValueError: naming `flag`, quoting the value and the bound it passes.
    """
    if value > cap:
        raise ValueError(f"{fn}: {flag} {value:,} is past the cap of {cap:,} ({cap_reason})")
    sizes = [math.prod(int(n) for n in shape) for shape in example_shapes]
    largest = max(range(len(sizes)), key=sizes.__getitem__)
    elements(fn, f"{flag} {value:,}", (value, *example_shapes[largest]), "its largest array")
    need, have = value * sum(sizes) * itemsize * copies, memory_bytes()
    if have is not None and need > have:
        raise ValueError(f"{fn}: {flag} {value:,} needs at least {need / 2**30:.1f} GiB for the "
                         f"activations a step keeps, more than the {have / 2**30:.1f} GiB of "
                         f"memory of this device ({jax.devices()[0].device_kind})")
