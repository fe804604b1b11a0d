"""Per-example squared gradient norms of one layer's parameters, from the rows of its output
gradient and its input, without materialising per-example gradients where the layer allows it.

With the batch-mean loss `L = (1/N) sum_i l_i` and examples that do not mix (no BatchNorm in
training), the gradient of l_i in a layer's weight is a sum over the layer's positions t of
outer products of the input it read and the gradient it got:

    dense           dW_i = a_i^T g_i                  ||dW_i||^2 = ||a_i||^2 ||g_i||^2
    convolution     dW_i = sum_t A_it^T g_it          (A_it: the unfolded patch at output t)
                    ghost:       ||dW_i||^2 = sum_{t, t'} (A_it . A_it') (g_it . g_it')
                    instantiate: dW_i itself, then its squared sum
    bias            db_i = sum_t g_it                 ||db_i||^2 = ||sum_t g_it||^2
    norm scales     dgamma_i = sum_t g_it x_hat_it, dbeta_i = sum_t g_it (per channel)

(the ghost norm: Goodfellow 2015 for dense layers, Li et al. 2022 and Bu et al. 2022 for
convolutions). For a convolution with T output positions, patch length D (per group) and C
output channels (per group), per example and group:

    ghost        2 T^2 (D + C) + 2 T D^2 FLOPs, T^2 + T D elements (the Gram matrices, and
                 the unfolded patches: XLA extracts them as a convolution with a one-hot kernel)
    instantiate  2 T D C FLOPs,                D C elements (example i's dW)
and `choose` takes the one needing less memory, then fewer FLOPs (mixed ghost clipping, Bu et
al. 2022, whose rule, ghost where 2 T^2 < D C, leaves out the patches). The instantiated dW_i
is the layer's own dW rule on example i alone, under vmap. A transposed convolution is the dX
of the convolution it transposes, so its dW pairs the patches of its output gradient (that
convolution's input grid) with its input (that convolution's output).

Every function takes per-example rows: g (N, ...) is dl_i/d(output) for example i (N times the
rows of dL/d(output)).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _geometry
from jaxcnn._precision import precision_of
from jaxcnn.forward.conv import channels_last

Array = jax.Array
METHODS = ("auto", "ghost", "instantiate")


def check_method(fn: str, method: Any) -> str:
    """`method` itself, or a ValueError naming `fn` and the choices."""
    if method not in METHODS:
        raise ValueError(f"{fn}: method must be one of {', '.join(METHODS)}; got {method!r}")
    return method


def _rows(v: Array) -> Array:
    return v.reshape(v.shape[0], -1)


def dense(g: Array, a: Array, use_bias: bool) -> Array:
    """(N,) = ||a_i||^2 ||g_i||^2 (+ ||g_i||^2 for the bias); a (N, D_in), g (N, D_out)."""
    g2 = jnp.sum(_rows(g) ** 2, axis=1)
    sq = jnp.sum(_rows(a) ** 2, axis=1) * g2
    return sq + g2 if use_bias else sq


def bias(g: Array) -> Array:
    """(N,) = ||sum_t g_it||^2 over the positions of g (N, *S, C)."""
    return jnp.sum(jnp.sum(g.reshape(g.shape[0], -1, g.shape[-1]), axis=1) ** 2, axis=1)


def affine(g: Array, x_hat: Array) -> Array:
    """(N,) = ||dgamma_i||^2 + ||dbeta_i||^2, dgamma_i = sum_t g_it x_hat_it, dbeta_i =
    sum_t g_it per channel; g, x_hat (N, *S, C). Exact: C numbers per example."""
    c = g.shape[-1]
    dgamma = jnp.sum((g * x_hat).reshape(g.shape[0], -1, c), axis=1)
    return jnp.sum(dgamma ** 2, axis=1) + bias(g)


def costs(t: int, d: int, c: int, groups: int) -> dict[str, tuple[int, int]]:
    """{"ghost": (FLOPs, memory elements), "instantiate": (...)} per example of one
    convolution with t output positions, patch length d and c output channels per group."""
    return {"ghost": ((2 * t * t * (d + c) + 2 * t * d * d) * groups, (t * t + t * d) * groups),
            "instantiate": (2 * t * d * c * groups, d * c * groups)}


def choose(t: int, d: int, c: int, groups: int) -> str:
    """The cheaper method: less memory, then fewer FLOPs (ties: ghost)."""
    cost = costs(t, d, c, groups)
    return min(("ghost", "instantiate"), key=lambda m: (cost[m][1], cost[m][0]))


def _patches(src: Array, win: _geometry.Window, precision: Any) -> Array:
    """(N, T, C_src * K): the unfolded windows of src (N, *S, C_src) at every output position
    of `win`, features ordered (channel, kernel offset) as `lax.conv_general_dilated_patches`
    gives them."""
    p = lax.conv_general_dilated_patches(
        src, win.size, win.stride, win.pads, rhs_dilation=win.dilation,
        dimension_numbers=channels_last(len(win.size)), precision=precision)
    return p.reshape(p.shape[0], -1, p.shape[-1])


def conv_ghost(src: Array, g: Array, win: _geometry.Window, groups: int) -> Array:
    """(N,) = ||dW_i||^2 of a convolution read as `y = conv(src, W)` on window `win`, by the
    ghost sum: per group, `<A_i A_i^T, g_i g_i^T>` over position pairs. src (N, *S, C_src) the
    input it unfolds, g (N, *O, C_g) the rows of its output gradient.

    (The instantiated alternative is the layer's own dW rule on each example alone, under
    vmap: `jaxcnn.nn.conv_layers`.)
    """
    precision = precision_of(None)
    a = _patches(src, win, precision)  # (N, T, C_src K)
    n, t, _ = a.shape
    a = a.reshape(n, t, groups, -1)  # channel-major features: group g's channels contiguous
    g = g.reshape(n, t, groups, -1)
    aa = jnp.einsum("ntgd,nsgd->ngts", a, a, precision=precision)
    gg = jnp.einsum("ntgc,nsgc->ngts", g, g, precision=precision)
    return jnp.sum(aa * gg, axis=(1, 2, 3))
