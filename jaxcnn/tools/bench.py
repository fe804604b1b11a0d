"""`jaxcnn bench`: the jitted train step with manual and with autodiff gradients, side by side.

Shared machines are noisy and slow down under sustained load, so every figure is measured
interleaved: in each round every variant runs one short block of steps (the order rotates from
round to round) with a rest between blocks, and ratios are taken round by round, within the same
round, then summarised by their median and spread. Figures from different runs are never mixed.

Reported per network: median and min-max step time, images/s, jit compile time, XLA's temporary
memory for the step, the manual/autodiff ratio (and manual/torch with `--against torch`),
achieved GFLOP/s (convolution and dense FLOPs of the step) against a float32 matmul peak measured
in the same run, and per-example gradients: vmap of the manual backward, vmap of jax.grad, a
Python loop of jitted single-example gradients, and the batch gradient they should cost about as
much as.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _bounds
from jaxcnn.nn import grads, models
from jaxcnn.nn.layers import CONV_OPS
from jaxcnn.nn.network import Network
from jaxcnn.tools.bench_torch import layer_specs, leaf_shape
from jaxcnn.training import optim, steps
from jaxcnn.training.per_example import per_example_grads

NETWORKS = (("seed", 1), ("seed", 1024), ("lenet5", 128), ("cifar", 64), ("deep", 64),
            ("resnet20", 64), ("unet", 16))
# --precision: what every product of the benchmarked steps runs at (jaxcnn's own default is
# HIGHEST; "default" is the backend's fastest float32 mode, TF32 on recent NVIDIA GPUs).
PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "default": jax.lax.Precision.DEFAULT}
# The largest batch timed: the defaults reach 1024, and the per-example table's loop makes one
# jitted call per example (about 0.1 ms each on the CPU), every round: 65536 examples are seconds
# a call. Past it, past int32 elements or past the device's memory, a batch is refused (ValueError)
# before anything is built.
MAX_BATCH = 2**16


def check_batch(name: str, model: Network, batch: int, per_example: bool = False) -> None:
    """Refuse a batch past `MAX_BATCH`, or whose activations (and per-example gradients, one
    set of parameters per example) pass `_bounds.MAX_ELEMENTS` per array or the device's memory.

    Args:
      name: the network as --networks names it; model: it, built; batch: the batch size;
      per_example: whether the per-example gradients are timed too.

    Raises:
      ValueError: naming `--networks NAME:BATCH`, quoting the batch and the bound it passes.
    """
    shapes = [model.input_shape, *model.shapes]
    if per_example:
        shapes.append((sum(int(np.prod(s)) for s in jax.tree.leaves(
            model.param_shapes, is_leaf=lambda v: isinstance(v, tuple))),))
    _bounds.batch("bench", f"--networks {name}:{batch}: batch", batch, shapes, 4, MAX_BATCH,
                  "bench.MAX_BATCH: the per-example loop makes one call per example")


# ----------------------------------------------------------------------------- what a step costs
def step_flops(model: Network, batch: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of one training step's convolutions (1-3 spatial axes,
    transposed or not) and dense layers, blocks (Serial, Residual, SkipConcat) walked down to
    their layers: the forward, dW, and dX of every layer whose input depends on the parameters
    (the first layers read the network's input, whose gradient nobody needs). Per example and
    layer, the forward is 2 * prod(out) * prod(k) * C_in / groups for a convolution (out =
    (*O, C_out)), 2 * prod(in) * prod(k) * C_out / groups for a transposed one (in = (*S, C_in),
    each input element spread over the kernel) and 2 * D_in * D_out for a dense layer."""
    total, shape, depends = 0, model.input_shape, False
    for spec in layer_specs(model):
        shape, depends, flops = _spec_flops(spec, shape, depends)
        total += flops
    return batch * total


def _spec_flops(spec: dict, shape: tuple[int, ...], depends: bool) -> tuple[tuple, bool, int]:
    """(out_shape, whether the output depends on the parameters, FLOPs per example) of the
    layer or block `spec` on one example of `shape`; `depends` says whether its input does."""
    kind, shape = spec["kind"], tuple(shape)
    if kind == "Serial":
        total = 0
        for sub in spec["layers"]:
            shape, depends, flops = _spec_flops(sub, shape, depends)
            total += flops
        return shape, depends, total
    if kind == "Residual":
        out, dep_f, flops = _spec_flops(spec["f"], shape, depends)
        dep_s, flops_s = depends, 0
        if spec["shortcut"] is not None:
            _, dep_s, flops_s = _spec_flops(spec["shortcut"], shape, depends)
        return out, dep_f or dep_s, flops + flops_s
    if kind == "SkipConcat":
        out, dep_i, flops = _spec_flops(spec["inner"], shape, depends)
        return (*shape[:-1], shape[-1] + out[-1]), depends or dep_i, flops
    out, has_params = leaf_shape(spec, shape)
    if kind in CONV_OPS:
        k = int(np.prod(spec["kernel"]))
        fwd = 2 * (int(np.prod(shape)) * k * spec["features"] if CONV_OPS[kind][2]
                   else int(np.prod(out)) * k * shape[-1]) // spec["groups"]
    else:
        fwd = 2 * shape[0] * spec["features"] if kind == "Dense" else 0
    return out, depends or has_params, fwd * (3 if depends else 2)


def matmul_peak(n: int | None = None, rounds: int = 5, precision: str = "highest") -> float:
    """GFLOP/s of a float32 n x n matmul (median of rounds) at `precision` ("highest" or
    "default"); n is 2048 on the CPU and 8192 on accelerators unless given."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, precision=PRECISIONS[precision]))
    f(a, a).block_until_ready()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / float(np.median(times)) / 1e9


# ----------------------------------------------------------------------------- interleaving
def interleaved(fns: dict[str, Callable[[], Any]], rounds: int = 7, block_s: float = 0.25,
                rest_s: float = 0.1) -> dict[str, list[float]]:
    """Seconds per call of each function, one value per round. Each function is first warmed
    up, then sized to a block of ~block_s; rounds rotate the order of the functions."""
    sizes = {}
    for name, f in fns.items():
        jax.block_until_ready(f())
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        sizes[name] = max(1, int(block_s / max(time.perf_counter() - t0, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            f, n = fns[name], sizes[name]
            t0 = time.perf_counter()
            for _ in range(n):
                out = f()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t0) / n)
            time.sleep(rest_s)
    return times


def summarise(times: list[float]) -> dict[str, float]:
    return {"median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * min(times),
            "max_ms": 1e3 * max(times)}


def ratios(a: list[float], b: list[float]) -> dict[str, float]:
    """Per-round a/b: median, min and max."""
    r = np.asarray(a) / np.asarray(b)
    return {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max())}


# ----------------------------------------------------------------------------- one network
def example_batch(model: Network, n: int) -> tuple[Any, Any]:
    """A fixed random float32 batch x (n, *model.input_shape) with valid labels y of the head's
    label shape ((n,), or (n, H, W) class ids for the U-Net's per-pixel head)."""
    check_batch(model.name, model, n)
    x = jax.random.normal(jax.random.key(1), (n, *model.input_shape), jnp.float32)
    y = model.head.random_labels(np.random.default_rng(1), n, model.output_shape, np.float32)
    return x, jnp.asarray(y)


def compiled(fn: Callable, *args: Any) -> tuple[Callable[[], Any], dict[str, Any]]:
    """(a call of jitted `fn` on args, compiled ahead of time; {"compile_s": seconds to
    compile, "temp_bytes": XLA's temporary memory of the program})."""
    t0 = time.perf_counter()
    program = fn.lower(*args).compile()
    info = {"compile_s": time.perf_counter() - t0,
            "temp_bytes": getattr(program.memory_analysis(), "temp_size_in_bytes", None)}
    return (lambda: program(*args)), info


def bench_network(name: str, batch: int, *, impls: tuple[str, ...] = ("conv",),
                  against_torch: bool = False, per_example: bool = True,
                  rounds: int = 7) -> dict[str, Any]:
    """Every figure for one network at one batch size (see the module docstring)."""
    model = models.get(name)
    opt = optim.make_optimizer("sgd", 1e-3)
    params, state = model.init(jax.random.key(0)), model.init_state()
    opt_state = opt.init(params)
    x, y = example_batch(model, batch)
    key = jax.random.key(2)
    variants = {f"manual[{impl}]": ("manual", impl) for impl in impls}
    variants["autodiff"] = ("autodiff", "conv")
    result: dict[str, Any] = {"network": name, "batch": batch, "variants": {}}
    fns = {}
    for label, (grad, impl) in variants.items():
        step = steps.make_train_step(model.with_impl(impl), opt, grad, donate=False)
        fns[label], result["variants"][label] = compiled(step, params, state, opt_state,
                                                         (x, y), key)
    if against_torch:
        from jaxcnn.tools.bench_torch import make_torch_step
        fns["torch"] = make_torch_step(model, batch)
        result["variants"]["torch"] = {}
    times = interleaved(fns, rounds=rounds)
    flops = step_flops(model, batch)
    for label, t in times.items():
        med = float(np.median(t))
        result["variants"][label].update(
            summarise(t), images_per_s=batch / med, gflops=flops / med / 1e9)
    result["flops"] = flops
    base = times["autodiff"]
    for label in times:
        if label != "autodiff":
            result["variants"][label]["vs_autodiff"] = ratios(times[label], base)
        if "torch" in times and label != "torch":
            result["variants"][label]["vs_torch"] = ratios(times[label], times["torch"])
    if per_example:
        result["per_example"] = bench_per_example(model, params, x, y, rounds=rounds)
    return result


def bench_per_example(model: Network, params: Any, x: Any, y: Any,
                      rounds: int = 5) -> dict[str, Any]:
    """Per-example gradients three ways, against the batch gradient (evaluation mode; manual
    gradients with impl="auto")."""
    auto = model.with_impl("auto")
    batch_grad = jax.jit(lambda p, x, y: grads.manual_grad(auto, p, x, y)[1])
    vmap_manual = jax.jit(lambda p, x, y: per_example_grads(auto, p, x, y))

    def one_autodiff(p, xi, yi):
        return jax.grad(model.loss)(p, xi[None], yi[None])

    vmap_autodiff = jax.jit(jax.vmap(one_autodiff, in_axes=(None, 0, 0)))
    single = jax.jit(lambda p, xi, yi: grads.manual_grad(auto, p, xi, yi)[1])
    xs, ys = [x[i:i + 1] for i in range(len(x))], [y[i:i + 1] for i in range(len(y))]

    def loop():
        return [single(params, xi, yi) for xi, yi in zip(xs, ys)]

    fns = {"batch": lambda: batch_grad(params, x, y), "vmap_manual": lambda: vmap_manual(
        params, x, y), "vmap_autodiff": lambda: vmap_autodiff(params, x, y), "loop": loop}
    times = interleaved(fns, rounds=rounds)
    out = {k: summarise(t) for k, t in times.items()}
    out["vmap_manual_vs_vmap_autodiff"] = ratios(times["vmap_manual"], times["vmap_autodiff"])
    out["vmap_manual_vs_batch"] = ratios(times["vmap_manual"], times["batch"])
    out["loop_vs_vmap_manual"] = ratios(times["loop"], times["vmap_manual"])
    return out


# ----------------------------------------------------------------------------- the whole run
def machine() -> dict[str, Any]:
    dev = jax.devices()[0]
    return {"backend": jax.default_backend(), "device": getattr(dev, "device_kind", str(dev)),
            "cores": len(os.sched_getaffinity(0)), "jax": jax.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def run(networks: tuple[tuple[str, int], ...] = NETWORKS, *, impls: tuple[str, ...] = ("conv",),
        against_torch: bool = False, per_example: bool = True, rounds: int = 7,
        precision: str = "highest", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every network's figures. `precision` ("highest", jaxcnn's default, or "default") is set
    around the whole run with `jax.default_matmul_precision`, so manual and autodiff steps
    and the matmul peak all run their products at it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"--rounds must be >= 1; got {rounds!r}")
    if not networks:
        raise ValueError("--networks: give at least one NAME:BATCH pair")
    for name, batch in networks:
        if name not in models.MODELS or isinstance(batch, bool) or not isinstance(batch, int) \
                or batch < 1:
            raise ValueError(f"--networks: {name}:{batch} must be NAME:BATCH with NAME one of "
                             f"{', '.join(models.MODELS)} and BATCH >= 1")
        check_batch(name, models.get(name), batch, per_example)
    if not impls or not set(impls) <= set(models.IMPLS):
        raise ValueError(f"--impl must list {', '.join(models.IMPLS)}; got {','.join(impls)!r}")
    if against_torch:  # ImportError (how to install it) now, before any work
        from jaxcnn.tools.bench_torch import _torch
        _torch()
    with jax.default_matmul_precision(precision):
        result = {"machine": machine(), "precision": precision,
                  "matmul_peak_gflops": matmul_peak(precision=precision), "networks": []}
        log(f"float32 matmul peak ({precision} precision): "
            f"{result['matmul_peak_gflops']:.1f} GFLOP/s")
        for name, batch in networks:
            log(f"benchmarking {name} at batch {batch} ...")
            result["networks"].append(bench_network(name, batch, impls=impls,
                                                    against_torch=against_torch,
                                                    per_example=per_example, rounds=rounds))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    """The run as markdown tables: train steps, then per-example gradients."""
    m, peak = result["machine"], result["matmul_peak_gflops"]
    precision = result.get("precision", "highest")
    lines = [f"Machine: {m['device']} ({m['backend']}), {m['cores']} cores, jax {m['jax']}; "
             f"float32, {precision} precision; matmul peak {peak:.1f} GFLOP/s (same run).", "",
             "| network | batch | variant | median ms (min-max) | images/s | compile s | "
             "temp MB | GFLOP/s (% peak) | vs autodiff: median (min-max) | vs torch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for net in result["networks"]:
        for label, v in net["variants"].items():
            mem = v.get("temp_bytes")
            cells = [net["network"], str(net["batch"]), label,
                     f"{v['median_ms']:.3f} ({v['min_ms']:.3f}-{v['max_ms']:.3f})",
                     f"{v['images_per_s']:.0f}",
                     f"{v['compile_s']:.2f}" if "compile_s" in v else "-",
                     f"{mem / 2**20:.1f}" if mem is not None else "-",
                     f"{v['gflops']:.1f} ({100 * v['gflops'] / peak:.0f}%)",
                     _ratio(v.get("vs_autodiff")), _ratio(v.get("vs_torch"))]
            lines.append("| " + " | ".join(cells) + " |")
    if any("per_example" in n for n in result["networks"]):
        lines += ["", "| network | batch | batch grad ms | vmap manual ms | vmap jax.grad ms | "
                  "loop ms | vmap manual / vmap jax.grad | vmap manual / batch | "
                  "loop / vmap manual |", "|---|---|---|---|---|---|---|---|---|"]
        for net in result["networks"]:
            pe = net.get("per_example")
            if pe:
                lines.append("| " + " | ".join([
                    net["network"], str(net["batch"]), f"{pe['batch']['median_ms']:.3f}",
                    f"{pe['vmap_manual']['median_ms']:.3f}",
                    f"{pe['vmap_autodiff']['median_ms']:.3f}", f"{pe['loop']['median_ms']:.1f}",
                    _ratio(pe["vmap_manual_vs_vmap_autodiff"]),
                    _ratio(pe["vmap_manual_vs_batch"]), _ratio(pe["loop_vs_vmap_manual"])]) + " |")
    return "\n".join(lines)


def _ratio(r: dict[str, float] | None) -> str:
    return "-" if r is None else f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"


def save(result: dict[str, Any], json_path: str | None = None,
         md_path: str | None = None) -> None:
    """Write the results as JSON to `json_path` and the tables to `md_path` (None: not that one).

    Args:
      result: what `run` returned.
      json_path: where the JSON goes, or None.
      md_path: where the markdown goes, or None.
    """
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
    if md_path:
        with open(md_path, "w") as f:
            f.write(to_markdown(result) + "\n")
