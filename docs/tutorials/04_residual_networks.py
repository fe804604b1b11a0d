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
# # 4. Residual networks: why their gradients survive depth
#
# A residual block computes `y = relu(f(x) + x)`: a branch `f` (conv -> BN -> ReLU -> conv ->
# BN) and a shortcut that hands `x` on unchanged, added together. The backward of that sum is
# the whole story of this tutorial. `a + b` has `d(a + b)/da = d(a + b)/db = 1`, so the join
# gives the same upstream gradient to both paths (`backward.add`: `da = db = dy`), and since
# both paths read the same `x`, its gradient is the SUM of theirs:
#
# ```
# dx = f.backward(dy) + dy          (the identity's Jacobian is I: dy reaches x untouched)
# ```
#
# However small `f`'s Jacobian, the `+ dy` term carries the gradient past the block. We write one
# block's backward out by hand, then watch that term keep a 20-layer network's gradient alive
# where a plain stack of the same depth loses it, and end with the library's ResNet-20.

# %%
# ruff: noqa: N816
# (the block's gradients are written as the prose names them: dW1, dX, ...)
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import jaxcnn
from jaxcnn import backward, forward, models
from jaxcnn.nn.combinators import Residual, Serial
from jaxcnn.nn.grads import compare
from jaxcnn.nn.heads import SOFTMAX
from jaxcnn.nn.layers import HE_NORMAL, BatchNorm, Conv2D, Dense, GlobalAvgPool, ReLU
from jaxcnn.nn.network import Network

jax.config.update("jax_enable_x64", True)
TOL = 1e-9


def rel(a, b):
    """max |a - b| / max |b|: the relative difference of a from the reference b."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def tree_rel(a, b):
    """The largest `rel` over the leaves of two pytrees of one structure."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    return max(rel(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# %% [markdown]
# ## One residual block, forward
#
# Four images of 8x8 with 4 channels, `(N, H, W, C) = (4, 8, 8, 4)`. Both convolutions are 3x3
# with 4 filters, padded by 1 so that `f(x)` keeps `x`'s shape (the sum needs it) and without
# bias (the batch normalisation after each subtracts the mean anyway). The batch normalisations
# use the batch's own statistics, as in training. We keep every intermediate: the backward
# needs them.

# %%
kx, k1, k2, kg, kd = jax.random.split(jax.random.key(0), 5)
X = jax.random.normal(kx, (4, 8, 8, 4), jnp.float64)
W1 = HE_NORMAL(k1, (3, 3, 4, 4), jnp.float64)
W2 = HE_NORMAL(k2, (3, 3, 4, 4), jnp.float64)
G1, B1, G2, B2 = 1.0 + 0.1 * jax.random.normal(kg, (4, 4), jnp.float64)  # gamma, beta
block_params = {"conv1": {"w": W1}, "bn1": {"gamma": G1, "beta": B1},
                "conv2": {"w": W2}, "bn2": {"gamma": G2, "beta": B2}}


def f(p, x):
    """The residual branch: conv -> BN -> ReLU -> conv -> BN."""
    z1 = forward.conv2d(x, p["conv1"]["w"], padding=1)
    a1 = forward.relu(forward.batch_norm(z1, p["bn1"]["gamma"], p["bn1"]["beta"]))
    z2 = forward.conv2d(a1, p["conv2"]["w"], padding=1)
    return forward.batch_norm(z2, p["bn2"]["gamma"], p["bn2"]["beta"])


def block(p, x):
    """y = relu(f(x) + x)."""
    return forward.relu(forward.add(f(p, x), x))


Z1 = forward.conv2d(X, W1, padding=1)       # (4, 8, 8, 4)
H1 = forward.batch_norm(Z1, G1, B1)         # batch statistics: mean and variance over N, H, W
A1 = forward.relu(H1)
Z2 = forward.conv2d(A1, W2, padding=1)
F = forward.batch_norm(Z2, G2, B2)          # f(x)
S = forward.add(F, X)                       # the join: f(x) + x
Y = forward.relu(S)
assert rel(F, f(block_params, X)) <= TOL and rel(Y, block(block_params, X)) <= TOL
print("x", X.shape, "-> f(x)", F.shape, "-> y", Y.shape)

# %% [markdown]
# ## Its backward, one rule at a time
#
# We pull an arbitrary upstream gradient `dY = dL/dy` back through the block, and check every
# step against `jax.vjp` (which maps `dy` to the input gradients of a function, differentiating
# the forward; it never calls our rules).
#
# **The final ReLU** passes the gradient where its input was positive: `dS = dY * (S > 0)`.

# %%
dY = jax.random.normal(kd, Y.shape, jnp.float64)
dS = backward.relu(dY, S)
assert rel(dS, dY * (S > 0)) <= TOL
assert rel(dS, jax.vjp(forward.relu, S)[1](dY)[0]) <= TOL
print(f"dS: {float(jnp.mean(S > 0)):.0%} of the positions pass the gradient")

# %% [markdown]
# **The join.** `S = F + X` gives both of its inputs the whole of `dS`: `dF = dX_shortcut = dS`.
# The shortcut is the identity, whose Jacobian is `I`: its gradient is `dS` itself.

# %%
dF, dX_shortcut = backward.add(dS, F, X)
assert rel(dF, dS) <= TOL and rel(dX_shortcut, dS) <= TOL
_, add_pullback = jax.vjp(forward.add, F, X)
assert tree_rel((dF, dX_shortcut), add_pullback(dS)) <= TOL
assert rel(dX_shortcut, jax.vjp(lambda x: x, X)[1](dS)[0]) <= TOL   # the identity path

# %% [markdown]
# **The branch `f`**, its layers in reverse: batch normalisation (training: the gradient also
# flows through the batch's mean and variance), convolution (`dX` a full convolution of `dy`
# with the flipped kernel, `dW` the correlation of the input with `dy`; tutorial 2), ReLU,
# batch normalisation, convolution. Then all of `f`'s gradients against `jax.vjp` of `f` alone.

# %%
dZ2, dG2, dB2 = backward.batch_norm(dF, Z2, G2, B2)
dA1, dW2, _ = backward.conv2d(dZ2, A1, W2, padding=1)   # (no bias: its gradient is unused)
dH1 = backward.relu(dA1, H1)
dZ1, dG1, dB1 = backward.batch_norm(dH1, Z1, G1, B1)
dX_f, dW1, _ = backward.conv2d(dZ1, X, W1, padding=1)

grads_f = {"conv1": {"w": dW1}, "bn1": {"gamma": dG1, "beta": dB1},
           "conv2": {"w": dW2}, "bn2": {"gamma": dG2, "beta": dB2}}
_, f_pullback = jax.vjp(f, block_params, X)
grads_f_ref, dX_f_ref = f_pullback(dF)
assert rel(dX_f, dX_f_ref) <= TOL
assert tree_rel(grads_f, grads_f_ref) <= TOL
print("f's rules == jax.vjp of f: dx_f and", len(jax.tree.leaves(grads_f)), "parameter gradients")

# %% [markdown]
# **The sum.** `x` fed both paths, so `dX = dX_f + dX_shortcut`: it equals `jax.vjp` of the whole
# block, and neither path alone does. The parameters sit on the branch only, so their gradients
# are `f`'s.

# %%
dX = dX_f + dX_shortcut
_, block_pullback = jax.vjp(block, block_params, X)
grads_ref, dX_ref = block_pullback(dY)
assert rel(dX, dX_ref) <= TOL
assert tree_rel(grads_f, grads_ref) <= TOL
assert rel(dX_f, dX_ref) > 0.1 and rel(dX_shortcut, dX_ref) > 0.1   # each path alone is wrong
print(f"|dX_f| = {float(jnp.linalg.norm(dX_f)):.3f}, |dX_shortcut| = "
      f"{float(jnp.linalg.norm(dX_shortcut)):.3f}, |dX| = {float(jnp.linalg.norm(dX)):.3f}")

# %% [markdown]
# ## The same block from the library's combinators
#
# `Residual(f, shortcut=None)` is the join as a layer: `y = f(x) + x` forward, and backward
# `dx = f.backward(dy) + dy`, the cell above. With `Serial` for the branch and a ReLU after the
# join it is our block; we give it our parameters and compare.

# %%
lib_block = Serial(
    Residual(Serial(Conv2D(4, 3, padding=1, use_bias=False, name="conv1"), BatchNorm(name="bn1"),
                    ReLU(name="relu1"), Conv2D(4, 3, padding=1, use_bias=False, name="conv2"),
                    BatchNorm(name="bn2"), name="f"), name="residual"),
    ReLU(name="relu_out"), name="block")
_, init_params, state = lib_block.init(jax.random.key(1), X.shape[1:], jnp.float64)
lib_params = {"residual": {"f": block_params}}   # {block: {"f": {layer: params}}}
assert jax.tree.structure(lib_params) == jax.tree.structure(init_params)

Y_lib, _, residual = lib_block.apply(lib_params, state, X, train=True)
dX_lib, grads_lib = lib_block.backward(dY, lib_params, X, residual)
assert rel(Y_lib, Y) <= TOL
assert rel(dX_lib, dX) <= TOL and tree_rel(grads_lib["residual"]["f"], grads_f) <= TOL
print("Residual(Serial(...)) == our block: y, dx and every parameter gradient")

# %% [markdown]
# ## Why it matters: 20 layers, plain and residual
#
# By the chain rule, the gradient that reaches a layer is the upstream gradient multiplied by
# the Jacobian of every layer after it. In a plain stack those factors compound: if each layer
# scales the backward signal by about `c`, the first of `L` layers gets about `c^L` of it.
# He's initialisation (std `sqrt(2 / fan_in)`) is chosen to make `c = 1` for ReLU, exactly; any
# departure compounds. With weights at half He's std (as a slightly mis-set init, or weights
# that shrank, would give), `c` is about `1/2` and 18 layers give `2^-18`, about `4e-6`.
#
# A residual block's Jacobian is `I + J_f` instead: its backward is `dy + dx_f`, so the signal
# keeps its size however small `J_f` is.
#
# Two networks of the same depth as ResNet-20 (19 convolutions and a dense layer), 3x3
# convolutions with 16 filters, no bias, at half He's std, on 8x8 RGB images, ending in global
# average pooling, a dense layer of 10 logits and softmax cross-entropy:
#
# * **plain**: `conv -> ReLU`, 19 times;
# * **residual**: `conv -> ReLU`, then 9 blocks `Residual(Serial(conv, ReLU, conv))`: `y = x +
#   f(x)`, the identity path kept clean (no ReLU after the join).

# %%
def small_he(key, shape, dtype):
    return 0.5 * HE_NORMAL(key, shape, dtype)


def conv(name):
    return Conv2D(16, 3, padding=1, use_bias=False, w_init=small_he, name=name)


HEAD = [GlobalAvgPool(name="pool"), Dense(10, name="dense")]
plain = Network("plain20", [
    layer for i in range(1, 20) for layer in (conv(f"conv{i:02}"), ReLU(name=f"relu{i:02}"))
] + HEAD, (8, 8, 3), SOFTMAX)
resnet = Network("residual20", [conv("conv01"), ReLU(name="relu01")] + [
    Residual(Serial(conv("conv1"), ReLU(name="relu"), conv("conv2"), name="f"), name=f"block{b}")
    for b in range(1, 10)
] + HEAD, (8, 8, 3), SOFTMAX)


def conv_weights(tree):
    """The convolution kernels of a params or grads tree, input to output, as {path: array}."""
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)
            if "dense" not in jax.tree_util.keystr(p)}


for net in (plain, resnet):
    params = net.init(jax.random.key(0), jnp.float64)
    print(f"{net.name}: {len(conv_weights(params))} convolutions, "
          f"{net.num_params(params):,} parameters")

# %% [markdown]
# ### The gradients are exact
#
# First, neither network's gradient is in doubt: the hand-written backward pass
# (`jaxcnn.manual_grad`, which runs `Residual`'s `dx = dx_f + dy` in every block) equals
# `jax.grad` (`jaxcnn.autodiff_grad`) for three random initialisations. Whatever we find below
# is a property of the networks, not an error of the rules.

# %%
@partial(jax.jit, static_argnums=0)   # compiled once per model (Python code, not arrays)
def gradients(net, params, x, y):
    """manual_grad's and autodiff_grad's gradients, and ||dL/da|| for every activation a of
    the network, from the hand-written pass (`Network.backprop`, what manual_grad runs)."""
    _, g_manual = jaxcnn.manual_grad(net, params, x, y)
    _, g_auto = jaxcnn.autodiff_grad(net, params, x, y)
    _, trace = net.loss_and_trace(params, x, y)
    _, ds = net.backprop(params, trace, y)
    return g_manual, g_auto, jnp.stack([jnp.linalg.norm(d) for d in ds])


def batch(seed):
    """Random images and labels, and a random initialisation key."""
    kx, ky, kp = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kx, (4, 8, 8, 3), jnp.float64),
            jax.random.randint(ky, (4,), 0, 10), kp)


SEEDS = (0, 1, 2)
runs = {}   # (network name, seed) -> (params, manual grads, delta norms)
for seed in SEEDS:
    x, y, kp = batch(seed)
    for net in (plain, resnet):
        params = net.init(kp, jnp.float64)
        g_manual, g_auto, delta_norms = gradients(net, params, x, y)
        worst = max(r.max_rel for r in compare(g_manual, g_auto))
        assert worst <= TOL, (net.name, seed, worst)
        runs[net.name, seed] = params, g_manual, np.asarray(delta_norms)
print("manual_grad == autodiff_grad for both networks and seeds", SEEDS)

# %% [markdown]
# ### The backward signal, layer by layer
#
# `Network.backprop`, the pass inside `manual_grad`, also returns each layer's delta
# `dL/d(input of that layer)`. We print its norm at the image, after the first convolution, and
# after every two convolutions (one residual block), relative to its norm at the top of the
# convolutions (the input of the pooling).

# %%
# the activations at the image, after conv01, then after every two convolutions
AT = {"plain20": [0] + [2 * (2 * k + 1) for k in range(10)], "residual20": [0, *range(2, 12)]}
where = ["image", "conv01"] + [f"conv{2 * k + 1:02}" for k in range(1, 10)]


def signal(net, seed):
    """The delta norms at the points AT, relative to the last (the top of the convolutions)."""
    d = runs[net.name, seed][2][AT[net.name]]
    return d / d[-1]


def bar(v):
    return "#" * int(max(0, 20 + 3 * np.log10(v)))   # 3 characters a decade


print(f"{'after':8} {'plain':>9} {'residual':>9}   plain, log scale       residual")
for name, p, r in zip(where, signal(plain, 0), signal(resnet, 0)):
    print(f"{name:8} {p:9.1e} {r:9.2f}   {bar(p):20}   {bar(r)}")

# %% [markdown]
# In the plain stack the gradient shrinks by about half at every convolution and reaches the
# image at about `1e-6` of its size at the top; through the residual blocks it stays of order 1
# all the way down. We assert it for each of the three seeds: a gap of more than five orders of
# magnitude, where we only claim ten times.

# %%
for seed in SEEDS:
    p_first, r_first = signal(plain, seed)[0], signal(resnet, seed)[0]
    print(f"seed {seed}: first/last, plain {p_first:.1e}, residual {r_first:.2f}")
    assert p_first < 1e-3 and r_first > 0.1
    assert r_first > 10 * p_first

# %% [markdown]
# ### And the parameters' gradients
#
# A weight's gradient is the product of the forward signal into its layer and the backward
# signal out of it: `dW_l = conv(a_{l-1}, delta_l)` (tutorial 1's `dW1 = conv(X, dZ1)`). In the
# plain stack both shrink, the forward one with depth, the backward one with the layers after:
# their product is about `2^-19` for EVERY layer. For a ReLU stack without bias this balance is
# even exact: scaling any one kernel by `t` scales the logits by `t`, so `<W_l, dL/dW_l>`
# (the derivative in `t` at `t = 1`) is the same number for every layer. So the first layer's
# gradient is not small relative to the last layer's: every kernel gradient of the plain network
# is tiny, about `1e-6` of the residual network's.

# %%
def kernel_grads(net, seed):
    """(||dW_l|| for each convolution, <W_l, dW_l> for each), input to output."""
    params, g, _ = runs[net.name, seed]
    w, dw = conv_weights(params), conv_weights(g)
    return (np.array([float(jnp.linalg.norm(v)) for v in dw.values()]),
            np.array([float(jnp.vdot(w[k], dw[k])) for k in w]))


for seed in SEEDS:
    plain_norms, plain_inner = kernel_grads(plain, seed)
    res_norms, _ = kernel_grads(resnet, seed)
    assert rel(plain_inner, np.full(19, plain_inner[0])) <= TOL   # <W_l, dW_l>: one number
    assert plain_norms.max() < 1e-3 * res_norms.min()             # every layer starved
print("|dW_l|, conv01 .. conv19 (the last seed):")
print("  plain    ", np.array2string(plain_norms, precision=1, max_line_width=96))
print("  residual ", np.array2string(res_norms, precision=2, max_line_width=96))

# %% [markdown]
# ## ResNet-20
#
# `models.resnet20` is He et al.'s CIFAR network: a 3x3 convolution with 16 filters, then three
# stages of three basic blocks (`Residual(conv -> BN -> ReLU -> conv -> BN, shortcut)` and a
# ReLU: the block we wrote by hand) with 16, 32 and 64 filters; the first block of stages 2 and 3
# halves the map with stride 2 and has a projection shortcut (a strided 1x1 convolution and BN,
# whose backward adds its own `dx` in place of `dy`); then global average pooling and a dense
# layer. We build it for 16x16 images (for speed: the parameters do not depend on the image
# size) and check the whole hand-written backward pass against `jax.grad` on two images, in
# training mode (batch statistics).

# %%
model = models.resnet20(input_shape=(16, 16, 3))
params = model.init(jax.random.key(0), jnp.float64)
xr = jax.random.normal(jax.random.key(1), (2, 16, 16, 3), jnp.float64)
yr = jnp.array([3, 7])


@partial(jax.jit, static_argnums=0)
def both_grads(net, params, x, y):
    """manual_grad's and autodiff_grad's gradients, in training mode."""
    return (jaxcnn.manual_grad(net, params, x, y, train=True)[1],
            jaxcnn.autodiff_grad(net, params, x, y, train=True)[1])


rows = compare(*both_grads(model, params, xr, yr))
worst = max(rows, key=lambda r: r.max_rel)
print(f"{model.num_params(params):,} parameters in {len(rows)} arrays; the worst leaf, "
      f"{worst.path}: max rel {worst.max_rel:.1e}")
assert all(r.within(TOL) for r in rows)
assert model.num_params(params) == 272_474   # the paper's 0.27M
