"""Run one conv-gradient configuration in its own process: `python trap_worker.py MODE JSON`.

MODE "grad": jax.jit(jax.grad) of the forward (the reference that XLA may abort on);
     "textbook": the manual dx with its guard switched off (the plain lhs-dilated convolution);
     "manual": the manual backward, checked against the NumPy oracle and central differences.
Prints one JSON line; an XLA abort shows up as the process dying with SIGABRT.
"""

import json
import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from jaxcnn import _geometry, backward, fast, forward  # noqa: E402

from reference import conv2d_grads  # noqa: E402


def main(mode: str, cfg: dict) -> dict:
    kw = dict(stride=tuple(cfg["stride"]), padding=tuple(map(tuple, cfg["padding"])),
              dilation=tuple(cfg["dilation"]), groups=cfg.get("groups", 1))
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(cfg["x"]), rng.standard_normal(cfg["w"])
    g = _geometry.conv("conv2d", x, w, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    dy = rng.standard_normal(g.out_shape)

    def loss(x, w):  # <dy, conv2d(x, w)>: its gradient is exactly (dx, dw)
        return (forward.conv2d(x, w, **kw) * dy).sum()

    if mode == "grad":
        jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
        return {"mode": mode, "completed": True}
    if mode == "textbook":
        fast.traps.xla_may_abort = lambda win: False
    dx, dw, _ = jax.jit(lambda dy, x, w: backward.conv2d(dy, x, w, **kw))(dy, x, w)
    ref_dx, ref_dw, _ = conv2d_grads(dy, x, w, g.win.stride, g.win.pads, g.win.dilation,
                                     g.groups)
    out = {"mode": mode, "completed": True, "guarded": fast.traps.xla_may_abort(g.win),
           "oracle_rel": max(_rel(dx, ref_dx), _rel(dw, ref_dw))}
    # central differences along random directions (the loss is bilinear, so they are exact up
    # to rounding)
    f = jax.jit(loss)
    worst = 0.0
    for _ in range(4):
        vx, vw = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
        eps = 1e-6
        fd = (f(x + eps * vx, w + eps * vw) - f(x - eps * vx, w - eps * vw)) / (2 * eps)
        analytic = np.vdot(dx, vx) + np.vdot(dw, vw)
        worst = max(worst, abs(fd - analytic) / max(abs(analytic), 1e-12))
    out["fd_rel"] = float(worst)
    return out


def _rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-300))


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))))
