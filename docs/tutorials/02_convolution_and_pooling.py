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
# # 2. Convolution and pooling, forward and backward
#
# The worked example had one grey image and one filter. Real layers take `C_in` input channels
# and a bank of `C_out` filters, may stride, and pool in more than one way. This tutorial
# writes each gradient out as a formula (or as one `lax.conv_general_dilated` call), and checks
# it against the library's rule (`jaxcnn.backward`) and against `jax.vjp` of the forward, in
# float64, to a relative `1e-9`.
#
# Shapes: activations `(N, H, W, C)`, kernels HWIO `(kh, kw, C_in, C_out)`. The rules and
# `jax.vjp` are compiled with `jax.jit` before they run (`jax.jit(partial(rule, **options))`):
# run op by op, JAX would compile every small operation on its own, which here takes longer
# than the arithmetic. The numbers are the same.

# %%
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import backward, forward

jax.config.update("jax_enable_x64", True)
TOL = 1e-9
HIGHEST = lax.Precision.HIGHEST
NHWC = ("NHWC", "HWIO", "NHWC")


def rel(a, b):
    """max |a - b| / max |b|: the relative difference of a from the reference b."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def vjp(f, *inputs):
    """JAX's own derivative: `dy -> jax.vjp(f, *inputs)[1](dy)`, the gradients of f's inputs."""
    return jax.jit(lambda dy: jax.vjp(f, *inputs)[1](dy))


def patches(x, kh, kw):
    """(N, H, W, C) -> (N, O_h, O_w, kh, kw, C): the window each output position (i, j) reads,
    x[:, i:i + kh, j:j + kw] (stride 1, no padding)."""
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return jnp.stack([jnp.stack([x[:, i:i + kh, j:j + kw] for j in range(ow)], axis=1)
                      for i in range(oh)], axis=1)


kx, kk, kb, kd = jax.random.split(jax.random.key(0), 4)
x = jax.random.normal(kx, (2, 7, 7, 3), jnp.float64)    # 2 images, 7x7, 3 channels (RGB)
w = jax.random.normal(kk, (3, 3, 3, 4), jnp.float64)   # a bank of 4 filters, each 3x3x3
b = jax.random.normal(kb, (4,), jnp.float64)            # one bias per filter

# %% [markdown]
# ## Multi-channel convolution
#
# Each filter spans all input channels, and each output channel is one filter's sum:
# `y[n, i, j, o] = b[o] + sum_{m, p, c} x[n, i + m, j + p, c] w[m, p, c, o]`.

# %%
y_sum = jnp.einsum("nijmpc,mpco->nijo", patches(x, 3, 3), w, precision=HIGHEST) + b
y = forward.conv2d(x, w, b)
assert y.shape == (2, 5, 5, 4) and rel(y, y_sum) <= TOL
print("conv2d: (2, 7, 7, 3) * (3, 3, 3, 4) ->", y.shape)

# %% [markdown]
# ## Cross-correlation and convolution
#
# What deep learning calls convolution (`forward.conv2d`, `lax.conv_general_dilated`) is a
# cross-correlation: the filter is laid on the image as it is. The convolution of signal
# processing flips it first: `y[i, j] = sum x[i + m, j + p] w[kh - 1 - m, kw - 1 - p]`.
# Convolution is cross-correlation with the kernel rotated by 180 degrees, `rot180(w)`:
# `forward.convolve2d(x, w) == forward.conv2d(x, rot180(w))`. For a kernel that is not
# symmetric the two differ.

# %%
def rot180(k):
    return k[::-1, ::-1]   # flip both spatial axes (HWIO: the first two)


y_conv_sum = jnp.einsum("nijmpc,mpco->nijo", patches(x, 3, 3), rot180(w), precision=HIGHEST)
assert rel(forward.convolve2d(x, w), y_conv_sum) <= TOL
assert rel(forward.convolve2d(x, w), forward.conv2d(x, rot180(w))) <= TOL
assert rel(forward.convolve2d(x, w), forward.conv2d(x, w)) > 0.1   # not the same thing
print("convolve2d(x, w) == conv2d(x, rot180(w)) != conv2d(x, w)")

# %% [markdown]
# ## The gradients of a convolution
#
# Take an upstream gradient `dy = dL/dy`. The forward is one sum; each gradient is that sum with
# another operand left free.
#
# **dX: a full convolution of dy with the flipped kernel** (one spatial axis shown). Input pixel
# `x[h, c]` was multiplied by `w[m, c, o]` into every output `y[h - m, o]`, so
# `dx[h, c] = sum_{m, o} dy[h - m, o] w[m, c, o]`. Put `m' = k - 1 - m`: that is a
# cross-correlation (the `conv` of deep learning) of `dy`, zero-padded by `k - 1` on every side
# (the "full" mode), with `rot180(w)`, its in/out channels swapped (the gradient goes from the
# C_out channels back to the C_in ones).

# %%
dy = jax.random.normal(kd, y.shape, jnp.float64)
kh, kw = w.shape[:2]
w_flipped = rot180(w).transpose(0, 1, 3, 2)            # (kh, kw, C_out, C_in)
dx_full = lax.conv_general_dilated(dy, w_flipped, (1, 1), [(kh - 1, kh - 1), (kw - 1, kw - 1)],
                                   dimension_numbers=NHWC, precision=HIGHEST)

dx_rule, dw_rule, db_rule = jax.jit(backward.conv2d)(dy, x, w)   # the library's rule
dx_ref, dw_ref, db_ref = vjp(forward.conv2d, x, w, b)(dy)        # JAX's own derivative
assert dx_full.shape == x.shape
assert rel(dx_full, dx_ref) <= TOL and rel(dx_rule, dx_ref) <= TOL
print("dx = full correlation of dy with rot180(w)^T: rel", rel(dx_full, dx_ref))

# %% [markdown]
# **dW: a correlation of the input with dy.** `w[m, p, c, o]` touched `x[n, i + m, j + p, c]`
# for every output position, so `dw[m, p, c, o] = sum_{n, i, j} x[n, i + m, j + p, c]
# dy[n, i, j, o]`: slide `dy` over `x` as if it were the filter (the worked example's
# `dW1 = conv(X, dZ1)`). With several images and channels this is one
# `lax.conv_general_dilated` with the batch and channel roles swapped: x read as `CHWN`
# (channels as the batch, images as the features to sum over), dy as the kernel `IHWO`.
# **db** is dy summed over every position: `db[o] = sum_{n, i, j} dy[n, i, j, o]`.

# %%
dw_sum = jnp.einsum("nijmpc,nijo->mpco", patches(x, 3, 3), dy, precision=HIGHEST)
dw_conv = lax.conv_general_dilated(x, dy, (1, 1), "VALID",
                                   dimension_numbers=("CHWN", "IHWO", "HWNC"), precision=HIGHEST)
db = dy.sum(axis=(0, 1, 2))
for name, value in [("dw (sum)", dw_sum), ("dw (conv)", dw_conv), ("dw (rule)", dw_rule)]:
    assert value.shape == w.shape and rel(value, dw_ref) <= TOL, name
assert rel(db, db_ref) <= TOL and rel(db_rule, db_ref) <= TOL
print("dw = correlation of x with dy; db = sum of dy: match jax.vjp")

# %% [markdown]
# For the true convolution the kernel is `rot180(w)`, so its dx is a correlation of dy with `w`
# itself, and its dw is `rot180` of the correlation's dw. `backward.convolve2d` does exactly
# that.

# %%
dxc, dwc, _ = jax.jit(backward.convolve2d)(dy, x, w)
dxc_ref, dwc_ref = vjp(forward.convolve2d, x, w)(dy)
assert rel(dwc, rot180(dw_rule)) <= TOL and rel(dwc, dwc_ref) <= TOL and rel(dxc, dxc_ref) <= TOL
print("convolve2d: dw = rot180(conv2d's dw)")

# %% [markdown]
# ## Stride
#
# With stride `s` the output position `i` reads input rows `i*s ... i*s + k - 1`. On an 8x8
# input, a 3x3 kernel with stride 2 (VALID) gives a 3x3 output whose windows start at rows 0, 2
# and 4: rows 0 to 6 are read, row 7 never is (nor column 7). A pixel the forward pass never
# read cannot change the loss, so its gradient is exactly zero.
#
# The dx formula still holds once dy is put back on the stride grid: place `dy[i]` at row `i*s`
# with `s - 1` zeros between (`lhs_dilation=s`), then correlate with the flipped kernel, padded
# `k - 1` in front and `H - O_s` behind, `O_s = (O - 1) s + 1` being the span of the spread dy.

# %%
xs = jax.random.normal(kx, (2, 8, 8, 3), jnp.float64)
ys = forward.conv2d(xs, w, stride=2)
dys = jax.random.normal(kd, ys.shape, jnp.float64)
s, (oh, ow), (h, wd) = 2, ys.shape[1:3], xs.shape[1:3]
pads = [(kh - 1, h - ((oh - 1) * s + 1)), (kw - 1, wd - ((ow - 1) * s + 1))]
dxs_mine = lax.conv_general_dilated(dys, w_flipped, (1, 1), pads, lhs_dilation=(s, s),
                                    dimension_numbers=NHWC, precision=HIGHEST)
dxs_rule, dws_rule, _ = jax.jit(partial(backward.conv2d, stride=2))(dys, xs, w)
dxs_ref, dws_ref = vjp(partial(forward.conv2d, stride=2), xs, w)(dys)
assert ys.shape == (2, 3, 3, 4)
assert rel(dxs_mine, dxs_ref) <= TOL and rel(dxs_rule, dxs_ref) <= TOL
assert rel(dws_rule, dws_ref) <= TOL
for d in (dxs_mine, dxs_rule, dxs_ref):
    assert np.all(np.asarray(d[:, 7, :, :]) == 0) and np.all(np.asarray(d[:, :, 7, :]) == 0)
print("stride 2: row 7 and column 7 of dx are exactly 0 (never read)")
print(np.round(np.asarray(dxs_rule[0, :, :, 0]), 2))

# %% [markdown]
# ## Pooling
#
# Pooling has no parameters; its backward routes each window's dy back to the inputs the
# window read.
#
# **Max pooling** sends each window's dy to the window's maximum; the other inputs get zero.
# When several inputs tie for the maximum, one rule must be picked: the **first maximum in
# row-major window order takes it all** (the order XLA's select-and-scatter, hence `jax.grad`,
# routes it). In the 4x4 input below three of the four 2x2 windows tie: `[[1, 3], [3, 0]]`
# routes to its top-right 3, `[[0, 2], [2, 2]]` to its top-right 2 and `[[4, 1], [1, 4]]` to its
# top-left 4.

# %%
xt = jnp.array([[1.0, 3.0, 0.0, 2.0],
                [3.0, 0.0, 2.0, 2.0],
                [0.0, 5.0, 4.0, 1.0],
                [1.0, 2.0, 1.0, 4.0]]).reshape(1, 4, 4, 1)
dyt = jnp.array([[10.0, 20.0],
                 [30.0, 40.0]]).reshape(1, 2, 2, 1)
expected = jnp.array([[0.0, 10.0, 0.0, 20.0],
                      [0.0, 0.0, 0.0, 0.0],
                      [0.0, 30.0, 40.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0]]).reshape(1, 4, 4, 1)
dxt = jax.jit(partial(backward.max_pool, window=2))(dyt, xt)
dxt_ref = vjp(partial(forward.max_pool, window=2), xt)(dyt)[0]
assert np.array_equal(np.asarray(dxt), np.asarray(expected))
assert np.array_equal(np.asarray(dxt_ref), np.asarray(expected))   # jax.grad routes the same
print(np.asarray(dxt[0, :, :, 0]))

# %% [markdown]
# Random inputs, overlapping 3x3 windows of stride 1 (an input may win several windows: the
# contributions add) and padded windows, against `jax.vjp`:

# %%
xp = jax.random.normal(kx, (2, 6, 6, 3), jnp.float64)
for opts in (dict(window=2), dict(window=3, stride=1), dict(window=3, stride=2, padding=1)):
    pool = partial(forward.max_pool, **opts)
    dyp = jax.random.normal(kd, jax.eval_shape(pool, xp).shape, jnp.float64)
    dxp = jax.jit(partial(backward.max_pool, **opts))(dyp, xp)
    assert rel(dxp, vjp(pool, xp)(dyp)[0]) <= TOL, opts
print("max pool: overlapping and padded windows match jax.vjp")

# %% [markdown]
# **Average pooling**, `y = (1/k^2) sum_window x`: every input of a window gets an equal share,
# `dx = dy / k^2` from each window covering it. For 2x2 windows of stride 2, that is dy repeated
# over each block, divided by 4.
#
# **L2-norm pooling**, `y = sqrt(sum_window x^2)`: `dy/dx_i = x_i / y`, so `dx = x * dy / y`,
# the ratio repeated over each block (a window of zeros, `y = 0`, passes nothing).

# %%
def up(a, k=2):
    """Repeat each element over a k x k block: (N, O, O, C) -> (N, kO, kO, C)."""
    return jnp.repeat(jnp.repeat(a, k, axis=1), k, axis=2)


ya = forward.avg_pool(xp, window=2)
dya = jax.random.normal(kd, ya.shape, jnp.float64)
dxa_mine = up(dya) / 4
dxa_ref = vjp(partial(forward.avg_pool, window=2), xp)(dya)[0]
dxa_rule = jax.jit(partial(backward.avg_pool, window=2))(dya, xp)
assert rel(dxa_mine, dxa_ref) <= TOL and rel(dxa_rule, dxa_ref) <= TOL

yl = forward.l2_pool(xp, window=2)
assert rel(yl, jnp.sqrt((xp * xp).reshape(2, 3, 2, 3, 2, 3).sum(axis=(2, 4)))) <= TOL
dxl_mine = xp * up(dya / yl)
dxl_ref = vjp(partial(forward.l2_pool, window=2), xp)(dya)[0]
dxl_rule = jax.jit(partial(backward.l2_pool, window=2))(dya, xp)
assert rel(dxl_mine, dxl_ref) <= TOL and rel(dxl_rule, dxl_ref) <= TOL
print("average pool: dx = dy / 4 per block; L2 pool: dx = x * dy / y: both match jax.vjp")
