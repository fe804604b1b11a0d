"""PyTorch (CPU, eager) twins of jaxcnn's networks: the yardstick of `jaxcnn bench --against torch`.

`torch_model(net)` rebuilds any `jaxcnn.nn.network.Network` in torch from its layers' specs (each
`Layer.spec` names the constructor and its options, e.g. {"kind": "Conv2D", "kernel": (3, 3),
...}; a block's spec nests its sub-layers' with their names), blocks as modules of the same
meaning and names:

    Serial(l_1, ..., l_K)   nn.Sequential of the sub-layers, by name       y = l_K(... l_1(x))
    Residual(f, shortcut)   `Residual` with .f and .shortcut (None: x)     y = f(x) + shortcut(x)
    SkipConcat(inner)       `SkipConcat` with .inner                       y = cat([x, inner(x)], C)

Sizes come from each layer's jaxcnn twin (`leaf`) under `jax.eval_shape`. The twin takes
channels-last inputs of any rank ((N, W, C), (N, H, W, C), (N, D, H, W, C)), runs channels-first
inside, flattens in channels-last order and returns channels-last logits, so that `load_params`
makes its logits those of `net.forward`. Kernels (*k, C_in // g, C_out), and transposed ones
(*k, C_out // g, C_in), are torch's (C_out, C_in // g, *k) and (C_in, C_out // g, *k): one axis
permutation for both. BatchNorm: jaxcnn's momentum m is torch's 1 - m; torch's running variance
is the unbiased batch variance, jaxcnn's the biased one (both normalise with the biased one).
`twin_loss(net)` is the head's loss in torch; the per-pixel cross-entropy of (N, K, H, W) logits
and (N, H, W) targets is the mean over all pixels: jaxcnn's mean per image, then over the batch.

torch is optional (`pip install jaxcnn[torch]`): it is imported on first use, never at import.
The module is over 400 lines because it is the whole twin, in one place as the twin test reads
it: a torch module for every jaxcnn layer kind and block on 1 to 3 spatial axes, the parameters
mapped both ways, and the heads' losses.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _geometry
from jaxcnn.nn import layers as jaxcnn_layers
from jaxcnn.nn.layers import CONV_OPS, Layer
from jaxcnn.nn.network import Network

if TYPE_CHECKING:
    import torch

TORCH_MISSING = "jaxcnn bench --against torch needs PyTorch: pip install torch==2.13.0 (CPU build)"
BLOCKS = ("Serial", "Residual", "SkipConcat")
Pads = tuple[tuple[int, int], ...]


@functools.cache
def _torch() -> SimpleNamespace:
    """torch, nn and the twin's own module classes, defined on first use."""
    try:
        import torch
        from torch import nn
    except ImportError as e:
        raise ImportError(TORCH_MISSING) from e
    return SimpleNamespace(torch=torch, nn=nn, **_structure(torch, nn), **_ops(torch, nn))


def _structure(torch: Any, nn: Any) -> dict[str, type]:
    """The twin itself and its blocks' joins: Twin, Residual, SkipConcat."""

    class Twin(nn.Module):
        """Channels-last inputs in; the layers, by jaxcnn name, channels-first; logits out."""

        def __init__(self, layers: list[tuple[str, nn.Module]]):
            super().__init__()
            self.body = nn.Sequential(OrderedDict(layers))

        def forward(self, x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
            y = self.body(x.movedim(-1, 1).contiguous() if x.ndim > 2 else x)
            return y.movedim(1, -1) if channels_last and y.ndim > 2 else y

    class Residual(nn.Module):
        """y = f(x) + shortcut(x), x itself when the shortcut is None."""

        def __init__(self, f: nn.Module, shortcut: nn.Module | None):
            super().__init__()
            self.f, self.shortcut = f, shortcut

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.f(x) + (x if self.shortcut is None else self.shortcut(x))

    class SkipConcat(nn.Module):
        """y = cat([x, inner(x)]) along the channels (axis 1, channels-first)."""

        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, self.inner(x)], 1)

    return {"Twin": Twin, "Residual": Residual, "SkipConcat": SkipConcat}


def _ops(torch: Any, nn: Any) -> dict[str, Any]:
    """The layers torch has no module for: Padded, LayerNorm over the channels, SumPool,
    Flatten and GlobalAvgPool."""
    F = nn.functional

    class Padded(nn.Module):
        """`layer` after an explicit (possibly asymmetric) constant pad of the spatial axes."""

        def __init__(self, pads: Pads, layer: nn.Module, value: float = 0.0):
            super().__init__()
            self.pads, self.layer, self.value = _torch_pads(pads), layer, value

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(F.pad(x, self.pads, value=self.value))

    class Fn(nn.Module):
        """A function without parameters as a module: jaxcnn's row-major flatten of (*S, C)
        (back to channels-last, then flatten), the global average over the spatial axes."""

        def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
            super().__init__()
            self.fn = fn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fn(x)

    class LayerNorm(nn.LayerNorm):
        """LayerNorm over the channel axis (axis 1 of a channels-first tensor)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.ndim == 2:
                return super().forward(x)
            return super().forward(x.movedim(1, -1)).movedim(-1, 1)

    class SumPool(nn.Module):
        """Window sums of the zero-padded input, as sqrt (L2Pool) or divided by `counts`."""

        def __init__(self, win: tuple[int, ...], stride: tuple[int, ...], pads: Pads,
                     counts: np.ndarray | None = None):
            super().__init__()
            self.win, self.stride, self.pads = win, stride, _torch_pads(pads)
            self.pool, self.size = getattr(F, f"avg_pool{len(win)}d"), int(np.prod(win))
            self.register_buffer("counts", None if counts is None else torch.as_tensor(counts))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x if self.counts is not None else x * x
            s = self.pool(F.pad(x, self.pads), self.win, self.stride) * self.size
            if self.counts is not None:
                return s / self.counts
            pos = s > 0  # sqrt'(0) is inf: the gradient is 0 there, as in jaxcnn.backward
            return torch.where(pos, torch.sqrt(torch.where(pos, s, 1.0)), 0.0)

    return {"Padded": Padded, "LayerNorm": LayerNorm, "SumPool": SumPool,
            "Flatten": lambda: Fn(lambda x: (x.movedim(1, -1) if x.ndim > 2 else x).flatten(1)),
            "GlobalAvgPool": lambda: Fn(lambda x: x.mean(tuple(range(2, x.ndim))))}


# ----------------------------------------------------------------------------- specs and shapes
def layer_specs(net: Network) -> list[dict]:
    """Each layer's {"kind": constructor, **options}: its `spec`, with its "name"."""
    missing = [layer.name for layer in net.layers if "kind" not in layer.spec]
    if missing:
        raise ValueError(f"{net.name}: layers {missing} carry no spec (Layer.spec), so no torch "
                         f"twin can be built for them")
    return [{"name": layer.name, **layer.spec} for layer in net.layers]


def leaf(spec: dict) -> Layer:
    """The jaxcnn layer a (non-block) spec describes: its constructor in `jaxcnn.nn.layers`
    called with the spec's options, e.g. {"kind": "Conv2D", "features": 8, ...} -> Conv2D(8, ...).

    Raises:
      ValueError: the spec names no constructor of `jaxcnn.nn.layers`.
    """
    kind = spec.get("kind")
    make = getattr(jaxcnn_layers, kind, None) if isinstance(kind, str) else None
    if kind in BLOCKS or not inspect.isfunction(make) or not kind[:1].isupper():
        raise ValueError(f"spec {spec!r}: its kind must name a layer of jaxcnn.nn.layers")
    opts = {k: v for k, v in spec.items() if k not in ("kind", "name")}
    return make(**opts, name=spec.get("name", kind.lower()))


def leaf_shape(spec: dict, in_shape: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
    """(out_shape, has_params) of one example (no batch axis) through the layer `spec`
    describes, e.g. Conv2D 8 3x3 SAME on (16, 16, 1) -> ((16, 16, 8), True); found by
    `jax.eval_shape` of its init (nothing computed)."""
    layer, found = leaf(spec), {}

    def init(key: jax.Array) -> dict:
        shape, params, _ = layer.init(key, tuple(in_shape), jnp.float32)
        found["shape"], found["params"] = tuple(shape), bool(params)
        return params

    jax.eval_shape(init, jax.random.key(0))
    return found["shape"], found["params"]


# ----------------------------------------------------------------------------- builder
def _torch_pads(pads: Pads) -> tuple[int, ...]:
    """((lo, hi) per spatial axis, first axis first) -> torch's F.pad order, last axis first:
    ((top, bottom), (left, right)) -> (left, right, top, bottom)."""
    return tuple(v for lo, hi in reversed(pads) for v in (lo, hi))


def _padded(t: SimpleNamespace, pads: Pads, layer: Any, value: float = 0.0) -> Any:
    """`layer` after an explicit (possibly asymmetric) pad, or alone when no pad is needed."""
    return t.Padded(pads, layer, value) if any(_torch_pads(pads)) else layer


def _conv(t: SimpleNamespace, s: dict, in_shape: tuple, out_shape: tuple) -> Any:
    """Conv1d/2d/3d or ConvTranspose1d/2d/3d for a jaxcnn convolution of spec `s`."""
    n, _, transposed = CONV_OPS[s["kind"]]
    fn, c_in, c_out = "torch_model", in_shape[-1], out_shape[-1]
    k = _geometry.tuple_n(fn, "kernel", s["kernel"], n)
    stride = _geometry.tuple_n(fn, "stride", s.get("stride", 1), n)
    dil = _geometry.tuple_n(fn, "dilation", s.get("dilation", 1), n)
    opts = dict(kernel_size=k, stride=stride, dilation=dil, groups=s.get("groups", 1),
                bias=s.get("use_bias", True))
    if transposed:  # torch's own semantics, which jaxcnn's transposed convolutions follow
        pad, out_pad = (_geometry.tuple_n(fn, key, s.get(key, 0), n, minimum=0)
                        for key in ("padding", "output_padding"))
        return getattr(t.nn, f"ConvTranspose{n}d")(c_in, c_out, padding=pad,
                                                     output_padding=out_pad, **opts)
    conv, pad = getattr(t.nn, f"Conv{n}d"), s.get("padding", "VALID")
    if isinstance(pad, str) and pad.upper() == "SAME" and set(stride) == {1}:
        return conv(c_in, c_out, padding="same", **opts)
    eff = tuple((a - 1) * d + 1 for a, d in zip(k, dil))
    pads = _geometry.padding_n(fn, pad, tuple(in_shape[:-1]), eff, stride)
    if all(lo == hi for lo, hi in pads):
        return conv(c_in, c_out, padding=tuple(lo for lo, _ in pads), **opts)
    return _padded(t, pads, conv(c_in, c_out, **opts))


def _pool(t: SimpleNamespace, s: dict, in_shape: tuple) -> Any:
    """MaxPool/AvgPool 1d-3d (after an explicit pad), or a window sum for L2Pool and for
    averages that leave the padding out of the count."""
    fn, kind, n = "torch_model", s["kind"], len(in_shape) - 1
    win = _geometry.tuple_n(fn, "window", s.get("window", 2), n)
    stride = win if s.get("stride") is None else _geometry.tuple_n(fn, "stride", s["stride"], n)
    w = _geometry.window(fn, tuple(in_shape[:-1]), win, stride, (1,) * n,
                         s.get("padding", "VALID"), "window")
    if kind == "MaxPool":
        return _padded(t, w.pads, getattr(t.nn, f"MaxPool{n}d")(win, stride), -float("inf"))
    if kind == "L2Pool":
        return t.SumPool(win, stride, w.pads)
    if s.get("count_include_pad", True) or not any(_torch_pads(w.pads)):
        return _padded(t, w.pads, getattr(t.nn, f"AvgPool{n}d")(win, stride))
    counts = np.moveaxis(_geometry.window_counts_nd(w, False), -1, 1).astype(np.float32)
    return t.SumPool(win, stride, w.pads, counts)


def _layer(t: SimpleNamespace, s: dict, in_shape: tuple, out_shape: tuple) -> Any:
    """The torch module for one jaxcnn (non-block) layer of spec `s`: in_shape -> out_shape."""
    nn, kind = t.nn, s["kind"]
    simple = {"ReLU": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "Flatten": t.Flatten,
              "GlobalAvgPool": t.GlobalAvgPool}
    if kind in simple:
        return simple[kind]()
    if kind in CONV_OPS:
        return _conv(t, s, in_shape, out_shape)
    if kind in ("MaxPool", "AvgPool", "L2Pool"):
        return _pool(t, s, in_shape)
    if kind == "LeakyReLU":
        return nn.LeakyReLU(s.get("negative_slope", 0.01))
    if kind == "Dropout":
        return nn.Dropout(s["rate"])
    if kind == "Dense":
        return nn.Linear(in_shape[0], out_shape[0], bias=s.get("use_bias", True))
    if kind == "BatchNorm":
        bn = getattr(nn, f"BatchNorm{max(1, len(in_shape) - 1)}d")  # (C,) and (W, C): 1d
        momentum = round(1 - s.get("momentum", 0.9), 12)  # torch weighs the batch by it
        return bn(in_shape[-1], eps=s.get("eps", 1e-5), momentum=momentum)
    if kind == "GroupNorm":
        return nn.GroupNorm(s["groups"], in_shape[-1], eps=s.get("eps", 1e-5))
    if kind == "LayerNorm":
        return t.LayerNorm(in_shape[-1], eps=s.get("eps", 1e-5))
    if kind == "Upsample":
        scale = _geometry.scale("torch_model", s.get("scale", 2), len(in_shape) - 1)
        return nn.Upsample(scale_factor=tuple(float(f) for f in scale), mode="nearest")
    raise ValueError(f"torch_model: no torch twin for a jaxcnn {kind} layer")


def _module(t: SimpleNamespace, s: dict, in_shape: tuple) -> tuple[Any, tuple]:
    """(the torch module of spec `s`, its out_shape): blocks recursively, sub-layers by name."""
    kind, in_shape = s["kind"], tuple(in_shape)
    if kind == "Serial":
        subs, shape = [], in_shape
        for sub in s["layers"]:
            m, shape = _module(t, sub, shape)
            subs.append((sub["name"], m))
        return t.nn.Sequential(OrderedDict(subs)), shape
    if kind == "Residual":
        f, shape = _module(t, s["f"], in_shape)
        shortcut = None if s["shortcut"] is None else _module(t, s["shortcut"], in_shape)[0]
        return t.Residual(f, shortcut), shape
    if kind == "SkipConcat":
        inner, shape = _module(t, s["inner"], in_shape)
        return t.SkipConcat(inner), (*in_shape[:-1], in_shape[-1] + shape[-1])
    out, _ = leaf_shape(s, in_shape)
    return _layer(t, s, in_shape, out), out


def torch_model(net: Network) -> torch.nn.Module:
    """The PyTorch twin of `net`: channels-last inputs (N, *input_shape) -> logits (N,
    *output_shape), one submodule of `.body` per jaxcnn layer under the same name (blocks
    nested as their params are). Fresh torch initialisation; see `load_params`."""
    t = _torch()
    mods, shape = [], net.input_shape
    for spec in layer_specs(net):
        m, shape = _module(t, spec, shape)
        mods.append((spec["name"], m))
    return t.Twin(mods)


# ----------------------------------------------------------------------------- parameters
NAMES = {"w": "weight", "b": "bias", "gamma": "weight", "beta": "bias", "mean": "running_mean",
         "var": "running_var"}


def _leaves(tree: dict, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict]]:
    """(path of names, {leaf name: array}) of every layer in a nested params or state dict."""
    if all(not isinstance(v, dict) for v in tree.values()):
        yield path, tree
        return
    for name, sub in tree.items():
        yield from _leaves(sub, (*path, name))


def _targets(module: Any, tree: dict) -> Iterator[tuple[str, str, Any, Any]]:
    """(path, leaf name, the twin's tensor, jaxcnn's array) for every leaf of `tree`."""
    t = _torch()
    for path, arrays in _leaves(tree):
        m = module.body.get_submodule(".".join(path))
        m = m.layer if isinstance(m, t.Padded) else m  # after its pad
        for key, a in arrays.items():
            yield "/".join(path), key, getattr(m, NAMES[key]), a


def _to_torch(a: np.ndarray) -> np.ndarray:
    """(*k, C_a, C_b) kernels -> (C_b, C_a, *k); (D_in, D_out) -> (D_out, D_in); else as is."""
    return a.transpose(a.ndim - 1, a.ndim - 2, *range(a.ndim - 2)) if a.ndim >= 2 else a


def _from_torch(a: np.ndarray) -> np.ndarray:
    """The inverse of `_to_torch`: (C_b, C_a, *k) -> (*k, C_a, C_b)."""
    return a.transpose(*range(2, a.ndim), 1, 0) if a.ndim >= 2 else a


def load_params(module: torch.nn.Module, params: dict, state: dict | None = None) -> None:
    """Copy jaxcnn `params` (and BatchNorm `state`), nested as jaxcnn nests them, into the twin
    `module`: (*k, C_in // g, C_out) and (*k, C_out // g, C_in) kernels -> torch's (C_out,
    C_in // g, *k) and (C_in, C_out // g, *k); (D_in, D_out) dense weights -> (D_out, D_in);
    gamma/beta/mean/var -> weight/bias/running_mean/running_var, cast to the twin's dtype."""
    torch = _torch().torch
    for path, key, target, a in [*_targets(module, params), *_targets(module, state or {})]:
        a = _to_torch(np.asarray(a))
        if tuple(target.shape) != a.shape:
            raise ValueError(f"load_params: {path}/{key} has shape {a.shape} in torch's "
                             f"layout but the twin's {NAMES[key]} is {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(torch.tensor(a))


def twin_grads(module: torch.nn.Module, params: dict) -> dict:
    """The twin's parameter gradients (`.grad` after a backward) in jaxcnn's layout and nesting:
    a dict with the structure and shapes of `params`, numpy arrays."""
    out: dict = {}
    for path, key, target, _ in _targets(module, params):
        node = out
        for name in path.split("/"):
            node = node.setdefault(name, {})
        node[key] = _from_torch(target.grad.detach().numpy())
    return out


# ----------------------------------------------------------------------------- training step
def twin_loss(net: Network) -> Callable[[Any, Any, Any], Any]:
    """`loss(module, x, y)`: `net.head`'s mean loss on the twin's logits, as jaxcnn computes it:
    cross_entropy of (N, K) logits, or of (N, K, *S) channels-first logits with (N, *S) class ids
    (the mean over every pixel of the batch); binary cross-entropy with logits of (N,) or
    (N, *S) 0./1. labels; 1/2 sum (z - t)^2 / N for regression."""
    F, kind = _torch().nn.functional, net.head.kind
    losses = {
        "softmax": lambda m, x, y: F.cross_entropy(m(x), y),
        "pixel_softmax": lambda m, x, y: F.cross_entropy(m(x, channels_last=False), y),
        "binary": lambda m, x, y: F.binary_cross_entropy_with_logits(m(x)[..., 0], y),
        "regression": lambda m, x, y: 0.5 * ((m(x) - y) ** 2).sum() / x.shape[0]}
    losses["pixel_binary"] = losses["binary"]
    if kind not in losses:
        raise ValueError(f"twin_loss: no torch loss for a {kind!r} head")
    return losses[kind]


def make_torch_step(net: Network, batch_size: int, lr: float = 0.01, *,
                    threads: int | None = None, seed: int = 0) -> Callable[[], float]:
    """A closure running one float32 SGD training step of `net`'s twin on a fixed random batch
    x (batch_size, *net.input_shape), y of the head's label shape (forward, `twin_loss`,
    backward, `torch.optim.SGD` step) and returning the loss.

    Sets torch's intra-op threads (process-wide) to `threads`, default the CPUs it may run on.
    """
    torch = _torch().torch
    if threads is None:
        affinity = getattr(os, "sched_getaffinity", None)
        threads = len(affinity(0)) if affinity else os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(seed)  # the twin's initialisation
    gen = torch.Generator().manual_seed(seed)
    model = torch_model(net).train()
    x = torch.randn(batch_size, *net.input_shape, generator=gen)
    shape, kind = net.head.label_shape(batch_size, net.output_shape), net.head.kind
    if kind == "regression":
        y = torch.randn(shape, generator=gen)
    else:
        binary = kind in ("binary", "pixel_binary")
        y = torch.randint(0, 2 if binary else net.num_classes, shape, generator=gen)
        y = y.float() if binary else y
    loss_fn, opt = twin_loss(net), torch.optim.SGD(model.parameters(), lr=lr)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, x, y)
        loss.backward()
        opt.step()
        return loss.item()

    return step
