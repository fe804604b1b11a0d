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
# # 3. Training, and keeping gradients in range
#
# Gradients are computed to be used: gradient descent moves every parameter a small step
# against its gradient. This tutorial trains the worked example's network with that update
# written by hand, then looks at the two ways gradients go wrong in deep networks (they vanish,
# or they explode), at clipping, the remedy for the second, and at the backward rule of batch
# normalisation.

# %%
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcnn
from jaxcnn import backward, forward, models
from jaxcnn.nn.heads import SOFTMAX
from jaxcnn.nn.layers import Dense, Flatten, ReLU, Sigmoid
from jaxcnn.nn.network import Network
from jaxcnn.training.data import synthetic_bars
from jaxcnn.training.optim import make_optimizer
from jaxcnn.training.steps import layer_norms

jax.config.update("jax_enable_x64", True)
TOL = 1e-9
# Compiled once per model and shape (the model, argument 0, is static: Python code, not arrays):
# run op by op, JAX would compile each small operation on its own.
manual_grad = jax.jit(jaxcnn.manual_grad, static_argnums=0)
autodiff_grad = jax.jit(jaxcnn.autodiff_grad, static_argnums=0)


def rel(a, b):
    """max |a - b| / max |b|: the relative difference of a from the reference b."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def tree_rel(a, b):
    """The largest `rel` over the leaves of two pytrees of one structure."""
    return max(rel(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# %% [markdown]
# ## Stochastic gradient descent, by hand
#
# The update is `F_new = F_old - lr * dL/dF` for every parameter `F`, with `lr` the learning
# rate. The data: 6x6 images of one bar plus noise, label 1 for a vertical bar and 0 for a
# horizontal one (`jaxcnn.training.data.synthetic_bars`). We take mini-batches of 32 images,
# compute the gradient with the hand-written backward pass (`jaxcnn.manual_grad`, compiled
# above) and apply the update ourselves. One 3x3 filter is a small model: after ten
# passes over the data it classifies about 82% of the test images, where chance is 50%.

# %%
data = synthetic_bars(n_train=256, n_test=256, seed=0, dtype=np.float64)
model = models.seed_cnn()
params = model.init(jax.random.key(0), jnp.float64)


def held_out_loss(p):
    return float(model.loss(p, data.x_test, data.y_test))


def held_out_accuracy(p):
    return float(np.mean((model.apply(p, data.x_test)[:, 0] > 0.5) == data.y_test))


lr, batch = 1.0, 32
before = held_out_loss(params), held_out_accuracy(params)
for _epoch in range(10):
    for i in range(0, len(data.x_train), batch):
        loss, g = manual_grad(model, params, data.x_train[i:i + batch],
                              data.y_train[i:i + batch])
        params = jax.tree.map(lambda f, df: f - lr * df, params, g)   # F_new = F_old - lr dL/dF
after = held_out_loss(params), held_out_accuracy(params)
print(f"test loss {before[0]:.3f} -> {after[0]:.3f}, accuracy {before[1]:.2f} -> {after[1]:.2f}")
assert after[0] < 0.65 * before[0] and after[1] > 0.75   # chance is 0.5

# %% [markdown]
# `optax.sgd(lr)` is the same update: one step of it equals our line.

# %%
xb, yb = data.x_train[:batch], data.y_train[:batch]
_, g = manual_grad(model, params, xb, yb)
sgd = optax.sgd(lr)
updates, _ = sgd.update(g, sgd.init(params), params)
assert tree_rel(optax.apply_updates(params, updates),
                jax.tree.map(lambda f, df: f - lr * df, params, g)) <= TOL

# %% [markdown]
# ## Vanishing gradients
#
# By the chain rule, the gradient reaching a layer is the product of the derivatives of every
# layer after it. The sigmoid's derivative `s (1 - s)` is at most `1/4`, so in a deep stack of
# sigmoid layers the gradient shrinks by a roughly constant factor per layer: the first layers
# barely learn. ReLU's derivative is 1 wherever the unit is active, and the same stack of ReLU
# layers keeps its gradients in range.
#
# Below: ten dense layers of 16 units (He-initialised) with sigmoid, then with ReLU, and the L2
# norm of each layer's gradient, weights and bias together, from the input side to the output
# (`jaxcnn.training.steps.layer_norms`, the per-layer norms the train step reports). The
# gradients are exact in both cases (we check them against `jax.grad`): vanishing is a property
# of the network, not an error of the rules.

# %%
def deep_stack(activation, depth=10, w_init=None):
    w_init = w_init or jax.nn.initializers.he_normal()
    layers = [Flatten()]
    for k in range(depth):
        layers += [Dense(16, w_init=w_init, name=f"dense{k}"), activation(name=f"act{k}")]
    layers.append(Dense(2, w_init=w_init, name="out"))
    return Network(f"deep_{activation.__name__.lower()}", layers, (4, 4, 1), SOFTMAX)


x = jax.random.normal(jax.random.key(1), (32, 4, 4, 1), jnp.float64)
y = jax.random.randint(jax.random.key(2), (32,), 0, 2)
norms = {}
for activation in (Sigmoid, ReLU):
    net = deep_stack(activation)
    p = net.init(jax.random.key(0), jnp.float64)
    _, g = manual_grad(net, p, x, y)
    _, g_auto = autodiff_grad(net, p, x, y)
    assert tree_rel(g, g_auto) <= TOL
    norms[activation.__name__] = [float(v) for v in layer_norms(g).values()]  # input -> output
    print(f"{activation.__name__:8}", " ".join(f"{v:.0e}" for v in norms[activation.__name__]))

sig, relu = norms["Sigmoid"], norms["ReLU"]
assert all(a < b for a, b in itertools.pairwise(sig))  # shrinking, layer after layer, to the input
assert sig[0] / sig[-1] < 1e-4                        # the first layer gets ~1e-5 of the last's
assert relu[0] / relu[-1] > 0.1                       # ReLU: the same order of magnitude

# %% [markdown]
# ## Exploding gradients, and clipping
#
# The other way round: with weights too large (here drawn with standard deviation 1 instead of
# He's `sqrt(2/16) = 0.35`), each layer multiplies the gradient by more than 1, and the global
# gradient norm `||g|| = sqrt(sum of every squared gradient entry)` reaches 1e5. One step of SGD
# with such a gradient throws the parameters far away.
#
# **Clipping by global norm** rescales the whole gradient when its norm exceeds `C`:
# `g <- g * min(1, C / ||g||)`. The direction is kept, the length becomes at most `C`.
# `optax.clip_by_global_norm(C)` does this, and `make_optimizer(..., clip=C)` puts it in front of
# the optimizer.

# %%
net = deep_stack(ReLU, w_init=jax.nn.initializers.normal(1.0))
p = net.init(jax.random.key(0), jnp.float64)
loss, g = manual_grad(net, p, x, y)
norm = float(optax.tree_utils.tree_norm(g))
print(f"loss {float(loss):.3g}, global gradient norm {norm:.3g}")
assert norm > 1e4

C = 1.0
clipped_mine = jax.tree.map(lambda v: v * min(1.0, C / norm), g)
clip = optax.clip_by_global_norm(C)
clipped_optax, _ = clip.update(g, clip.init(p))
assert tree_rel(clipped_mine, clipped_optax) <= TOL
assert abs(float(optax.tree_utils.tree_norm(clipped_optax)) - C) <= 1e-12  # length C exactly
flat_g = np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)])
flat_c = np.concatenate([np.ravel(v) for v in jax.tree.leaves(clipped_optax)])
assert abs(flat_g @ flat_c / (np.linalg.norm(flat_g) * np.linalg.norm(flat_c)) - 1) <= 1e-12

opt = make_optimizer("sgd", 0.01, clip=C)                     # clip, then F - lr * g
updates, _ = opt.update(g, opt.init(p), p)
assert tree_rel(updates, jax.tree.map(lambda v: -0.01 * v, clipped_mine)) <= TOL
print(f"clipped to norm {float(optax.tree_utils.tree_norm(clipped_optax)):.12f}")

# %% [markdown]
# One SGD step of learning rate 0.01 from these parameters, without and with clipping: the raw
# gradient throws the loss up by many orders of magnitude, the clipped one lowers it.

# %%
for c in (None, C):
    opt = make_optimizer("sgd", 0.01, clip=c)
    updates, _ = opt.update(g, opt.init(p), p)
    new_loss = float(jax.jit(net.loss)(optax.apply_updates(p, updates), x, y))
    print(f"clip={c}: loss {float(loss):.3g} -> {new_loss:.3g}")
    assert (new_loss > 1e6 * loss) if c is None else (new_loss < loss)

# %% [markdown]
# A gradient whose norm is already below `C` passes unchanged:

# %%
small = jax.tree.map(lambda v: v * (0.5 / norm), g)            # norm 0.5 < C
assert tree_rel(clip.update(small, clip.init(p))[0], small) <= TOL

# %% [markdown]
# ## Batch normalisation
#
# Batch normalisation keeps each channel's activations centred and scaled while training:
# over the `M` values of a channel in the batch, `x_hat = (x - mean) / sigma` with
# `sigma = sqrt(var + eps)`, then `y = gamma x_hat + beta`. Its backward pass must account for
# the mean and variance depending on every `x` of the batch. With `dx_hat = gamma dy`:
#
# ```
# dx     = (1 / sigma) (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))
# dgamma = sum(dy * x_hat)        dbeta = sum(dy)
# ```
#
# (means and sums over the batch and spatial axes, per channel). In evaluation the running mean
# and variance are constants, and the rule collapses to `dx = gamma dy / sigma`.

# %%
kx, kg, kb, kd = jax.random.split(jax.random.key(3), 4)
xn = 2.0 + 3.0 * jax.random.normal(kx, (8, 4, 4, 3), jnp.float64)
gamma = 1.0 + 0.1 * jax.random.normal(kg, (3,), jnp.float64)
beta = 0.1 * jax.random.normal(kb, (3,), jnp.float64)
dy = jax.random.normal(kd, xn.shape, jnp.float64)
eps, axes = 1e-5, (0, 1, 2)    # eps: the library's default



@jax.jit
def batch_norm_backward_by_hand(dy, x, gamma):
    mean, var = x.mean(axes), x.var(axes)
    sigma = jnp.sqrt(var + eps)
    x_hat = (x - mean) / sigma
    dx_hat = gamma * dy
    dx = (dx_hat - dx_hat.mean(axes) - x_hat * (dx_hat * x_hat).mean(axes)) / sigma
    return dx, (dy * x_hat).sum(axes), dy.sum(axes)


mine = batch_norm_backward_by_hand(dy, xn, gamma)
rule = jax.jit(backward.batch_norm)(dy, xn, gamma, beta)
ref = jax.jit(lambda dy: jax.vjp(forward.batch_norm, xn, gamma, beta)[1](dy))(dy)
for name, m, r, j in zip(("dx", "dgamma", "dbeta"), mine, rule, ref):
    assert rel(m, j) <= TOL and rel(r, j) <= TOL, name
print("training-mode batch norm: the formula == backward.batch_norm == jax.vjp")

run_mean, run_var = jnp.array([1.5, 2.0, 2.5]), jnp.array([8.0, 9.0, 10.0])
dx_eval = jax.jit(backward.batch_norm)(dy, xn, gamma, beta, run_mean, run_var)[0]
ref_eval = jax.jit(lambda dy: jax.vjp(
    lambda x: forward.batch_norm(x, gamma, beta, run_mean, run_var), xn)[1](dy)[0])(dy)
dx_formula = gamma * dy / jnp.sqrt(run_var + eps)
assert rel(dx_formula, ref_eval) <= TOL and rel(dx_eval, ref_eval) <= TOL
print("evaluation-mode batch norm: dx = gamma dy / sigma")
