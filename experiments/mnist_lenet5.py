"""LeNet-5 on MNIST (or Fashion-MNIST) from IDX files you already have; nothing is downloaded.

    python experiments/mnist_lenet5.py DIR                 # MNIST
    python experiments/mnist_lenet5.py DIR --fashion       # Fashion-MNIST

DIR must hold the four standard IDX files (raw or .gz, 'train-images-idx3-ubyte' or
'train-images.idx3-ubyte' naming): train-images-idx3-ubyte, train-labels-idx1-ubyte,
t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte. Without DIR, or if any file is missing, the
script says which files it needs and exits with status 2.

Trains `models.lenet5()` with `trainer.fit(TrainConfig(model="lenet5", data="mnist:DIR"))`:
hand-written gradients, Adam (`--lr` 1e-3, cosine schedule), batch `--batch-size` 128,
`--epochs` 10, seed `--seed` 0. Prints a markdown table of the per-epoch train loss, test loss
and test accuracy, copies the run's curves.png to runs/experiments/mnist_lenet5_curves.png
(fashion_lenet5_curves.png with --fashion; `--figure`) and writes the numbers to
runs/experiments/mnist_lenet5.json (`--json`). The run directory (checkpoint, metrics.jsonl,
plots) is temporary unless `--runs-dir` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from jaxcnn.training import data, plots
from jaxcnn.training import run as trainer

HERE = Path(__file__).resolve().parent


def missing_files(directory: Path) -> list[str]:
    """The standard IDX files not found in `directory` under any accepted name."""
    missing = []
    for stem in data.IDX_FILES.values():
        dotted = stem.replace("-idx", ".idx")
        if not any((directory / n).is_file() for n in (stem, stem + ".gz", dotted,
                                                       dotted + ".gz")):
            missing.append(stem)
    return missing


def need_files_message(directory: Path | None, missing: list[str], kind: str) -> str:
    where = "no directory given" if directory is None else \
        (f"{directory} is not a directory" if not directory.is_dir()
         else f"{directory} lacks {', '.join(missing)}")
    source = ("Fashion-MNIST (github.com/zalandoresearch/fashion-mnist)" if kind == "fashion"
              else "MNIST (yann.lecun.com/exdb/mnist)")
    return (f"mnist_lenet5: {where}.\n"
            f"Needs a directory holding the four standard {source} IDX files, raw or gzipped "
            f"(.gz):\n  " + "\n  ".join(data.IDX_FILES.values()) + "\n"
            "Nothing is downloaded; fetch them yourself and run\n"
            f"  python experiments/mnist_lenet5.py DIR{' --fashion' if kind == 'fashion' else ''}")


def table(epochs: list[dict]) -> str:
    lines = ["| epoch | train loss | train acc | test loss | test acc | seconds |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['epoch']} | {r['train_loss']:.4f} | {r['train_accuracy']:.4f} | "
              f"{r['test_loss']:.4f} | {r['test_accuracy']:.4f} | {r['seconds']:.1f} |"
              for r in epochs]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", nargs="?", type=Path, default=None,
                   help="directory holding the four IDX files")
    p.add_argument("--fashion", action="store_true", help="Fashion-MNIST files in DIR")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10,
                   help="steps between the per-step records of metrics.jsonl")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="keep the run directory here (default: a temporary directory)")
    p.add_argument("--figure", type=Path, default=None,
                   help="where to copy curves.png (default runs/experiments/"
                        "{mnist,fashion}_lenet5_curves.png)")
    p.add_argument("--json", type=Path, default=None,
                   help="JSON of the numbers (default runs/experiments/"
                        "{mnist,fashion}_lenet5.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kind = "fashion" if args.fashion else "mnist"
    if args.dir is None or not args.dir.is_dir() or missing_files(args.dir):
        missing = [] if args.dir is None or not args.dir.is_dir() else missing_files(args.dir)
        print(need_files_message(args.dir, missing, kind), file=sys.stderr)
        return 2
    figure = args.figure or HERE.parent / "runs" / "experiments" / f"{kind}_lenet5_curves.png"
    out_json = args.json or HERE.parent / "runs" / "experiments" / f"{kind}_lenet5.json"
    cfg = trainer.TrainConfig(model="lenet5", data=f"{kind}:{args.dir}", epochs=args.epochs,
                              batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                              optimizer="adam", schedule="cosine", grad="manual",
                              log_every=args.log_every)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"jaxcnn-{kind}-") as tmp:
        run_dir = args.runs_dir or Path(tmp)
        summary = trainer.fit(cfg, run_dir, overwrite=True, progress=sys.stderr.isatty())
        _, epochs = plots.read_metrics(run_dir / "metrics.jsonl")
        figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "curves.png", figure)
    wall = time.perf_counter() - t0
    print(f"\nlenet5 on {kind} ({args.dir}): manual gradients, adam lr {args.lr} (cosine), "
          f"batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}\n")
    print(table(epochs))
    print(f"\nfinal test accuracy {summary['test_accuracy']:.4f}; {summary['seconds']:.1f} s "
          f"training, {wall:.1f} s wall")
    result = {"config": dataclasses.asdict(cfg), "epochs": epochs,
              "test_accuracy": summary["test_accuracy"], "train_seconds": summary["seconds"],
              "wall_seconds": wall, "run_dir": str(args.runs_dir) if args.runs_dir else None}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1))
    print(f"wrote {figure} and {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
