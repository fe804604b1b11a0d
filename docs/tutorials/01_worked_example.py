# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. The worked example, every gradient by hand
#
# One small convolutional network, taken through backpropagation equation by equation:
#
# ```
# X (6x6) -> Z1 = conv(X, W1) + B1 (4x4) -> A1 = ReLU(Z1) -> P1 = MaxPool(A1) (2x2, stride 2)
#   -> F = Flatten(P1) (4) -> Z2 = F W2 + B2 -> A2 = sigmoid(Z2) -> L = BCE(Y, A2)
# ```
#
# Its trainable parameters are the 3x3 filter W1 and its bias B1 (10 numbers) and the dense
# weights W2 (4x1) and bias B2 (5 numbers): 15 in all. We compute every derivative from its
# formula, put `jax.grad`'s value beside it, and check that they agree to float64 rounding: a
# relative difference of at most `1e-9`.

# %%
# ruff: noqa: N816
# (the worked example's names, dW2, dZ1, ..., are kept as it writes them)
import jax
import jax.numpy as jnp
import numpy as np

import jaxcnn
from jaxcnn import backward, forward, models
from jaxcnn.tools.worked_example import seed_autodiff, seed_backward, seed_forward

jax.config.update("jax_enable_x64", True)  # float64: manual and autodiff agree to ~1e-16
TOL = 1e-9


def rel(a, b):
    """max |a - b| / max |b|: the relative difference of a from the reference b."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# %% [markdown]
# ## The network and its 15 parameters
#
# `models.seed_cnn()` is this network as a `jaxcnn` model. Its parameters are a dict keyed by
# layer name; the convolution kernel is stored HWIO, `(kh, kw, C_in, C_out) = (3, 3, 1, 1)`.

# %%
model = models.seed_cnn()
params = model.init(jax.random.key(0), jnp.float64)
W1, B1 = params["conv"]["w"], params["conv"]["b"]
W2, B2 = params["dense"]["w"], params["dense"]["b"]
print(model)
print("W1 =\n", np.round(W1[:, :, 0, 0], 4))
print("W2 =", np.round(W2[:, 0], 4), " B1 =", B1, " B2 =", B2)
assert model.num_params(params) == 15 == W1.size + B1.size + W2.size + B2.size

# %% [markdown]
# One image: a diagonal stroke plus a little noise, and its label `Y = 1`. Images are stored
# channels-last, `(N, H, W, C)`, so one 6x6 grey image has shape `(1, 6, 6, 1)`.

# %%
noise = 0.1 * jax.random.normal(jax.random.key(1), (6, 6))
image = jnp.eye(6) + jnp.eye(6, k=1) + noise
X = image.reshape(1, 6, 6, 1)
Y = jnp.array([1.0])
print(np.round(image, 2))

# %% [markdown]
# ## The forward pass
#
# The convolution of deep learning is a cross-correlation: the filter slides over the image
# and at each position `(i, j)` multiplies and sums,
# `Z1[i, j] = sum_{m, p} X[i + m, j + p] W1[m, p] + B1`. We write that sum out and check it
# against `forward.conv2d`; the rest of the forward pass is one line per equation.

# %%
x2, w2d = X[0, :, :, 0], W1[:, :, 0, 0]
Z1_sum = jnp.array([[jnp.sum(x2[i:i + 3, j:j + 3] * w2d) for j in range(4)]
                    for i in range(4)]) + B1[0]

Z1 = forward.conv2d(X, W1, B1)            # (1, 4, 4, 1)
A1 = forward.relu(Z1)                     # max(Z1, 0)
P1 = forward.max_pool(A1, window=2)       # (1, 2, 2, 1): the maximum of each 2x2 block
F = forward.flatten(P1)                   # (1, 4)
Z2 = F @ W2 + B2                          # (1, 1)
A2 = forward.sigmoid(Z2)                  # the prediction y_hat
L = -jnp.mean(Y * jnp.log(A2[:, 0]) + (1 - Y) * jnp.log(1 - A2[:, 0]))  # binary cross-entropy

assert rel(Z1[0, :, :, 0], Z1_sum) <= TOL
assert rel(L, model.loss(params, X, Y)) <= TOL   # the model computes the same loss
print("Z1 =\n", np.round(Z1[0, :, :, 0], 4))
print("P1 =\n", np.round(P1[0, :, :, 0], 4))
print(f"Z2 = {float(Z2[0, 0]):.6f}, A2 = {float(A2[0, 0]):.6f}, L = {float(L):.6f}")

# %% [markdown]
# ## The backward pass, one formula at a time
#
# Backpropagation applies the chain rule from the loss back to each parameter:
# `dL/dW1 = dL/dA2 * dA2/dZ2 * dZ2/dF * dF/dP1 * dP1/dA1 * dA1/dZ1 * dZ1/dW1`. We write `dT` for
# `dL/dT`, the gradient of the loss with respect to the tensor `T`.
#
# **The output.** Binary cross-entropy `L = -[Y log A2 + (1 - Y) log(1 - A2)]` gives
# `dL/dA2 = (A2 - Y) / (A2 (1 - A2))`; the sigmoid's derivative is `dA2/dZ2 = A2 (1 - A2)`. Their
# product cancels to the prediction error: **`dZ2 = A2 - Y`**.
#
# **The dense layer.** `Z2 = F W2 + B2` gives **`dW2 = F^T dZ2`** (shape 4x1, like W2),
# **`dB2 = dZ2`** and **`dF = dZ2 W2^T`**, the gradient that flows on to the layers before.

# %%
dL_dA2 = (A2 - Y) / (A2 * (1 - A2))
dA2_dZ2 = A2 * (1 - A2)
dZ2 = A2 - Y[:, None]                     # (1, 1)
assert rel(dL_dA2 * dA2_dZ2, dZ2) <= TOL  # the product really is A2 - Y

dW2 = F.T @ dZ2                           # (4, 1)
dB2 = jnp.sum(dZ2, axis=0)                # (1,)
dF = dZ2 @ W2.T                           # (1, 4)
print("dZ2 =", float(dZ2[0, 0]), "\ndW2 =", np.round(dW2[:, 0], 6), "\ndF  =", np.round(dF, 6))

# %% [markdown]
# **Flatten** has no parameters; its backward undoes the reshape: `dP1 = reshape(dF)`.
#
# **Max pooling** passed on only the maximum of each window, so the gradient flows back only to
# the position that won: each `dP1` value goes to its window's maximum in A1, every other
# position gets zero. We route it with a loop over the four windows.
#
# **ReLU** passes the gradient where its input was positive: `dZ1 = dA1 * (Z1 > 0)`.

# %%
dP1 = dF.reshape(P1.shape)                # (1, 2, 2, 1)

a1 = np.asarray(A1[0, :, :, 0])
dA1_loop = np.zeros((4, 4))
for i in range(2):
    for j in range(2):
        block = a1[2 * i:2 * i + 2, 2 * j:2 * j + 2]
        m, p = np.unravel_index(np.argmax(block), (2, 2))   # the first maximum, row-major
        dA1_loop[2 * i + m, 2 * j + p] = dP1[0, i, j, 0]
dA1 = jnp.asarray(dA1_loop).reshape(A1.shape)
assert rel(dA1, backward.max_pool(dP1, A1, window=2)) <= TOL  # the library's rule agrees

dZ1 = dA1 * (Z1 > 0)                      # the ReLU mask
print("dA1 =\n", np.round(dA1[0, :, :, 0], 6))
print("dZ1 =\n", np.round(dZ1[0, :, :, 0], 6))

# %% [markdown]
# **The convolution.** B1 is added to every one of the 16 elements of Z1, so
# **`dB1 = sum(dZ1)`**. Each weight `W1[m, p]` multiplied `X[i + m, j + p]` into `Z1[i, j]` for
# every `(i, j)`, so `dW1[m, p] = sum_{i, j} X[i + m, j + p] dZ1[i, j]`: the same sliding sum as
# the forward pass, with the 4x4 map dZ1 in the place of the filter.
# **`dW1 = conv(X, dZ1)`**: we compute it with `forward.conv2d` itself.

# %%
dB1 = jnp.sum(dZ1, axis=(0, 1, 2))        # (1,)
dW1 = forward.conv2d(X, dZ1.reshape(4, 4, 1, 1)).reshape(3, 3, 1, 1)  # conv(X, dZ1): (3, 3)
dW1_sum = jnp.array([[jnp.sum(x2[m:m + 4, p:p + 4] * dZ1[0, :, :, 0]) for p in range(3)]
                     for m in range(3)])
assert rel(dW1[:, :, 0, 0], dW1_sum) <= TOL
print("dB1 =", np.round(dB1, 6), "\ndW1 =\n", np.round(dW1[:, :, 0, 0], 6))

# %% [markdown]
# ## Beside `jax.grad`
#
# `jaxcnn.tools.worked_example.seed_autodiff` asks `jax.grad` for the same eleven derivatives:
# for an intermediate `T`, the gradient of the rest of the network (`T -> L`) at T's value; for
# a parameter, the gradient of the whole loss. `seed_backward` is the library's own
# equation-by-equation version of the cells above. All three agree. (We compile the two with
# `jax.jit`: run op by op, JAX compiles each of their many small operations on its own.)

# %%
ours = {"dL/dA2": dL_dA2, "dA2/dZ2": dA2_dZ2, "dZ2": dZ2, "dW2": dW2, "dB2": dB2, "dF": dF,
        "dP1": dP1, "dA1": dA1, "dZ1": dZ1, "dB1": dB1, "dW1": dW1}
fwd = seed_forward(params, X, Y)
auto = jax.jit(seed_autodiff)(params, fwd, Y)
lib = jax.jit(seed_backward)(params, fwd, Y)
print(f"{'':8} {'shape':>13} {'rel vs jax.grad':>16}")
for name, value in ours.items():
    r = rel(value, auto[name])
    print(f"{name:8} {value.shape!s:>13} {r:16.1e}")
    assert value.shape == auto[name].shape and r <= TOL, name
    assert rel(lib[name], auto[name]) <= TOL, name

# %% [markdown]
# ## The same from the library: `jaxcnn.manual_grad`
#
# `jaxcnn.manual_grad(model, params, x, y)` runs the network's hand-written backward pass, layer
# by layer, and returns `(loss, grads)` with the structure of the parameters. It equals our four
# parameter gradients, and `jax.grad` of the model's loss.

# %%
loss, grads = jaxcnn.manual_grad(model, params, X, Y)
reference = jax.grad(model.loss)(params, X, Y)
mine = {"conv": {"w": dW1, "b": dB1}, "dense": {"w": dW2, "b": dB2}}
for layer in ("conv", "dense"):
    for leaf in ("w", "b"):
        assert rel(grads[layer][leaf], mine[layer][leaf]) <= TOL
        assert rel(grads[layer][leaf], reference[layer][leaf]) <= TOL
assert rel(loss, L) <= TOL
print("manual_grad == our formulas == jax.grad, to", TOL)

# %% [markdown]
# ## A batch of images
#
# With `N` images the loss is the mean over the batch, so every delta carries a factor `1/N`
# that the single-image derivation does not show: `dZ2 = (A2 - Y) / N`, and `dW2 = F^T dZ2` now
# sums over the images, `F` being `(N, 4)`. Everything else is unchanged.

# %%
xb = jax.random.normal(jax.random.key(2), (8, 6, 6, 1), jnp.float64)
yb = jnp.array([0, 1, 1, 0, 1, 0, 0, 1], jnp.float64)
fwd_b = seed_forward(params, xb, yb)
Fb, A2b = fwd_b["F"], fwd_b["A2"]            # (8, 4), (8, 1)
dZ2b = (A2b - yb[:, None]) / len(yb)          # (8, 1)
_, gb = jax.jit(jaxcnn.manual_grad, static_argnums=0)(model, params, xb, yb)
_, ab = jax.jit(jaxcnn.autodiff_grad, static_argnums=0)(model, params, xb, yb)
assert rel(Fb.T @ dZ2b, gb["dense"]["w"]) <= TOL and rel(dZ2b.sum(0), gb["dense"]["b"]) <= TOL
assert all(rel(a, b) <= TOL for a, b in zip(jax.tree.leaves(gb), jax.tree.leaves(ab)))
print("batch of 8: dW2 = F^T (A2 - Y) / N; manual_grad == autodiff_grad")
