"""The default `jaxcnn train` run over several seeds: test accuracy and time.

    python experiments/digits.py

For each seed in `--seeds` (default 0 1 2 3 4): `trainer.fit(trainer.TrainConfig(seed=s), run)`,
the default training configuration (the LeNet-style `lenet5-digits` net on scikit-learn's bundled
8x8 digits, hand-written gradients, Adam 2e-3 with a cosine schedule, batch 32, 40 epochs).
Prints a markdown table of the final test accuracy, the training seconds (`fit`'s own clock: the
epoch loop, compile and per-epoch evaluation included) and the wall time of the whole `fit` call
(data loading, checkpoints and plots too) for every seed, then their mean and min.

The run directories (checkpoints, metrics.jsonl, plots) go to a temporary directory unless
`--runs-dir` is given; the first seed's curves.png is copied to
runs/experiments/digits_curves.png (`--figure`) and the numbers written to
runs/experiments/digits.json (`--json`; the committed record is experiments/results/digits.json).
`--epochs` shortens the runs (for tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jaxcnn.training import run as trainer

HERE = Path(__file__).resolve().parent
# written under runs/ (not tracked) unless asked: the committed record in experiments/results and
# experiments/figures changes only when a person passes those paths
FIGURE = HERE.parent / "runs" / "experiments" / "digits_curves.png"
RESULTS = HERE.parent / "runs" / "experiments" / "digits.json"


def run_seeds(args: argparse.Namespace, runs_dir: Path) -> tuple[trainer.TrainConfig, list[dict]]:
    base = trainer.TrainConfig()
    if args.epochs is not None:
        base = dataclasses.replace(base, epochs=args.epochs)
    rows = []
    for seed in args.seeds:
        cfg = dataclasses.replace(base, seed=seed)
        t0 = time.perf_counter()
        # a rerun of the experiment replaces its own earlier runs
        summary = trainer.fit(cfg, runs_dir / f"seed{seed}", overwrite=True, progress=False,
                              log=lambda m: None)
        wall = time.perf_counter() - t0
        rows.append({"seed": seed, "test_accuracy": summary["test_accuracy"],
                     "test_loss": summary["test_loss"], "train_loss": summary["train_loss"],
                     "train_seconds": summary["seconds"], "wall_seconds": wall,
                     "run_dir": f"seed{seed}"})
        print(f"seed {seed}: test accuracy {summary['test_accuracy']:.4f} "
              f"({summary['seconds']:.1f} s training, {wall:.1f} s wall)", flush=True)
    return base, rows


def table(rows: list[dict]) -> str:
    lines = ["| seed | test accuracy | training s | wall s |", "|---|---:|---:|---:|"]
    lines += [f"| {r['seed']} | {r['test_accuracy']:.4f} | {r['train_seconds']:.1f} | "
              f"{r['wall_seconds']:.1f} |" for r in rows]
    for name, fn in (("mean", statistics.fmean), ("min", min)):
        lines.append(f"| **{name}** | {fn(r['test_accuracy'] for r in rows):.4f} | "
                     f"{fn(r['train_seconds'] for r in rows):.1f} | "
                     f"{fn(r['wall_seconds'] for r in rows):.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=None,
                   help="override TrainConfig's epochs (default: its own, 40)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="keep the run directories here (default: a temporary directory)")
    p.add_argument("--figure", type=Path, default=FIGURE,
                   help="where to copy the first seed's curves.png")
    p.add_argument("--json", type=Path, default=RESULTS, help="JSON of the numbers to write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jaxcnn-digits-") as tmp:
        runs_dir = args.runs_dir or Path(tmp)
        cfg, rows = run_seeds(args, runs_dir)
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(runs_dir / f"seed{args.seeds[0]}" / "curves.png", args.figure)
    if args.runs_dir is None:
        for r in rows:
            r["run_dir"] = None  # deleted with the temporary directory
    print(f"\n{cfg.model} on {cfg.data}: {cfg.grad} gradients, {cfg.optimizer} lr {cfg.lr} "
          f"({cfg.schedule}), batch {cfg.batch_size}, {cfg.epochs} epochs\n")
    print(table(rows))
    accs = [r["test_accuracy"] for r in rows]
    out = {"config": dataclasses.asdict(cfg), "seeds": args.seeds, "runs": rows,
           "test_accuracy": {"mean": statistics.fmean(accs), "min": min(accs), "max": max(accs)},
           "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in rows),
           "wall_seconds_mean": statistics.fmean(r["wall_seconds"] for r in rows)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.figure} (curves of seed {args.seeds[0]}) and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
