"""The worked example, written equation by equation: a 15-parameter CNN on one 6x6 image.

    X (N, 6, 6, 1) -> Z1 = conv(X, W1) + B1 -> A1 = ReLU(Z1) -> P1 = MaxPool(A1) -> F = Flatten(P1)
      -> Z2 = F W2 + B2 -> A2 = sigmoid(Z2) -> L = BCE(Y, A2), the mean over the batch.

`seed_forward` and `seed_backward` keep every intermediate under the worked example's names;
`seed_autodiff` gets the same derivatives from `jax.grad`, one intermediate at a time, as the
reference. With a batch of N images the loss is a mean, so every delta carries a factor 1 / N
that the worked example (one image) does not show.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import backward, forward
from jaxcnn._precision import precision_of
from jaxcnn.nn.network import Params

Array = jax.Array


def seed_forward(params: Params, X: Array, Y: Array) -> dict[str, Array]:
    """Every forward tensor of the seed net. X: (N, 6, 6, 1); Y: (N,) 0./1. labels."""
    W1, B1 = params["conv"]["w"], params["conv"]["b"]
    W2, B2 = params["dense"]["w"], params["dense"]["b"]
    Z1 = forward.conv2d(X, W1, B1)                      # (N, 4, 4, 1)
    A1 = forward.relu(Z1)
    P1 = forward.max_pool(A1, window=2, stride=2)       # (N, 2, 2, 1)
    F = forward.flatten(P1)                             # (N, 4)
    Z2 = forward.dense(F, W2, B2)                       # (N, 1)
    A2 = forward.sigmoid(Z2)                            # the prediction y_hat
    L = forward.sigmoid_binary_cross_entropy(Z2, Y)     # BCE(Y, A2), computed stably from Z2
    return dict(X=X, Z1=Z1, A1=A1, P1=P1, F=F, Z2=Z2, A2=A2, L=L)


def seed_backward(params: Params, fwd: dict[str, Array], Y: Array) -> dict[str, Array]:
    """Every backward tensor, in the order the worked example derives them, each by its own
    formula."""
    X, Z1, A1, F, A2 = fwd["X"], fwd["Z1"], fwd["A1"], fwd["F"], fwd["A2"]
    W2 = params["dense"]["w"]
    N = X.shape[0]
    Y = Y.reshape(A2.shape)
    g: dict[str, Array] = {}
    g["dL/dA2"] = (A2 - Y) / (A2 * (1 - A2)) / N        # d/dA2 of -[Y log A2 + (1-Y) log(1-A2)]
    g["dA2/dZ2"] = A2 * (1 - A2)                        # the sigmoid's derivative
    g["dZ2"] = (A2 - Y) / N                             # their product simplifies to A2 - Y
    g["dW2"] = F.T @ g["dZ2"]                           # (4, 1): F^T dZ2
    g["dB2"] = jnp.sum(g["dZ2"], axis=0)                # (1,)
    g["dF"] = g["dZ2"] @ W2.T                           # (N, 4): dZ2 W2^T
    g["dP1"] = g["dF"].reshape(fwd["P1"].shape)         # flatten undone: a reshape
    g["dA1"] = backward.max_pool(g["dP1"], A1, window=2, stride=2)  # routed to each maximum
    g["dZ1"] = g["dA1"] * (Z1 > 0)                      # the ReLU mask
    g["dB1"] = jnp.sum(g["dZ1"], axis=(0, 1, 2))        # (1,): the sum of dZ1
    # dW1 = conv(X, dZ1): dW1[m, p] = sum_{n, i, j} X[n, i + m, j + p] dZ1[n, i, j], a
    # cross-correlation of the input with the deltas (batch and channel roles swapped)
    g["dW1"] = lax.conv_general_dilated(X, g["dZ1"], (1, 1), "VALID",
                                        dimension_numbers=("CHWN", "IHWO", "HWNC"),
                                        precision=precision_of(None))
    return g


def seed_grads(g: dict[str, Array]) -> Params:
    """The four parameter gradients of `seed_backward`, in the params' structure."""
    return {"conv": {"w": g["dW1"], "b": g["dB1"]}, "dense": {"w": g["dW2"], "b": g["dB2"]}}


def seed_autodiff(params: Params, fwd: dict[str, Array], Y: Array) -> dict[str, Array]:
    """The same derivatives from `jax.grad`: for each intermediate T, the gradient of the rest of
    the network (T -> L) at T's value; for each parameter, `jax.grad` of the whole loss."""
    W2, B2 = params["dense"]["w"], params["dense"]["b"]

    def from_A2(A2):
        return forward.binary_cross_entropy(A2, Y)

    def from_Z2(Z2):
        return forward.sigmoid_binary_cross_entropy(Z2, Y)

    def from_F(F):
        return from_Z2(forward.dense(F, W2, B2))

    def from_P1(P1):
        return from_F(forward.flatten(P1))

    def from_A1(A1):
        return from_P1(forward.max_pool(A1, window=2, stride=2))

    def from_Z1(Z1):
        return from_A1(forward.relu(Z1))

    def loss(p):
        return seed_forward(p, fwd["X"], Y)["L"]

    dparams = jax.grad(loss)(params)
    return {
        "dL/dA2": jax.grad(from_A2)(fwd["A2"]),
        "dA2/dZ2": jax.vmap(jax.grad(lambda z: jax.nn.sigmoid(z)[0]))(fwd["Z2"]),
        "dZ2": jax.grad(from_Z2)(fwd["Z2"]),
        "dW2": dparams["dense"]["w"],
        "dB2": dparams["dense"]["b"],
        "dF": jax.grad(from_F)(fwd["F"]),
        "dP1": jax.grad(from_P1)(fwd["P1"]),
        "dA1": jax.grad(from_A1)(fwd["A1"]),
        "dZ1": jax.grad(from_Z1)(fwd["Z1"]),
        "dB1": dparams["conv"]["b"],
        "dW1": dparams["conv"]["w"],
    }
