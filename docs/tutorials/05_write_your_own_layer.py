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
# # 5. Write your own layer, and prove its gradient
#
# A `jaxcnn` layer is three pure functions, with the backward written by hand:
#
# ```
# init(key, in_shape, dtype)                         -> (out_shape, params, state)
# apply(params, state, x, *, train, key, axis_name)  -> (y, state, residual)
# backward(dy, params, x, residual)                  -> (dx, grads)
# ```
#
# `in_shape` and `out_shape` are one example's shape, without the batch axis. `residual` is
# whatever the backward needs besides `x` (None here). `grads` has exactly the keys of
# `params`. We write a new layer, put it in a network with the built-in layers, and then run
# the checks a researcher should run before trusting a hand-written rule: `jax.vjp`, finite
# differences, and the whole network against `jax.grad`. Then we break the rule on purpose and
# watch the checks catch it, train the model, and finally use the rules from an equinox model.

# %%
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcnn
from jaxcnn import bridge, forward
from jaxcnn.nn.grads import compare, finite_difference_grad
from jaxcnn.nn.heads import BINARY
from jaxcnn.nn.layers import Conv2D, Dense, Flatten, Layer, MaxPool, ReLU
from jaxcnn.nn.network import Network
from jaxcnn.training.data import synthetic_bars
from jaxcnn.training.steps import make_train_step

jax.config.update("jax_enable_x64", True)
TOL = 1e-9
# The whole-network gradients, compiled once per model (argument 0, static: Python code, not
# arrays); run op by op, JAX would compile each small operation on its own.
manual_grad = jax.jit(jaxcnn.manual_grad, static_argnums=0)
autodiff_grad = jax.jit(jaxcnn.autodiff_grad, static_argnums=0)


def rel(a, b):
    """max |a - b| / max |b|: the relative difference of a from the reference b."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def worst(rows):
    """The largest relative difference over the leaves `compare` returns."""
    return max(r.max_rel for r in rows)


# %% [markdown]
# ## A per-channel scale and shift
#
# `Scale` computes `y = x * a + c` with one `a` and one `c` per channel (`x`: `(N, H, W, C)`,
# `a`, `c`: `(C,)`). Its gradients follow from the product rule, with sums over every axis but
# the channels, because each `a[k]` multiplied every element of channel `k`:
#
# ```
# dx = dy * a        da = sum_{n,h,w} dy * x        dc = sum_{n,h,w} dy
# ```

# %%
def Scale(*, name="scale", wrong=False):
    """y = x * a + c per channel. `wrong=True` forgets the x in da: a bug, on purpose."""

    def init(key, in_shape, dtype):
        c = in_shape[-1]
        a = 1.0 + 0.1 * jax.random.normal(key, (c,), dtype)
        return in_shape, {"a": a, "c": jnp.zeros((c,), dtype)}, {}

    def apply(params, state, x, *, train=False, key=None, axis_name=None):
        return x * params["a"] + params["c"], state, None

    def backward(dy, params, x, residual):
        axes = tuple(range(x.ndim - 1))   # every axis but the channels
        da = jnp.sum(dy, axes) if wrong else jnp.sum(dy * x, axes)
        return dy * params["a"], {"a": da, "c": jnp.sum(dy, axes)}

    return Layer(name, init, apply, backward, {"kind": "Scale"})


# %% [markdown]
# ## Check 1: the layer against `jax.vjp`
#
# `jax.vjp(f, *inputs)` returns `f`'s output and a function that maps an upstream gradient `dy`
# to the gradients of the inputs: exactly what `backward` computes. In float64 the two must
# agree to rounding.

# %%
def layer_check(layer, in_shape=(5, 5, 3)):
    """The layer's backward against jax.vjp of its apply, at random params, x and dy: the
    largest relative difference over dx and every parameter's gradient."""
    kp, kx, kd = jax.random.split(jax.random.key(0), 3)
    _, params, state = layer.init(kp, in_shape, jnp.float64)
    x = jax.random.normal(kx, (4, *in_shape), jnp.float64)
    y, _, residual = layer.apply(params, state, x)
    dy = jax.random.normal(kd, y.shape, jnp.float64)
    dx, dparams = layer.backward(dy, params, x, residual)                    # ours
    _, pullback = jax.vjp(lambda p, x: layer.apply(p, state, x)[0], params, x)
    dparams_ref, dx_ref = pullback(dy)                                       # JAX's
    return worst(compare({"x": dx, **dparams}, {"x": dx_ref, **dparams_ref}))


print("Scale vs jax.vjp: max rel", layer_check(Scale()))
assert layer_check(Scale()) <= TOL

# %% [markdown]
# ## In a network with the built-in layers
#
# A layer is used like any other: `Network(name, layers, input_shape, head)` chains the layers,
# runs their `backward`s in reverse order, and ends in a fused loss head (`BINARY`: sigmoid and
# binary cross-entropy on one logit).

# %%
def scaled_cnn(wrong=False):
    return Network("scaled_cnn", [
        Conv2D(4, 3, name="conv"), Scale(name="scale", wrong=wrong), ReLU(name="relu"),
        MaxPool(2, name="pool"), Flatten(name="flatten"), Dense(1, name="dense"),
    ], (6, 6, 1), BINARY)


model = scaled_cnn()
params = model.init(jax.random.key(0), jnp.float64)
data = synthetic_bars(n_train=256, n_test=64, seed=0, dtype=np.float64)
x, y = data.x_train[:16], data.y_train[:16]
print(model)
print({layer: {k: v.shape for k, v in p.items()} for layer, p in params.items()})

# %% [markdown]
# ## Check 2: the whole network, manual against `jax.grad`
#
# `jaxcnn.manual_grad` runs our backward inside the network's backward pass;
# `jaxcnn.autodiff_grad` is `jax.value_and_grad` of the model's loss, which differentiates our
# `apply` and never calls our `backward`. `compare` gives, per parameter, the largest difference
# relative to the reference.

# %%
_, g_manual = manual_grad(model, params, x, y)
_, g_auto = autodiff_grad(model, params, x, y)
rows = compare(g_manual, g_auto)
for r in rows:
    print(f"{r.path:20} {r.shape!s:>14}  max rel {r.max_rel:.1e}")
assert worst(rows) <= TOL

# %% [markdown]
# ## Check 3: central finite differences
#
# `jax.grad` is not always independent of the rules it is checking: wherever a `custom_vjp`
# sits (the `jaxcnn.bridge` ops below are such), it runs the hand-written rule itself. Finite
# differences ask only for values of the loss,
# `dL/dp_i ~ (L(p + eps e_i) - L(p - eps e_i)) / (2 eps)`, so they hold a gradient to the
# function, whatever differentiated it. They are exact only up to `O(eps^2)` and rounding,
# hence a looser tolerance: `1e-6`, with `eps = 1e-6` in float64.

# %%
fd = finite_difference_grad(model, params, x, y, eps=1e-6)
print("manual vs finite differences: max rel", worst(compare(g_manual, fd)))
assert worst(compare(g_manual, fd)) <= 1e-6

# %% [markdown]
# ## A wrong backward is caught
#
# The same network with the bug switched on (`da` forgets its factor `x`). Its forward pass is
# unchanged, so `jax.grad` and finite differences still give the true gradient, and the manual
# gradient of `a` is far from both. The layer check catches it alone, before any network.

# %%
bad_model = scaled_cnn(wrong=True)
_, g_bad = manual_grad(bad_model, params, x, y)
bad_auto = compare(g_bad, autodiff_grad(bad_model, params, x, y)[1])
bad_fd = compare(g_bad, fd)
for r in bad_auto:
    print(f"{r.path:20} max rel vs jax.grad {r.max_rel:.1e}")
assert worst(bad_auto) > 0.1 and worst(bad_fd) > 0.1
assert {r.path for r in bad_auto if r.max_rel > TOL} == {"['scale']['a']"}  # only a is wrong
assert layer_check(Scale(wrong=True)) > 0.1

# %% [markdown]
# ## Training the custom model
#
# `jaxcnn.training.steps.make_train_step(model, optimizer)` compiles one training step with the
# hand-written gradients: `step(params, state, opt_state, (x, y), key)` returns the new params,
# network state, optimizer state and the step's metrics (loss, accuracy, gradient norms).

# %%
optimizer = optax.sgd(0.5)
step = make_train_step(model, optimizer, donate=False)
p, state, opt_state = params, model.init_state(jnp.float64), optimizer.init(params)
losses = []
for _epoch in range(4):
    for i in range(0, len(data.x_train), 32):
        batch = (data.x_train[i:i + 32], data.y_train[i:i + 32])
        p, state, opt_state, metrics = step(p, state, opt_state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
print(f"loss {losses[0]:.3f} -> {np.mean(losses[-8:]):.3f} (mean of the last epoch)")
assert np.mean(losses[-8:]) < 0.8 * losses[0]

# %% [markdown]
# ## The rules inside an equinox model
#
# `jaxcnn.bridge` holds every forward op as a `jax.custom_vjp` whose backward is the
# hand-written rule, so any JAX code differentiated with `jax.grad` runs them. Here is a small
# `equinox.Module` CNN built from bridge ops, trained a few steps with `optax.adam`, its
# gradients taken by `equinox.filter_grad` (that is, `jax.grad`).

# %%
class EqxCNN(eqx.Module):
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.w1 = 0.5 * jax.random.normal(k1, (3, 3, 1, 4), jnp.float64)   # HWIO
        self.b1 = jnp.zeros(4, jnp.float64)
        self.w2 = 0.5 * jax.random.normal(k2, (16, 1), jnp.float64)
        self.b2 = jnp.zeros(1, jnp.float64)

    def __call__(self, x):                     # x (N, 6, 6, 1) -> logits (N, 1)
        h = bridge.relu(bridge.conv2d(x, self.w1, self.b1))
        h = bridge.flatten(bridge.max_pool(h, window=2))
        return bridge.dense(h, self.w2, self.b2)


def eqx_loss(net, x, y):
    return bridge.sigmoid_binary_cross_entropy(net(x), y)


@eqx.filter_jit
def eqx_step(net, opt_state, x, y):
    loss, grads = eqx.filter_value_and_grad(eqx_loss)(net, x, y)
    updates, opt_state = adam.update(grads, opt_state, net)
    return eqx.apply_updates(net, updates), opt_state, loss


net = EqxCNN(jax.random.key(1))
adam = optax.adam(0.05)
opt_state = adam.init(eqx.filter(net, eqx.is_array))
eqx_losses = []
for i in range(0, len(data.x_train), 32):
    net, opt_state, loss = eqx_step(net, opt_state, data.x_train[i:i + 32],
                                    data.y_train[i:i + 32])
    eqx_losses.append(float(loss))
print(f"equinox model: loss {eqx_losses[0]:.3f} -> {eqx_losses[-1]:.3f}")
assert eqx_losses[-1] < eqx_losses[0]

# %% [markdown]
# Are the hand-written rules really what runs? The bridge looks the rule up by name on the
# `jaxcnn.backward` package each time a gradient is traced (`getattr(jaxcnn.backward,
# "conv2d")`), so we can swap it for a marked one: the same rule, with 1000 added to `dw`. The
# gradient of `w1` moves by exactly 1000, the other gradients do not move. Then we put the rule
# back.
#
# (Patch the package's attribute, `jaxcnn.backward.conv2d`: the family module's
# `jaxcnn.backward.conv.conv2d` is a second name for the same function, which neither the bridge
# nor the layers read. And take the gradient un-jitted, or in a fresh `jit`: a compiled function
# keeps the rule it was traced with.)

# %%
xb, yb = data.x_train[:16], data.y_train[:16]
g_before = eqx.filter_grad(eqx_loss)(net, xb, yb)
original = jaxcnn.backward.conv2d


def marked_conv2d(*args, **kwargs):
    dx, dw, db = original(*args, **kwargs)
    return dx, dw + 1000.0, db


jaxcnn.backward.conv2d = marked_conv2d
try:
    g_marked = eqx.filter_grad(eqx_loss)(net, xb, yb)
finally:
    jaxcnn.backward.conv2d = original
assert np.allclose(g_marked.w1 - g_before.w1, 1000.0, rtol=0, atol=1e-9)
assert rel(g_marked.w2, g_before.w2) <= TOL                 # the other rules are unchanged
g_after = eqx.filter_grad(eqx_loss)(net, xb, yb)
assert rel(g_after.w1, g_before.w1) <= TOL                  # restored
print("patched rule: dw1 moved by", float((g_marked.w1 - g_before.w1).mean()), "- restored")

# %% [markdown]
# Finally, the bridge's gradients equal `jax.grad` of the same model written with JAX's own
# differentiation of `jaxcnn.forward`:

# %%
def plain_loss(net, x, y):
    h = forward.relu(forward.conv2d(x, net.w1, net.b1))
    h = forward.flatten(forward.max_pool(h, window=2))
    return forward.sigmoid_binary_cross_entropy(forward.dense(h, net.w2, net.b2), y)


g_plain = eqx.filter_grad(plain_loss)(net, xb, yb)
for leaf in ("w1", "b1", "w2", "b2"):
    assert rel(getattr(g_before, leaf), getattr(g_plain, leaf)) <= TOL, leaf
print("bridge (hand-written rules) == jax.grad of jaxcnn.forward, to", TOL)
