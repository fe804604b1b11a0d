"""Forward operations of a CNN: pure functions on channels-last activations and HWIO kernels.

Every function here has a namesake in `jaxcnn.backward` holding its hand-written gradient, in a
module of the same name: `forward/conv.py` beside `backward/conv.py`, and so on for `pool`,
`linear`, `shape`, `activation`, `norm`, `join` and `loss`. Arguments are checked in Python before
tracing (`jaxcnn._geometry`); convolutions and matrix products run at `lax.Precision.HIGHEST`
unless a `precision` is given or set around the call with `jax.default_matmul_precision(...)`
(`jaxcnn._precision.precision_of`), so that float32 on GPUs does not silently drop to TF32.

Shapes: `x` (N, H, W, C), or (N, W, C) and (N, D, H, W, C) for 1 and 3 spatial axes; conv kernel
`w` (kh, kw, C_in // groups, C_out); dense `w` (D_in, D_out).
"""

from jaxcnn.forward import activation, conv, join, linear, loss, norm, pool, shape
from jaxcnn.forward.activation import leaky_relu, relu, sigmoid, softmax, tanh
from jaxcnn.forward.conv import (
    conv1d,
    conv2d,
    conv3d,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
    convolve2d,
)
from jaxcnn.forward.join import add, concat
from jaxcnn.forward.linear import dense
from jaxcnn.forward.loss import (
    binary_cross_entropy,
    mse,
    pixel_sigmoid_binary_cross_entropy,
    pixel_softmax_cross_entropy,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
)
from jaxcnn.forward.norm import batch_norm, group_norm, layer_norm, moments
from jaxcnn.forward.pool import avg_pool, global_avg_pool, l2_pool, max_pool
from jaxcnn.forward.shape import flatten, upsample_nearest

FAMILIES = {"activation": activation, "conv": conv, "join": join, "linear": linear,
            "loss": loss, "norm": norm, "pool": pool, "shape": shape}
# the union of the families' __all__ (tests/test_layout.py checks it, and the twin's)
__all__ = [
    "add", "avg_pool", "batch_norm", "binary_cross_entropy", "concat", "conv1d", "conv2d",
    "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "convolve2d", "dense",
    "flatten", "global_avg_pool", "group_norm", "l2_pool", "layer_norm", "leaky_relu", "max_pool",
    "moments", "mse", "pixel_sigmoid_binary_cross_entropy",
    "pixel_softmax_cross_entropy", "relu", "sigmoid", "sigmoid_binary_cross_entropy", "softmax",
    "softmax_cross_entropy", "tanh", "upsample_nearest",
]
