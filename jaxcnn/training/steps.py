"""Jitted training with the hand-written gradients (or `jax.grad`, for comparison) and optax.

    step = make_train_step(model, optimizer, grad="manual")
    params, state, opt_state, metrics = step(params, state, opt_state, (x, y), key)

The step is a pure function of its inputs, compiled once per batch shape. Its metrics hold the
loss, the accuracy, the global gradient norm and the gradient norm of every layer (vanishing and
exploding gradients, made visible). A step whose loss or gradient is not finite leaves params,
state and optimizer state as they were (metrics["finite"] is False), so that the run loop can
diagnose the failure from the parameters that produced it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxcnn.nn.grads import value_and_grad
from jaxcnn.nn.network import Network, Params, State

Array = jax.Array
Batch = tuple[Array, Array]
# XLA:CPU's YNNPACK convolutions ran the CNN steps here 1.1-1.5x slower than its Eigen ones
# (experiments/PERFORMANCE.md, jaxlib 0.10.2); YNNPACK is also the path of openxla/xla#48714.
# Per compile, not global: other programs in the process keep XLA's defaults.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def accuracy(model: Network, logits: Array, y: Array) -> Array:
    """The fraction of correct predictions (`model.head.predict`): logits (N, K), y (N,)."""
    return jnp.mean(model.head.predict(logits) == y)


def layer_norms(g: Params) -> dict[str, Array]:
    """The L2 norm of each layer's gradient: {layer name: ||dL/dparams_layer||, shape ()}."""
    return {name: optax.tree_utils.tree_norm(leaf) for name, leaf in g.items()}


def update_and_metrics(model: Network, optimizer: optax.GradientTransformation, old: tuple,
                       new_state: State, loss: Array, g: Params, logits: Array, y: Array, *,
                       axis_name: str | None = None) -> tuple[Params, State, Any, dict]:
    """The optimizer update and the step's metrics, shared by the single-device and the
    data-parallel step. old: (params, state, opt_state) before the step; loss and g: the
    global batch's (already averaged over `axis_name`); logits (N, K), or (N, 1) for a binary
    head, and y (N,): this device's.

    A non-finite loss or gradient keeps `old` (optax.apply_if_finite's rule, without its
    counter)."""
    params, state, opt_state = old
    updates, new_opt = optimizer.update(g, opt_state, params)
    new = (optax.apply_updates(params, updates), new_state, new_opt)
    grad_norm = optax.tree_utils.tree_norm(g)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, state, opt_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    acc = accuracy(model, logits, y)
    metrics = {"loss": loss, "accuracy": acc if axis_name is None else lax.pmean(acc, axis_name),
               "grad_norm": grad_norm, "layer_grad_norms": layer_norms(g), "finite": finite}
    return params, state, opt_state, metrics


def train_step_fn(model: Network, optimizer: optax.GradientTransformation,
                  grad: str = "manual") -> Callable:
    """The pure, uncompiled train step of `make_train_step`, to jit, vmap or compose yourself:
    `(params, state, opt_state, (x, y), key) -> (params, state, opt_state, metrics)`."""
    vg = value_and_grad(model, grad)

    def step(params, state, opt_state, batch, key):
        x, y = batch
        loss, g, (new_state, logits) = vg(params, x, y, state=state, train=True, key=key)
        return update_and_metrics(model, optimizer, (params, state, opt_state), new_state, loss,
                                  g, logits, y)

    return step


def make_train_step(model: Network, optimizer: optax.GradientTransformation,
                    grad: str = "manual", *, donate: bool = True) -> Callable:
    """A jitted step `(params, state, opt_state, (x, y), key) -> (params, state, opt_state,
    metrics)`; x: (B, H, W, C), y: (B,). With `donate`, the old params, state and optimizer
    state buffers are reused for the new ones (do not use them after the call). The step is
    `train_step_fn`, compiled by `jit_with_options`."""
    return jit_with_options(train_step_fn(model, optimizer, grad),
                            donate_argnums=(0, 1, 2) if donate else ())


def jit_with_options(fn: Callable, **kw: Any) -> Callable:
    """`jax.jit` with this project's compiler options on the CPU (`CPU_COMPILER_OPTIONS`), plain
    `jax.jit` elsewhere."""
    if jax.default_backend() == "cpu":
        kw["compiler_options"] = CPU_COMPILER_OPTIONS
    return jax.jit(fn, **kw)


def make_eval_step(model: Network) -> Callable:
    """A jitted `(params, state, x, y) -> {"loss", "accuracy"}` in evaluation mode (running
    BatchNorm averages, no Dropout); both are means over the batch."""

    def evaluate(params, state, x, y):
        loss, (_, logits) = model.loss_and_aux(params, x, y, state=state)
        return {"loss": loss, "accuracy": accuracy(model, logits, y)}

    return jit_with_options(evaluate)


def evaluate(model: Network, params: Params, state: State, x: Any, y: Any,
             batch_size: int = 512, eval_step: Callable | None = None) -> dict[str, float]:
    """Loss and accuracy over a whole dataset x (N, H, W, C), y (N,), in batches (the last one
    may be smaller)."""
    n = len(x)
    if n == 0:
        raise ValueError("evaluate: the dataset is empty; nothing to evaluate")
    eval_step = eval_step or make_eval_step(model)
    totals = {"loss": 0.0, "accuracy": 0.0}
    for i in range(0, n, batch_size):
        m = eval_step(params, state, x[i:i + batch_size], y[i:i + batch_size])
        for k in totals:
            totals[k] += float(m[k]) * len(x[i:i + batch_size])
    return {k: v / n for k, v in totals.items()}
