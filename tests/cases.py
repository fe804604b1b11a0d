"""Every backward op paired with its forward, in representative configurations.

A `Case` knows how to draw its inputs and how to call the forward and the manual backward, so the
same table drives the jax.vjp, finite-difference, float32, dtype and transformation tests. Each
case's functions are jitted once (per dtype) and reused by every test.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import backward, forward


@dataclass(frozen=True, eq=False)  # hashed by identity: one jit cache per case
class Case:
    id: str
    op: str                      # the shared name in jaxcnn.forward / jaxcnn.backward
    shapes: tuple                # shapes of the differentiable array inputs, in order
    kw: tuple = ()               # keyword options, as (name, value) pairs (hashable)
    consts: tuple = ()           # non-differentiable trailing inputs (labels, running stats)
    positive: bool = False       # inputs must lie in (0, 1) (probabilities)
    bias: bool = False           # the last shape is a bias: the forward takes it, the backward
                                 # does not (it returns db from dy alone)

    @property
    def options(self) -> dict:
        return dict(self.kw)

    def args(self, dtype=np.float64, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        out = [rng.standard_normal(s) for s in self.shapes]
        if self.positive:
            out = [1 / (1 + np.exp(-a)) for a in out]
        return [a.astype(dtype) for a in out]

    def const_args(self, dtype) -> list:
        out = []
        for c in self.consts:
            c = np.asarray(c)
            out.append(c if np.issubdtype(c.dtype, np.integer) else c.astype(dtype))
        return out

    def forward(self, *args):
        return getattr(forward, self.op)(*args, **self.options)

    def manual(self, dy, *args) -> tuple:
        if self.bias:
            args = args[:-1]
        out = getattr(backward, self.op)(dy, *args, **self.options)
        return out if isinstance(out, tuple) else (out,)

    # jitted once per case (and dtype, by jit's own cache)
    @functools.cached_property
    def jit_forward(self) -> Callable:
        return jax.jit(self.forward)

    @functools.cached_property
    def jit_manual(self) -> Callable:
        return jax.jit(self.manual)

    @functools.cached_property
    def jit_vjp(self) -> Callable:
        n = len(self.shapes)

        def vjp(dy, *args):
            diff, rest = args[:n], args[n:]
            _, pullback = jax.vjp(lambda *d: self.forward(*d, *rest), *diff)
            return pullback(dy)

        return jax.jit(vjp)

    def cotangent(self, args, dtype, seed: int = 1) -> np.ndarray:
        y = self.jit_forward(*args)
        rng = np.random.default_rng(seed)
        return rng.standard_normal(np.shape(y)).astype(dtype)


def _conv(id, x, w, **kw):
    return Case(id, "conv2d", (x, w, (w[3],)), tuple(kw.items()), bias=True)


CONV = [
    _conv("valid-3x3", (2, 6, 6, 1), (3, 3, 1, 1)),
    _conv("seed-batch", (4, 6, 6, 1), (3, 3, 1, 1), padding=0),
    _conv("stride2-same", (2, 9, 8, 3), (3, 3, 3, 4), stride=2, padding="SAME"),
    _conv("stride-skips-rows", (2, 8, 9, 2), (2, 2, 2, 3), stride=3),
    _conv("dilation2-pad1", (1, 9, 10, 2), (3, 2, 2, 2), dilation=2, padding=1),
    _conv("asym-pads", (2, 7, 7, 2), (3, 4, 2, 3), stride=(1, 2), padding=((2, 0), (1, 3))),
    _conv("pair-pad-dil", (2, 8, 7, 3), (2, 3, 3, 2), padding=(1, 2), dilation=(2, 1)),
    _conv("groups2", (2, 8, 8, 4), (3, 3, 2, 6), groups=2, padding="SAME"),
    _conv("depthwise", (2, 9, 9, 3), (3, 3, 1, 3), groups=3, stride=2, padding=1),
    _conv("depthwise-mult2", (1, 8, 8, 2), (2, 3, 1, 4), groups=2, dilation=(1, 2)),
    _conv("stride-and-dilation", (2, 11, 10, 2), (3, 3, 2, 2), stride=2, dilation=2,
          padding="SAME"),
    _conv("1x1", (3, 5, 5, 4), (1, 1, 4, 2)),
]
CONVOLVE = [
    Case("convolve-valid", "convolve2d", ((2, 6, 6, 2), (3, 3, 2, 2), (2,)), bias=True),
    Case("convolve-strided-groups", "convolve2d", ((2, 9, 8, 4), (3, 2, 2, 4), (4,)),
         (("stride", 2), ("padding", "SAME"), ("groups", 2)), bias=True),
]
POOL = [
    Case(f"{op}-{name}", op, ((2, *hw, 3),), tuple(kw.items()))
    for op in ("max_pool", "avg_pool", "l2_pool")
    for name, hw, kw in [
        ("2x2", (6, 6), dict(window=2)),
        ("3x3-s2-same", (7, 9), dict(window=3, stride=2, padding="SAME")),
        ("overlap", (6, 7), dict(window=(3, 2), stride=1)),
        ("padded-asym", (7, 8), dict(window=(3, 2), stride=(2, 1), padding=((2, 1), (0, 1)))),
        ("uneven", (7, 7), dict(window=2)),  # the last row / column is never pooled
    ]
] + [
    Case("avg_pool-exclude-pad", "avg_pool", ((2, 7, 7, 2),),
         (("window", 3), ("stride", 2), ("padding", 1), ("count_include_pad", False))),
]
DENSE = [
    Case("dense", "dense", ((5, 7), (7, 3), (3,)), bias=True),
    Case("flatten", "flatten", ((2, 3, 4, 5),)),
]
ACT = [Case(op, op, ((3, 4, 5, 2),)) for op in ("relu", "sigmoid", "tanh", "softmax")] + [
    Case("leaky_relu", "leaky_relu", ((3, 4, 5, 2),)),
    Case("leaky_relu-0.2", "leaky_relu", ((3, 4, 5, 2),), (("negative_slope", 0.2),)),
    Case("softmax-axis1", "softmax", ((3, 5, 4),), (("axis", 1),)),
]
LOSS = [
    Case("bce", "binary_cross_entropy", ((6,),), consts=([0, 1, 1, 0, 1, 0.0],), positive=True),
    Case("bce-N1", "binary_cross_entropy", ((6, 1),), consts=([0, 1, 1, 0, 1, 0.0],),
         positive=True),
    Case("sigmoid-bce", "sigmoid_binary_cross_entropy", ((6,),), consts=([0, 1, 1, 0, 1, 0.0],)),
    Case("sigmoid-bce-N1", "sigmoid_binary_cross_entropy", ((6, 1),),
         consts=([0, 1, 0.5, 0, 1, 0.0],)),
    Case("softmax-ce-int", "softmax_cross_entropy", ((5, 4),),
         consts=(np.array([0, 3, 1, 1, 2], np.int32),)),
    Case("softmax-ce-onehot", "softmax_cross_entropy", ((5, 4),),
         consts=(np.eye(4)[[0, 3, 1, 1, 2]],)),
    Case("softmax-ce-soft", "softmax_cross_entropy", ((3, 4),),
         consts=(np.array([[0.5, 0.5, 0, 0], [0.1, 0.2, 0.3, 0.4], [0, 0, 0, 1.0]]),)),
    Case("mse", "mse", ((4, 3),), consts=(np.linspace(-1, 1, 12).reshape(4, 3),)),
]
NORM = [
    Case("batch_norm-train-nhwc", "batch_norm", ((4, 3, 3, 5), (5,), (5,))),
    Case("batch_norm-train-nd", "batch_norm", ((6, 4), (4,), (4,))),
    Case("batch_norm-eval", "batch_norm", ((4, 3, 3, 2), (2,), (2,)),
         consts=(np.array([0.3, -0.2]), np.array([0.5, 2.0]))),
]
ALL = CONV + CONVOLVE + POOL + DENSE + ACT + NORM + LOSS


def call_args(case: Case, dtype=np.float64, seed: int = 0) -> list:
    """The forward's positional arguments: the differentiable arrays, then any labels."""
    return [jnp.asarray(a) for a in case.args(dtype, seed)] + case.const_args(dtype)
