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
# # 6. Per-example gradients
#
# The loss of a batch is the mean of the examples' losses, `L = (1/N) sum_i l_i`, and the
# batch gradient is the mean of the per-example gradients `g_i = grad l_i`. Some methods need
# the `g_i` themselves: their norms show which examples dominate a step, and differentially
# private training (DP-SGD) clips each `g_i` before averaging. `jaxcnn.per_example_grads` runs
# the hand-written backward pass of one example under `jax.vmap`, so every leaf of the result
# gains a leading axis `N`. We check it three ways, then write the clipped mean by hand.

# %%
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcnn
from jaxcnn import forward, models
from jaxcnn.nn.heads import SOFTMAX
from jaxcnn.nn.layers import Conv2D, Dense, Flatten, MaxPool, ReLU
from jaxcnn.nn.network import Network

jax.config.update("jax_enable_x64", True)
TOL = 1e-9
# Compiled once per shape: run op by op, JAX would compile every small operation on its own.
# The model (argument 0) is static: its layers are Python code, not arrays.
per_example_grads = jax.jit(jaxcnn.per_example_grads, static_argnums=0)
manual_grad = jax.jit(jaxcnn.manual_grad, static_argnums=0)


def tree_rel(a, b):
    """The largest max |a - b| / max |b| over the leaves of two pytrees of one structure."""
    return max(float(np.abs(np.asarray(u) - np.asarray(v)).max()
                     / max(np.abs(np.asarray(v)).max(), 1e-30))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# %% [markdown]
# A small two-convolution classifier of 8x8 images into 3 classes, and a batch of 12 examples.

# %%
model = Network("small_cnn", [
    Conv2D(4, 3, padding="SAME", name="conv1"), ReLU(name="relu1"), MaxPool(2, name="pool1"),
    Conv2D(8, 3, name="conv2"), ReLU(name="relu2"), Flatten(name="flatten"),
    Dense(3, name="dense"),
], (8, 8, 1), SOFTMAX)
params = model.init(jax.random.key(0), jnp.float64)
x = jax.random.normal(jax.random.key(1), (12, 8, 8, 1), jnp.float64)
y = jax.random.randint(jax.random.key(2), (12,), 0, 3)
N = len(y)

per_example = per_example_grads(model, params, x, y)
print({k: {leaf: v.shape for leaf, v in p.items()} for k, p in per_example.items()})
assert all(leaf.shape[0] == N for leaf in jax.tree.leaves(per_example))

# %% [markdown]
# ## Three ways to the same numbers
#
# 1. a Python loop of single-example manual gradients (`jaxcnn.manual_grad` on `x[i:i+1]`,
#    each a batch of one);
# 2. `jax.vmap(jax.grad(loss of one example))`, JAX's own derivative, vectorised;
# 3. the mean over examples, which must be the batch gradient.

# %%
loop = [manual_grad(model, params, x[i:i + 1], y[i:i + 1])[1] for i in range(N)]
loop = jax.tree.map(lambda *g: jnp.stack(g), *loop)


def one_loss(p, xi, yi):
    return model.loss(p, xi[None], yi[None])


auto = jax.jit(jax.vmap(jax.grad(one_loss), in_axes=(None, 0, 0)))(params, x, y)
_, batch_grad = manual_grad(model, params, x, y)

assert tree_rel(per_example, loop) <= TOL
assert tree_rel(per_example, auto) <= TOL
assert tree_rel(jax.tree.map(lambda g: g.mean(axis=0), per_example), batch_grad) <= TOL
print("per_example_grads == loop of manual_grad == vmap(jax.grad); mean == batch gradient")

# %% [markdown]
# ## Per-example norms
#
# `||g_i||` is the L2 norm over all the parameters of example `i`'s gradient:
# `sqrt(sum over every leaf and entry of g_i^2)`.

# %%
@jax.jit
def norms(per_ex):
    return jnp.sqrt(sum(jnp.sum(leaf.reshape(len(leaf), -1) ** 2, axis=1)
                        for leaf in jax.tree.leaves(per_ex)))


norms_manual, norms_auto = norms(per_example), norms(auto)
assert tree_rel(norms_manual, norms_auto) <= TOL
one = jax.tree.map(lambda leaf: leaf[0], per_example)
assert abs(float(optax.tree_utils.tree_norm(one)) - float(norms_manual[0])) <= 1e-12
print("||g_i|| =", np.round(np.asarray(norms_manual), 3))

# %% [markdown]
# ## The clipped mean of DP-SGD
#
# DP-SGD bounds each example's influence on a step: every per-example gradient is scaled down
# to norm at most `C`, then averaged,
#
# `g_clipped = (1/N) sum_i min(1, C / ||g_i||) g_i`
#
# (DP-SGD then adds Gaussian noise of standard deviation `sigma C / N` to it; we leave the noise
# out). With `C` the median norm, half of the examples are scaled down. The same formula on
# `jax.vmap(jax.grad)`'s per-example gradients gives the same vector.
#
# The library does not have this yet: `clipped_grad` (the clipped mean, without noise) and
# `per_example_grad_norms` (the norms without materialising every `g_i`) are planned.

# %%
@jax.jit
def clip_each(per_ex, C):
    """min(1, C / ||g_i||) g_i for every example i."""
    scale = jnp.minimum(1.0, C / norms(per_ex))                       # (N,)
    return jax.tree.map(lambda g: scale.reshape(-1, *[1] * (g.ndim - 1)) * g, per_ex)


@jax.jit
def clipped_mean(per_ex, C):
    """(1/N) sum_i min(1, C / ||g_i||) g_i."""
    return jax.tree.map(lambda g: jnp.mean(g, axis=0), clip_each(per_ex, C))


C = float(jnp.median(norms_manual))
clipped_manual = clipped_mean(per_example, C)
clipped_auto = clipped_mean(auto, C)
assert tree_rel(clipped_manual, clipped_auto) <= TOL

scaled_down = int(jnp.sum(norms_manual > C))
assert scaled_down == N // 2                                      # the half above the median
assert float(norms(clip_each(per_example, C)).max()) <= C * (1 + 1e-12)  # each: norm <= C
clipped_norm = float(optax.tree_utils.tree_norm(clipped_manual))
assert clipped_norm <= C * (1 + 1e-12)                            # so is their mean
print(f"C = {C:.3f}: {scaled_down} of {N} examples scaled down; ||clipped mean|| = "
      f"{clipped_norm:.3f}")

# %% [markdown]
# The same works for the worked example's 15-parameter network: with a binary head, the
# per-example gradient of the dense weights is `F_i^T (A2_i - Y_i)`, one row of the batch
# formula, without the `1/N`.

# %%
@jax.jit
def dw2_each(p, x, y):
    """F_i^T (A2_i - Y_i) for every image i of the seed net: (N, 4, 1)."""
    W1, B1, W2, B2 = p["conv"]["w"], p["conv"]["b"], p["dense"]["w"], p["dense"]["b"]
    F = forward.flatten(forward.max_pool(forward.relu(forward.conv2d(x, W1, B1))))
    A2 = forward.sigmoid(forward.dense(F, W2, B2))
    return F[:, :, None] * (A2 - y[:, None])[:, None, :]


seed = models.seed_cnn()
sp = seed.init(jax.random.key(0), jnp.float64)
xs = jax.random.normal(jax.random.key(3), (6, 6, 6, 1), jnp.float64)
ys = jnp.array([0, 1, 1, 0, 1, 0], jnp.float64)
pe = per_example_grads(seed, sp, xs, ys)
assert tree_rel(pe["dense"]["w"], dw2_each(sp, xs, ys)) <= TOL
print("seed net: per-example dW2 = F_i^T (A2_i - Y_i)")
