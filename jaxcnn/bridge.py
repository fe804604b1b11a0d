"""The hand-written rules inside any `jax.grad`: `jax.custom_vjp` versions of the forward ops.

    from jaxcnn import bridge
    loss = lambda p, x, y: bridge.softmax_cross_entropy(bridge.dense(bridge.flatten(
        bridge.max_pool(bridge.relu(bridge.conv2d(x, p["w1"], p["b1"])))), p["w2"], p["b2"]), y)
    jax.grad(loss)(params, x, y)      # runs jaxcnn.backward's rules, not JAX's derivatives

Every op of `jaxcnn.forward` has a namesake here with its signature (tests/test_bridge.py checks
both). A twin's primal IS the forward op (so a bad argument raises the very same ValueError /
TypeError, before anything is traced); its VJP is the `jaxcnn.backward` rule, looked up on that
module at each call, so a patched `jaxcnn.backward.<name>` takes effect. Labels (the losses' y,
mse's target t) and BatchNorm's running mean and var get a zero cotangent: they are data, not
parameters. This module is over 400 lines because it holds a twin of every forward op, each with
the forward's full signature and shapes, beside `bridge(model)`: one pattern, which split by
family would only be scattered over files.

`bridge(model)` does the same for a whole `Network`: each layer's apply becomes a custom_vjp whose
backward is the layer's hand-written `backward`, and the fused loss head's backward is its
`delta`. `jax.grad(bridge(model).loss)` then runs every manual rule, layer by layer, while the
rest of the user's function (regularisers, other losses) is differentiated by JAX.

Static options (stride, padding, window, axis, eps, negative_slope, axis_name, ...) are never
traced: each combination gets its own custom_vjp function, built once and cached; lists in them
are read as tuples. Inside `jax.shard_map`, a rule's cotangent for a replicated argument (e.g.
params beside sharded x) is summed over the devices, as JAX does for its own derivatives.

What custom_vjp cannot do: forward mode. `jax.jvp`, `jax.jacfwd`, `jax.linearize` of these
functions raise a TypeError ("can't apply forward-mode autodiff (jvp) to a custom_vjp
function"); use `jax.vjp` / `jax.jacrev`. Higher-order reverse mode works, but the derivative of
a gradient is the derivative of the rule's code: JAX differentiates `jaxcnn.backward`, not the
forward op a second time (for these rules they agree where the maths is smooth).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from jax import lax

from jaxcnn import backward, forward
from jaxcnn._geometry import Padding
from jaxcnn.forward.conv import Ints
from jaxcnn.nn.layers import Layer
from jaxcnn.nn.network import Head, Network

Array = jax.Array

__all__ = [
    "add", "avg_pool", "batch_norm", "binary_cross_entropy", "bridge", "concat", "conv1d",
    "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "convolve2d",
    "dense", "flatten", "global_avg_pool", "group_norm", "l2_pool", "layer_norm", "leaky_relu",
    "max_pool", "moments", "mse", "pixel_sigmoid_binary_cross_entropy",
    "pixel_softmax_cross_entropy", "relu", "sigmoid", "sigmoid_binary_cross_entropy", "softmax",
    "softmax_cross_entropy", "tanh", "upsample_nearest",
]

# forward(x, w, b) has the rule backward(dy, x, w) -> (dx, dw, db): the bias is not an input
_BIASED = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "convolve2d", "dense")


# ----------------------------------------------------------------------------- machinery
def _frozen(v: Any) -> Any:
    """Lists (nested, e.g. padding [[1, 1], [0, 0]]) as tuples, so options can key a cache."""
    return tuple(_frozen(e) for e in v) if isinstance(v, list | tuple) else v


def _typed(v: Any) -> Any:
    """Every leaf beside its type: stride 1, 1.0 and True are equal in Python but must not
    share a cache entry (the forward op accepts only the first)."""
    return tuple(_typed(e) for e in v) if isinstance(v, tuple) else (type(v), v)


def _varying(a: Any) -> frozenset:
    """The mesh axes `a` varies over inside `jax.shard_map` (empty outside it).

    jax 0.10.2 through 0.12.0.1 have no public accessor for them: the aval carries them as
    `manual_axis_type.varying` (checked on both), some releases as `vma`. If a release drops
    both, this returns nothing and the shard_map test of tests/test_bridge.py fails, which says
    to look here.
    """
    aval = jax.typeof(a)
    mat = getattr(aval, "manual_axis_type", None)
    return frozenset(mat.varying) if mat is not None else frozenset(getattr(aval, "vma", ()))


def _like(ct: Array | None, primal: Any) -> Array | None:
    """A cotangent made to vary over the same mesh axes as its primal: summed over the axes the
    primal is replicated on (the transpose of JAX's implicit broadcast), broadcast over those it
    varies on but the cotangent does not. A no-op outside shard_map."""
    if ct is None or primal is None:
        return None
    have, want = _varying(ct), _varying(primal)
    if extra := tuple(sorted(have - want)):
        ct = lax.psum(ct, extra)
    if missing := tuple(sorted(want - have)):
        ct = lax.pcast(ct, missing, to="varying")
    return ct


@functools.cache
def _custom(name: str, options: tuple[tuple[str, Any], ...], typed: Any) -> Any:
    """`forward.<name>(*args, **options)` as a custom_vjp whose bwd is `backward.<name>`;
    `typed` (the options with their types) only keys the cache."""
    opts = dict(options)

    @jax.custom_vjp
    def op(*args):
        return getattr(forward, name)(*args, **opts)

    def fwd(*args):
        return getattr(forward, name)(*args, **opts), args

    def bwd(args, ct):
        rule = getattr(backward, name)  # at call time: a patched rule takes effect
        ct = ct if isinstance(ct, tuple) else (ct,)  # moments: one cotangent per output
        cts = rule(*ct, *args[:2], **opts) if name in _BIASED else rule(*ct, *args, **opts)
        cts = cts if isinstance(cts, tuple) else (cts,)
        cts = cts + (None,) * (len(args) - len(cts))  # labels, running statistics: no gradient
        return tuple(_like(g, a) for g, a in zip(cts, args))

    op.defvjp(fwd, bwd)
    return op


def _call(name: str, args: tuple, **options: Any) -> Any:
    """Run `name`'s custom_vjp on `args` (None for an absent optional array)."""
    key = tuple(sorted((k, _frozen(v)) for k, v in options.items()))
    try:
        hash((key, _typed(key)))
        arrays = all(a is None or (hasattr(a, "shape") and hasattr(a, "dtype")) for a in args)
    except TypeError:
        arrays = False
    if not arrays:  # let the forward op raise its own error for a bad argument
        getattr(forward, name)(*args, **options)
        raise TypeError(f"jaxcnn.bridge.{name}: arguments must be arrays and options hashable; "
                        f"got {args!r}, {options!r}")
    return _custom(name, key, _typed(key))(*args)


# ----------------------------------------------------------------------------- the ops
# convolutions: x (N, *spatial, C_in), b (C_out,) or None; the options as the forward's
def conv1d(x: Array, w: Array, b: Array | None = None, *, stride: Ints = 1,
           padding: Padding = "VALID", dilation: Ints = 1, groups: int = 1,
           precision: Any = None, impl: str = "conv") -> Array:
    """`forward.conv1d` (x (N, W, C_in), w (kw, C_in // groups, C_out) -> (N, O, C_out)), VJP
    `backward.conv1d`."""
    return _call("conv1d", (x, w, b), stride=stride, padding=padding, dilation=dilation,
                 groups=groups, precision=precision, impl=impl)


def conv2d(x: Array, w: Array, b: Array | None = None, *, stride: int | tuple[int, int] = 1,
           padding: Padding = "VALID", dilation: int | tuple[int, int] = 1, groups: int = 1,
           precision: Any = None, impl: str = "conv") -> Array:
    """`forward.conv2d` (x (N, H, W, C_in), w (kh, kw, C_in // groups, C_out), b (C_out,) or
    None -> (N, O_h, O_w, C_out)) with `backward.conv2d` as its VJP; `impl` ("conv", "gemm",
    "auto") picks the formulation of both."""
    return _call("conv2d", (x, w, b), stride=stride, padding=padding, dilation=dilation,
                 groups=groups, precision=precision, impl=impl)


def conv3d(x: Array, w: Array, b: Array | None = None, *, stride: Ints = 1,
           padding: Padding = "VALID", dilation: Ints = 1, groups: int = 1,
           precision: Any = None, impl: str = "conv") -> Array:
    """`forward.conv3d` (x (N, D, H, W, C_in), w (kd, kh, kw, C_in // groups, C_out) ->
    (N, O_d, O_h, O_w, C_out)), VJP `backward.conv3d`."""
    return _call("conv3d", (x, w, b), stride=stride, padding=padding, dilation=dilation,
                 groups=groups, precision=precision, impl=impl)


def convolve2d(x: Array, w: Array, b: Array | None = None, *,
               stride: int | tuple[int, int] = 1, padding: Padding = "VALID",
               dilation: int | tuple[int, int] = 1, groups: int = 1,
               precision: Any = None, impl: str = "conv") -> Array:
    """`forward.convolve2d` (true convolution; shapes and options as conv2d), VJP
    `backward.convolve2d`."""
    return _call("convolve2d", (x, w, b), stride=stride, padding=padding, dilation=dilation,
                 groups=groups, precision=precision, impl=impl)


def conv_transpose1d(x: Array, w: Array, b: Array | None = None, *, stride: Ints = 1,
                     padding: Ints = 0, output_padding: Ints = 0, dilation: Ints = 1,
                     groups: int = 1) -> Array:
    """`forward.conv_transpose1d` (x (N, W, C_in), w (kw, C_out // groups, C_in) -> (N, O,
    C_out), O = (W - 1) s - 2 p + d (k - 1) + output_padding + 1), VJP its backward rule."""
    return _call("conv_transpose1d", (x, w, b), stride=stride, padding=padding,
                 output_padding=output_padding, dilation=dilation, groups=groups)


def conv_transpose2d(x: Array, w: Array, b: Array | None = None, *, stride: Ints = 1,
                     padding: Ints = 0, output_padding: Ints = 0, dilation: Ints = 1,
                     groups: int = 1) -> Array:
    """`forward.conv_transpose2d` (x (N, H, W, C_in), w (kh, kw, C_out // groups, C_in) ->
    (N, O_h, O_w, C_out)), VJP `backward.conv_transpose2d`."""
    return _call("conv_transpose2d", (x, w, b), stride=stride, padding=padding,
                 output_padding=output_padding, dilation=dilation, groups=groups)


def conv_transpose3d(x: Array, w: Array, b: Array | None = None, *, stride: Ints = 1,
                     padding: Ints = 0, output_padding: Ints = 0, dilation: Ints = 1,
                     groups: int = 1) -> Array:
    """`forward.conv_transpose3d` (x (N, D, H, W, C_in), w (kd, kh, kw, C_out // groups, C_in)
    -> (N, O_d, O_h, O_w, C_out)), VJP `backward.conv_transpose3d`."""
    return _call("conv_transpose3d", (x, w, b), stride=stride, padding=padding,
                 output_padding=output_padding, dilation=dilation, groups=groups)


def dense(x: Array, w: Array, b: Array | None = None, *, precision: Any = None) -> Array:
    """`forward.dense` (x (N, D_in), w (D_in, D_out), b (D_out,) -> (N, D_out)), VJP
    `backward.dense`."""
    return _call("dense", (x, w, b), precision=precision)


# shape, pooling, activations, joins: x (N, *spatial, C) with 1, 2 or 3 spatial axes
def flatten(x: Array) -> Array:
    """`forward.flatten` ((N, d1, ...) -> (N, d1 * ...)), VJP `backward.flatten`."""
    return _call("flatten", (x,))


def upsample_nearest(x: Array, *, scale: int | tuple[int, ...] = 2) -> Array:
    """`forward.upsample_nearest` ((N, *S, C) -> (N, *(S * scale), C)), VJP its rule: dy
    summed over each block of copies."""
    return _call("upsample_nearest", (x,), scale=scale)


def max_pool(x: Array, *, window: int | tuple[int, ...] = 2,
             stride: int | tuple[int, ...] | None = None, padding: Padding = "VALID") -> Array:
    """`forward.max_pool` ((N, *S, C) -> (N, *O, C)), VJP `backward.max_pool`."""
    return _call("max_pool", (x,), window=window, stride=stride, padding=padding)


def avg_pool(x: Array, *, window: int | tuple[int, ...] = 2,
             stride: int | tuple[int, ...] | None = None, padding: Padding = "VALID",
             count_include_pad: bool = True) -> Array:
    """`forward.avg_pool` ((N, *S, C) -> (N, *O, C)), VJP `backward.avg_pool`."""
    return _call("avg_pool", (x,), window=window, stride=stride, padding=padding,
                 count_include_pad=count_include_pad)


def l2_pool(x: Array, *, window: int | tuple[int, ...] = 2,
            stride: int | tuple[int, ...] | None = None, padding: Padding = "VALID") -> Array:
    """`forward.l2_pool` ((N, *S, C) -> (N, *O, C)), VJP `backward.l2_pool`."""
    return _call("l2_pool", (x,), window=window, stride=stride, padding=padding)


def global_avg_pool(x: Array) -> Array:
    """`forward.global_avg_pool` ((N, *S, C) -> (N, C), the mean over the S positions), VJP
    `backward.global_avg_pool` (dx = dy / S at every position)."""
    return _call("global_avg_pool", (x,))


def relu(x: Array) -> Array:
    """`forward.relu` (any shape), VJP `backward.relu`."""
    return _call("relu", (x,))


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """`forward.leaky_relu` (any shape), VJP `backward.leaky_relu`; the slope is static."""
    return _call("leaky_relu", (x,), negative_slope=negative_slope)


def sigmoid(x: Array) -> Array:
    """`forward.sigmoid` (any shape), VJP `backward.sigmoid`."""
    return _call("sigmoid", (x,))


def tanh(x: Array) -> Array:
    """`forward.tanh` (any shape), VJP `backward.tanh`."""
    return _call("tanh", (x,))


def softmax(x: Array, axis: int = -1) -> Array:
    """`forward.softmax` along a static `axis` (any shape), VJP `backward.softmax`."""
    return _call("softmax", (x,), axis=axis)


def add(a: Array, b: Array) -> Array:
    """`forward.add` (a, b of one shape -> a + b), VJP `backward.add` (da = db = dy)."""
    return _call("add", (a, b))


def concat(a: Array, b: Array) -> Array:
    """`forward.concat` ((N, *S, C_a), (N, *S, C_b) -> (N, *S, C_a + C_b)), VJP
    `backward.concat` (dy split by channels)."""
    return _call("concat", (a, b))


# normalisations: x (N, ..., C); gamma, beta (and BatchNorm's running mean, var) (C,)
def moments(x: Array, *, axis_name: str | None = None) -> tuple[Array, Array]:
    """`forward.moments` (x (N, ..., C) -> (mean, var), each (C,)), VJP `backward.moments`
    (dx = (dmean + 2 dvar (x - mean)) / M)."""
    return _call("moments", (x,), axis_name=axis_name)


def batch_norm(x: Array, gamma: Array, beta: Array, mean: Array | None = None,
               var: Array | None = None, *, eps: float = 1e-5,
               axis_name: str | None = None) -> Array:
    """`forward.batch_norm` (x (N, ..., C); gamma, beta, mean, var (C,)), VJP
    `backward.batch_norm`: gradients for x, gamma and beta; none for the running mean and var.
    With `axis_name`, inside shard_map, the statistics span the devices."""
    return _call("batch_norm", (x, gamma, beta, mean, var), eps=eps, axis_name=axis_name)


def group_norm(x: Array, gamma: Array, beta: Array, *, groups: int,
               eps: float = 1e-5) -> Array:
    """`forward.group_norm` (x (N, ..., C), statistics per example and group of C / groups
    channels), VJP `backward.group_norm`."""
    return _call("group_norm", (x, gamma, beta), groups=groups, eps=eps)


def layer_norm(x: Array, gamma: Array, beta: Array, *, eps: float = 1e-5) -> Array:
    """`forward.layer_norm` (x (N, ..., C), statistics over the C channels of each position),
    VJP `backward.layer_norm`."""
    return _call("layer_norm", (x, gamma, beta), eps=eps)


# losses -> scalar; the labels y (and mse's target t) get no gradient
def binary_cross_entropy(p: Array, y: Array) -> Array:
    """`forward.binary_cross_entropy` (p (N,) or (N, 1), y (N,)), VJP its rule."""
    return _call("binary_cross_entropy", (p, y))


def sigmoid_binary_cross_entropy(z: Array, y: Array) -> Array:
    """`forward.sigmoid_binary_cross_entropy` (z (N,) or (N, 1) logits, y (N,)), VJP its
    rule."""
    return _call("sigmoid_binary_cross_entropy", (z, y))


def softmax_cross_entropy(z: Array, y: Array) -> Array:
    """`forward.softmax_cross_entropy` (z (N, K), y (N,) int or (N, K)), VJP its rule; integer
    labels get a float0 cotangent."""
    return _call("softmax_cross_entropy", (z, y))


def pixel_softmax_cross_entropy(z: Array, y: Array) -> Array:
    """`forward.pixel_softmax_cross_entropy` (z (N, *S, K), y (N, *S) int class ids), VJP its
    rule, (softmax(z) - onehot(y)) / (N P)."""
    return _call("pixel_softmax_cross_entropy", (z, y))


def pixel_sigmoid_binary_cross_entropy(z: Array, y: Array) -> Array:
    """`forward.pixel_sigmoid_binary_cross_entropy` (z (N, *S, 1) or (N, *S), y (N, *S) of
    0./1.), VJP its rule, (sigmoid(z) - y) / (N P)."""
    return _call("pixel_sigmoid_binary_cross_entropy", (z, y))


def mse(y_pred: Array, t: Array) -> Array:
    """`forward.mse` (two arrays of one shape), VJP `backward.mse`."""
    return _call("mse", (y_pred, t))


# ----------------------------------------------------------------------------- networks
def _split(residual: Any) -> tuple[list[Array], tuple[Any, dict[int, Any]]]:
    """A layer's residual -> (its array leaves, (tree structure, its other leaves by index)).
    BatchNorm's training residual holds the axis name, a string: static, not a JAX value."""
    leaves, tree = jax.tree.flatten(residual)
    arrays = [v for v in leaves if isinstance(v, jax.Array)]
    return arrays, (tree, {i: v for i, v in enumerate(leaves) if not isinstance(v, jax.Array)})


def _join(arrays: list[Array], static: tuple[Any, dict[int, Any]]) -> Any:
    tree, others = static
    it = iter(arrays)
    return jax.tree.unflatten(tree, [others[i] if i in others else next(it)
                                     for i in range(tree.num_leaves)])


def _bridge_layer(layer: Layer) -> Layer:
    """The layer with its apply wrapped in a custom_vjp whose bwd is `layer.backward`.

    Differentiable: params and x. Not: state (an auxiliary output) and key (arguments), nor the
    static keywords (train, axis_name), which are closed over.
    """

    def apply(params, state, x, *, key=None, **static_kw):
        static: dict[str, Any] = {}  # the residual's non-array part, recorded while tracing

        def run(params, x, state, key):
            y, new_state, residual = layer.apply(params, state, x, key=key, **static_kw)
            arrays, static["residual"] = _split(residual)
            return y, new_state, arrays

        @jax.custom_vjp
        def f(params, x, state, key):
            return run(params, x, state, key)

        def fwd(params, x, state, key):
            out = run(params, x, state, key)
            return out, (params, x, out[2])

        def bwd(saved, cts):
            params, x, arrays = saved
            dx, g = layer.backward(cts[0], params, x, _join(arrays, static["residual"]))
            return jax.tree.map(_like, g, params), _like(dx, x), None, None

        f.defvjp(fwd, bwd)
        y, new_state, arrays = f(params, x, state, key)
        return y, new_state, _join(arrays, static["residual"])

    def with_impl(impl: str) -> Layer:
        return _bridge_layer(layer.with_impl(impl))

    return layer._replace(apply=apply, with_impl=with_impl if layer.with_impl else None)


@functools.cache
def _head_loss(head: Head) -> Any:
    """`head.loss(logits, y)` as a custom_vjp whose bwd is `ct * head.delta(logits, y)`."""

    @jax.custom_vjp
    def loss(z, y):
        return head.loss(z, y)

    def fwd(z, y):
        return head.loss(z, y), (z, y)

    def bwd(saved, ct):
        z, y = saved
        return _like(ct * head.delta(z, y), z), None

    loss.defvjp(fwd, bwd)
    return loss


def bridge(model: Network) -> Network:
    """The same network (name, input shape, layer names; interchangeable params and state)
    whose every layer's apply is a custom_vjp running that layer's hand-written backward, and
    whose loss head's backward is its fused delta: `jax.grad(bridge(model).loss)(params, x, y,
    ...)` equals `jaxcnn.manual_grad(model, ...)`, and works under jit, vmap, jax.checkpoint and
    inside shard_map. The manual path (`Network.backprop`) works on it unchanged."""
    head = model.head._replace(loss=_head_loss(model.head))
    return Network(model.name, [_bridge_layer(layer) for layer in model.layers],
                   model.input_shape, head)
