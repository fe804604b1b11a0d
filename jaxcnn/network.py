"""A sequential network whose backward pass is the chain of its layers' hand-written rules.

`Network.forward` keeps every activation: for the seed net `[X, Z1, A1, P1, F, Z2]`, the input of
each layer followed by the logits. `Network.backprop` walks them in reverse through each layer's
`backward`, starting from the fused loss delta (seed 000's `dZ2 = A2 - Y`), and returns gradients
with exactly the structure of the parameters.

Parameters are a dict keyed by layer name (layers without parameters do not appear); the network
state (BatchNorm running averages) is a separate dict, never mixed into the parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _checks, backward, forward
from jaxcnn.layers import Layer

Array = jax.Array
BARRIER = False
Params = dict[str, dict[str, Array]]
State = dict[str, dict[str, Array]]


class Head(NamedTuple):
    """The output nonlinearity and its loss, fused on the logits (exact and stable)."""

    name: str
    prob: Any    # logits -> prediction
    loss: Any    # (logits, y) -> scalar, mean over the batch
    delta: Any   # (logits, y) -> dL/dlogits


BINARY = Head("sigmoid + binary cross-entropy", jax.nn.sigmoid,
              forward.sigmoid_binary_cross_entropy,
              lambda z, y: backward.sigmoid_binary_cross_entropy(1.0, z, y))
SOFTMAX = Head("softmax + cross-entropy", lambda z: jax.nn.softmax(z, axis=-1),
               forward.softmax_cross_entropy,
               lambda z, y: backward.softmax_cross_entropy(1.0, z, y))


class Trace(NamedTuple):
    """What a forward pass keeps for the backward pass."""

    activations: list[Array]  # [input of layer 0, ..., input of layer L-1, logits]
    residuals: list[Any]      # one per layer (None for most)
    state: State              # the updated network state (BatchNorm averages)


class Network:
    """A chain of layers on images of `input_shape` (H, W, C), ending in a fused loss head."""

    def __init__(self, name: str, layers: Sequence[Layer], input_shape: tuple[int, int, int],
                 head: Head):
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: layer names must be unique; got {names}")
        self.name, self.layers, self.head = name, tuple(layers), head
        self.input_shape = tuple(input_shape)
        # shapes (and every layer's options, checked) without computing anything
        shapes = jax.eval_shape(lambda k: self._init(k, jnp.float32)[2], jax.random.key(0))
        self.output_shape = tuple(shapes[-1].shape)
        self.shapes = [tuple(s.shape) for s in shapes]  # per layer output, one example
        # one compiled program per dtype initialises every layer (not one per random op)
        self._jit_init = jax.jit(lambda k, dtype: self._init(k, dtype)[0], static_argnums=1)
        self._jit_state = jax.jit(lambda dtype: self._init(jax.random.key(0), dtype)[1],
                                  static_argnums=0)  # the random params are dead code here
        if head is BINARY and self.output_shape != (1,):
            raise ValueError(f"{name}: a binary head needs one logit; got {self.output_shape}")
        self.num_classes = 2 if head is BINARY else self.output_shape[0]

    # ------------------------------------------------------------------ parameters and state
    def _init(self, key: Array, dtype: Any) -> tuple[Params, State, list]:
        params, state, shape, shapes = {}, {}, self.input_shape, []
        for i, layer in enumerate(self.layers):
            shape, p, s = layer.init(jax.random.fold_in(key, i), shape, dtype)
            shapes.append(jax.ShapeDtypeStruct(shape, dtype))
            if p:
                params[layer.name] = p
            if s:
                state[layer.name] = s
        return params, state, shapes

    def init(self, key: Array, dtype: Any = jnp.float32) -> Params:
        """Fresh parameters: {layer name: {"w": ..., "b": ...}} for every layer that has any."""
        return self._jit_init(key, jnp.dtype(dtype))

    def init_state(self, dtype: Any = jnp.float32) -> State:
        """The initial network state ({} without BatchNorm): running mean 0, variance 1."""
        return self._jit_state(jnp.dtype(dtype))

    def num_params(self, params: Params) -> int:
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))

    # ------------------------------------------------------------------ forward
    def check_input(self, x: Any) -> None:
        """x must be (N, H, W, C) images of this network's input shape."""
        _checks.array(self.name, "x", x)
        if len(x.shape) != 4 or tuple(x.shape[1:]) != self.input_shape:
            hwc = ", ".join(map(str, self.input_shape))
            raise ValueError(f"{self.name} expects images of shape (N, {hwc}) (N, H, W, C); "
                             f"got x with shape {tuple(x.shape)}")

    def check_labels(self, x: Any, y: Any) -> None:
        """y must be (N,) labels: 0./1. floats for a binary head, int class ids otherwise."""
        n = x.shape[0]
        binary = self.head is BINARY
        kind = "0./1. float labels" if binary else f"int class ids in [0, {self.num_classes})"
        ok_type = hasattr(y, "dtype") and (jnp.issubdtype(y.dtype, jnp.floating) if binary
                                           else jnp.issubdtype(y.dtype, jnp.integer))
        if not ok_type or tuple(y.shape) != (n,):
            got = f"shape {tuple(y.shape)} {y.dtype}" if hasattr(y, "dtype") else type(y).__name__
            raise ValueError(f"{self.name} expects y of shape ({n},) holding {kind}; got {got}")
        vals = _checks.concrete(y)
        high = 1 if binary else self.num_classes - 1
        if vals is not None and vals.size and (vals.min() < 0 or vals.max() > high):
            raise ValueError(f"{self.name} expects y holding {kind}; got values in "
                             f"[{vals.min()}, {vals.max()}]")

    def forward(self, params: Params, x: Array, *, state: State | None = None,
                train: bool = False, key: Array | None = None,
                axis_name: str | None = None, impl: str = "conv") -> Trace:
        """Run every layer and keep what the backward pass needs.

        x: (N, H, W, C). state: None means the initial state (a layer given no state starts
        from its initial one). train: batch statistics for
        BatchNorm and active Dropout (which then needs `key`). axis_name: the mapped device
        axis of data-parallel training, over which BatchNorm's batch statistics are taken.
        impl: the formulation of the convolutions ("conv", "gemm", "auto").
        """
        self.check_input(x)
        state = {} if state is None else state
        acts, residuals, new_state = [x], [], {}
        for i, layer in enumerate(self.layers):
            k = None if key is None else jax.random.fold_in(key, i)
            y, s, r = layer.apply(params.get(layer.name, {}), state.get(layer.name, {}), acts[-1],
                                  train=train, key=k, axis_name=axis_name, impl=impl)
            acts.append(y)
            residuals.append(r)
            if s:
                new_state[layer.name] = s
        return Trace(acts, residuals, new_state)

    def apply(self, params: Params, x: Array, **kw: Any) -> Array:
        """The prediction: probabilities (N, 1) for a binary head, (N, K) for softmax."""
        return self.head.prob(self.forward(params, x, **kw).activations[-1])

    def loss_and_aux(self, params: Params, x: Array, y: Array,
                     **kw: Any) -> tuple[Array, tuple[State, Array]]:
        """(mean loss over the batch, (updated state, logits)); differentiable in params."""
        self.check_labels(x, y)
        trace = self.forward(params, x, **kw)
        logits = trace.activations[-1]
        return self.head.loss(logits, y), (trace.state, logits)

    def loss(self, params: Params, x: Array, y: Array, **kw: Any) -> Array:
        """The mean loss over the batch. y: (N,) labels (see `check_labels`)."""
        return self.loss_and_aux(params, x, y, **kw)[0]

    # ------------------------------------------------------------------ backward
    def backprop(self, params: Params, trace: Trace, y: Array,
                 impl: str = "conv") -> tuple[Params, list[Array]]:
        """The manual backward pass: (grads with params' structure, deltas).

        impl: the formulation of the convolution gradients ("conv", "gemm" or "auto").

        deltas[i] is dL/d(activations[i]): deltas[-1] the loss delta on the logits, deltas[0]
        the gradient with respect to the input images.
        """
        acts = trace.activations
        delta = self.head.delta(acts[-1], y)
        deltas, grads = [delta], {}
        for layer, x, res in zip(reversed(self.layers), reversed(acts[:-1]),
                                 reversed(trace.residuals)):
            delta, g = layer.backward(params.get(layer.name, {}), x, res, delta, impl=impl)
            deltas.append(delta)
            if layer.name in params:
                grads[layer.name] = g
        return {name: grads[name] for name in params}, deltas[::-1]

    def __repr__(self) -> str:
        rows = [f"  {'input':12} {self.input_shape}"]
        rows += [f"  {layer.name:12} {shape}" for layer, shape in zip(self.layers, self.shapes)]
        return f"{self.name}: {self.head.name}\n" + "\n".join(rows)
