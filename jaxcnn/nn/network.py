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

from jaxcnn import _geometry
from jaxcnn.nn import _trees
from jaxcnn.nn.heads import (  # noqa: F401  the heads are part of this module's names
    BINARY,
    BINARY_KINDS,
    CLASS_KINDS,
    PIXEL_BINARY,
    PIXEL_KINDS,
    PIXEL_SOFTMAX,
    REGRESSION,
    SOFTMAX,
    Head,
)
from jaxcnn.nn.layers import Layer

Array = jax.Array
Params = dict[str, dict[str, Array]]
State = dict[str, dict[str, Array]]
Shapes = _trees.Shapes


LAYOUTS = {2: "(N, W, C)", 3: "(N, H, W, C)", 4: "(N, D, H, W, C)"}


class Trace(NamedTuple):
    """What a forward pass keeps for the backward pass."""

    activations: list[Array]  # [input of layer 0, ..., input of layer L-1, logits]
    residuals: list[Any]      # one per layer (None for most)
    state: State              # the updated network state (BatchNorm averages)


class Network:
    """A chain of layers on inputs of `input_shape` ((H, W, C) images, (W, C) signals, (D, H, W,
    C) volumes), ending in a fused loss head."""

    def __init__(self, name: str, layers: Sequence[Layer], input_shape: tuple[int, ...],
                 head: Head):
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: layer names must be unique; got {names}")
        self.name, self.layers, self.head = name, tuple(layers), head
        self.input_shape = _geometry.example_shape(name, input_shape)
        # shapes (and every layer's options, checked) without computing anything; the params'
        # and state's shapes do not depend on the dtype, so this one abstract init is what
        # `check_params` and `check_state` compare against on every call
        # (the key is made inside the trace: defining a network touches no device, so that
        # `jaxcnn.training.processes.join` may come after it)
        params, state, shapes = jax.eval_shape(
            lambda: self._init(jax.random.key(0), jnp.float32))
        self.output_shape = tuple(shapes[-1].shape)
        self.shapes = [tuple(s.shape) for s in shapes]  # per layer output, one example
        # nested where a layer is a block (jaxcnn.nn.combinators): {block: {sub: {leaf: shape}}}
        self.param_shapes: Shapes = jax.tree.map(lambda v: tuple(v.shape), params)
        self.state_shapes: Shapes = jax.tree.map(lambda v: tuple(v.shape), state)
        self._kinds = {layer.name: layer.spec.get("kind", "layer") for layer in self.layers}
        # one compiled program per dtype initialises every layer (not one per random op)
        self._jit_init = jax.jit(lambda k, dtype: self._init(k, dtype)[0], static_argnums=1)
        self._jit_state = jax.jit(lambda dtype: self._init(jax.random.key(0), dtype)[1],
                                  static_argnums=0)  # the random params are dead code here
        if head.kind == "binary" and self.output_shape != (1,):
            raise ValueError(f"{name}: a binary head needs one logit; got {self.output_shape}")
        if head.kind in PIXEL_KINDS and len(self.output_shape) < 2:
            raise ValueError(f"{name}: a per-position head needs logits (*S, K) with spatial "
                             f"axes; got {self.output_shape}")
        if head.kind == "pixel_binary" and self.output_shape[-1] != 1:
            raise ValueError(f"{name}: a per-position binary head needs one logit per position, "
                             f"(*S, 1); got {self.output_shape}")
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
        """x must be (N, *input_shape) with N >= 1, of a real floating dtype: (N, H, W, C)
        images, (N, W, C) signals or (N, D, H, W, C) volumes. Every path checks it (`forward`,
        hence the manual and autodiff gradients, training, the per-example and DP sums).

        Args:
          x: the inputs.

        Raises:
          TypeError: x is not an array, or not of a real floating dtype (complex included).
          ValueError: x has the wrong shape, or no examples (N = 0: the mean loss would be 0/0).
        """
        _geometry.array(self.name, "x", x)
        if len(x.shape) != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            dims = ", ".join(map(str, self.input_shape))
            axes = LAYOUTS.get(len(self.input_shape), "(N, ...)")
            what = "images" if len(self.input_shape) == 3 else "inputs"
            raise ValueError(f"{self.name} expects {what} of shape (N, {dims}) {axes}; "
                             f"got x with shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{self.name}: x holds no examples (shape {tuple(x.shape)}); N must "
                             f"be >= 1, the loss being a mean over the batch")

    def check_params(self, params: Any, dtype: Any = None) -> None:
        """params must have exactly the structure `init` returns, every leaf of its shape.

        Reads only the structure, the shapes and the dtypes (static under jit, vmap and grad),
        against the shapes the constructor found once with `jax.eval_shape` of init: no init is
        recomputed. `forward` calls it, so every path (manual, autodiff, the bridge, training)
        refuses a missing, extra or misshapen parameter before computing anything.

        Args:
          params: {layer name: {leaf name: array}}, e.g. seed_cnn's
            {"conv": {"w": (3, 3, 1, 1), "b": (1,)}, "dense": {"w": (4, 1), "b": (1,)}}.
          dtype: if given, the dtype every leaf must have (`forward` passes x's: the layers
            compute in one dtype).

        Raises:
          TypeError: params or a layer's entry is not a dict, or a leaf is not an array of a
            floating dtype (or not of `dtype`).
          ValueError: a layer or leaf is missing or unexpected, or a leaf has the wrong shape.
            Each message names the path, e.g. `seed_cnn: params['conv']['w'] has shape
            (5, 5, 1, 1) but the layer needs (3, 3, 1, 1)`.
        """
        _trees.check_tree(self.name, self._kinds, "params", params, self.param_shapes, dtype,
                          partial=False)

    def check_state(self, state: Any, dtype: Any = None) -> None:
        """state (BatchNorm's running averages) must be a dict {layer name: {leaf: array}} as
        `init_state` returns, or any part of it: a layer absent (or given {}) starts from its
        initial state. Static, like `check_params`.

        Args:
          state: the network state; dtype: if given, the dtype every leaf must have.

        Raises:
          TypeError / ValueError: as `check_params`, naming the path, e.g.
            `state['bn1']['mean']`.
        """
        _trees.check_tree(self.name, self._kinds, "state", state, self.state_shapes, dtype,
                          partial=True)

    def check_labels(self, x: Any, y: Any) -> None:
        """y must be the head's labels (`Head.label_shape`): (N,) 0./1. floats for a binary
        head, (N,) int class ids for softmax, (N, *S) of either for a per-position head, float
        targets shaped like the output for regression.

        Shape and dtype are checked always (they are static). The values are checked only when
        they are concrete (eager calls): a NaN or infinite binary label, a binary label outside
        [0, 1] (soft labels inside it are allowed) or a class id outside [0, K) raises.

        Under `jax.jit` / `vmap` / `grad` (y a tracer) the values are NOT checked, and nothing
        raises for them. What then happens, exactly:
          - binary, y outside [0, 1]: the loss `mean(max(z, 0) - z y + log(1 + exp(-|z|)))` is
            linear in y, so it is finite and wrong (it may be negative), and the gradients are
            those of that formula (dL/dz = (sigmoid(z) - y) / N), finite;
          - binary, y NaN (or inf): the loss and every gradient are NaN;
          - softmax, a class id outside [0, K): `one_hot` makes its target row all zeros, so
            that example adds 0 to the loss and 0 to every gradient while still counting in the
            batch mean's N: the loss is finite, silently too small.
        Check the labels eagerly before jit (as the data loaders do) to rule these out.

        Args:
          x: the images (N, H, W, C), whose N the labels must match.
          y: the labels.

        Raises:
          TypeError: x or y is not an array.
          ValueError: y has the wrong shape or dtype, or (eagerly) a value that is NaN,
            infinite or out of range; the message names y.
        """
        self.check_input(x)
        n = x.shape[0]
        kind = self.head.labels(self.num_classes)
        want = self.head.label_shape(n, self.output_shape)
        if not hasattr(y, "dtype") or not hasattr(y, "shape"):
            raise TypeError(f"{self.name} expects y to be a JAX or NumPy array of shape {want} "
                            f"holding {kind}; got {type(y).__name__}")
        if not self.head.label_dtype_ok(y.dtype) or tuple(y.shape) != want:
            raise ValueError(f"{self.name} expects y of shape {want} holding {kind}; got shape "
                             f"{tuple(y.shape)} {y.dtype}")
        vals = _geometry.concrete(y)
        if vals is None or not vals.size:
            return
        vals = vals.reshape(-1)
        bad = np.flatnonzero(~np.isfinite(vals)) if self.head.kind not in CLASS_KINDS else ()
        if len(bad):  # before the range check: every comparison with NaN is false
            i = int(bad[0])
            got = "NaN" if np.isnan(vals[i]) else str(vals[i])
            raise ValueError(f"{self.name} expects y holding {kind}; got {got} at index {i} "
                             f"({len(bad)} non-finite label{'s' if len(bad) > 1 else ''})")
        if self.head.kind == "regression":
            return
        high = 1 if self.head.kind in BINARY_KINDS else self.num_classes - 1
        if vals.min() < 0 or vals.max() > high:
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

        Args:
          params: as `init` returns (checked by `check_params`: structure, shapes, dtype x's).
          x: (N, H, W, C) images; the other keywords as above (state checked by `check_state`).

        Returns:
          The `Trace`: every layer's input and the logits, the residuals, the updated state.
        """
        self.check_input(x)
        self.check_params(params, x.dtype)
        state = {} if state is None else state
        self.check_state(state, x.dtype)
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
    def backprop(self, params: Params, trace: Trace, y: Array, *,
                 delta: Array | None = None) -> tuple[Params, list[Array]]:
        """The manual backward pass: (grads with params' structure, deltas).

        deltas[i] is dL/d(activations[i]): deltas[-1] the loss delta on the logits (the head's,
        or `delta` when given), deltas[0] the gradient with respect to the input images.
        """
        acts = trace.activations
        delta = self.head.delta(acts[-1], y) if delta is None else delta
        deltas, grads = [delta], {}
        for layer, x, res in zip(reversed(self.layers), reversed(acts[:-1]),
                                 reversed(trace.residuals)):
            delta, g = layer.backward(delta, params.get(layer.name, {}), x, res)
            deltas.append(delta)
            if layer.name in params:
                grads[layer.name] = g
        return {name: grads[name] for name in params}, deltas[::-1]

    def per_example_pass(self, params: Params, trace: Trace, y: Array,
                         method: str = "auto") -> tuple[Array, Callable[[Array], Params]]:
        """(sq, regrad): sq (N,) = ||grad l_i||^2 over all params, l_i each example's loss, by
        the layers' `norms` rules (`jaxcnn.nn.ghost`): the backward pass of the per-example
        rows of the loss delta, N dL/dz (L = (1/N) sum_i l_i), summing each layer's squared
        norms; regrad(w) = sum_i w_i grad l_i for weights w (N,), params' structure, from the
        per-layer output gradients that pass kept (no second backward pass).

        Raises:
          ValueError: a layer has no per-example norm rule (a custom layer without `norms`),
            or mixes the examples (BatchNorm in training mode).
        """
        acts = trace.activations
        g = self.head.delta(acts[-1], y) * acts[-1].shape[0]
        sq, regrads = jnp.zeros((acts[-1].shape[0],), g.dtype), {}
        for layer, x, res in zip(reversed(self.layers), reversed(acts[:-1]),
                                 reversed(trace.residuals)):
            if layer.norms is None:
                raise ValueError(f"{self.name}: layer {layer.name!r} ({self._kinds[layer.name]}) "
                                 f"has no per-example norm rule (Layer.norms)")
            g, sq_k, regrads[layer.name] = layer.norms(g, params.get(layer.name, {}), x, res,
                                                       method)
            sq = sq + sq_k
        return sq, lambda w: {name: regrads[name](w) for name in params}

    def __repr__(self) -> str:
        rows = [f"  {'input':12} {self.input_shape}"]
        rows += [f"  {layer.name:12} {shape}" for layer, shape in zip(self.layers, self.shapes)]
        return f"{self.name}: {self.head.name}\n" + "\n".join(rows)
