"""`jaxcnn gradcheck`: a model's manual gradients against jax.grad and finite differences."""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.nn import grads, models
from jaxcnn.nn.grads import TOLERANCES  # (vs autodiff, vs finite differences) per dtype


class LeafCheck(NamedTuple):
    path: str
    shape: tuple[int, ...]
    rel_autodiff: float       # max |manual - autodiff| / max |autodiff|
    rel_fd: float | None      # max |manual - fd| / max |fd| over the coordinates evaluated
    cosine: float             # cosine(manual, autodiff)
    ok: bool


def gradcheck(name: str, dtype: str = "float64", batch: int = 4, seed: int = 0,
              train: bool = False, fd_per_leaf: int = 8,
              jitter: float = 0.05) -> tuple[list[LeafCheck], str]:
    """Manual vs `jax.grad` (and vs central differences, float64 only) on every parameter leaf of
    model `name` for a random batch; returns the rows and a header describing the run.

    The check point is `model.init` plus `jitter * N(0, 1)` on every leaf: at init the biases are
    exactly 0, so a ReLU whose receptive field is all zeros (padding, or an upstream ReLU's zeros)
    sits exactly on its kink, where central differences see slope 1/2 and both the manual rule
    and jax.grad take 0 (seen on deep-digits' depthwise3 bias). jitter=0 checks init as is.
    """
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype must be one of {', '.join(TOLERANCES)}; got {dtype!r}")
    if batch < 1 or fd_per_leaf < 1:
        raise ValueError(f"--batch and --fd-per-leaf must be >= 1; got {batch}, {fd_per_leaf}")
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    model = models.get(name)
    dt = jnp.dtype(dtype)
    k_params, k_drop = jax.random.split(jax.random.key(seed))
    rng = np.random.default_rng(seed)  # NumPy for the rest: no XLA compile per shape
    params, state = model.init(k_params, dt), model.init_state(dt)
    params = jax.tree.map(lambda p: p + jnp.asarray(jitter * rng.standard_normal(p.shape), dt),
                          params)
    x = jnp.asarray(rng.standard_normal((batch, *model.input_shape)), dt)
    if model.head.kind == "binary":
        y = jnp.asarray(rng.integers(0, 2, batch), dt)
    else:
        y = jnp.asarray(rng.integers(0, model.num_classes, batch))
    key = k_drop if train else None  # one dropout key for all three gradients
    kw: dict[str, Any] = {"state": state, "train": train, "key": key}
    # compiled once each: far faster than op-by-op dispatch on the bigger models
    loss_m, manual = jax.jit(partial(grads.manual_grad, model, train=train))(
        params, x, y, state=state, key=key)
    loss_a, auto = jax.jit(partial(grads.autodiff_grad, model, train=train))(
        params, x, y, state=state, key=key)
    tol_ad, tol_fd = TOLERANCES[dtype]
    rel_fd: list[float | None] = [None] * len(jax.tree.leaves(params))
    if tol_fd is not None:
        fd = grads.finite_difference_grad(model, params, x, y, max_per_leaf=fd_per_leaf,
                                          seed=seed, **kw)
        rel_fd = [r.max_rel for r in grads.compare(manual, fd)]
    rows = [LeafCheck(r.path, r.shape, r.max_rel, rf, r.cosine,
                      r.max_rel <= tol_ad and (rf is None or rf <= (tol_fd or 0.0)))
            for r, rf in zip(grads.compare(manual, auto), rel_fd)]
    header = (f"gradcheck {name}: {model.name}, {model.head.name}, "
              f"{model.num_params(params):,} parameters\n"
              f"{dtype}, batch {batch}, seed {seed}, "
              f"{'train=True (fixed dropout key)' if train else 'train=False'}, "
              f"params = init + {jitter:g} N(0, 1)\n"
              f"loss: manual {float(loss_m):.12g}, autodiff {float(loss_a):.12g}")
    return rows, header


def format_table(rows: list[LeafCheck], header: str, dtype: str, fd_per_leaf: int) -> str:
    """The table, the tolerances and a PASS/FAIL line naming every failing leaf."""
    tol_ad, tol_fd = TOLERANCES[dtype]
    lines = [header, "", f"{'parameter':22} {'shape':>15} {'rel vs autodiff':>16} "
                         f"{'rel vs fin.diff':>16} {'cosine':>10}"]
    for r in rows:
        fd = "-" if r.rel_fd is None else f"{r.rel_fd:.2e}"
        lines.append(f"{r.path:22} {r.shape!s:>15} {r.rel_autodiff:16.2e} {fd:>16} "
                     f"{r.cosine:10.7f}  {'ok' if r.ok else 'FAIL'}")
    fd_tol = "no finite differences in float32" if tol_fd is None else \
        f"<= {tol_fd:.0e} vs finite differences ({fd_per_leaf} random coordinates per leaf)"
    lines += ["", "rel = max |manual - ref| / max |ref| over each leaf; tolerances:",
              f"  <= {tol_ad:.0e} vs autodiff (jax.grad), {fd_tol}"]
    bad = [r.path for r in rows if not r.ok]
    lines.append(f"FAIL: {len(bad)} of {len(rows)} leaves out of tolerance: {', '.join(bad)}"
                 if bad else f"PASS: all {len(rows)} parameter leaves within tolerance")
    return "\n".join(lines)


