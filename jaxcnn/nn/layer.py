"""The layer protocol: `Layer` (init, apply, backward, spec, with_impl, norms), described in
`jaxcnn.nn.layers`, and the helpers every layer family builds on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Shape = tuple[int, ...]
Initializer = Callable[[Array, Shape, Any], Array]
HE_NORMAL = jax.nn.initializers.he_normal()  # std sqrt(2 / fan_in), truncated: for ReLU nets


class Layer(NamedTuple):
    name: str
    init: Callable[..., tuple[Shape, dict, dict]]
    apply: Callable[..., tuple[Array, dict, Any]]
    backward: Callable[..., tuple[Array, dict]]
    spec: dict = {}  # noqa: RUF012  the constructor and its options, e.g. {"kind": "MaxPool", ...}
    with_impl: Callable[[str], Layer] | None = None  # the layer rebuilt with another impl
    norms: Callable[..., tuple[Array, Array, Callable]] | None = None  # per-example norms
    # decisions(params, x, residual) -> [arrays]: the discrete choices the layer made on input
    # x (ReLU's signs, max pooling's winners); where two inputs give equal ones the layer is one
    # smooth piece between them. None: the layer has none (it is smooth)
    decisions: Callable[..., list[Array]] | None = None
    # in training mode, one example's output depends on the other examples of the batch
    # (BatchNorm's batch statistics): no example then has a gradient of its own, and the
    # per-example tools refuse the layer. A capability, not read off the layer's kind
    mixes_examples: bool = False


def zero_norms(backward_: Callable) -> Callable[..., tuple[Array, Array, Callable]]:
    """`norms` of a layer without parameters: its dx, zeros (N,) and a regrad giving {}."""

    def norms(g, params, x, residual, method):
        return (backward_(g, params, x, residual)[0], jnp.zeros((x.shape[0],), g.dtype),
                lambda w: {})

    return norms


def reweighted(backward_: Callable, g: Array, params: dict, x: Array,
               residual: Any) -> Callable[[Array], dict]:
    """regrad(w) = the param grads of `backward_` for g with row i scaled by w_i (N,): the
    book-keeping of clipped gradients, sum_i w_i (example i's grads) from the stored g and x
    (the rule is linear in g; its dx, unused, is dead code under jit)."""

    def regrad(w):
        return backward_(g * w.reshape((-1,) + (1,) * (g.ndim - 1)), params, x, residual)[1]

    return regrad


def _features(kind: str, name: str, features: Any) -> None:
    if isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise ValueError(f"{kind} {name!r}: features must be an int >= 1; got {features!r}")


def _out_shape(fn: Callable, in_shape: Shape, dtype: Any, *args: Any) -> Shape:
    """One example's output shape, found (and the layer's options checked) without computing."""
    x = jax.ShapeDtypeStruct((1, *in_shape), dtype)
    return tuple(jax.eval_shape(fn, x, *args).shape[1:])


def _no_params(kind: str, name: str, fwd: Callable, bwd: Callable, **opts: Any) -> Layer:
    """A layer without parameters: y = fwd(x, **opts), dx = bwd(dy, x, **opts)."""

    def init(key, in_shape, dtype):
        return _out_shape(lambda x: fwd(x, **opts), in_shape, dtype), {}, {}

    def apply(params, state, x, *, train=False, key=None, axis_name=None):
        return fwd(x, **opts), state, None

    def backward_(dy, params, x, residual):
        return bwd(dy, x, **opts), {}

    return Layer(name, init, apply, backward_, {"kind": kind, **opts},
                 norms=zero_norms(backward_))
