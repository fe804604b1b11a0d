"""Independent NumPy oracles for the window ops: explicit sums over kernel offsets, no XLA.

They serve where `jax.vjp` cannot (configurations on which XLA aborts) and as a second, unrelated
reference everywhere else. All take NHWC / HWIO arrays and explicit pads ((top, bot), (l, r)).
"""

from __future__ import annotations

import itertools

import numpy as np


def _taps(k, s, d, out):
    """For each kernel offset m along one axis: the padded-input slice it reads at every output."""
    return [slice(m * d, m * d + (out - 1) * s + 1, s) for m in range(k)]


def conv2d(x, w, stride, pads, dilation, groups):
    """y[n, i, j, o] = sum x_pad[n, i*s + m*d, j*s + p*d, c] w[m, p, c, o] (grouped)."""
    n = x.shape[0]
    kh, kw, c_in_g, c_out = w.shape
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    oh = (xp.shape[1] - (kh - 1) * dilation[0] - 1) // stride[0] + 1
    ow = (xp.shape[2] - (kw - 1) * dilation[1] - 1) // stride[1] + 1
    y = np.zeros((n, oh, ow, c_out), np.result_type(x, w))
    c_out_g = c_out // groups
    for (m, rows), (p, cols) in itertools.product(
            enumerate(_taps(kh, stride[0], dilation[0], oh)),
            enumerate(_taps(kw, stride[1], dilation[1], ow))):
        patch = xp[:, rows, cols, :]
        for g in range(groups):
            ci, co = slice(g * c_in_g, (g + 1) * c_in_g), slice(g * c_out_g, (g + 1) * c_out_g)
            y[..., co] += patch[..., ci] @ w[m, p, :, co]
    return y


def conv2d_grads(dy, x, w, stride, pads, dilation, groups):
    """(dx, dw, db) of `conv2d` by the adjoint of the same sums: scatter dy back tap by tap."""
    h, wd = x.shape[1:3]
    kh, kw, c_in_g, c_out = w.shape
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    _, oh, ow, _ = dy.shape
    c_out_g = c_out // groups
    for (m, rows), (p, cols) in itertools.product(
            enumerate(_taps(kh, stride[0], dilation[0], oh)),
            enumerate(_taps(kw, stride[1], dilation[1], ow))):
        patch = xp[:, rows, cols, :]
        for g in range(groups):
            ci, co = slice(g * c_in_g, (g + 1) * c_in_g), slice(g * c_out_g, (g + 1) * c_out_g)
            dxp[:, rows, cols, ci] += dy[..., co] @ w[m, p, :, co].T
            dw[m, p, :, co] += np.einsum("nijc,nijo->co", patch[..., ci], dy[..., co])
    (t, _), (left, _) = pads
    return dxp[:, t:t + h, left:left + wd], dw, dy.sum((0, 1, 2))


def pool_windows(x, window, stride, pads, fill):
    """All window elements of the padded input: (kh * kw, N, O_h, O_w, C), row-major offsets."""
    xp = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
    oh = (xp.shape[1] - window[0]) // stride[0] + 1
    ow = (xp.shape[2] - window[1]) // stride[1] + 1
    return np.stack([xp[:, r, c, :] for r, c in itertools.product(
        _taps(window[0], stride[0], 1, oh), _taps(window[1], stride[1], 1, ow))])


def scatter_windows(v, x_shape, window, stride, pads):
    """Adjoint of `pool_windows`: add v (kh * kw, N, O_h, O_w, C) back onto the input grid."""
    (t, b), (left, r) = pads
    n, h, w, c = x_shape
    out = np.zeros((n, h + t + b, w + left + r, c), v.dtype)
    _, _, oh, ow, _ = v.shape
    for k, (rows, cols) in enumerate(itertools.product(
            _taps(window[0], stride[0], 1, oh), _taps(window[1], stride[1], 1, ow))):
        out[:, rows, cols, :] += v[k]
    return out[:, t:t + h, left:left + w]


def max_pool_grad(dy, x, window, stride, pads):
    """The whole dy of a window to its first maximum in row-major window order."""
    win = pool_windows(x, window, stride, pads, -np.inf)
    first = np.argmax(win, axis=0)  # np.argmax returns the first maximum
    routed = (np.arange(win.shape[0])[:, None, None, None, None] == first) * dy
    return scatter_windows(routed, x.shape, window, stride, pads)
