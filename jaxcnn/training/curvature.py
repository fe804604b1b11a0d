"""Curvature through the hand-written backward pass: Hessian-vector products and the diagonal of
the generalised Gauss-Newton matrix.

    hvp            H v = d/de grad L(params + e v) at e = 0: forward mode (`jax.jvp`) through
                   `manual_grad`, whose rules are plain JAX ops and so differentiable themselves
    ggn_diagonal   diag(G), G = (1/N) sum_i J_i^T H_i J_i with J_i the Jacobian of example i's
                   logits in the params and H_i the Hessian of its loss in its logits
                   (BackPACK's DiagGGN, exact: one backward pass per logit)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcnn.nn.grads import manual_grad
from jaxcnn.nn.mode import by_mode
from jaxcnn.nn.network import Network, Params, State
from jaxcnn.training.per_example import _check

Array = jax.Array


def hvp(model: Network, params: Params, x: Array, y: Array, v: Params, *,
        state: State | None = None, train: bool = False) -> Params:
    """(Hessian of the mean loss L in the params) @ v, by `jax.jvp` of the manual gradient:
    `H v = d/de manual_grad(params + e v)` at e = 0, no autodiff gradient involved.

    Args:
      model, params: a `Network` and its parameters; x, y: a batch and its labels;
      v: a tangent with params' structure, shapes and dtypes.
      state: running averages; train: training mode (BatchNorm on batch statistics), a bool
        or a traced boolean scalar (both modes compiled; training mode then cannot run
        Dropout, which needs a key: make train static, `static_argnames="train"`).

    Returns:
      H v, with params' structure.

    Raises:
      TypeError / ValueError: v is not shaped like params (named by `check_params`); train is
        not a boolean scalar (TypeError).
    """
    model.check_input(x)
    model.check_params(params, x.dtype)
    model.check_params(v, x.dtype)

    def in_mode(mode: bool) -> Params:
        def grad(p):
            return manual_grad(model, p, x, y, state=state, train=mode)[1]

        return jax.jvp(grad, (params,), (v,))[1]

    return by_mode("hvp", train, in_mode)


def _loss_hessian_factor(model: Network, z: Array) -> Array:
    """S (N, K, K) with H_i = S_i S_i^T the Hessian of l_i in its logits z_i (N, K):
    softmax: diag(sqrt p) - p sqrt(p)^T (since sum p = 1); binary (K = 1): sqrt(p (1 - p));
    regression (E = 1/2 ||t - z||^2): the identity."""
    kind = model.head.kind
    if kind == "softmax":
        p = jax.nn.softmax(z, axis=-1)
        r = jnp.sqrt(p)
        return jax.vmap(jnp.diag)(r) - p[:, :, None] * r[:, None, :]
    if kind == "binary":
        p = jax.nn.sigmoid(z)
        return jnp.sqrt(p * (1 - p))[:, :, None]
    n, k = z.shape
    return jnp.broadcast_to(jnp.eye(k, dtype=z.dtype), (n, k, k))


def ggn_diagonal(model: Network, params: Params, x: Array, y: Array, *,
                 state: State | None = None) -> Params:
    """The diagonal of the GGN of the mean loss, `(1/N) sum_i sum_k (J_i^T s_ik)^2` with s_ik
    the columns of `H_i = S_i S_i^T` (exact; BackPACK's DiagGGN): for each logit k, one manual
    backward pass of each example with the loss delta s_ik, under vmap. Evaluation mode
    (examples kept apart).

    Args:
      model: a Network with a binary, softmax (logits (N, K)) or regression head (any output
        shape, flattened to its K numbers);
      params, x, y, state: as `manual_grad`.

    Returns:
      diag(G) with params' structure.

    Raises:
      ValueError: a per-position head (its H_i has P K columns; not supported).
    """
    _check("ggn_diagonal", model, x, y, train=False)
    if model.head.kind not in ("binary", "softmax", "regression"):
        raise ValueError(f"ggn_diagonal: {model.name} has a {model.head.kind} head; the exact "
                         f"diagonal is built for a binary, softmax or regression head (a "
                         f"per-position head's H_i has P K columns)")
    n = x.shape[0]

    def one(xi, yi):  # example i alone: its logits' factor S_i, one backward per column
        trace = model.forward(params, xi[None], state=state)
        z = trace.activations[-1]  # (1, K), or (1, *out) for regression: K = its size
        s = _loss_hessian_factor(model, z.reshape(1, -1))[0]  # (K, K)

        def column(s_k):
            return model.backprop(params, trace, yi[None], delta=s_k.reshape(z.shape))[0]

        g = jax.vmap(column, in_axes=1)(s)  # every leaf (K, ...)
        return jax.tree.map(lambda v: jnp.sum(v * v, axis=0), g)

    per_example = jax.vmap(one)(x, y)
    return jax.tree.map(lambda v: jnp.sum(v, axis=0) / n, per_example)
