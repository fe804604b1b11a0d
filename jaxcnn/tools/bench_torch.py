"""PyTorch (CPU, eager) twins of jaxcnn's networks: the yardstick of `jaxcnn bench --against torch`.

`torch_model(net)` rebuilds any `jaxcnn.nn.network.Network` in torch by walking its layers: each
`Layer.spec` names the constructor and its options (e.g. {"kind": "Conv2D", "kernel": (3, 3),
"padding": "SAME", ...}); sizes come from `net.input_shape` and `net.shapes`. Layers without a
spec fall back to the twins written out here for the registered models, looked up by `net.name`.
The twin takes NHWC images as jaxcnn does, runs NCHW inside, and flattens in NHWC order, so that
`load_params` makes its logits those of `net.forward`. BatchNorm: jaxcnn's momentum m is torch's
1 - m; torch updates its running variance with the unbiased batch variance, jaxcnn the biased one.

torch is optional (`pip install jaxcnn[torch]`): it is imported on first use, never at import.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxcnn import _geometry
from jaxcnn.nn.network import Network

if TYPE_CHECKING:
    import torch

TORCH_MISSING = "jaxcnn bench --against torch needs PyTorch: pip install torch==2.13.0 (CPU build)"
Pads = tuple[tuple[int, int], tuple[int, int]]


@functools.cache
def _torch() -> SimpleNamespace:
    """torch, nn and the twin's own module classes, defined on first use."""
    try:
        import torch
        from torch import nn
    except ImportError as e:
        raise ImportError(TORCH_MISSING) from e

    class Twin(nn.Module):
        """NHWC images in; the layers, by jaxcnn name, in NCHW; flat (or NHWC) outputs out."""

        def __init__(self, layers: list[tuple[str, nn.Module]]):
            super().__init__()
            self.body = nn.Sequential(OrderedDict(layers))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x.permute(0, 3, 1, 2).contiguous())
            return y.permute(0, 2, 3, 1) if y.ndim == 4 else y

    class Flatten(nn.Module):
        """jaxcnn's row-major flatten of (H, W, C): back to NHWC, then flatten."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x.permute(0, 2, 3, 1) if x.ndim == 4 else x).flatten(1)

    class SumPool(nn.Module):
        """Window sums of the zero-padded input, as sqrt (L2Pool) or divided by `counts`."""

        def __init__(self, win: tuple[int, int], stride: tuple[int, int], pads: Pads,
                     counts: np.ndarray | None = None):
            super().__init__()
            self.win, self.stride, self.pads = win, stride, _lrtb(pads)
            self.register_buffer("counts", None if counts is None else torch.as_tensor(counts))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x if self.counts is not None else x * x
            s = nn.functional.avg_pool2d(nn.functional.pad(x, self.pads), self.win, self.stride,
                                         divisor_override=1)
            if self.counts is not None:
                return s / self.counts
            pos = s > 0  # sqrt'(0) is inf: the gradient is 0 there, as in jaxcnn.backward
            return torch.where(pos, torch.sqrt(torch.where(pos, s, 1.0)), 0.0)

    return SimpleNamespace(torch=torch, nn=nn, Twin=Twin, Flatten=Flatten, SumPool=SumPool)


def layer_specs(net: Network) -> list[dict]:
    """Each layer's {"kind": constructor, **options}: its `spec`."""
    specs = [layer.spec for layer in net.layers]
    missing = [layer.name for layer, spec in zip(net.layers, specs) if "kind" not in spec]
    if missing:
        raise ValueError(f"{net.name}: layers {missing} carry no spec (Layer.spec), so no torch "
                         f"twin can be built for them")
    return specs


# ----------------------------------------------------------------------------- builder
def _lrtb(pads: Pads) -> tuple[int, int, int, int]:
    """((top, bottom), (left, right)) -> torch's pad order (left, right, top, bottom)."""
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


def _padded(t: SimpleNamespace, pads: Pads, layer: Any, value: float = 0.0) -> Any:
    """`layer` after an explicit (possibly asymmetric) pad, or alone when no pad is needed."""
    if not any(_lrtb(pads)):
        return layer
    pad = t.nn.ZeroPad2d(_lrtb(pads)) if value == 0 else t.nn.ConstantPad2d(_lrtb(pads), value)
    return t.nn.Sequential(pad, layer)


def _layer(t: SimpleNamespace, s: dict, in_shape: tuple, out_shape: tuple) -> Any:
    """The torch module for one jaxcnn layer of spec `s` mapping in_shape to out_shape."""
    nn, kind, fn = t.nn, s["kind"], "torch_model"
    simple = {"ReLU": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "Flatten": t.Flatten}
    if kind in simple:
        return simple[kind]()
    if kind == "LeakyReLU":
        return nn.LeakyReLU(s.get("negative_slope", 0.01))
    if kind == "Dropout":
        return nn.Dropout(s["rate"])
    if kind == "Dense":
        return nn.Linear(in_shape[0], out_shape[0], bias=s.get("use_bias", True))
    if kind == "BatchNorm":
        bn = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
        momentum = round(1 - s.get("momentum", 0.9), 12)  # torch weighs the batch by it
        return bn(in_shape[-1], eps=s.get("eps", 1e-5), momentum=momentum)
    pad, hw = s.get("padding", "VALID"), in_shape[:2]
    if kind == "Conv2D":
        k = _geometry.pair(fn, "kernel", s["kernel"])
        stride = _geometry.pair(fn, "stride", s.get("stride", 1))
        dil = _geometry.pair(fn, "dilation", s.get("dilation", 1))
        opts = dict(kernel_size=k, stride=stride, dilation=dil, groups=s.get("groups", 1),
                    bias=s.get("use_bias", True))
        if isinstance(pad, str) and pad.upper() == "SAME" and stride == (1, 1):
            return nn.Conv2d(in_shape[-1], out_shape[-1], padding="same", **opts)
        eff = tuple((a - 1) * d + 1 for a, d in zip(k, dil))
        (top, bottom), (left, right) = pads = _geometry.padding(fn, pad, hw, eff, stride)
        if top == bottom and left == right:
            return nn.Conv2d(in_shape[-1], out_shape[-1], padding=(top, left), **opts)
        return _padded(t, pads, nn.Conv2d(in_shape[-1], out_shape[-1], **opts))
    if kind in ("MaxPool", "AvgPool", "L2Pool"):
        win = _geometry.pair(fn, "window", s.get("window", 2))
        stride = win if s.get("stride") is None else _geometry.pair(fn, "stride", s["stride"])
        w = _geometry.window(fn, hw, win, stride, (1, 1), pad, "window")
        if kind == "MaxPool":
            return _padded(t, w.pads, nn.MaxPool2d(win, stride), -float("inf"))
        if kind == "L2Pool":
            return t.SumPool(win, stride, w.pads)
        if s.get("count_include_pad", True) or not any(_lrtb(w.pads)):
            return _padded(t, w.pads, nn.AvgPool2d(win, stride))
        counts = _geometry.window_counts(w, False).transpose(0, 3, 1, 2).astype(np.float32)
        return t.SumPool(win, stride, w.pads, counts)
    raise ValueError(f"{fn}: no torch twin for a jaxcnn {kind} layer")


def torch_model(net: Network) -> torch.nn.Module:
    """The PyTorch twin of `net`: NHWC images (N, H, W, C) -> logits, one submodule of
    `.body` per jaxcnn layer under the same name. Fresh torch initialisation; see `load_params`."""
    t = _torch()
    shapes = [net.input_shape, *net.shapes]
    layers = [(layer.name, _layer(t, spec, shapes[i], shapes[i + 1]))
              for i, (layer, spec) in enumerate(zip(net.layers, layer_specs(net)))]
    return t.Twin(layers)


def load_params(module: torch.nn.Module, params: dict, state: dict | None = None) -> None:
    """Copy jaxcnn `params` (and BatchNorm `state`) into the twin `module`: HWIO -> OIHW kernels,
    (D_in, D_out) -> (D_out, D_in) dense weights, gamma/beta/mean/var -> weight/bias/running_*."""
    torch = _torch().torch
    names = {"w": "weight", "b": "bias", "gamma": "weight", "beta": "bias",
             "mean": "running_mean", "var": "running_var"}
    for name, arrays in [*params.items(), *(state or {}).items()]:
        m = module.body.get_submodule(name)
        m = m[-1] if isinstance(m, torch.nn.Sequential) else m  # after its pad
        for key, a in arrays.items():
            a = np.asarray(a)
            a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T if a.ndim == 2 else a
            target = getattr(m, names[key])
            if tuple(target.shape) != a.shape:
                raise ValueError(f"load_params: {name}/{key} has shape {a.shape} in torch's "
                                 f"layout but the twin's {names[key]} is {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(torch.tensor(a))


def make_torch_step(net: Network, batch_size: int, lr: float = 0.01, *,
                    threads: int | None = None, seed: int = 0) -> Callable[[], float]:
    """A closure running one float32 SGD training step of `net`'s twin on a fixed random batch
    (forward, the head's loss, backward, `torch.optim.SGD` step) and returning the loss.

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
    binary = net.head.kind == "binary"  # then one logit (N, 1), read as (N,)
    y = torch.randint(0, net.num_classes, (batch_size,), generator=gen)
    y, loss_fn = ((y.float(), torch.nn.BCEWithLogitsLoss()) if binary
                  else (y, torch.nn.CrossEntropyLoss()))
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        z = model(x)
        loss = loss_fn(z.reshape(-1) if binary else z, y)
        loss.backward()
        opt.step()
        return loss.item()

    return step
