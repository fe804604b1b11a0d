"""The measurements behind experiments/PERFORMANCE.md: each idea tried for speed, A/B, interleaved.

    python experiments/perf_probes.py [--only layers,rules,...,per_example] [--json FILE]

Every section times its variants in the same process, interleaved in rounds (jaxcnn.tools.bench),
and prints medians and per-round ratios; nothing is compared across runs.

  layers     each convolution of the benchmark nets, isolated: forward, dx and dw as XLA
             convolutions ("conv") or as per-offset products ("gemm")
  rules      whole manual train steps under different per-layer choices of formulation
  options    XLA:CPU compiler options for the train step (YNNPACK fusions on/off)
  maxpool    the hand-written max-pool backward against jax.vjp (XLA's select-and-scatter)
  donation   the train step with and without buffer donation
  precision  HIGHEST against DEFAULT precision for the convolutions and matmuls (CPU)
  pointwise  the deeper CNN's step with its 1x1 convolution as XLA convolutions or one product
  per_example  per-example gradients under vmap: the batch rule against the per-example rule
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _geometry, backward, fast, forward, models
from jaxcnn.nn import grads
from jaxcnn.tools import bench
from jaxcnn.training import optim
from jaxcnn.training import steps as train_steps

CONVS = [  # (name, x shape, kernel, C_out, stride, padding, dilation, groups)
    ("lenet5 conv1", (128, 28, 28, 1), 5, 6, 1, "SAME", 1, 1),
    ("lenet5 conv2", (128, 14, 14, 6), 5, 16, 1, "VALID", 1, 1),
    ("cifar conv1", (64, 32, 32, 3), 3, 32, 1, "SAME", 1, 1),
    ("cifar conv2", (64, 32, 32, 32), 3, 64, 1, "SAME", 1, 1),
    ("cifar conv3", (64, 16, 16, 64), 3, 128, 1, "SAME", 1, 1),
    ("deep conv2", (64, 28, 28, 16), 3, 32, 2, 1, 1, 1),
    ("deep depthwise3", (64, 14, 14, 32), 3, 32, 1, "SAME", 2, 32),
]


def _ms(times: list[float]) -> float:
    return 1e3 * float(np.median(times))


def _layer_fns(x: Any, w: Any, dy: Any, **geometry: Any) -> dict[str, Callable]:
    """forward, dx and dw of one convolution, each alone, in both formulations."""
    fns = {}
    for impl in ("conv", "gemm"):
        kw = dict(geometry, impl=impl)
        f = jax.jit(lambda x, w, kw=kw: forward.conv2d(x, w, **kw))
        dx = jax.jit(lambda dy, x, w, kw=kw: backward.conv2d(dy, x, w, **kw)[0])
        dw = jax.jit(lambda dy, x, w, kw=kw: backward.conv2d(dy, x, w, **kw)[1])
        fns[f"forward[{impl}]"] = partial(f, x, w)
        fns[f"dx[{impl}]"] = partial(dx, dy, x, w)
        fns[f"dw[{impl}]"] = partial(dw, dy, x, w)
    return fns


def layers(rounds: int) -> list[dict[str, Any]]:
    rows = []
    for name, xs, k, c_out, stride, padding, dilation, groups in CONVS:
        x = jax.random.normal(jax.random.key(0), xs)
        w = jax.random.normal(jax.random.key(1), (k, k, xs[-1] // groups, c_out))
        g = _geometry.conv("probe", x, w, stride, padding, dilation, groups)
        dy = jax.random.normal(jax.random.key(2), g.out_shape)
        flops = 2 * int(np.prod(g.out_shape)) * k * k * xs[-1] // groups
        times = bench.interleaved(_layer_fns(x, w, dy, stride=stride, padding=padding,
                                             dilation=dilation, groups=groups), rounds=rounds)
        row = {"layer": name, "gflop": flops / 1e9}
        for op in ("forward", "dx", "dw"):
            c, m = _ms(times[f"{op}[conv]"]), _ms(times[f"{op}[gemm]"])
            row[op] = {"conv_ms": c, "gemm_ms": m,
                       "gemm_vs_conv": bench.ratios(times[f"{op}[gemm]"],
                                                    times[f"{op}[conv]"])["median"]}
        rows.append(row)
        print(f"{name:14} " + "  ".join(
            f"{op}: conv {row[op]['conv_ms']:7.2f} ms ({flops / row[op]['conv_ms'] / 1e6:5.1f} "
            f"GF/s)  gemm {row[op]['gemm_ms']:7.2f} ms" for op in ("forward", "dx", "dw")))
    return rows


Rule = Callable[..., bool]  # (g, which, per_example=False) -> products?
_kept = fast.auto.prefer_gemm


def _one_channel(g: _geometry.Conv) -> bool:
    return g.c_in // g.groups == 1


RULES: dict[str, Rule] = {
    "conv everywhere": lambda g, w, **_: False,
    "gemm everywhere": lambda g, w, **_: True,
    "forward gemm if one channel per group": lambda g, w, **_: w == "forward" and _one_channel(g),
    "... + dx gemm if C_out <= 32": lambda g, w, **_: (
        (w == "forward" and _one_channel(g)) or (w == "dx" and g.c_out // g.groups <= 32)),
    "... + dw gemm if 2 <= C_in <= 16": lambda g, w, **_: (
        (w == "forward" and _one_channel(g)) or (w == "dw" and 2 <= g.c_in <= 16)),
    "gemm for depthwise only": lambda g, w, **_: g.groups > 1 and _one_channel(g),
    "gemm if one channel per group (the GPU auto)": lambda g, w, **_: _one_channel(g),
    "auto without dx gemm for C_in <= 16": lambda g, w, **kw: _kept(g, w, **kw) and not (
        w == "dx" and g.groups == 1 and 1 < g.c_in <= 16 and max(g.win.stride) == 1
        and not fast.auto.is_pointwise(g)),
    "auto + dx gemm for every ungrouped conv": lambda g, w, **kw: (
        (w == "dx" and g.groups == 1) or _kept(g, w, **kw)),
    "auto (kept)": _kept,
}


def _step_args(model: Any, batch: int) -> tuple:
    opt = optim.make_optimizer("sgd", 1e-3)
    params, state = model.init(jax.random.key(0)), model.init_state()
    x, y = bench.example_batch(model, batch)
    return opt, (params, state, opt.init(params), (x, y), jax.random.key(2))


def rules(rounds: int) -> dict[str, Any]:
    out = {}
    kept = fast.auto.prefer_gemm
    for name, batch in bench.NETWORKS:
        model = models.get(name)
        opt, args = _step_args(model, batch)
        fns = {}
        for label, rule in RULES.items():
            fast.auto.prefer_gemm = rule  # read at trace time by impl="auto"
            c = train_steps.make_train_step(model.with_impl("auto"), opt, "manual",
                                      donate=False).lower(*args).compile()
            fns[label] = partial(c, *args)
        fast.auto.prefer_gemm = kept
        c = train_steps.make_train_step(model, opt, "autodiff", donate=False).lower(*args).compile()
        fns["autodiff"] = partial(c, *args)
        times = bench.interleaved(fns, rounds=rounds)
        out[f"{name}:{batch}"] = {k: {"ms": _ms(t), "vs_autodiff": bench.ratios(
            t, times["autodiff"])["median"]} for k, t in times.items()}
        print(f"{name} b{batch}: " + "; ".join(f"{k} {v['ms']:.3f} ms ({v['vs_autodiff']:.2f})"
                                             for k, v in out[f"{name}:{batch}"].items()))
    return out


def options(rounds: int) -> dict[str, Any]:
    out = {}
    for name, batch in (("lenet5", 128), ("cifar", 64), ("deep", 64)):
        model = models.get(name)
        opt, args = _step_args(model, batch)
        fns = {}
        for grad in ("manual", "autodiff"):
            lowered = jax.jit(train_steps.train_step_fn(model, opt, grad)).lower(*args)
            for label, opts in (("xla defaults", {}), ("ynn fusions off",
                                                        train_steps.CPU_COMPILER_OPTIONS)):
                c = lowered.compile(compiler_options=opts or None)
                fns[f"{grad}, {label}"] = partial(c, *args)
        times = bench.interleaved(fns, rounds=rounds)
        out[f"{name}:{batch}"] = {k: _ms(t) for k, t in times.items()}
        print(f"{name} b{batch}: " + "; ".join(f"{k} {v:.2f} ms"
                                             for k, v in out[f"{name}:{batch}"].items()))
    return out


def maxpool(rounds: int) -> dict[str, Any]:
    out = {}
    for shape, kw in (((128, 28, 28, 6), dict(window=2)), ((64, 32, 32, 64), dict(window=2)),
                      ((64, 28, 28, 16), dict(window=3, stride=2, padding="SAME"))):
        x = jax.random.normal(jax.random.key(0), shape)
        dy = jnp.ones_like(forward.max_pool(x, **kw))
        manual = jax.jit(lambda dy, x, kw=kw: backward.max_pool(dy, x, **kw))
        auto = jax.jit(lambda dy, x, kw=kw: jax.vjp(lambda x: forward.max_pool(x, **kw), x)[1](
            dy)[0])
        times = bench.interleaved({"manual": partial(manual, dy, x),
                                   "jax.vjp": partial(auto, dy, x)}, rounds=rounds)
        key = f"{shape} {kw}"
        out[key] = {"manual_ms": _ms(times["manual"]), "vjp_ms": _ms(times["jax.vjp"]),
                    "manual_vs_vjp": bench.ratios(times["manual"], times["jax.vjp"])["median"]}
        print(f"max pool {key}: manual {out[key]['manual_ms']:.3f} ms, jax.vjp "
              f"{out[key]['vjp_ms']:.3f} ms, ratio {out[key]['manual_vs_vjp']:.3f}")
    return out


def donation(rounds: int) -> dict[str, Any]:
    model = models.get("cifar")
    opt, args = _step_args(model, 64)
    plain = train_steps.make_train_step(model, opt, "manual", donate=False)
    donating = train_steps.make_train_step(model, opt, "manual", donate=True)
    state = {"args": args}

    def run_donating():  # each call consumes its inputs: feed it its own outputs
        p, s, o, _ = donating(*state["args"])
        state["args"] = (p, s, o, *state["args"][3:])
        return p

    jax.block_until_ready(plain(*args))
    state["args"] = jax.tree.map(jnp.copy, args)
    times = bench.interleaved({"no donation": lambda: plain(*args),
                               "donate params/state/opt_state": run_donating}, rounds=rounds)
    out = {k: _ms(t) for k, t in times.items()}
    print(f"cifar b64 donation: {out}")
    return out


def precision(rounds: int) -> dict[str, Any]:
    x = jax.random.normal(jax.random.key(0), (64, 32, 32, 32))
    w = jax.random.normal(jax.random.key(1), (3, 3, 32, 64))
    fns = {}
    for p in ("HIGHEST", "DEFAULT"):
        f = jax.jit(lambda x, w, p=p: forward.conv2d(x, w, padding="SAME",
                                                     precision=getattr(jax.lax.Precision, p)))
        fns[p] = partial(f, x, w)
    times = bench.interleaved(fns, rounds=rounds)
    out = {k: _ms(t) for k, t in times.items()}
    print(f"cifar conv2 forward precision: {out}")
    return out


def pointwise(rounds: int) -> dict[str, Any]:
    kept = fast.auto.prefer_gemm
    variants = {"auto (1x1 as one product, kept)": kept,
                "auto with 1x1 as XLA convolutions": lambda g, w, **kw: (
                    not fast.auto.is_pointwise(g) and kept(g, w, **kw))}
    model = models.get("deep")
    opt, args = _step_args(model, 64)
    fns = {}
    for label, rule in variants.items():
        fast.auto.prefer_gemm = rule
        c = train_steps.make_train_step(model.with_impl("auto"), opt, "manual",
                                  donate=False).lower(*args).compile()
        fns[label] = partial(c, *args)
    fast.auto.prefer_gemm = kept
    times = bench.interleaved(fns, rounds=rounds)
    base = times["auto with 1x1 as XLA convolutions"]
    out = {k: {"ms": _ms(t), "vs_1x1_conv": bench.ratios(t, base)} for k, t in times.items()}
    print(f"deep b64: {out}")
    return out


def per_example_rules(rounds: int) -> dict[str, Any]:
    out = {}
    for name, batch in (("lenet5", 128), ("cifar", 64), ("deep", 64)):
        model = models.get(name)
        params = model.init(jax.random.key(0))
        x, y = bench.example_batch(model, batch)
        auto = model.with_impl("auto")
        fns = {"batch gradient": partial(jax.jit(lambda p, x, y, m=auto: grads.manual_grad(
            m, p, x, y)[1]), params, x, y)}
        for label, impl, rule in (("vmap, conv", "conv", False),
                                  ("vmap, batch auto rule", "auto", False),
                                  ("vmap, per-example rule (kept)", "auto", True)):
            m = model.with_impl(impl)
            f = jax.jit(lambda p, x, y, m=m: jax.vmap(
                lambda xi, yi: grads.manual_grad(m, p, xi[None], yi[None])[1])(x, y))
            with fast.per_example_rule() if rule else contextlib.nullcontext():
                fns[label] = partial(f.lower(params, x, y).compile(), params, x, y)
        times = bench.interleaved(fns, rounds=rounds)
        base = times["batch gradient"]
        out[f"{name}:{batch}"] = {k: {"ms": _ms(t), "vs_batch": bench.ratios(t, base)["median"]}
                                  for k, t in times.items()}
        print(f"{name} b{batch}: " + "; ".join(f"{k} {v['ms']:.2f} ms ({v['vs_batch']:.2f})"
                                             for k, v in out[f"{name}:{batch}"].items()))
    return out


SECTIONS = {"layers": layers, "rules": rules, "options": options, "maxpool": maxpool,
            "donation": donation, "precision": precision, "pointwise": pointwise,
            "per_example": per_example_rules}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default="runs/experiments/perf_probes.json")
    ap.add_argument("--precision", choices=tuple(bench.PRECISIONS), default="highest",
                    help="precision set around every section (jax.default_matmul_precision)")
    args = ap.parse_args(argv)
    result = {"machine": bench.machine(), "precision": args.precision}
    for name in args.only.split(","):
        print(f"== {name}", flush=True)
        with jax.default_matmul_precision(args.precision):
            result[name] = SECTIONS[name](args.rounds)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
