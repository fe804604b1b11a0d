"""Layers: each is three small pure functions, in the spirit of `jax.example_libraries.stax`.

    init(key, in_shape, dtype) -> (out_shape, params, state)
        in_shape, out_shape: the shape of one example, without the batch axis, e.g. (H, W, C);
        params: a dict of named trainable arrays ({} for layers without any);
        state: a dict of named non-trainable arrays (BatchNorm's running averages), else {}.
    apply(params, state, x, *, train, key, axis_name) -> (y, state, residual)
        x: (N, *in_shape) -> y: (N, *out_shape). `key` is this layer's PRNG key (Dropout uses it
        in training); `axis_name` names the mapped device axis in data-parallel training
        (BatchNorm's statistics span it). `residual` is what backward needs besides x, so that
        it recomputes nothing: ReLU's output, Dropout's mask, BatchNorm's x_hat and 1/sigma;
        None for most layers.
    backward(dy, params, x, residual) -> (dx, grads)
        The hand-written rule, upstream gradient first as in `jaxcnn.backward`: dy = dL/dy
        (N, *out_shape) -> dx = dL/dx, and grads = dL/dparams with exactly the keys of params.
        Built from `jaxcnn.backward` only.
    norms(g, params, x, residual, method) -> (dx, sq, regrad)
        The same backward for per-example rows g (g_i = dl_i/dy_i), returning dx, sq (N,),
        the squared norm of each example's gradient of this layer's params, computed without
        materialising per-example gradients where the layer allows it (`jaxcnn.nn.ghost`;
        method "auto", "ghost" or "instantiate" for convolutions), and regrad(w) -> grads =
        sum_i w_i (example i's grads), from the stored g (the book-keeping of clipped
        gradients: no second backward pass). None: the layer has no such rule (then
        per-example norms of a network holding it are refused).
    decisions(params, x, residual) -> [arrays]
        The discrete choices the layer makes on input x: ReLU's `x > 0`, max pooling's
        winners (`backward.pool.winner_index`). Between two inputs on which they are all equal
        the layer is one smooth piece, so a central difference across them measures its
        slope (finite differences mark the coordinates whose +-h steps change one:
        `grads.finite_difference_grad`). None: a smooth layer, nothing to decide.

A `Layer` bundles the three with a name, a `spec` (its constructor and options, for tools that
rebuild the network elsewhere, such as the PyTorch twin of the benchmark) and, for the layers
that have one, `with_impl`: the same layer with another formulation of its convolutions ("conv",
"gemm", "auto"; see `jaxcnn.fast.auto`), chosen when the layer is built, never per call.
`jaxcnn.nn.network.Network` chains them.

Every layer is importable from here, the whole catalogue in one namespace as stax's: the
convolutions live in `jaxcnn.nn.conv_layers`, the normalisations in `jaxcnn.nn.norm_layers`, the
protocol in `jaxcnn.nn.layer`; dense and the layers without parameters below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcnn import backward, forward
from jaxcnn._geometry import Padding
from jaxcnn.backward import pool as pool_rules
from jaxcnn.nn import ghost
from jaxcnn.nn.conv_layers import (  # noqa: F401  the catalogue
    CONV_OPS,
    Conv1D,
    Conv2D,
    Conv3D,
    ConvTranspose1D,
    ConvTranspose2D,
    ConvTranspose3D,
)
from jaxcnn.nn.layer import (  # noqa: F401  the catalogue
    HE_NORMAL,
    Array,
    Initializer,
    Layer,
    Shape,
    _features,
    _no_params,
    _out_shape,
    reweighted,
    zero_norms,
)
from jaxcnn.nn.norm_layers import BatchNorm, GroupNorm, LayerNorm  # noqa: F401  the catalogue


# ----------------------------------------------------------------------------- with parameters
def Dense(features: int, *, use_bias: bool = True,
          w_init: Initializer = HE_NORMAL, name: str = "dense") -> Layer:
    """Fully connected: (D_in,) -> (features,).

    params: {"w": (D_in, features), "b": (features,)}.
    """
    _features("Dense", name, features)

    def init(key, in_shape, dtype):
        if len(in_shape) != 1:
            raise ValueError(f"Dense {name!r}: input must be flat (D_in,); got {in_shape}. "
                             f"Put a Flatten layer before it")
        w = w_init(key, (in_shape[0], features), dtype)
        params = {"w": w, "b": jnp.zeros((features,), dtype)} if use_bias else {"w": w}
        return (features,), params, {}

    def apply(params, state, x, *, train=False, key=None, axis_name=None):
        return forward.dense(x, params["w"], params.get("b")), state, None

    def backward_(dy, params, x, residual):
        dx, dw, db = backward.dense(dy, x, params["w"])
        return dx, ({"w": dw, "b": db} if use_bias else {"w": dw})

    def norms(g, params, x, residual, method):
        return (backward_(g, params, x, residual)[0], ghost.dense(g, x, use_bias),
                reweighted(backward_, g, params, x, residual))

    return Layer(name, init, apply, backward_,
                 {"kind": "Dense", "features": features, "use_bias": use_bias}, norms=norms)


# ----------------------------------------------------------------------------- without parameters
def Dropout(rate: float, *, name: str = "dropout") -> Layer:
    """Inverted dropout: in training each element is zeroed with probability `rate` and the rest
    scaled by 1 / (1 - rate); evaluation is the identity. The backward reuses the forward's mask:
    dx = dy * mask / (1 - rate). Any shape: (H, W, C) -> the same shape."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"Dropout {name!r}: rate is the drop probability and must be in "
                         f"[0, 1); got {rate}")

    def init(key, in_shape, dtype):
        return in_shape, {}, {}

    def apply(params, state, x, *, train=False, key=None, axis_name=None):
        if not train or rate == 0.0:
            return x, state, None
        if key is None:
            raise ValueError(f"Dropout {name!r}: training needs a PRNG key; pass key=...")
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0), state, keep

    def backward_(dy, params, x, keep):
        return (dy if keep is None else jnp.where(keep, dy / (1.0 - rate), 0)), {}

    return Layer(name, init, apply, backward_, {"kind": "Dropout", "rate": rate},
                 norms=zero_norms(backward_))


def Flatten(*, name: str = "flatten") -> Layer:
    """(H, W, C) -> (H * W * C,), row-major (the worked example's F = Flatten(P1))."""
    return _no_params("Flatten", name, forward.flatten, backward.flatten)


def MaxPool(window: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None,
            padding: Padding = "VALID", *, name: str = "maxpool") -> Layer:
    """Max pooling, (H, W, C) -> (O_h, O_w, C) (`forward.max_pool`); stride None means = window.
    Its decisions: each window's winner (`backward.pool.winner_index`)."""
    opts = dict(window=window, stride=stride, padding=padding)
    return _no_params("MaxPool", name, forward.max_pool, backward.max_pool, **opts)._replace(
        decisions=lambda params, x, residual: [pool_rules.winner_index(x, **opts)])


def AvgPool(window: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None,
            padding: Padding = "VALID", *, count_include_pad: bool = True,
            name: str = "avgpool") -> Layer:
    """Average pooling, (H, W, C) -> (O_h, O_w, C) (`forward.avg_pool`); stride None: = window."""
    return _no_params("AvgPool", name, forward.avg_pool, backward.avg_pool, window=window,
                      stride=stride, padding=padding, count_include_pad=count_include_pad)


def L2Pool(window: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None,
           padding: Padding = "VALID", *, name: str = "l2pool") -> Layer:
    """L2-norm pooling, (H, W, C) -> (O_h, O_w, C) (`forward.l2_pool`); stride None: = window."""
    return _no_params("L2Pool", name, forward.l2_pool, backward.l2_pool, window=window,
                      stride=stride, padding=padding)


def GlobalAvgPool(*, name: str = "global_avg_pool") -> Layer:
    """(H, W, C) -> (C,): the mean over the S = H * W positions of each channel
    (`forward.global_avg_pool`); dx = dy / S at every position."""
    return _no_params("GlobalAvgPool", name, forward.global_avg_pool, backward.global_avg_pool)


def Upsample(scale: int | tuple[int, int] = 2, *, name: str = "upsample") -> Layer:
    """Nearest-neighbour upsampling, (H, W, C) -> (H * s_h, W * s_w, C): every element repeated
    `scale` times along each spatial axis (`forward.upsample_nearest`); dx sums dy over each
    s_h x s_w block."""
    return _no_params("Upsample", name, forward.upsample_nearest, backward.upsample_nearest,
                      scale=scale)


def ReLU(*, name: str = "relu") -> Layer:
    """max(x, 0), (H, W, C) -> the same shape. The backward reads its mask off the output,
    `y > 0` exactly where `x > 0` (micrograd's `(out.data > 0) * out.grad`): the step then
    needs only A = relu(Z), which it keeps anyway, and XLA has no reason to recompute Z (on the
    CPU it did, inside the pooling backward's fusion, costing LeNet-5's step ~25%:
    experiments/PERFORMANCE.md)."""
    base = _no_params("ReLU", name, forward.relu, backward.relu)

    def apply(params, state, x, *, train=False, key=None, axis_name=None):
        y = forward.relu(x)
        return y, state, y

    def backward_(dy, params, x, y):
        return backward.relu(dy, y), {}

    return base._replace(apply=apply, backward=backward_, norms=zero_norms(backward_),
                         decisions=lambda params, x, y: [x > 0])  # its kink: the sign of x


def LeakyReLU(negative_slope: float = 0.01, *, name: str = "leaky_relu") -> Layer:
    """x where x >= 0, else negative_slope * x; (H, W, C) -> the same shape. Its decisions:
    `x >= 0`."""
    return _no_params("LeakyReLU", name, forward.leaky_relu, backward.leaky_relu,
                      negative_slope=negative_slope)._replace(
        decisions=lambda params, x, residual: [x >= 0])


def Sigmoid(*, name: str = "sigmoid") -> Layer:
    """1 / (1 + exp(-x)); (H, W, C) -> the same shape."""
    return _no_params("Sigmoid", name, forward.sigmoid, backward.sigmoid)


def Tanh(*, name: str = "tanh") -> Layer:
    """tanh(x); (H, W, C) -> the same shape."""
    return _no_params("Tanh", name, forward.tanh, backward.tanh)
