"""Jitted training with the hand-written gradients (or `jax.grad`, for comparison) and optax.

    step = make_train_step(model, optimizer, grad="manual")
    params, state, opt_state, metrics = step(params, state, opt_state, (x, y), key)

The step is a pure function of its inputs, compiled once per batch shape. Its metrics hold the
loss, the accuracy, the global gradient norm and the gradient norm of every layer (seed 003's
vanishing and exploding gradients, made visible).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcnn import _checks
from jaxcnn import grads as grads_lib
from jaxcnn._checks import IMPLS
from jaxcnn.network import BINARY, Network, Params, State

Array = jax.Array
Batch = tuple[Array, Array]
GRADS = ("manual", "autodiff")
OPTIMIZERS = ("sgd", "momentum", "adam")
# XLA:CPU's YNNPACK convolutions ran the CNN steps here 1.1-1.5x slower than its Eigen ones
# (experiments/PERFORMANCE.md); YNNPACK is also the path of openxla/xla#48714. Per compile, not
# global: other programs in the process keep XLA's defaults.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
SCHEDULES = ("constant", "cosine")


def make_optimizer(name: str, lr: float, *, clip: float | None = None,
                   schedule: str = "constant", total_steps: int | None = None,
                   momentum: float = 0.9) -> optax.GradientTransformation:
    """An optax optimizer by name, optionally behind gradient clipping by global norm.

    sgd:      F_new = F_old - lr * dL/dF  (seed 003's update, `optax.sgd(lr)`)
    momentum: v = momentum * v + dL/dF;  F_new = F_old - lr * v
    adam:     `optax.adam(lr)`
    schedule: "constant" lr, or "cosine": lr * (1 + cos(pi * step / total_steps)) / 2.
    clip:     g <- g * min(1, clip / ||g||_2) over all parameters first (seed 003's remedy for
              exploding gradients, `optax.clip_by_global_norm`).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"the learning rate must be > 0; got {lr}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 (a maximum global gradient norm); got {clip}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    rate = lr if schedule == "constant" else optax.cosine_decay_schedule(lr, total_steps or 1)
    opt = {"sgd": lambda: optax.sgd(rate), "momentum": lambda: optax.sgd(rate, momentum=momentum),
           "adam": lambda: optax.adam(rate)}[name]()
    return opt if clip is None else optax.chain(optax.clip_by_global_norm(clip), opt)


def accuracy(model: Network, logits: Array, y: Array) -> Array:
    """The fraction of correct predictions: sigmoid > 0.5 for a binary head, else argmax."""
    if model.head is BINARY:
        predicted = (logits[:, 0] > 0).astype(y.dtype)
    else:
        predicted = jnp.argmax(logits, axis=-1)
    return jnp.mean(predicted == y)


def layer_norms(g: Params) -> dict[str, Array]:
    """The L2 norm of each layer's gradient: {layer name: ||dL/dparams_layer||}."""
    return {name: optax.tree_utils.tree_norm(leaf) for name, leaf in g.items()}


def value_and_grad(model: Network, grad: str,
                   impl: str = "conv") -> Callable[..., tuple[Array, Params, Any]]:
    """(params, state, x, y, key, train) -> (loss, grads, (state, logits)), manual or autodiff;
    `impl` is the formulation of the convolutions ("conv", "gemm", "auto"), forward and, for
    manual gradients, backward (autodiff differentiates whichever forward it is given)."""
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {', '.join(GRADS)}; got {grad!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")

    def manual(params, state, x, y, key, train):
        return grads_lib.manual_value_and_grad(model, params, x, y, state=state, train=train,
                                               key=key, impl=impl)

    def autodiff(params, state, x, y, key, train):
        (loss, aux), g = jax.value_and_grad(model.loss_and_aux, has_aux=True)(
            params, x, y, state=state, train=train, key=key, impl=impl)
        return loss, g, aux

    return manual if grad == "manual" else autodiff


def make_train_step(model: Network, optimizer: optax.GradientTransformation,
                    grad: str = "manual", *, impl: str = "conv", donate: bool = True) -> Callable:
    """A jitted step `(params, state, opt_state, (x, y), key) -> (params, state, opt_state,
    metrics)`; x: (B, H, W, C), y: (B,). `impl` is the formulation of the convolutions. With
    `donate`, the old params, state and optimizer state buffers are reused for the new ones (do
    not use them after the call). The step is `train_step_fn`, compiled by `jit_with_options`."""
    return jit_with_options(train_step_fn(model, optimizer, grad, impl=impl),
                            donate_argnums=(0, 1, 2) if donate else ())


def train_step_fn(model: Network, optimizer: optax.GradientTransformation,
                  grad: str = "manual", *, impl: str = "conv") -> Callable:
    """The pure, uncompiled train step of `make_train_step`, to jit, vmap or compose yourself."""
    vg = value_and_grad(model, grad, impl)

    def step(params, state, opt_state, batch, key):
        x, y = batch
        loss, g, (state, logits) = vg(params, state, x, y, key, True)
        updates, opt_state = optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, "accuracy": accuracy(model, logits, y),
                   "grad_norm": optax.tree_utils.tree_norm(g), "layer_grad_norms": layer_norms(g)}
        return params, state, opt_state, metrics

    return step


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
    """Loss and accuracy over a whole dataset, in batches (the last one may be smaller)."""
    eval_step = eval_step or make_eval_step(model)
    totals, n = {"loss": 0.0, "accuracy": 0.0}, len(x)
    for i in range(0, n, batch_size):
        m = eval_step(params, state, x[i:i + batch_size], y[i:i + batch_size])
        for k in totals:
            totals[k] += float(m[k]) * len(x[i:i + batch_size])
    return {k: v / n for k, v in totals.items()}


def per_example_grads(model: Network, params: Params, x: Array, y: Array, *,
                      state: State | None = None, impl: str = "auto") -> Params:
    """Each example's own gradient by the manual backward pass under `vmap` (evaluation mode).

    x: (N, H, W, C), y: (N,) -> grads whose leaves have a leading axis N; their mean over N is
    the batch gradient (the loss is a mean over the batch). impl: the formulation of the
    convolutions; "auto", the default, picks by the per-example rule (`conv_gemm.prefer_gemm`
    with `per_example=True`: under vmap, dw as batched products), measured in
    experiments/PERFORMANCE.md.
    """
    model.check_input(x)
    model.check_labels(x, y)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")
    inner = _checks.AUTO_PER_EXAMPLE if impl == "auto" else impl

    def one(xi, yi):
        return grads_lib.manual_grad(model, params, xi[None], yi[None], state=state,
                                     impl=inner)[1]

    return jax.vmap(one)(x, y)
