"""The max-pool backward pass by window size: its two formulations against `jax.vjp`.

`backward.max_pool` has two: "taps" reads a window as K = prod(window) strided taps and decides
the winner among them, so its program grows with K; "by_index" finds each window's winner as a
flat index one spatial axis at a time and scatter-adds dy there, a program of fixed size. The
rule takes the taps up to `backward.pool.PAIRWISE_MAX` elements and by_index beyond: the
crossover this benchmark measures.
Per window size (stride 1, "SAME" padding, so every window size fits the same input and output)
this times both and `jax.vjp` of `forward.max_pool`, jitted, in one process, interleaved as
`jaxcnn.tools.bench.interleaved` does (ratios round by round, their median), and reports each
one's compile time, XLA's temporary memory, the growth of the process's peak resident memory
while compiling (Linux), and its largest difference from `jax.vjp`.

    python -m jaxcnn.tools.bench_pool [--windows 2,4,8,16,24] [--rounds 5] [--markdown PATH]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _geometry, forward
from jaxcnn.backward import pool as pool_rules
from jaxcnn.tools.bench import compiled, interleaved, machine, ratios, summarise

WINDOWS = (2, 4, 8, 16, 24)
SHAPE = (8, 16, 16, 16)  # (N, H, W, C), float32: the case of issue 23


def variants(window: int) -> dict[str, Callable[[Any, Any], Any]]:
    """{name: (dy, x) -> dx} for one window size (stride 1, "SAME")."""
    kw: dict[str, Any] = dict(window=window, stride=1, padding="SAME")

    def formulation(fn: Callable) -> Callable[[Any, Any], Any]:
        return lambda dy, x: fn(dy, x, _geometry.pool_nd("max_pool", x, window, 1, "SAME"))

    return {"jax.vjp": lambda dy, x: jax.vjp(lambda x: forward.max_pool(x, **kw), x)[1](dy)[0],
            "taps": formulation(pool_rules._max_pool_by_taps),
            "by_index": formulation(pool_rules._max_pool_by_index)}


def _peak_rss_mb() -> float | None:
    """The process's peak resident memory in MiB (Linux's VmHWM), or None."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM"))
    except (OSError, StopIteration):
        return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident memory (Linux: /proc/self/clear_refs, "5")."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def bench_window(window: int, shape: tuple[int, ...] = SHAPE, rounds: int = 5) -> dict[str, Any]:
    """Every variant's figures for one window size.

    Args:
      window: the window on both spatial axes; shape: x's (N, H, W, C); rounds: interleaved.

    Returns:
      {"window", "variants": {name: {compile_s, temp_bytes, compile_rss_mb, median_ms, min_ms,
      max_ms, vs_vjp (ratios), max_abs_diff_vs_vjp}}}.
    """
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    dy = jnp.asarray(rng.standard_normal(shape), jnp.float32)  # SAME, stride 1: y is x's shape
    out: dict[str, Any] = {"window": window, "variants": {}}
    fns, results = {}, {}
    for name, fn in variants(window).items():
        reset = _reset_peak_rss()
        before = _peak_rss_mb()
        fns[name], info = compiled(jax.jit(fn), dy, x)
        info["compile_rss_mb"] = (_peak_rss_mb() - before) if reset and before else None
        results[name] = np.asarray(fns[name]())
        out["variants"][name] = info
    times = interleaved(fns, rounds=rounds)
    for name, t in times.items():
        out["variants"][name].update(
            summarise(t), vs_vjp=ratios(t, times["jax.vjp"]),
            max_abs_diff_vs_vjp=float(np.abs(results[name] - results["jax.vjp"]).max()))
    return out


def run(windows: tuple[int, ...] = WINDOWS, shape: tuple[int, ...] = SHAPE,
        rounds: int = 5) -> dict[str, Any]:
    """Every window's figures: {"machine", "shape", "windows": [bench_window(...), ...]}."""
    if not windows or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                          for k in windows):
        raise ValueError(f"windows must be ints >= 1; got {windows!r}")
    return {"machine": machine(), "shape": list(shape),
            "windows": [bench_window(k, shape, rounds) for k in windows]}


def to_markdown(result: dict[str, Any]) -> str:
    """One row per window and variant."""
    m = result["machine"]
    lines = [f"max_pool backward, x {tuple(result['shape'])} float32, stride 1, SAME; "
             f"{m['device']} ({m['backend']}), {m['cores']} cores, jax {m['jax']}", "",
             "| window | variant | median ms (min-max) | vs jax.vjp | compile s | temp MB | "
             "compile RSS MB | max abs diff vs jax.vjp |", "|---|---|---|---|---|---|---|---|"]
    for w in result["windows"]:
        for name, v in w["variants"].items():
            r, mem, rss = v["vs_vjp"], v["temp_bytes"], v["compile_rss_mb"]
            lines.append("| " + " | ".join([
                f"{w['window']}x{w['window']}", name,
                f"{v['median_ms']:.3f} ({v['min_ms']:.3f}-{v['max_ms']:.3f})",
                f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})", f"{v['compile_s']:.2f}",
                "-" if mem is None else f"{mem / 2**20:.2f}",
                "-" if rss is None else f"{rss:.1f}", f"{v['max_abs_diff_vs_vjp']:.1e}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m jaxcnn.tools.bench_pool`: print the table (and write it with --markdown)."""
    p = argparse.ArgumentParser(prog="python -m jaxcnn.tools.bench_pool",
                                description=__doc__.splitlines()[0])
    p.add_argument("--windows", default=",".join(map(str, WINDOWS)),
                   help="comma-separated window sizes")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--markdown", metavar="PATH", help="also write the table to PATH")
    args = p.parse_args(argv)
    try:
        windows = tuple(int(k) for k in args.windows.split(","))
    except ValueError:
        p.error(f"--windows must be comma-separated ints; got {args.windows!r}")
    text = to_markdown(run(windows, rounds=max(args.rounds, 1)))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
