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

A `Layer` bundles the three with a name, a `spec` (its constructor and options, for tools that
rebuild the network elsewhere, such as the PyTorch twin of the benchmark) and, for the layers
that have one, `with_impl`: the same layer with another formulation of its convolutions ("conv",
"gemm", "auto"; see `jaxcnn.fast.auto`), chosen when the layer is built, never per call.
`jaxcnn.nn.network.Network` chains them.

The module is over 400 lines because it is the whole catalogue, as stax's one file is: every layer
a reader can put in a network, each a screen or less, the six convolutions sharing one factory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcnn import _geometry, backward, forward
from jaxcnn._geometry import Padding
from jaxcnn.backward.norm import group_normalized, layer_normalized, normalized
from jaxcnn.forward.conv import check_impl
from jaxcnn.forward.norm import group_normalize, layer_normalize, normalize

Array = jax.Array
Shape = tuple[int, ...]
Initializer = Callable[[Array, Shape, Any], Array]
HE_NORMAL = jax.nn.initializers.he_normal()  # std sqrt(2 / fan_in), truncated: for ReLU nets


class Layer(NamedTuple):
    name: str
    init: Callable[..., tuple[Shape, dict, dict]]
    apply: Callable[..., tuple[Array, dict, Any]]
    backward: Callable[..., tuple[Array, dict]]
    spec: dict = {}  # noqa: RUF012  the constructor and its options, e.g. {"kind": "MaxPool", ...}
    with_impl: Callable[[str], Layer] | None = None  # the layer rebuilt with another impl


def _features(kind: str, name: str, features: Any) -> None:
    if isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise ValueError(f"{kind} {name!r}: features must be an int >= 1; got {features!r}")


def _out_shape(fn: Callable, in_shape: Shape, dtype: Any, *args: Any) -> Shape:
    """One example's output shape, found (and the layer's options checked) without computing."""
    x = jax.ShapeDtypeStruct((1, *in_shape), dtype)
    return tuple(jax.eval_shape(fn, x, *args).shape[1:])


def _no_params(kind: str, name: str, fwd: Callable, bwd: Callable, **opts: Any) -> Layer:
    """A layer without parameters: y = fwd(x, **opts), dx = bwd(dy, x, **opts)."""

    def init(key, in_shape, dtype):
        return _out_shape(lambda x: fwd(x, **opts), in_shape, dtype), {}, {}

    def apply(params, state, x, *, train=False, key=None, axis_name=None):
        return fwd(x, **opts), state, None

    def backward_(dy, params, x, residual):
        return bwd(dy, x, **opts), {}

    return Layer(name, init, apply, backward_, {"kind": kind, **opts})


# ----------------------------------------------------------------------------- with parameters
CONV_OPS = {  # layer kind -> (spatial axes, forward op name, transposed?)
    "Conv1D": (1, "conv1d", False), "Conv2D": (2, "conv2d", False),
    "Conv3D": (3, "conv3d", False), "ConvTranspose1D": (1, "conv_transpose1d", True),
    "ConvTranspose2D": (2, "conv_transpose2d", True),
    "ConvTranspose3D": (3, "conv_transpose3d", True),
}


def _conv_layer(kind: str, features: int, kernel: Any, use_bias: bool, w_init: Initializer,
                impl: str, name: str, **opts: Any) -> Layer:
    """Every convolution layer: `kind` names the op pair in `jaxcnn.forward` / `backward`
    (`CONV_OPS`); opts are the op's keyword options, checked once here by `jax.eval_shape`
    when the network is built. The kernel is (*kernel, C_in // groups, features) for a
    convolution and (*kernel, features // groups, C_in) for a transposed one (the kernel of
    the convolution it transposes, as torch's weight with its axes moved)."""
    n, op, transposed = CONV_OPS[kind]
    ks = _geometry.tuple_n(kind, "kernel", kernel, n)
    _features(kind, name, features)
    def fwd(*args, **kw):  # looked up at each call, so that a patched rule (gradcheck's
        return getattr(forward, op)(*args, **kw)  # --sabotage) is the one that runs

    conv_opts = dict(opts) if transposed else dict(opts, impl=check_impl(f"{kind} {name!r}", impl))
    groups = opts["groups"]

    def init(key, in_shape, dtype):
        c_in = in_shape[-1]
        w_shape = (*ks, features // groups, c_in) if transposed else \
            (*ks, c_in // groups, features)
        w = w_init(key, w_shape, dtype)
        params = {"w": w, "b": jnp.zeros((features,), dtype)} if use_bias else {"w": w}
        out = _out_shape(lambda x, w: fwd(x, w, **opts), in_shape, dtype, w)
        return out, params, {}

    def apply(params, state, x, *, train=False, key=None, axis_name=None):
        return fwd(x, params["w"], params.get("b"), **conv_opts), state, None

    def backward_(dy, params, x, residual):
        dx, dw, db = getattr(backward, op)(dy, x, params["w"], **conv_opts)
        return dx, ({"w": dw, "b": db} if use_bias else {"w": dw})

    def with_impl(new: str) -> Layer:
        return _conv_layer(kind, features, ks, use_bias, w_init, new, name, **opts)

    spec = {"kind": kind, "features": features, "kernel": ks, "use_bias": use_bias, **opts}
    if not transposed:
        spec["impl"] = impl
    return Layer(name, init, apply, backward_, spec, None if transposed else with_impl)


def Conv2D(features: int, kernel: int | tuple[int, int] = 3, *,
           stride: int | tuple[int, int] = 1, padding: Padding = "VALID",
           dilation: int | tuple[int, int] = 1, groups: int = 1, use_bias: bool = True,
           w_init: Initializer = HE_NORMAL, impl: str = "conv", name: str = "conv") -> Layer:
    """2-D convolution (cross-correlation) with `features` filters of size `kernel`.

    params: {"w": (kh, kw, C_in // groups, features), "b": (features,)}. (H, W, C_in) ->
    (O_h, O_w, features); all of `forward.conv2d`'s options, and `impl`, the formulation of the
    forward and of the rule (see `jaxcnn.fast.auto`).
    """
    return _conv_layer("Conv2D", features, kernel, use_bias, w_init, impl, name, stride=stride,
                       padding=padding, dilation=dilation, groups=groups)


def Conv1D(features: int, kernel: int | tuple[int] = 3, *, stride: int | tuple[int] = 1,
           padding: Padding = "VALID", dilation: int | tuple[int] = 1, groups: int = 1,
           use_bias: bool = True, w_init: Initializer = HE_NORMAL, impl: str = "conv",
           name: str = "conv") -> Layer:
    """1-D convolution (`forward.conv1d`): (W, C_in) -> (O, features); params {"w": (k,
    C_in // groups, features), "b": (features,)}; options as Conv2D's, one int per axis."""
    return _conv_layer("Conv1D", features, kernel, use_bias, w_init, impl, name, stride=stride,
                       padding=padding, dilation=dilation, groups=groups)


def Conv3D(features: int, kernel: int | tuple[int, int, int] = 3, *,
           stride: int | tuple[int, int, int] = 1, padding: Padding = "VALID",
           dilation: int | tuple[int, int, int] = 1, groups: int = 1, use_bias: bool = True,
           w_init: Initializer = HE_NORMAL, impl: str = "conv", name: str = "conv") -> Layer:
    """3-D convolution (`forward.conv3d`): (D, H, W, C_in) -> (O_d, O_h, O_w, features);
    params {"w": (kd, kh, kw, C_in // groups, features), "b": (features,)}."""
    return _conv_layer("Conv3D", features, kernel, use_bias, w_init, impl, name, stride=stride,
                       padding=padding, dilation=dilation, groups=groups)


def _transpose(kind: str, features: int, kernel: Any, stride: Any, padding: Any,
               output_padding: Any, dilation: Any, groups: int, use_bias: bool,
               w_init: Initializer, name: str) -> Layer:
    return _conv_layer(kind, features, kernel, use_bias, w_init, "conv", name, stride=stride,
                       padding=padding, output_padding=output_padding, dilation=dilation,
                       groups=groups)


def ConvTranspose1D(features: int, kernel: int | tuple[int] = 2, *, stride: int | tuple[int] = 1,
                    padding: int | tuple[int] = 0, output_padding: int | tuple[int] = 0,
                    dilation: int | tuple[int] = 1, groups: int = 1, use_bias: bool = True,
                    w_init: Initializer = HE_NORMAL, name: str = "deconv") -> Layer:
    """1-D transposed convolution (`forward.conv_transpose1d`, torch's semantics): (W, C_in) ->
    (O, features), O = (W - 1) s - 2 p + d (k - 1) + output_padding + 1; params {"w": (k,
    features // groups, C_in), "b": (features,)}."""
    return _transpose("ConvTranspose1D", features, kernel, stride, padding, output_padding,
                      dilation, groups, use_bias, w_init, name)


def ConvTranspose2D(features: int, kernel: int | tuple[int, int] = 2, *,
                    stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                    output_padding: int | tuple[int, int] = 0,
                    dilation: int | tuple[int, int] = 1, groups: int = 1,
                    use_bias: bool = True, w_init: Initializer = HE_NORMAL,
                    name: str = "deconv") -> Layer:
    """2-D transposed convolution (`forward.conv_transpose2d`): (H, W, C_in) -> (O_h, O_w,
    features), O per axis as ConvTranspose1D; params {"w": (kh, kw, features // groups, C_in),
    "b": (features,)}. A U-Net's learned upsampling: kernel 2, stride 2 doubles H and W."""
    return _transpose("ConvTranspose2D", features, kernel, stride, padding, output_padding,
                      dilation, groups, use_bias, w_init, name)


def ConvTranspose3D(features: int, kernel: int | tuple[int, int, int] = 2, *,
                    stride: int | tuple[int, int, int] = 1,
                    padding: int | tuple[int, int, int] = 0,
                    output_padding: int | tuple[int, int, int] = 0,
                    dilation: int | tuple[int, int, int] = 1, groups: int = 1,
                    use_bias: bool = True, w_init: Initializer = HE_NORMAL,
                    name: str = "deconv") -> Layer:
    """3-D transposed convolution (`forward.conv_transpose3d`): (D, H, W, C_in) -> (O_d, O_h,
    O_w, features); params {"w": (kd, kh, kw, features // groups, C_in), "b": (features,)}."""
    return _transpose("ConvTranspose3D", features, kernel, stride, padding, output_padding,
                      dilation, groups, use_bias, w_init, name)


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

    return Layer(name, init, apply, backward_,
                 {"kind": "Dense", "features": features, "use_bias": use_bias})


def BatchNorm(*, momentum: float = 0.9, eps: float = 1e-5, name: str = "batchnorm") -> Layer:
    """Batch normalization over every axis but the channels.

    Training normalises with the batch's statistics (and backpropagates through them) and
    updates the running averages `new = momentum * old + (1 - momentum) * batch` (biased batch
    variance, as flax); evaluation normalises with the running averages.
    params: {"gamma": (C,), "beta": (C,)}; state: {"mean": (C,), "var": (C,)}.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"BatchNorm {name!r}: momentum must be in [0, 1); got {momentum}")

    def initial_state(c, dtype):
        return {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}

    def init(key, in_shape, dtype):
        c = in_shape[-1]
        params = {"gamma": jnp.ones((c,), dtype), "beta": jnp.zeros((c,), dtype)}
        return in_shape, params, initial_state(c, dtype)

    def apply(params, state, x, *, train=False, key=None, axis_name=None):
        _geometry.batch_norm(f"BatchNorm {name!r}", x, params["gamma"], params["beta"], None,
                             None)
        state = state or initial_state(x.shape[-1], x.dtype)
        if train:  # the batch's statistics: computed once, kept for the running averages
            mean, var = forward.moments(x, axis_name=axis_name)
            state = {"mean": momentum * state["mean"] + (1 - momentum) * mean,
                     "var": momentum * state["var"] + (1 - momentum) * var}
        else:
            mean, var = state["mean"], state["var"]
        y, x_hat, inv_sigma = normalize(x, params["gamma"], params["beta"], mean, var, eps)
        return y, state, {"x_hat": x_hat, "inv_sigma": inv_sigma, "train": train,
                          "axis_name": axis_name}

    def backward_(dy, params, x, residual):
        # residual: the forward's x_hat and 1/sigma, whether they were batch statistics, and
        # the device axis they span
        dx, dgamma, dbeta = normalized(dy, residual["x_hat"], residual["inv_sigma"],
                                       params["gamma"], training=residual["train"],
                                       axis_name=residual["axis_name"])
        return dx, {"gamma": dgamma, "beta": dbeta}

    return Layer(name, init, apply, backward_,
                 {"kind": "BatchNorm", "momentum": momentum, "eps": eps})


def _per_example_norm(kind: str, name: str, eps: float, check: Callable, fwd: Callable,
                      bwd: Callable, **opts: Any) -> Layer:
    """A normalisation with per-channel gamma and beta whose statistics are each example's own
    (no batch statistics, no state; training and evaluation alike): `check(label, x, gamma,
    beta, *opts, eps)` (`jaxcnn._geometry`), `fwd(x, gamma, beta, *opts, eps) -> (y, x_hat,
    inv_sigma)` (`jaxcnn.forward.norm`), `bwd(dy, x_hat, inv_sigma, gamma, **opts) -> (dx,
    dgamma, dbeta)` (`jaxcnn.backward.norm`); the residual keeps x_hat and 1/sigma, so backward
    recomputes nothing."""
    label = f"{kind} {name!r}"

    def init(key, in_shape, dtype):
        c = in_shape[-1]
        params = {"gamma": jnp.ones((c,), dtype), "beta": jnp.zeros((c,), dtype)}
        check(label, jax.ShapeDtypeStruct((1, *in_shape), dtype), params["gamma"],
              params["beta"], *opts.values(), eps)
        return in_shape, params, {}

    def apply(params, state, x, *, train=False, key=None, axis_name=None):
        check(label, x, params["gamma"], params["beta"], *opts.values(), eps)
        y, x_hat, inv_sigma = fwd(x, params["gamma"], params["beta"], *opts.values(), eps)
        return y, state, {"x_hat": x_hat, "inv_sigma": inv_sigma}

    def backward_(dy, params, x, residual):
        dx, dgamma, dbeta = bwd(dy, residual["x_hat"], residual["inv_sigma"], params["gamma"],
                                **opts)
        return dx, {"gamma": dgamma, "beta": dbeta}

    return Layer(name, init, apply, backward_, {"kind": kind, **opts, "eps": eps})


def GroupNorm(groups: int, *, eps: float = 1e-5, name: str = "groupnorm") -> Layer:
    """Group normalization (Wu & He 2018): the C channels in `groups` consecutive groups, each
    (example, group) normalised over its spatial positions and channels, M = H * W * C / G
    elements: `y = gamma * (x - mu) / sqrt(var + eps) + beta` (`forward.group_norm`).

    Each example is normalised on its own, so unlike BatchNorm it neither mixes the examples of
    a batch nor keeps running averages: per-example gradients (DP-SGD) stay per example, and
    training and evaluation compute the same thing. With x_hat, sigma per (example, group) and
    dx_hat = gamma * dy: dx = (1/sigma) (dx_hat - mean(dx_hat) - x_hat mean(dx_hat x_hat)),
    the means over each group's M elements; dgamma = sum dy x_hat, dbeta = sum dy.

    Args:
      groups: an int >= 1 dividing the input's channels (1: LayerNorm over H, W and C; C:
        InstanceNorm).
      eps: added to the variance.
      name: the layer's name.

    Returns:
      A Layer (..., C) -> (..., C) with params {"gamma": (C,), "beta": (C,)} and no state.
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"GroupNorm {name!r}: groups must be an int >= 1; got {groups!r}")
    return _per_example_norm("GroupNorm", name, eps, _geometry.group_norm, group_normalize,
                             group_normalized, groups=groups)


def LayerNorm(*, eps: float = 1e-5, name: str = "layernorm") -> Layer:
    """Layer normalization over the channel axis (torch's `F.layer_norm(x, (C,))` channels-last):
    at every position of every example, `y = gamma * (x - mu) / sqrt(var + eps) + beta` with mu
    and var over its C channels (`forward.layer_norm`). The rule is GroupNorm's with the means
    over the C channels of one position.

    Args:
      eps: added to the variance; name: the layer's name.

    Returns:
      A Layer (..., C) -> (..., C) with params {"gamma": (C,), "beta": (C,)} and no state.
    """
    return _per_example_norm("LayerNorm", name, eps, _geometry.layer_norm, layer_normalize,
                             layer_normalized)


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

    return Layer(name, init, apply, backward_, {"kind": "Dropout", "rate": rate})


def Flatten(*, name: str = "flatten") -> Layer:
    """(H, W, C) -> (H * W * C,), row-major (the worked example's F = Flatten(P1))."""
    return _no_params("Flatten", name, forward.flatten, backward.flatten)


def MaxPool(window: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None,
            padding: Padding = "VALID", *, name: str = "maxpool") -> Layer:
    """Max pooling, (H, W, C) -> (O_h, O_w, C) (`forward.max_pool`); stride None means = window."""
    return _no_params("MaxPool", name, forward.max_pool, backward.max_pool, window=window,
                      stride=stride, padding=padding)


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

    return base._replace(apply=apply, backward=backward_)


def LeakyReLU(negative_slope: float = 0.01, *, name: str = "leaky_relu") -> Layer:
    """x where x >= 0, else negative_slope * x; (H, W, C) -> the same shape."""
    return _no_params("LeakyReLU", name, forward.leaky_relu, backward.leaky_relu,
                      negative_slope=negative_slope)


def Sigmoid(*, name: str = "sigmoid") -> Layer:
    """1 / (1 + exp(-x)); (H, W, C) -> the same shape."""
    return _no_params("Sigmoid", name, forward.sigmoid, backward.sigmoid)


def Tanh(*, name: str = "tanh") -> Layer:
    """tanh(x); (H, W, C) -> the same shape."""
    return _no_params("Tanh", name, forward.tanh, backward.tanh)
