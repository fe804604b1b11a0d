"""Jitted training with the hand-written gradients (or `jax.grad`, for comparison) and optax.

    step = make_train_step(model, optimizer, grad="manual")
    params, state, opt_state, metrics = step(params, state, opt_state, (x, y), key)

The step is a pure function of its inputs, compiled once per batch shape. Its metrics hold the
loss, the accuracy, the global gradient norm and the gradient norm of every layer (vanishing and
exploding gradients, made visible). A step whose loss or gradient is not finite leaves params,
state and optimizer state as they were (metrics["finite"] is False), so that the run loop can
diagnose the failure from the parameters that produced it.

For a per-position head (`PIXEL_KINDS`: labels (N, *S)) the accuracy is the pixel accuracy (the
mean over all N * P positions) and `evaluate` also reports the mean IoU over the whole set
(`iou_counts`, `mean_iou_from_counts`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxcnn.nn.grads import value_and_grad
from jaxcnn.nn.heads import BINARY_KINDS, PIXEL_KINDS
from jaxcnn.nn.network import Network, Params, State

Array = jax.Array
Batch = tuple[Array, Array]
# XLA:CPU's YNNPACK convolutions ran the CNN steps here 1.1-1.5x slower than its Eigen ones
# (experiments/PERFORMANCE.md, jaxlib 0.10.2); YNNPACK is also the path of openxla/xla#48714.
# Per compile, not global: other programs in the process keep XLA's defaults.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def accuracy(model: Network, logits: Array, y: Array) -> Array:
    """The fraction of correct predictions (`model.head.predict`): logits (N, K), y (N,); or,
    for a per-position head, logits (N, *S, K), y (N, *S): the pixel accuracy, the mean over all
    N * P positions."""
    return jnp.mean(model.head.predict(logits) == y)


def iou_counts(pred: Array, y: Array, num_classes: int) -> tuple[Array, Array]:
    """Per-class intersections and unions of a predicted and a true labelling.

    Args:
      pred, y: int class ids in [0, num_classes), of one shape (N, *S) (any shape).
      num_classes: K, a Python int.

    Returns:
      (intersection, union), each (K,) int32: I_c = #{pred = c and y = c},
      U_c = #{pred = c or y = c} = #{pred = c} + #{y = c} - I_c, counted over every entry (from
      the confusion matrix bincount(K y + pred), of K * K entries).
    """
    k = int(num_classes)
    conf = jnp.bincount((y.astype(jnp.int32) * k + pred.astype(jnp.int32)).reshape(-1),
                        length=k * k).reshape(k, k)  # conf[true, predicted]
    inter = jnp.diagonal(conf)
    return inter, conf.sum(0) + conf.sum(1) - inter


def mean_iou_from_counts(intersection: Any, union: Any) -> float:
    """The mean IoU of summed counts: mean over the classes c with U_c > 0 of I_c / U_c
    (a class neither predicted nor present is left out), in float64 on the host.

    Args:
      intersection, union: (K,) counts, as `iou_counts` returns (or their sums over batches).

    Returns:
      the mean IoU in [0, 1]; nan if every union is 0 (no entries at all).
    """
    inter, union = np.asarray(intersection, np.float64), np.asarray(union, np.float64)
    if inter.shape != union.shape or inter.ndim != 1:
        raise ValueError(f"mean_iou_from_counts: intersection and union must both be (K,); got "
                         f"{inter.shape} and {union.shape}")
    present = union > 0
    return float(np.mean(inter[present] / union[present])) if present.any() else float("nan")


def mean_iou(pred: Any, y: Any, num_classes: int) -> float:
    """The mean IoU of one labelling: `mean_iou_from_counts(*iou_counts(pred, y, num_classes))`.

    Args:
      pred, y: int class ids in [0, num_classes), of one shape (N, *S).
      num_classes: K.

    Returns:
      mean over the classes c with U_c > 0 of |pred = c and y = c| / |pred = c or y = c|.
    """
    pred, y = jnp.asarray(pred), jnp.asarray(y)
    if pred.shape != y.shape:
        raise ValueError(f"mean_iou: pred and y must have the same shape; got {pred.shape} and "
                         f"{y.shape}")
    return mean_iou_from_counts(*jax.device_get(iou_counts(pred, y, num_classes)))


def _per_position(model: Network) -> bool:
    return model.head.kind in PIXEL_KINDS


def _iou_classes(model: Network) -> int:
    """K of the IoU: 2 for a per-position binary head, its logits per position otherwise."""
    return 2 if model.head.kind in BINARY_KINDS else model.num_classes


def layer_norms(g: Params) -> dict[str, Array]:
    """The L2 norm of each layer's gradient: {layer name: ||dL/dparams_layer||, shape ()}."""
    return {name: optax.tree_utils.tree_norm(leaf) for name, leaf in g.items()}


def update_and_metrics(model: Network, optimizer: optax.GradientTransformation, old: tuple,
                       new_state: State, loss: Array, g: Params, logits: Array, y: Array, *,
                       axis_name: str | None = None) -> tuple[Params, State, Any, dict]:
    """The optimizer update and the step's metrics, shared by the single-device and the
    data-parallel step. old: (params, state, opt_state) before the step; loss and g: the
    global batch's (already averaged over `axis_name`); logits (N, K), or (N, 1) for a binary
    head, and y (N,) (per-position heads: logits (N, *S, K), y (N, *S)): this device's.

    A non-finite loss or gradient keeps `old` (optax.apply_if_finite's rule, without its
    counter)."""
    (params, state, opt_state), grad_norm, finite = guarded_update(optimizer, old, new_state,
                                                                   loss, g)
    acc = accuracy(model, logits, y)
    metrics = {"loss": loss, "accuracy": acc if axis_name is None else lax.pmean(acc, axis_name),
               "grad_norm": grad_norm, "layer_grad_norms": layer_norms(g), "finite": finite}
    return params, state, opt_state, metrics


def guarded_update(optimizer: optax.GradientTransformation, old: tuple, new_state: State,
                   loss: Array, g: Params) -> tuple[tuple, Array, Array]:
    """((params, state, opt_state), ||g||, finite): the optimizer update of old = (params,
    state, opt_state) by g (params' structure and shapes), kept only where the loss (shape ())
    and ||g|| are finite (else `old`: optax.apply_if_finite's rule, without its counter)."""
    params, _, opt_state = old
    updates, new_opt = optimizer.update(g, opt_state, params)
    new = (optax.apply_updates(params, updates), new_state, new_opt)
    grad_norm = optax.tree_utils.tree_norm(g)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old), grad_norm, finite


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
    metrics)`; x: (B, *input_shape), y: (B,) or (B, *S) per position. With `donate`, the old
    params, state and optimizer state buffers are reused for the new ones (do not use them
    after the call). The step is `train_step_fn`, compiled by `jit_with_options`."""
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
    BatchNorm averages, no Dropout); both are means over the batch (the accuracy over its
    positions for a per-position head, which also gets "intersection" and "union", the (K,)
    `iou_counts` of `model.head.predict(logits)` and y (N, *S))."""
    per_position, k = _per_position(model), _iou_classes(model)

    def evaluate(params, state, x, y):
        loss, (_, logits) = model.loss_and_aux(params, x, y, state=state)
        out = {"loss": loss, "accuracy": accuracy(model, logits, y)}
        if per_position:
            out["intersection"], out["union"] = iou_counts(model.head.predict(logits), y, k)
        return out

    return jit_with_options(evaluate)


def evaluate(model: Network, params: Params, state: State, x: Any, y: Any,
             batch_size: int = 512, eval_step: Callable | None = None) -> dict[str, float]:
    """Loss and accuracy over a whole dataset x (N, *input_shape), y (N,) or (N, *S), in batches
    (the last one may be smaller): example-weighted means of the batches' means.

    For a per-position head also "mean_iou": `mean_iou_from_counts` of the intersections and
    unions summed over the whole set (not a mean of per-batch IoUs)."""
    n = len(x)
    if n == 0:
        raise ValueError("evaluate: the dataset is empty; nothing to evaluate")
    eval_step = eval_step or make_eval_step(model)
    totals = {"loss": 0.0, "accuracy": 0.0}
    counts: list[np.ndarray] = []
    for i in range(0, n, batch_size):
        m = jax.device_get(eval_step(params, state, x[i:i + batch_size], y[i:i + batch_size]))
        for k in totals:
            totals[k] += float(m[k]) * len(x[i:i + batch_size])
        if "intersection" in m:
            pair = np.stack([m["intersection"], m["union"]]).astype(np.int64)
            counts = [counts[0] + pair] if counts else [pair]
    result = {k: v / n for k, v in totals.items()}
    if counts:
        result["mean_iou"] = mean_iou_from_counts(*counts[0])
    return result
