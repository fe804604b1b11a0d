"""Other formulations of the convolution sums, and when to use them: an implementation detail
of the conv ops (`jaxcnn.forward.conv`, `jaxcnn.backward.conv`), reached from nowhere else.

    products   one matrix product per kernel offset (`impl="gemm"`), and `computed_once`
    auto       the `impl` option, the measured `"auto"` rule, the per-example rule
    traps      the XLA abort the textbook dx convolution meets, and the form that avoids it
"""

from jaxcnn.fast import auto, products, traps
from jaxcnn.fast.auto import IMPLS, check_impl, per_example_rule, uses_products

__all__ = ["IMPLS", "auto", "check_impl", "per_example_rule", "products", "traps",
           "uses_products"]
