"""Each example's own gradient, its norm and the clipped mean, by the hand-written backward pass.

    per_example_grads        grad l_i for every i: the manual backward of one example, vmapped
    per_example_grad_norms   ||grad l_i||: the layers' ghost norms (jaxcnn.nn.ghost), with no
                             per-example gradient materialised where a layer allows it
    clipped_grad             (1/N) sum_i min(1, C / ||grad l_i||) grad l_i: the norms' pass,
                             then each layer's weight gradient from its kept output gradients,
                             rows re-weighted (book-keeping)
    grad_statistics          per parameter, sum_i (grad l_i)^2 and the variance over the batch
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _geometry
from jaxcnn.forward.conv import per_example_rule
from jaxcnn.nn import ghost
from jaxcnn.nn.grads import manual_grad
from jaxcnn.nn.mode import by_mode, check_train, static_hint
from jaxcnn.nn.network import Network, Params, State

Array = jax.Array


def _check(fn: str, model: Network, x: Array, y: Array, train: Any) -> None:
    """x and y for the model; train a boolean scalar (`check_train`); BatchNorm refused in
    training mode (it mixes the examples), and so with a traced train too (jit without a static
    train compiles training mode as well)."""
    model.check_input(x)
    model.check_labels(x, y)
    mode = check_train(fn, train)
    if mode is None and has_batchnorm(model):
        raise ValueError(f"{fn}: train is traced (passed through jax.jit without being static), "
                         f"so training mode would be compiled too, and {model.name} has "
                         f"BatchNorm, refused in training mode (its batch statistics mix the "
                         f"examples): train must be static for this model, "
                         f"{static_hint(fn)}")
    if mode:
        refuse_batchnorm(fn, model, ", or train=False")


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
      train: training mode, refused for a model with BatchNorm (it mixes the examples); a bool,
        or a traced boolean scalar (both modes compiled; static for a BatchNorm model).

    Returns:
      grads with params' structure, every leaf with a leading axis N; their mean over N is the
      batch gradient (the loss is a mean over the batch).
    """
    _check("per_example_grads", model, x, y, train)

    def in_mode(mode: bool) -> Params:
        def one(xi, yi):
            return manual_grad(model, params, xi[None], yi[None], state=state, train=mode)[1]

        with per_example_rule():  # read while vmap traces `one`
            return jax.vmap(one)(x, y)

    return by_mode("per_example_grads", train, in_mode)


def per_example_grad_norms(model: Network, params: Params, x: Array, y: Array, *,
                           state: State | None = None, train: bool = False,
                           key: Array | None = None, method: str = "auto") -> Array:
    """||grad l_i||_2 over all parameters, for every example, without materialising
    per-example gradients where a layer allows it (`jaxcnn.nn.ghost`): dense layers by the
    ghost norm `||a_i||^2 ||g_i||^2`, convolutions by the ghost sum over position pairs or the
    instantiated per-example dW, whichever `ghost.choose` counts cheaper (method "auto"), or
    the one `method` forces ("ghost", "instantiate") on every convolution; biases and the
    scales of GroupNorm, LayerNorm and (evaluation-mode) BatchNorm exactly.

    Args:
      model, params: a `Network` and its parameters; state: its running averages.
      x: (N, *input_shape); y: the head's labels (N,) or (N, *S).
      train: training mode (Dropout active with `key`), refused for a model with BatchNorm; a
        bool, or a traced boolean scalar (both modes compiled; static for a BatchNorm model).
      key: the Dropout key in training mode.
      method: "auto", "ghost" or "instantiate"; a string, so static under jit
        (`static_argnames="method"`).

    Returns:
      (N,) norms, in x's dtype.
    """
    _check("per_example_grad_norms", model, x, y, train)
    ghost.check_method("per_example_grad_norms", method)

    def in_mode(mode: bool) -> Array:
        trace = model.forward(params, x, state=state, train=mode, key=key)  # no batch loss
        return jnp.sqrt(model.per_example_pass(params, trace, y, method)[0])

    return by_mode("per_example_grad_norms", train, in_mode)


def clipped_grad(model: Network, params: Params, x: Array, y: Array, *, clip_norm: float,
                 state: State | None = None, key: Array | None = None,
                 method: str = "auto") -> tuple[Array, Params]:
    """DP-SGD's clipped mean, no noise, in training mode:
    `(1/N) sum_i min(1, C / ||grad l_i||) grad l_i`, C = clip_norm.

    Book-keeping (Bu et al. 2022): the norms come from `per_example_grad_norms`' backward
    pass, which keeps each layer's per-example output gradients g; then each layer's weight
    gradient is taken once more from them with row i scaled by w_i = min(1, C / ||grad l_i||)
    (the rule is linear in g), giving (1/N) sum_i w_i grad l_i without a second propagation
    through the network, and no per-example gradient is stored for a layer whose ghost norm
    was chosen. An example whose gradient is 0 gets w_i = 1.

    Args:
      model, params, x, y, state: as `per_example_grad_norms`; key: the Dropout key.
      clip_norm: C > 0: a number, or a real array of shape () (traced under jit, its value
        then unchecked).
      method: the norm method ("auto", "ghost", "instantiate"); static under jit.

    Returns:
      (L, grads): the plain mean loss over the batch and the clipped mean gradient, params'
      structure.

    Raises:
      ValueError: clip_norm <= 0 (or not a number); a model with BatchNorm (it mixes the
        examples: use GroupNorm or LayerNorm).
    """
    check_clip_norm("clipped_grad", clip_norm)
    _check("clipped_grad", model, x, y, train=True)  # BatchNorm refused: it is training mode
    ghost.check_method("clipped_grad", method)
    out = clipped_sum(model, params, x, y, clip_norm=clip_norm, state=state, key=key,
                      method=method)
    n = x.shape[0]
    return out["loss_sum"] / n, jax.tree.map(lambda g: g / n, out["grads"])


def has_batchnorm(model: Network) -> bool:
    """Whether any layer of the model (nested ones included) mixes the examples of a batch in
    training mode (`Layer.mixes_examples`: BatchNorm, or a user's layer that says so)."""
    return any(layer.mixes_examples for layer in model.layers)


def refuse_batchnorm(fn: str, model: Network, alternative: str = "") -> None:
    """A ValueError pointing to GroupNorm / LayerNorm (and `alternative`) for a model with
    BatchNorm, or any layer that says it mixes the examples in training mode
    (`Layer.mixes_examples`), named."""
    mixing = [layer.name for layer in model.layers if layer.mixes_examples]
    if mixing:
        raise ValueError(f"{fn}: {model.name} has BatchNorm or another layer whose batch "
                         f"statistics mix the examples in training mode ({', '.join(mixing)}), "
                         f"so no example has a gradient of its own; use GroupNorm or LayerNorm "
                         f"(e.g. resnet20(norm=\"group\")){alternative}")


def clipped_sum(model: Network, params: Params, x: Array, y: Array, *, clip_norm: float,
                mask: Array | None = None, state: State | None = None,
                key: Array | None = None, method: str = "auto") -> dict[str, Any]:
    """The sums behind `clipped_grad` and DP-SGD, training mode, over the rows with mask 1:

        "grads"     sum_i mask_i min(1, C / ||grad l_i||) grad l_i   (params' structure)
        "loss_sum"  sum_i mask_i l_i
        "correct"   sum_i mask_i (the fraction of example i's labels predicted right)
        "clipped"   sum_i mask_i [||grad l_i|| > C]
        "norms"     (N,) ||grad l_i||

    One forward pass, one backward pass for the per-example norms (`Network.per_example_pass`),
    then book-keeping: each layer's weight gradient again from the output gradients that pass
    kept, row i scaled by mask_i w_i (no second propagation through the network; no
    per-example gradient stored for a layer whose ghost norm was chosen). mask None: every row
    counts.
    """
    model.check_labels(x, y)
    trace = model.forward(params, x, state=state, train=True, key=key)  # per-example losses below
    z = trace.activations[-1]
    n = z.shape[0]
    mask = jnp.ones((n,), z.dtype) if mask is None else mask.astype(z.dtype)
    sq, regrad = model.per_example_pass(params, trace, y, method)
    norms = jnp.sqrt(sq)
    grads = regrad(clip_weights(norms, clip_norm) * mask)
    losses = jax.vmap(lambda zi, yi: model.head.loss(zi[None], yi[None]))(z, y)
    right = (model.head.predict(z) == y).reshape(n, -1).mean(axis=1)
    return {"grads": grads, "loss_sum": jnp.sum(mask * losses),
            "correct": jnp.sum(mask * right), "norms": norms,
            "clipped": jnp.sum(mask * (norms > clip_norm))}


def clip_weights(norms: Array, clip_norm: float) -> Array:
    """(N,) = min(1, C / ||g_i||), 1 where ||g_i|| = 0."""
    safe = jnp.where(norms > 0, norms, 1.0)
    return jnp.where(norms > clip_norm, clip_norm / safe, 1.0).astype(norms.dtype)


def check_clip_norm(fn: str, clip_norm: object) -> None:
    """clip_norm must be a real number > 0: a Python number, or a real (integer or floating)
    scalar of shape () (NumPy or JAX); its value is checked where it is known, not when traced
    (under jit).

    Raises:
      ValueError: naming fn and clip_norm.
    """
    dtype = getattr(clip_norm, "dtype", None)
    real = isinstance(clip_norm, int | float) or (
        getattr(clip_norm, "shape", None) == () and dtype is not None
        and (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)))
    value = _geometry.concrete(clip_norm) if real and not isinstance(clip_norm, bool) else None
    if not real or isinstance(clip_norm, bool) or (value is not None and not value > 0):
        raise ValueError(f"{fn}: clip_norm must be a number > 0; got {clip_norm!r}")


def grad_statistics(model: Network, params: Params, x: Array, y: Array, *,
                    state: State | None = None, train: bool = False) -> dict[str, Params]:
    """BackPACK's SumGradSquared and Variance from the per-example gradients of one pass:
    per parameter, `sum_i (grad l_i)^2` and the variance over the batch `(1/N) sum_i (grad
    l_i)^2 - ((1/N) sum_i grad l_i)^2` (its mean is the batch gradient).

    (BackPACK's own, for a mean-reduced loss, are of the individual gradients (1/N) grad l_i:
    divide these by N^2.)

    Args:
      model, params, state, train: as `per_example_grads` (train traced or not); x:
        (N, *input_shape); y: the head's labels (N,) or (N, *S).

    Returns:
      {"sum_grad_squared": ..., "variance": ...}, each with params' structure and shapes.
    """
    _check("grad_statistics", model, x, y, train)

    def in_mode(mode: bool) -> dict[str, Params]:
        g = per_example_grads(model, params, x, y, state=state, train=mode)
        n = x.shape[0]
        sq = jax.tree.map(lambda v: jnp.sum(v * v, axis=0), g)
        var = jax.tree.map(lambda s, v: s / n - jnp.mean(v, axis=0) ** 2, sq, g)
        return {"sum_grad_squared": sq, "variance": var}

    return by_mode("grad_statistics", train, in_mode)
