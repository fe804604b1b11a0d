"""Which formulation of a convolution runs: the `impl` option and the measured `"auto"` rule.

`impl` is an option of the conv ops (`forward.conv2d`, `backward.conv2d`) and of the conv layers
(`jaxcnn.nn.layers.Conv2D`), chosen when an op is called or a layer is built:

    "conv"  `lax.conv_general_dilated` (forward, and the dx / dw rules of `backward.conv`)
    "gemm"  one matrix product per kernel offset (`jaxcnn.fast.products`)
    "auto"  per op (forward, dx, dw), the form measured faster for this backend and shape

Per-example gradients (`jaxcnn.per_example_grads`) trace the backward pass under `vmap` inside
`per_example_rule()`, where "auto" follows the rule measured for one example per call.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import jax

from jaxcnn._geometry import Conv

IMPLS = ("conv", "gemm", "auto")
_context = threading.local()


@contextlib.contextmanager
def per_example_rule() -> Iterator[None]:
    """Inside this context, `impl="auto"` picks by the per-example rule (see `prefer_gemm`).

    Read at trace time, like `jax.default_matmul_precision`: it applies to whatever is traced
    inside the block (per_example_grads traces its vmapped backward pass there).
    """
    before = getattr(_context, "per_example", False)
    _context.per_example = True
    try:
        yield
    finally:
        _context.per_example = before


def check_impl(fn: str, impl: str) -> str:
    """`impl` itself, or a ValueError naming `fn` and the choices."""
    if impl not in IMPLS:
        raise ValueError(f"{fn}: impl must be one of {', '.join(IMPLS)}; got {impl!r}")
    return impl


def uses_products(fn: str, impl: str, g: Conv, which: str) -> bool:
    """Whether op `which` ("forward", "dx", "dw") of the checked convolution `g` runs as
    per-offset products (True) or as an XLA convolution (False) under `impl`."""
    check_impl(fn, impl)
    if impl == "auto":
        return prefer_gemm(g, which, per_example=getattr(_context, "per_example", False))
    return impl == "gemm"


def is_pointwise(g: Conv) -> bool:
    """A 1x1 convolution with stride 1 and no groups: one (N*H*W, C_in) @ (C_in, C_out) product."""
    return g.win.size == (1, 1) and g.win.stride == (1, 1) and g.groups == 1


def prefer_gemm(g: Conv, which: str, per_example: bool = False) -> bool:
    """The `impl="auto"` rule: per-offset products where they measured faster inside whole
    training steps, XLA's convolutions elsewhere (experiments/PERFORMANCE.md, rule by rule).

    which: "forward", "dx" or "dw". On the CPU, products for:
      * every op of a 1x1 convolution with stride 1 and no groups: it is one matrix product;
      * the forward where each group has one input channel (a grey-scale net's first layer,
        depthwise layers), and dx and dw of depthwise layers: XLA:CPU runs those convolutions
        at a few GFLOP/s, the broadcast form fuses into one loop;
      * dx for strides > 1 (the convolution form needs an lhs dilation) and, without groups,
        for x of at most 16 channels and fewer input than output channels (XLA's convolution
        runs at ~20 GFLOP/s there; the products are one GEMM, see `products.dx`; with as many
        or more input channels, resnet20's 16 -> 16 and the U-Net's 8 -> 8 and 16 -> 8, the
        convolution won: 1.0-10.7x, jaxlib 0.10.2, docs/benchmarks.md).
    Elsewhere XLA's convolutions win: inside a whole step the products' elementwise tails fuse
    with their neighbours and are recomputed, or the GEMMs are no faster (dw above all).
    On GPUs (and TPUs, by the same rule, unmeasured) every op of a one-channel-per-group
    convolution runs as products, every other convolution through the backend's library.

    per_example: the rule for one example per call under `vmap`. There XLA turns each example's
    dw convolution into one group of a grouped convolution, slow on XLA:CPU, while the products
    become batched matrix products: on the CPU, dw runs as products wherever x has more than one
    channel, or the layer one input and one output channel (the seed net's convolution: 1.9x the
    batch gradient instead of 3.7x).
    """
    one_channel = g.c_in // g.groups == 1
    if jax.default_backend() != "cpu":
        return one_channel
    if is_pointwise(g):
        return True
    if per_example and which == "dw" and (g.c_in > 1 or g.c_out == 1):
        return True
    if which == "forward":
        return one_channel
    if which == "dw":
        return one_channel and g.c_in > 1
    return ((one_channel and g.c_in > 1) or max(g.win.stride) > 1
            or (g.groups == 1 and g.c_in <= 16 and g.c_in < g.c_out))
