"""The hand-written backward pass: one rule per function of `jaxcnn.forward`, same names.

`backward.<op>(dy, *forward_inputs, **forward_options)` takes the upstream gradient `dy = dL/dy`
first, then the forward's inputs and options, and returns `dL/d(input)` for each array input of
the forward, in order. Losses take the upstream scalar `dl` (1.0 for the loss itself) and return
the gradient of the prediction only: labels are data, not parameters.

Each family module mirrors its forward twin (`backward/conv.py` beside `forward/conv.py`, ...).
No rule asks JAX for a derivative: each is written out from the maths beside it, and tested
against `jax.vjp` of the forward (tests/test_backward.py); tests/test_source.py reads every
module the rules reach and fails on any autodiff call.
"""

from jaxcnn.backward import activation, conv, join, linear, loss, norm, pool, shape
from jaxcnn.backward.activation import leaky_relu, relu, sigmoid, softmax, tanh
from jaxcnn.backward.conv import (
    conv1d,
    conv2d,
    conv3d,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
    convolve2d,
)
from jaxcnn.backward.join import add, concat
from jaxcnn.backward.linear import dense
from jaxcnn.backward.loss import (
    binary_cross_entropy,
    mse,
    pixel_sigmoid_binary_cross_entropy,
    pixel_softmax_cross_entropy,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
)
from jaxcnn.backward.norm import batch_norm, group_norm, layer_norm, moments
from jaxcnn.backward.pool import avg_pool, global_avg_pool, l2_pool, max_pool
from jaxcnn.backward.shape import flatten, upsample_nearest

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
