"""The seeds' 6x6 network trained twice from one seed: hand-written gradients vs `jax.grad`.

    python experiments/seed_manual_vs_autodiff.py

`models.seed_cnn()` (15 parameters) on `data.synthetic_bars()`: the same initial parameters, the
same optimizer, the same batches (`data.batches(..., seed, epoch)`) and the same step keys, once
with `steps.make_train_step(..., grad="manual")` and once with `grad="autodiff"`. Run in float32
and float64 (`--dtype float32 float64`, the default; `--dtype float64` for one of them).

Shows that the two trajectories coincide: the per-step training losses overlaid (manual solid,
autodiff dashed) and |loss_manual - loss_autodiff| per step on a log scale; prints a markdown
table of the final test accuracy of both runs, the max |loss difference| over the run (absolute
and relative) and the max relative parameter difference at the end (per leaf,
max |p_manual - p_autodiff| / max |p_autodiff|, the worst leaf).

Writes runs/experiments/seed_manual_vs_autodiff.{png,json} (`--figure`, `--json` to change; the
committed record is experiments/results/ and experiments/figures/, refreshed by passing those).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from jaxcnn import models
from jaxcnn.nn import grads
from jaxcnn.training import data, optim, plots
from jaxcnn.training import steps as train_steps

HERE = Path(__file__).resolve().parent
# written under runs/ (not tracked) unless asked: the committed record changes only on purpose
FIGURE = HERE.parent / "runs" / "experiments" / "seed_manual_vs_autodiff.png"
RESULTS = HERE.parent / "runs" / "experiments" / "seed_manual_vs_autodiff.json"
FLOOR = 1e-18  # exact zeros of |difference| are drawn here on the log scale


def run(grad: str, dtype: str, args: argparse.Namespace) -> dict:
    """One training run; returns its per-step losses, final params and test accuracy."""
    dt = jnp.dtype(dtype)
    # float32 data and initial parameters, cast: both precisions start from the same numbers
    ds = data.synthetic_bars(n_train=args.n_train, seed=args.seed, dtype=np.float32)
    x_train, x_test = ds.x_train.astype(dtype), ds.x_test.astype(dtype)
    y_train, y_test = ds.y_train.astype(dtype), ds.y_test.astype(dtype)
    model = models.seed_cnn()
    key = jax.random.key(args.seed)
    params = jax.tree.map(lambda a: a.astype(dt),
                          model.init(jax.random.fold_in(key, 0), jnp.float32))
    state = model.init_state(dt)
    optimizer = optim.make_optimizer(args.optimizer, args.lr)
    opt_state = optimizer.init(params)
    step_fn = train_steps.make_train_step(model, optimizer, grad)
    step_key = jax.random.fold_in(key, 1)
    losses, step = [], 0
    for epoch in range(args.epochs):
        for xb, yb in data.batches(x_train, y_train, args.batch_size, seed=args.seed,
                                   epoch=epoch):
            params, state, opt_state, m = step_fn(params, state, opt_state, (xb, yb),
                                                  jax.random.fold_in(step_key, step))
            losses.append(m["loss"])
            step += 1
    losses = np.array([float(v) for v in losses], np.float64)
    test = train_steps.evaluate(model, params, state, x_test, y_test)
    return {"losses": losses, "params": params, "test_accuracy": test["accuracy"],
            "test_loss": test["loss"]}


def compare(dtype: str, args: argparse.Namespace) -> dict:
    manual, auto = run("manual", dtype, args), run("autodiff", dtype, args)
    diff = np.abs(manual["losses"] - auto["losses"])
    rel = diff / np.maximum(np.abs(auto["losses"]), 1e-300)
    param_rows = grads.compare(manual["params"], auto["params"])
    return {
        "dtype": dtype,
        "steps": len(diff),
        "manual_test_accuracy": manual["test_accuracy"],
        "autodiff_test_accuracy": auto["test_accuracy"],
        "manual_final_loss": float(manual["losses"][-1]),
        "autodiff_final_loss": float(auto["losses"][-1]),
        "max_abs_loss_diff": float(diff.max()),
        "max_rel_loss_diff": float(rel.max()),
        "steps_with_identical_loss": int((diff == 0).sum()),
        "max_rel_param_diff": max(r.max_rel for r in param_rows),
        "param_diffs": {r.path: {"max_abs": r.max_abs, "max_rel": r.max_rel}
                        for r in param_rows},
        "losses_manual": manual["losses"].tolist(),
        "losses_autodiff": auto["losses"].tolist(),
    }


def plot(results: list[dict], path: Path, title: str) -> Path:
    """One loss panel per dtype (manual solid, autodiff dashed on top), then the differences."""
    fig, axes = plt.subplots(1, len(results) + 1, figsize=(5.2 * (len(results) + 1), 4.5))
    colors = {"float32": "tab:blue", "float64": "tab:orange"}
    ax_diff = axes[-1]
    for r, ax_loss in zip(results, axes):
        c, steps = colors[r["dtype"]], np.arange(1, r["steps"] + 1)
        ax_loss.plot(steps, r["losses_manual"], "-", color=c, lw=2.2, label="manual")
        ax_loss.plot(steps, r["losses_autodiff"], "--", color="black", lw=0.9, dashes=(3, 2),
                     label="autodiff")
        ax_loss.set(xlabel="step", ylabel="training loss (batch)", yscale="log",
                    title=f"per-step training loss, {r['dtype']}")
        d = np.abs(np.array(r["losses_manual"]) - np.array(r["losses_autodiff"]))
        ax_diff.plot(steps, np.maximum(d, FLOOR), ".", ms=2.5, color=c,
                     label=f"{r['dtype']}: max {d.max():.1e}; {int((d == 0).sum())} of "
                           f"{len(d)} steps exactly 0")
    ax_diff.set(xlabel="step", ylabel="|loss_manual - loss_autodiff|", yscale="log",
                title=f"difference per step (exact 0 drawn at {FLOOR:.0e})")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return plots.save(fig, path)


def table(results: list[dict]) -> str:
    lines = ["| dtype | steps | test acc manual | test acc autodiff | max abs loss diff | "
             "max rel loss diff | max rel param diff (end) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['dtype']} | {r['steps']} | {r['manual_test_accuracy']:.4f} | "
              f"{r['autodiff_test_accuracy']:.4f} | {r['max_abs_loss_diff']:.2e} | "
              f"{r['max_rel_loss_diff']:.2e} | {r['max_rel_param_diff']:.2e} |"
              for r in results]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", nargs="+", choices=("float32", "float64"),
                   default=["float32", "float64"], help="precision(s) to run in")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=512, help="synthetic training images")
    p.add_argument("--optimizer", choices=optim.OPTIMIZERS, default="sgd")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", type=Path, default=FIGURE, help="PNG to write")
    p.add_argument("--json", type=Path, default=RESULTS, help="JSON of the numbers to write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "float64" in args.dtype:
        jax.config.update("jax_enable_x64", True)
    t0 = time.perf_counter()
    results = [compare(dtype, args) for dtype in dict.fromkeys(args.dtype)]
    print(f"seed_cnn on synthetic_bars (n_train {args.n_train}), {args.optimizer} lr {args.lr}, "
          f"batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}\n")
    print(table(results))
    title = (f"seed_cnn on synthetic bars: manual vs autodiff gradients "
             f"({args.optimizer}, lr {args.lr}, {args.epochs} epochs, seed {args.seed})")
    fig = plot(results, args.figure, title)
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                          if k not in ("figure", "json")},
               "results": [{k: v for k, v in r.items() if not k.startswith("losses_")}
                           for r in results],
               "seconds": time.perf_counter() - t0}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {fig} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
