"""Each example's own gradient, by the hand-written backward pass under `vmap`."""

from __future__ import annotations

import jax

from jaxcnn.forward.conv import per_example_rule
from jaxcnn.nn.combinators import kinds
from jaxcnn.nn.grads import manual_grad
from jaxcnn.nn.network import Network, Params, State

Array = jax.Array


def per_example_grads(model: Network, params: Params, x: Array, y: Array, *,
                      state: State | None = None, train: bool = False) -> Params:
    """`grad l_i` for every example i: the manual backward pass of one example, vmapped.

    Evaluation mode by default (BatchNorm's running averages, no Dropout), so examples stay
    apart. A model whose convolutions are `impl="auto"` runs them by the per-example rule
    (`jaxcnn.fast.auto.prefer_gemm` with `per_example=True`: under vmap, dw as batched
    products), measured in experiments/PERFORMANCE.md.

    Args:
      model, params: a `Network` and its parameters; state: its running averages.
      x: (N, H, W, C); y: (N,) labels.
      train: training mode, refused for a model with BatchNorm (it mixes the examples).

    Returns:
      grads with params' structure, every leaf with a leading axis N; their mean over N is the
      batch gradient (the loss is a mean over the batch).
    """
    model.check_input(x)
    model.check_labels(x, y)
    if train and any("BatchNorm" in kinds(layer) for layer in model.layers):
        raise ValueError(f"per_example_grads: {model.name} has BatchNorm, which mixes the "
                         f"examples of a batch in training mode; use GroupNorm or LayerNorm, "
                         f"or train=False")

    def one(xi, yi):
        return manual_grad(model, params, xi[None], yi[None], state=state, train=train)[1]

    with per_example_rule():  # read while vmap traces `one`
        return jax.vmap(one)(x, y)
