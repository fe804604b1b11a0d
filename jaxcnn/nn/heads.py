"""The heads: the output nonlinearity and its loss, fused on the logits, with the loss delta
each hands to the backward pass (the worked example's `dZ2 = A2 - Y`).

    BINARY         sigmoid + BCE, one logit, y (N,) 0./1.     delta (sigmoid(z) - y) / N
    SOFTMAX        softmax + CE, K logits, y (N,) class ids   delta (softmax(z) - onehot(y)) / N
    PIXEL_BINARY   the same at every position, (N, *S, 1)     delta (sigmoid(z) - y) / (N P)
    PIXEL_SOFTMAX  ... of (N, *S, K), y (N, *S) class ids     delta (softmax(z) - onehot(y)) / (N P)
    REGRESSION     identity + seed 002's E = 1/2 sum (t - z)^2, batch mean: delta (z - t) / N

A per-position head averages each example's loss over its P positions, then over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import backward, forward

Array = jax.Array

BINARY_KINDS = ("binary", "pixel_binary")      # float 0./1. labels, one logit
CLASS_KINDS = ("softmax", "pixel_softmax")      # int class ids, K logits
PIXEL_KINDS = ("pixel_binary", "pixel_softmax")  # one label per output position


class Head(NamedTuple):
    """The output nonlinearity and its loss, fused on the logits (exact and stable).

    kind: "binary" (one logit, 0./1. float labels y (N,)), "softmax" (K logits, int class ids
    y (N,)), "pixel_binary" / "pixel_softmax" (logits (N, *S, 1) / (N, *S, K), one label per
    position, y (N, *S); the loss of an example is the mean over its positions), or
    "regression" (float targets y shaped like the output, squared error).
    """

    name: str
    kind: str
    prob: Callable[[Array], Array]          # logits -> prediction
    loss: Callable[[Array, Array], Array]   # (logits, y) -> scalar, mean over the batch
    delta: Callable[[Array, Array], Array]  # (logits, y) -> dL/dlogits

    def num_classes(self, output_shape: tuple[int, ...]) -> int:
        """2 for a binary head, the number of logits (per position) for softmax, 0 for
        regression."""
        if self.kind in BINARY_KINDS:
            return 2
        return 0 if self.kind == "regression" else output_shape[-1]

    def label_shape(self, n: int, output_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape y must have for a batch of n: (n,), (n, *S) per position, or the output's."""
        if self.kind in PIXEL_KINDS:
            return (n, *output_shape[:-1])
        return (n, *output_shape) if self.kind == "regression" else (n,)

    def predict(self, logits: Array) -> Array:
        """Predicted labels (N,) or (N, *S): logit > 0 (probability > 0.5) for binary, else the
        argmax; the output itself for regression."""
        if self.kind in BINARY_KINDS:
            return (logits[..., 0] > 0).astype(logits.dtype)
        return logits if self.kind == "regression" else jnp.argmax(logits, axis=-1)

    def random_labels(self, rng: np.random.Generator, n: int, output_shape: tuple[int, ...],
                      dtype: Any = np.float32) -> np.ndarray:
        """Valid labels for a batch of n, drawn from `rng` (tests, gradcheck, the benchmark):
        0./1. in `dtype` for binary heads, int32 class ids for softmax heads, N(0, 1) targets
        in `dtype` for regression; of shape `label_shape(n, output_shape)`."""
        shape = self.label_shape(n, output_shape)
        if self.kind in BINARY_KINDS:
            return rng.integers(0, 2, shape).astype(dtype)
        if self.kind == "regression":
            return rng.standard_normal(shape).astype(dtype)
        return rng.integers(0, self.num_classes(output_shape), shape).astype(np.int32)

    def labels(self, num_classes: int) -> str:
        """What y must hold, in words."""
        if self.kind in BINARY_KINDS:
            return "0./1. float labels"
        if self.kind == "regression":
            return "float targets"
        return f"int class ids in [0, {num_classes})"

    def label_dtype_ok(self, dtype: Any) -> bool:
        kind = jnp.integer if self.kind in CLASS_KINDS else jnp.floating
        return bool(jnp.issubdtype(dtype, kind))


def _half_squared_error(z: Array, t: Array) -> Array:
    """L = (1/N) sum_i E_i, E_i = 1/2 sum_p (t_ip - z_ip)^2: seed 002's E, averaged over the
    batch."""
    return forward.mse(z, t) / z.shape[0]


BINARY = Head("sigmoid + binary cross-entropy", "binary", jax.nn.sigmoid,
              forward.sigmoid_binary_cross_entropy,
              lambda z, y: backward.sigmoid_binary_cross_entropy(1.0, z, y))
SOFTMAX = Head("softmax + cross-entropy", "softmax", lambda z: jax.nn.softmax(z, axis=-1),
               forward.softmax_cross_entropy,
               lambda z, y: backward.softmax_cross_entropy(1.0, z, y))
PIXEL_BINARY = Head("per-position sigmoid + binary cross-entropy", "pixel_binary",
                    jax.nn.sigmoid, forward.pixel_sigmoid_binary_cross_entropy,
                    lambda z, y: backward.pixel_sigmoid_binary_cross_entropy(1.0, z, y))
PIXEL_SOFTMAX = Head("per-position softmax + cross-entropy", "pixel_softmax",
                     lambda z: jax.nn.softmax(z, axis=-1), forward.pixel_softmax_cross_entropy,
                     lambda z, y: backward.pixel_softmax_cross_entropy(1.0, z, y))
# dL/dz = (z - t) / N: backward.mse's rule (dE/dz = z - t) scaled by the batch mean's 1/N
REGRESSION = Head("identity + squared error", "regression", lambda z: z, _half_squared_error,
                  lambda z, t: backward.mse(1.0 / z.shape[0], z, t))
