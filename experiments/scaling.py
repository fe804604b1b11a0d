"""Time the data-parallel manual train step of LeNet-5 on 1, 2, 4 and 8 devices.

    python experiments/scaling.py [--json scaling.json] [--steps 20] [--devices 1 2 4 8]

LeNet-5 on 28x28x1 images, global batch 128, float32, Adam; the hand-written backward pass
(`jaxcnn.training.parallel.make_parallel_train_step(..., grad="manual")`). Each device count
runs in its own subprocess with `--xla_force_host_platform_device_count=N` appended to
XLA_FLAGS: a few warm-up steps (the first compiles), then the median of `--steps` timed steps.
Prints a markdown table and writes the numbers as JSON.

Forced CPU devices are not hardware: all of them share this machine's cores, so no speed-up is
expected here; the table shows what the SPMD machinery (sharding, per-device programs, the
gradient all-reduce) costs. On a host with several GPUs the same code, unchanged, puts one shard
of the batch on each GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH, WARMUP = 128, 3


def worker(devices: int, steps: int) -> dict:
    """In the subprocess: time the step on a mesh of `devices` forced CPU devices."""
    import jax
    import numpy as np

    from jaxcnn import models
    from jaxcnn.training import optim, parallel
    from jaxcnn.training import steps as train_steps

    model = models.lenet5()
    opt = optim.make_optimizer("adam", 1e-3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int32)

    def timed(step, params, state, opt_state, batch) -> list[float]:
        times = []
        for i in range(WARMUP + steps):
            t0 = time.perf_counter()
            params, state, opt_state, m = step(params, state, opt_state, batch,
                                               jax.random.key(i))
            jax.block_until_ready((params, m))
            times.append(time.perf_counter() - t0)
        return times[WARMUP:]

    params = model.init(jax.random.key(0))
    mesh = parallel.make_mesh(devices)
    step = parallel.make_parallel_train_step(model, opt, mesh, "manual")
    t0 = time.perf_counter()
    times = timed(step, *parallel.replicate((params, {}, opt.init(params)), mesh),
                  parallel.shard_batch((x, y), mesh))
    out = {"devices": devices, "platform": jax.devices()[0].platform,
           "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
           "wall_s": time.perf_counter() - t0}
    if devices == 1:  # the plain single-device step, without shard_map, for reference
        params = model.init(jax.random.key(0))  # the first ones were donated
        plain = timed(train_steps.make_train_step(model, opt, "manual"), params, {},
                      opt.init(params), (x, y))
        out["plain_median_ms"] = 1e3 * statistics.median(plain)
    return out


def run(devices: int, steps: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={devices}").strip()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, __file__, "--worker", str(devices), "--steps",
                           str(steps)], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"{devices} devices failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    base = rows[0]["median_ms"]
    lines = ["| devices | median step (ms) | min step (ms) | images/s | speed-up vs 1 device |",
             "|--------:|-----------------:|--------------:|---------:|---------------------:|"]
    for r in rows:
        lines.append(f"| {r['devices']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
                     f"{BATCH / r['median_ms'] * 1e3:,.0f} | {base / r['median_ms']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", default="runs/experiments/scaling.json",
                    help="where to write the numbers")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return
    rows = []
    for d in args.devices:
        rows.append(run(d, args.steps))
        print(f"{d} device(s): {rows[-1]['median_ms']:.1f} ms per step", flush=True)
    print(f"LeNet-5, 28x28x1, global batch {BATCH}, float32, Adam, manual gradients; "
          f"median of {args.steps} steps after {WARMUP} warm-up steps "
          f"({os.cpu_count()} CPU cores, platform {rows[0]['platform']})\n")
    print(table(rows))
    if "plain_median_ms" in rows[0]:
        print(f"\nplain single-device train_steps.make_train_step (no shard_map): "
              f"{rows[0]['plain_median_ms']:.1f} ms per step")
    print("\nCaveat: forced CPU devices (--xla_force_host_platform_device_count) all share the "
          "same CPU cores, so no speed-up is expected here: the table shows the overhead of the "
          "SPMD machinery (per-device programs, the gradient all-reduce), and any gain is the "
          "same cores kept busier, not more hardware. Timings on a shared machine are noisy; "
          "compare the min column too. On a real multi-GPU host the same code shards the batch "
          "across the GPUs.")
    Path(args.json).write_text(json.dumps({"batch": BATCH, "steps": args.steps,
                                           "cpu_count": os.cpu_count(), "rows": rows}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
