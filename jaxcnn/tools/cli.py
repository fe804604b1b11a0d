"""The `jaxcnn` command line: one subcommand per registered `Command`.

    jaxcnn train [--model NAME] [--data digits|synthetic|mnist:DIR|fashion:DIR] [--grad ...] ...
    jaxcnn walkthrough [--seed N] [--label {0,1}] [--image FILE.npy] [--plot FILE.png] [--json]
    jaxcnn gradcheck --model NAME [--dtype float64|float32] [--batch N] [--seed N] [--train]
    jaxcnn bench [--against torch] [--impl conv,gemm,auto] [--networks seed:1,lenet5:128]

To add a subcommand, write `_<name>_args(parser)` (its options) and `_<name>(args) -> int` (a thin
call into the library returning the exit status) and `register` them at the bottom of this file.
Exit status: 0 on success, 1 when a check fails or training stops (divergence), 2 on bad input
(one line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import NamedTuple

from jaxcnn.nn import grads, models
from jaxcnn.tools import bench, gradcheck, walkthrough
from jaxcnn.training import optim
from jaxcnn.training import run as trainer


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int]) -> None:
    """Make `jaxcnn <name>` a subcommand: `add_arguments` declares its options, `run` does it."""
    COMMANDS[name] = Command(help, add_arguments, run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxcnn", description="CNNs whose every gradient is written by hand in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        cmd.add_arguments(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error argparse already reported (2)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    try:
        return COMMANDS[args.command].run(args)
    except BrokenPipeError:  # `jaxcnn ... | head`: stop quietly, the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError) as e:
        print(f"jaxcnn {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------- walkthrough
def _walkthrough_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0,
                   help="PRNG seed of the parameters and of the default image (default 0)")
    p.add_argument("--label", type=float, default=1.0, metavar="{0,1}",
                   help="the true label Y (default 1)")
    p.add_argument("--image", metavar="FILE.npy", help="a 6x6 (or 6x6x1) image to use instead")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the maps as heatmaps to a PNG")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")


def _walkthrough(args: argparse.Namespace) -> int:
    image = None if args.image is None else walkthrough.load_image(args.image)
    result = walkthrough.run(args.seed, args.label, image)
    if args.plot:
        walkthrough.plot(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(walkthrough.format_text(result))
        if args.plot:
            print(f"Figure written to {args.plot}")
    return 0 if result["ok"] else 1


# ----------------------------------------------------------------------------- gradcheck
def _gradcheck_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME",
                   help=f"one of {', '.join(models.MODELS)}")
    p.add_argument("--dtype", choices=tuple(gradcheck.TOLERANCES), default="float64")
    p.add_argument("--batch", type=int, default=4, help="examples in the random batch (4)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of params, batch, dropout")
    p.add_argument("--train", action="store_true",
                   help="training mode: batch-statistics BatchNorm, Dropout with a fixed key")
    p.add_argument("--fd-per-leaf", type=int, default=8, metavar="K",
                   help="finite-difference coordinates per leaf, drawn at random (8)")
    p.add_argument("--jitter", type=float, default=0.05, metavar="S",
                   help="check at init + S N(0, 1), off ReLU kinks (0.05; 0: at init)")


def _gradcheck(args: argparse.Namespace) -> int:
    rows, header = gradcheck.gradcheck(args.model, args.dtype, args.batch, args.seed, args.train,
                             args.fd_per_leaf, args.jitter)
    print(gradcheck.format_table(rows, header, args.dtype, args.fd_per_leaf))
    return 0 if all(r.ok for r in rows) else 1


# ----------------------------------------------------------------------------- train
def _train_args(p: argparse.ArgumentParser) -> None:
    d = trainer.TrainConfig()
    p.add_argument("--model", default=d.model, help=f"one of {', '.join(models.MODELS)} "
                   f"(default {d.model})")
    p.add_argument("--data", default=d.data, help="digits (bundled, default), synthetic (6x6 "
                   "bars for the seed net), mnist:DIR or fashion:DIR (IDX files, raw or .gz)")
    p.add_argument("--grad", default=d.grad, choices=grads.GRADS,
                   help="hand-written backward pass or jax.grad (default manual)")
    p.add_argument("--impl", default="conv", choices=models.IMPLS,
                   help="formulation of the model's convolutions, built in (default conv)")
    p.add_argument("--optimizer", default=d.optimizer, choices=optim.OPTIMIZERS)
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    p.add_argument("--schedule", default=d.schedule, choices=optim.SCHEDULES)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--clip", type=float, default=None, help="clip gradients to this global norm")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dtype", default=d.dtype, choices=("float32", "float64"))
    p.add_argument("--devices", type=int, default=None,
                   help="data-parallel over this many local devices (default: all)")
    p.add_argument("--out", default="runs/train", help="output directory (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue from OUT's last checkpoint")
    p.add_argument("--check-grads", action="store_true",
                   help="compare manual and autodiff gradients on the first batch first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _train(args: argparse.Namespace) -> int:
    cfg = trainer.TrainConfig(**{f.name: getattr(args, f.name)
                                 for f in dataclasses.fields(trainer.TrainConfig)
                                 if hasattr(args, f.name)})
    model = models.get(cfg.model, impl=args.impl) if cfg.model in models.MODELS else None
    try:
        summary = trainer.fit(cfg, args.out, model=model, resume=args.resume,
                              progress=not args.quiet)
    except trainer.TrainingStoppedError as e:
        print(f"jaxcnn train: stopped: {e}", file=sys.stderr)
        return 1
    if "test_accuracy" in summary:
        print(f"test accuracy {summary['test_accuracy']:.4f} after {summary['epoch']} epochs "
              f"({summary['seconds']:.1f} s of training); results in {args.out}")
    return 0


# ----------------------------------------------------------------------------- bench
def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--against", choices=("torch",), help="also time PyTorch eager on the CPU")
    p.add_argument("--impl", default="conv", help="comma-separated manual formulations to time "
                   "(conv, gemm, auto; default conv)")
    p.add_argument("--networks", default=",".join(f"{n}:{b}" for n, b in bench.NETWORKS),
                   help="comma-separated NAME:BATCH pairs")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--precision", choices=tuple(bench.PRECISIONS), default="highest",
                   help="precision of every product (default highest; 'default' is TF32 on "
                   "recent NVIDIA GPUs)")
    p.add_argument("--no-per-example", action="store_true", help="skip per-example gradients")
    p.add_argument("--json", default="bench.json", help="where to write the JSON (bench.json)")
    p.add_argument("--markdown", default="bench.md", help="where to write the table (bench.md)")


def _bench(args: argparse.Namespace) -> int:
    networks = []
    for item in args.networks.split(","):
        name, _, batch = item.partition(":")
        if name not in models.MODELS or not batch.isdigit() or int(batch) < 1:
            raise ValueError(f"--networks: {item!r} must be NAME:BATCH with NAME one of "
                             f"{', '.join(models.MODELS)} and BATCH >= 1")
        networks.append((name, int(batch)))
    impls = tuple(args.impl.split(","))
    if not set(impls) <= set(models.IMPLS):
        raise ValueError(f"--impl must list conv, gemm or auto; got {args.impl!r}")
    result = bench.run(tuple(networks), impls=impls, against_torch=args.against == "torch",
                       per_example=not args.no_per_example, rounds=args.rounds,
                       precision=args.precision, log=lambda s: print(s, file=sys.stderr))
    bench.save(result, args.json, args.markdown)
    print(bench.to_markdown(result))
    return 0


register("train", "train a model with the hand-written gradients (the main job)", _train_args,
         _train)
register("walkthrough", "the seed CNN's forward and backward pass, tensor by tensor, manual "
         "vs jax.grad", _walkthrough_args, _walkthrough)
register("gradcheck", "check a model's manual gradients against jax.grad and finite differences",
         _gradcheck_args, _gradcheck)
register("bench", "time manual vs autodiff (and PyTorch) train steps, interleaved", _bench_args,
         _bench)

if __name__ == "__main__":
    raise SystemExit(main())
