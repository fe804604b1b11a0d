"""The convolution layers: Conv1D/2D/3D and ConvTranspose1D/2D/3D, one factory (`jaxcnn.nn.layers`
describes the protocol)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _geometry, backward, forward
from jaxcnn._geometry import Padding
from jaxcnn.forward.conv import check_impl, per_example_rule
from jaxcnn.nn import ghost
from jaxcnn.nn.layer import HE_NORMAL, Initializer, Layer, _features, _out_shape, reweighted

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
    groups = _groups(kind, name, features, opts["groups"])

    def fwd(*args, **kw):  # looked up at each call, so that a patched rule (gradcheck's
        return getattr(forward, op)(*args, **kw)  # --sabotage) is the one that runs

    conv_opts = dict(opts) if transposed else dict(opts, impl=check_impl(f"{kind} {name!r}", impl))

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

    def backward_(dy, params, x, residual, impl=impl):
        o = conv_opts if transposed else dict(conv_opts, impl=impl)
        dx, dw, db = getattr(backward, op)(dy, x, params["w"], **o)
        return dx, ({"w": dw, "b": db} if use_bias else {"w": dw})

    def norms(g, params, x, residual, method):
        return _conv_norms(kind, ks, use_bias, opts, backward_, g, params, x, residual, method)

    def with_impl(new: str) -> Layer:
        return _conv_layer(kind, features, ks, use_bias, w_init, new, name, **opts)

    spec = {"kind": kind, "features": features, "kernel": ks, "use_bias": use_bias, **opts}
    if not transposed:
        spec["impl"] = impl
    return Layer(name, init, apply, backward_, spec, None if transposed else with_impl, norms)


def _groups(kind: str, name: str, features: int, groups: Any) -> int:
    """groups: an int >= 1 dividing `features` (each group makes features // groups outputs)."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{kind} {name!r}: groups must be an int >= 1; got {groups!r}")
    if features % groups:
        raise ValueError(f"{kind} {name!r}: groups={groups} must divide features={features} "
                         f"(each group makes features // groups of the output channels)")
    return groups


def _window(kind: str, x: Any, w: Any, opts: dict) -> _geometry.Window:
    """The window of the convolution whose dW pairs patches with an output: the layer's own,
    or for a transposed one the convolution it transposes."""
    n, _, transposed = CONV_OPS[kind]
    o = opts
    if transposed:
        return _geometry.conv_transpose(kind, x, w, o["stride"], o["padding"],
                                        o["output_padding"], o["dilation"], o["groups"],
                                        spatial=n).conv.win
    return _geometry.conv(kind, x, w, o["stride"], o["padding"], o["dilation"], o["groups"],
                          spatial=n).win


def _conv_norms(kind: str, ks: tuple[int, ...], use_bias: bool, opts: dict, backward_: Any,
                g: Any, params: dict, x: Any, residual: Any, method: str) -> tuple:
    """`Layer.norms` of a convolution layer: (dx, sq (N,), regrad), `method` "ghost" (the ghost
    sum over position pairs), "instantiate" (example i's grads by the layer's rule on example i
    alone, under vmap, kept for the regrad) or "auto" (`ghost.choose`)."""
    transposed, groups = CONV_OPS[kind][2], opts["groups"]
    # the convolution whose dW pairs src's patches with out: x and g, or for a transposed one
    # the patches of g (its output, that convolution's input) with x
    src, out = (g, x) if transposed else (x, g)
    if method == "auto":
        method = ghost.choose(int(np.prod(out.shape[1:-1])),
                              src.shape[-1] // groups * int(np.prod(ks)),
                              out.shape[-1] // groups, groups)
    dx = backward_(g, params, x, residual)[0]
    if method == "instantiate":
        # impl "auto" under the per-example rule: each example's dw as products, batched
        # matrix products under vmap (XLA:CPU runs the grouped convolution vmap makes of
        # XLA's form slowly; jaxcnn.fast.auto.prefer_gemm)
        with per_example_rule():
            per = jax.vmap(lambda gi, xi: backward_(gi[None], params, xi[None], residual,
                                                    impl="auto")[1])(g, x)
        sq = sum(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1) for v in jax.tree.leaves(per))
        return dx, sq, lambda wts: jax.tree.map(lambda v: jnp.tensordot(wts, v, 1), per)
    sq = ghost.conv_ghost(src, out, _window(kind, x, params["w"], opts), groups)
    return (dx, sq + ghost.bias(g) if use_bias else sq,
            reweighted(backward_, g, params, x, residual))


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
