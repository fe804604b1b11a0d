"""A sequential network whose backward pass is the chain of its layers' hand-written rules.

`Network.forward` keeps every activation: for the seed net `[X, Z1, A1, P1, F, Z2]`, the input of
each layer followed by the logits. `Network.backprop` walks them in reverse through each layer's
`backward`, starting from the fused loss delta (the worked example's `dZ2 = A2 - Y`), and returns
gradients with exactly the structure of the parameters.

Parameters are a dict keyed by layer name (layers without parameters do not appear); the network
state (BatchNorm running averages) is a separate dict, never mixed into the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _geometry, backward, forward
from jaxcnn.nn.layers import Layer

Array = jax.Array
Params = dict[str, dict[str, Array]]
State = dict[str, dict[str, Array]]


class Head(NamedTuple):
    """The output nonlinearity and its loss, fused on the logits (exact and stable).

    kind: "binary" (one logit, 0./1. float labels) or "softmax" (K logits, int class ids).
    """

    name: str
    kind: str
    prob: Callable[[Array], Array]          # logits -> prediction
    loss: Callable[[Array, Array], Array]   # (logits, y) -> scalar, mean over the batch
    delta: Callable[[Array, Array], Array]  # (logits, y) -> dL/dlogits

    def num_classes(self, output_shape: tuple[int, ...]) -> int:
        """2 for a binary head, else the number of logits."""
        return 2 if self.kind == "binary" else output_shape[0]

    def predict(self, logits: Array) -> Array:
        """Predicted labels (N,): logit > 0 (probability > 0.5) for binary, else the argmax."""
        if self.kind == "binary":
            return (logits[:, 0] > 0).astype(logits.dtype)
        return jnp.argmax(logits, axis=-1)

    def labels(self, num_classes: int) -> str:
        """What y must hold, in words."""
        if self.kind == "binary":
            return "0./1. float labels"
        return f"int class ids in [0, {num_classes})"

    def label_dtype_ok(self, dtype: Any) -> bool:
        kind = jnp.floating if self.kind == "binary" else jnp.integer
        return bool(jnp.issubdtype(dtype, kind))


BINARY = Head("sigmoid + binary cross-entropy", "binary", jax.nn.sigmoid,
              forward.sigmoid_binary_cross_entropy,
              lambda z, y: backward.sigmoid_binary_cross_entropy(1.0, z, y))
SOFTMAX = Head("softmax + cross-entropy", "softmax", lambda z: jax.nn.softmax(z, axis=-1),
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
        if head.kind == "binary" and self.output_shape != (1,):
            raise ValueError(f"{name}: a binary head needs one logit; got {self.output_shape}")
        self.num_classes = head.num_classes(self.output_shape)

    def with_impl(self, impl: str) -> Network:
        """The same network (names, shapes, interchangeable params) whose convolutions run in
        formulation `impl` ("conv", "gemm", "auto"; see `jaxcnn.fast.auto`)."""
        layers = [layer.with_impl(impl) if layer.with_impl else layer for layer in self.layers]
        return Network(self.name, layers, self.input_shape, self.head)

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

    # ------------------------------------------------------------------ checks
    def check_input(self, x: Any) -> None:
        """x must be (N, H, W, C) images of this network's input shape."""
        _geometry.array(self.name, "x", x)
        if len(x.shape) != 4 or tuple(x.shape[1:]) != self.input_shape:
            hwc = ", ".join(map(str, self.input_shape))
            raise ValueError(f"{self.name} expects images of shape (N, {hwc}) (N, H, W, C); "
                             f"got x with shape {tuple(x.shape)}")

    def check_labels(self, x: Any, y: Any) -> None:
        """y must be (N,) labels: 0./1. floats for a binary head, int class ids otherwise."""
        n = x.shape[0]
        kind = self.head.labels(self.num_classes)
        if not hasattr(y, "dtype") or not self.head.label_dtype_ok(y.dtype) \
                or tuple(y.shape) != (n,):
            got = f"shape {tuple(y.shape)} {y.dtype}" if hasattr(y, "dtype") else type(y).__name__
            raise ValueError(f"{self.name} expects y of shape ({n},) holding {kind}; got {got}")
        vals = _geometry.concrete(y)
        high = 1 if self.head.kind == "binary" else self.num_classes - 1
        if vals is not None and vals.size and (vals.min() < 0 or vals.max() > high):
            raise ValueError(f"{self.name} expects y holding {kind}; got values in "
                             f"[{vals.min()}, {vals.max()}]")

    # ------------------------------------------------------------------ forward
    def forward(self, params: Params, x: Array, *, state: State | None = None,
                train: bool = False, key: Array | None = None,
                axis_name: str | None = None) -> Trace:
        """Run every layer and keep what the backward pass needs.

        x: (N, H, W, C). state: None means the initial state (a layer given no state starts
        from its initial one). train: batch statistics for BatchNorm and active Dropout (which
        then needs `key`). axis_name: the mapped device axis of data-parallel training, over
        which BatchNorm's batch statistics are taken.
        """
        self.check_input(x)
        state = {} if state is None else state
        acts, residuals, new_state = [x], [], {}
        for i, layer in enumerate(self.layers):
            k = None if key is None else jax.random.fold_in(key, i)
            y, s, r = layer.apply(params.get(layer.name, {}), state.get(layer.name, {}), acts[-1],
                                  train=train, key=k, axis_name=axis_name)
            acts.append(y)
            residuals.append(r)
            if s:
                new_state[layer.name] = s
        return Trace(acts, residuals, new_state)

    def apply(self, params: Params, x: Array, **kw: Any) -> Array:
        """The prediction: probabilities (N, 1) for a binary head, (N, K) for softmax."""
        return self.head.prob(self.forward(params, x, **kw).activations[-1])

    def loss_and_trace(self, params: Params, x: Array, y: Array, **kw: Any) -> tuple[Array, Trace]:
        """(mean loss over the batch, the forward trace): the one path every loss takes.
        Keywords as `forward`; y: (N,) labels (see `check_labels`)."""
        self.check_labels(x, y)
        trace = self.forward(params, x, **kw)
        return self.head.loss(trace.activations[-1], y), trace

    def loss_and_aux(self, params: Params, x: Array, y: Array,
                     **kw: Any) -> tuple[Array, tuple[State, Array]]:
        """(mean loss, (updated state, logits)); differentiable in params (`has_aux` form)."""
        loss, trace = self.loss_and_trace(params, x, y, **kw)
        return loss, (trace.state, trace.activations[-1])

    def loss(self, params: Params, x: Array, y: Array, **kw: Any) -> Array:
        """The mean loss over the batch. y: (N,) labels (see `check_labels`)."""
        return self.loss_and_trace(params, x, y, **kw)[0]

    # ------------------------------------------------------------------ backward
    def backprop(self, params: Params, trace: Trace, y: Array) -> tuple[Params, list[Array]]:
        """The manual backward pass: (grads with params' structure, deltas).

        deltas[i] is dL/d(activations[i]): deltas[-1] the loss delta on the logits, deltas[0]
        the gradient with respect to the input images.
        """
        acts = trace.activations
        delta = self.head.delta(acts[-1], y)
        deltas, grads = [delta], {}
        for layer, x, res in zip(reversed(self.layers), reversed(acts[:-1]),
                                 reversed(trace.residuals)):
            delta, g = layer.backward(delta, params.get(layer.name, {}), x, res)
            deltas.append(delta)
            if layer.name in params:
                grads[layer.name] = g
        return {name: grads[name] for name in params}, deltas[::-1]

    def __repr__(self) -> str:
        rows = [f"  {'input':12} {self.input_shape}"]
        rows += [f"  {layer.name:12} {shape}" for layer, shape in zip(self.layers, self.shapes)]
        return f"{self.name}: {self.head.name}\n" + "\n".join(rows)
