"""Every op's manual gradient beside jax.vjp's, in float64, with the largest difference.

    python experiments/op_gradients.py

Prints one row per (op, configuration, input): the gradient's shape, its largest entry, and the
largest absolute and relative difference between `jaxcnn.backward` and `jax.vjp` of
`jaxcnn.forward` (or, where XLA:CPU aborts on the transposed convolution that jax.vjp builds,
the Jacobian from forward-mode `jax.jacfwd`). Exits 1 if any relative difference exceeds 1e-9.
"""

from __future__ import annotations

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from jaxcnn import (  # noqa: E402
    backward,
    forward,
)

CONFIGS = [
    ("conv2d", [(2, 6, 6, 1), (3, 3, 1, 1)], {}),
    ("conv2d", [(2, 9, 8, 4), (3, 3, 2, 6)], dict(stride=2, padding="SAME", groups=2)),
    ("conv2d", [(2, 9, 10, 3), (3, 2, 1, 3)], dict(dilation=2, padding=1, groups=3)),
    ("conv2d", [(2, 6, 9, 2), (2, 5, 2, 1)],  # jax.vjp aborts the process here on XLA:CPU
     dict(stride=(2, 1), dilation=(1, 2), padding=((1, 1), (1, 1)))),
    ("convolve2d", [(2, 6, 6, 2), (3, 3, 2, 2)], dict(padding="SAME")),
    ("dense", [(4, 6), (6, 3)], {}),
    ("flatten", [(2, 2, 2, 3)], {}),
    ("max_pool", [(2, 4, 4, 1)], {}),
    ("max_pool", [(2, 7, 7, 3)], dict(window=3, stride=2, padding="SAME")),
    ("avg_pool", [(2, 7, 7, 3)], dict(window=3, stride=2, padding=1, count_include_pad=False)),
    ("l2_pool", [(2, 6, 6, 2)], dict(window=2)),
    ("relu", [(2, 4, 4, 1)], {}),
    ("leaky_relu", [(2, 4, 4, 1)], {}),
    ("sigmoid", [(4, 1)], {}),
    ("tanh", [(4, 5)], {}),
    ("softmax", [(4, 5)], {}),
]
LOSSES = [
    ("binary_cross_entropy", (4,), np.array([1.0, 0.0, 1.0, 1.0])),
    ("sigmoid_binary_cross_entropy", (4, 1), np.array([1.0, 0.0, 1.0, 1.0])),
    ("softmax_cross_entropy", (4, 3), np.array([0, 2, 1, 2])),
    ("mse", (4, 3), np.linspace(-1, 1, 12).reshape(4, 3)),
]


def rows() -> list[tuple]:
    rng = np.random.default_rng(0)
    out = []
    for op, shapes, kw in CONFIGS:
        args = [rng.standard_normal(s) for s in shapes]
        def f(*a, op=op, kw=kw):
            return getattr(forward, op)(*a, **kw)

        dy = rng.standard_normal(jax.eval_shape(f, *args).shape)
        manual = getattr(backward, op)(dy, *args, **kw)
        manual = manual if isinstance(manual, tuple) else (manual,)
        if kw.get("stride") == (2, 1):  # the trap: a reference without transposed convolutions
            ref, how = _jacfwd_vjp(f, args, dy), "jacfwd"
        else:
            ref, how = jax.vjp(f, *args)[1](dy), "vjp"
        names = ["dx", "dw", "db"] if op in ("conv2d", "convolve2d", "dense") else ["dx"]
        for name, m, a in zip(names, manual, ref):
            out.append((op, _short(kw), name, how, m.shape, m, a))
    for op, shape, labels in LOSSES:
        z = rng.standard_normal(shape)
        if op == "binary_cross_entropy":
            z = 1 / (1 + np.exp(-z))
        _, pullback = jax.vjp(lambda z, op=op, labels=labels: getattr(forward, op)(z, labels), z)
        out.append((op, "", "dz", "vjp", z.shape, getattr(backward, op)(1.0, z, labels),
                    pullback(1.0)[0]))
    return out


def _jacfwd_vjp(f, args, dy):
    """dy^T J for each argument, with J from forward mode: `jax.vjp` would transpose the
    convolution, and XLA:CPU aborts on that transpose for this configuration."""
    jacobians = jax.jacfwd(f, argnums=tuple(range(len(args))))(*args)
    return [np.tensordot(dy, j, axes=dy.ndim) for j in jacobians]


def _short(kw: dict) -> str:
    text = " ".join(f"{k}={v}".replace(" ", "") for k, v in kw.items())
    return text if len(text) <= 38 else text[:35] + "..."


def main() -> float:
    header = f"{'op':28} {'options':38} {'grad':4} {'ref':6} {'shape':>14} {'max|g|':>9} " \
             f"{'max abs diff':>12} {'max rel diff':>12}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for op, kw, name, how, shape, m, a in rows():
        m, a = np.asarray(m), np.asarray(a)
        diff = float(np.abs(m - a).max())
        rel = diff / max(float(np.abs(a).max()), 1e-300)
        worst = max(worst, rel)
        print(f"{op:28} {kw:38} {name:4} {how:6} {shape!s:>14} {np.abs(m).max():9.3g} "
              f"{diff:12.2e} {rel:12.2e}")
    print(f"\nlargest relative difference, manual vs JAX autodiff (float64): {worst:.2e}")
    return worst


if __name__ == "__main__":
    raise SystemExit(0 if main() <= 1e-9 else 1)
