"""The `jaxcnn` command line: one subcommand per registered `Command`.

    jaxcnn train [--model NAME] [--data digits|digits32|synthetic|shapes|signals|volumes|...] ...
                 [--dp-clip C --dp-noise SIGMA [--dp-delta DELTA]]
    jaxcnn walkthrough [--block seed|residual] [--seed N] [--label {0,1}] [--image FILE.npy]
                       [--plot FILE.png] [--json]
    jaxcnn gradcheck --model NAME [--dtype float64|float32] [--batch N] [--seed N] [--train]
    jaxcnn bench [--against torch] [--impl conv,gemm,auto] [--networks seed:1,lenet5:128]
    jaxcnn explain conv2d --input 7x7x3 --kernel 3x3 --filters 4 --stride 2 --padding SAME

The module is over 400 lines because every subcommand's options sit beside its thin call into
the library, five of them, so that `--help` and the code read alike. To add a subcommand,
write `_<name>_args(parser)` (its options) and `_<name>(args) -> int` (a thin call into the
library returning the exit status) and `register` them at the bottom of this file.
Exit status: 0 on success, 1 when a check fails or training stops (divergence), 2 on bad input
(one line on stderr, naming the argument, path or file; argparse's usage errors included), 130 on
Ctrl-C (the shell's 128 + SIGINT; `jaxcnn train` says after which step and from which checkpoint
`--resume` continues). A closed stdout or stderr (`jaxcnn train 2>&1 | head -1`) neither stops a
command nor changes its exit status: the rest of its output is dropped.

Run as a program (`main()` with no argv: the `jaxcnn` script, `python -m jaxcnn.tools.cli`), the
command keeps XLA's C++ log lines off the terminal (jax's `jax_logging_level` CRITICAL: notes such
as "Constant folding an instruction is taking > 1s", which XLA logs at ERROR level, are not
errors; real errors still arrive as Python exceptions), unless TF_CPP_MIN_LOG_LEVEL or
JAX_LOGGING_LEVEL is set in the environment, whose choice then holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, NoReturn

from jaxcnn.nn import grads, lookup, models
from jaxcnn.tools import _terminal as terminal
from jaxcnn.tools import (
    bench,
    bench_dp,
    bench_torch,
    explain,
    gradcheck,
    launch,
    walkthrough,
    walkthrough_residual,
)
from jaxcnn.training import dp, optim, processes
from jaxcnn.training import run as trainer
from jaxcnn.training.per_example import has_batchnorm


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int]) -> None:
    """Make `jaxcnn <name>` a subcommand: `add_arguments` declares its options, `run` does it."""
    COMMANDS[name] = Command(help, add_arguments, run)


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, except None and False (the help says what they do)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The `jaxcnn` parser with one subparser per registered command."""
    parser = _Parser(
        prog="jaxcnn", description="CNNs whose every gradient is written by hand in JAX.")
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        cmd.add_arguments(sub.add_parser(name, help=cmd.help, description=cmd.help,
                                         formatter_class=_HelpFormatter))
    return parser


def version() -> str:
    """What `jaxcnn --version` prints.

    Returns:
      "jaxcnn <version>", from `jaxcnn.__version__`. The package root is read, not imported: it
      sits above the tools (docs/design.md), and is always imported before this module.
    """
    return f"jaxcnn {sys.modules['jaxcnn'].__version__}"


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:], as a program: see the module
    docstring for XLA's log lines).

    Args:
      argv: the arguments after `jaxcnn`.

    Returns:
      the exit status (see the module docstring).
    """
    if argv is None:
        terminal.quiet_xla_logs()
    with terminal.readers_may_leave():
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
            args.argv = list(sys.argv[1:] if argv is None else argv)
        except SystemExit as e:  # --help, --version (0) or a usage error already reported (2)
            return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
        try:
            return COMMANDS[args.command].run(args)
        except KeyboardInterrupt:
            print(f"jaxcnn {args.command}: interrupted", file=sys.stderr)
            return 130
        except (ValueError, OSError) as e:
            print(f"jaxcnn {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2


# ----------------------------------------------------------------------------- argument types
def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int in low..high (high None: no upper bound)."""
    want = f"an int in {low}..{high}" if high is not None else f"an int >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}; got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {want}; got {text}")
        return value

    parse.__name__ = want
    return parse


SEED = _int_in(0, trainer.MAX_SEED)  # NumPy's and scikit-learn's seeds end at 2**32 - 1
POSITIVE = _int_in(1)


def _label(text: str) -> int:
    """An argparse type: the label 0 or 1.

    Args:
      text: the argument ("0", "1", "0.0", "1.0", ...).

    Returns:
      0 or 1, an int (so that --help shows "default: 1", not 1.0).
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (0, 1):
        raise argparse.ArgumentTypeError(f"must be 0 or 1; got {text!r}")
    return int(value)


def _finite_non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text!r}")
    return value


def _check_parent(flag: str, path: str | None) -> None:
    """Refuse an output path whose directory does not exist, before any work is done."""
    if path:
        parent = Path(path).expanduser().resolve().parent
        if not parent.is_dir():
            raise ValueError(f"{flag} {path}: no such directory {parent}")


# ----------------------------------------------------------------------------- walkthrough
def _walkthrough_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--block", choices=("seed", "residual"), default="seed",
                   help="seed: the worked example's 15-parameter CNN; residual: one residual "
                   "basic block, relu(BN2(conv2(relu(BN1(conv1(x))))) + x), where the "
                   "shortcut's and the branch's gradients meet")
    p.add_argument("--seed", type=SEED, default=0,
                   help="PRNG seed of the parameters and of the default image (residual: of "
                   "the input)")
    p.add_argument("--label", type=_label, default=None, metavar="{0,1}",
                   help="the true label Y, 0 or 1 (seed block only; default: 1)")
    p.add_argument("--image", metavar="FILE.npy",
                   help="a 6x6 (or 6x6x1) image to use instead (seed block only)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the maps as heatmaps to a PNG (seed block only)")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")


def _walkthrough(args: argparse.Namespace) -> int:
    if args.block == "residual":
        return _walkthrough_residual(args)
    _check_parent("--plot", args.plot)
    image = None if args.image is None else walkthrough.load_image(args.image)
    result = walkthrough.run(args.seed, 1 if args.label is None else args.label, image)
    if args.plot:
        walkthrough.plot(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(walkthrough.format_text(result))
        if args.plot:
            print(f"Figure written to {args.plot}")
    return 0 if result["ok"] else 1


def _walkthrough_residual(args: argparse.Namespace) -> int:
    for flag, given in (("--label", args.label is not None), ("--image", args.image is not None),
                        ("--plot", args.plot is not None)):
        if given:
            raise ValueError(f"{flag} applies to --block seed only; --block residual takes "
                             f"--seed and --json")
    result = walkthrough_residual.run(args.seed)
    print(json.dumps(result, indent=1) if args.json else walkthrough_residual.format_text(result))
    return 0 if result["ok"] else 1


# ----------------------------------------------------------------------------- gradcheck
def _gradcheck_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME",
                   help=f"one of {', '.join(models.MODELS)}, or module.path:function")
    p.add_argument("--dtype", choices=tuple(gradcheck.TOLERANCES), default="float64",
                   help="float64 also checks against finite differences")
    p.add_argument("--batch", type=POSITIVE, default=4, help="examples in the random batch")
    p.add_argument("--seed", type=SEED, default=0, help="PRNG seed of params, batch, dropout")
    p.add_argument("--train", action="store_true",
                   help="training mode: batch-statistics BatchNorm, Dropout with a fixed key")
    p.add_argument("--fd-per-leaf", type=POSITIVE, default=8, metavar="K",
                   help="finite-difference coordinates per leaf, drawn at random")
    p.add_argument("--jitter", type=_finite_non_negative, default=0.05, metavar="S",
                   help="check at init + S N(0, 1), off ReLU kinks (0: at init)")
    p.add_argument("--sabotage", choices=gradcheck.RULES, metavar="RULE",
                   help="self-test: scale the gradients of jaxcnn.backward.RULE slightly "
                   "wrong for this run; the check must then FAIL (exit 1)")


def _gradcheck(args: argparse.Namespace) -> int:
    rows, header = gradcheck.gradcheck(args.model, args.dtype, args.batch, args.seed, args.train,
                                       args.fd_per_leaf, args.jitter, sabotage=args.sabotage)
    print(gradcheck.format_table(rows, header, args.dtype, args.fd_per_leaf))
    return 0 if all(r.ok for r in rows) else 1


# ----------------------------------------------------------------------------- train
def _train_args(p: argparse.ArgumentParser) -> None:
    d = trainer.TrainConfig()
    p.add_argument("--model", default=d.model,
                   help=f"one of {', '.join(models.MODELS)} (lenet5 takes 28x28 MNIST images, "
                   f"lenet5-digits the bundled 8x8 digits), or your own as module.path:function "
                   f"returning a jaxcnn Network (imported from the current directory)")
    p.add_argument("--data", default=d.data, help="digits (bundled), digits32 (the digits at "
                   "32x32x3, for resnet20), synthetic (6x6 bars for the seed net), shapes "
                   "(32x32x1 disc/square segmentation with per-pixel labels, for unet), signals "
                   "(128x1 waveforms, for cnn1d), volumes (16x16x16x1 solids, for cnn3d), "
                   "mnist:DIR or fashion:DIR (IDX files, raw or .gz), cifar10:DIR (the python "
                   "batches)")
    p.add_argument("--grad", default=d.grad, choices=grads.GRADS,
                   help="hand-written backward pass or jax.grad")
    p.add_argument("--impl", default="conv", choices=models.IMPLS,
                   help="formulation of the model's convolutions, built in")
    p.add_argument("--optimizer", default=d.optimizer, choices=optim.OPTIMIZERS, help="optimizer")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    p.add_argument("--schedule", default=d.schedule, choices=optim.SCHEDULES,
                   help="learning-rate schedule over the whole run")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="examples per step")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="passes over the training set (--resume may change it only with "
                   "--schedule constant: cosine is laid out over all the epochs)")
    p.add_argument("--clip", type=float, default=None, help="clip gradients to this global norm")
    p.add_argument("--seed", type=SEED, default=d.seed,
                   help="PRNG seed of the parameters, the batch order and dropout")
    p.add_argument("--dtype", default=d.dtype, choices=("float32", "float64"),
                   help="dtype of the parameters and the data")
    p.add_argument("--devices", type=int, default=None,
                   help="data-parallel over this many local devices (default: all; config.json "
                   "records the count used)")
    _cluster_args(p)
    p.add_argument("--out", default="runs/train", help="output directory")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from OUT's last checkpoint (same settings, same data)")
    again.add_argument("--overwrite", action="store_true",
                       help="start over in an OUT that holds a run, deleting it")
    p.add_argument("--check-grads", action="store_true",
                   help="compare manual and autodiff gradients on the first batch first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dp-clip", type=float, default=None, metavar="C",
                   help="DP-SGD: clip each example's gradient to norm C, finite and > 0 (with "
                   "--dp-noise; GroupNorm or norm-free models: resnet20-gn, cifar-gn, cnn1d, "
                   "...). With adam, C sets only the gradients' scale: 1 is fine")
    p.add_argument("--dp-noise", type=float, default=None, metavar="SIGMA",
                   help=f"DP-SGD: Gaussian noise of std SIGMA * C on the clipped sum; batches "
                   f"are Poisson samples of rate --batch-size / n. 0 (no noise, no privacy: "
                   f"epsilon is recorded as null) or {dp.NOISE_RANGE[0]:g}..{dp.NOISE_RANGE[1]:g}, "
                   f"where the accountant answers. "
                   "The noise wants a larger --lr than the default: cnn1d on signals, 5 epochs, "
                   "--lr 5e-2 --dp-clip 1 --dp-noise 1.1 reached 93-95%% test accuracy at "
                   "epsilon 2.5 (three seeds), against 47%% with --lr 2e-3 and 96%% without "
                   "privacy")
    p.add_argument("--dp-delta", type=float, default=None, metavar="DELTA",
                   help=f"DP-SGD: the delta of the epsilon reported after each epoch (RDP; "
                   f"default: {d.dp_delta:g}; with --dp-clip only)")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    """train's options for a run over several processes (docs/processes.md)."""
    p.add_argument("--processes", type=POSITIVE, default=None, metavar="P",
                   help="start P processes of this run on this machine (CPU, gloo collectives; "
                   "docs/processes.md); each feeds its slice of every batch")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="join a run of several processes: process 0's address (with "
                   "--num-processes and --process-id), or auto (SLURM, Open MPI, ...); with "
                   "--processes, the local port to use (default: a free one)")
    p.add_argument("--num-processes", type=POSITIVE, default=None, metavar="P",
                   help="with --coordinator: the run's process count")
    p.add_argument("--process-id", type=_int_in(0), default=None, metavar="I",
                   help="with --coordinator: this process's index, 0..P-1 (0 writes OUT)")


def _train(args: argparse.Namespace) -> int:
    if args.dp_delta is not None and args.dp_clip is None:
        raise ValueError(f"--dp-delta {args.dp_delta:g} applies to DP-SGD runs only (the delta of "
                         f"the epsilon they report); add --dp-clip C --dp-noise SIGMA, or leave "
                         f"it out")
    cfg = trainer.TrainConfig(**{f.name: getattr(args, f.name)  # None: the config's default
                                 for f in dataclasses.fields(trainer.TrainConfig)
                                 if getattr(args, f.name, None) is not None})
    cfg.validate()
    model = lookup.model(cfg.model, impl=args.impl)
    if cfg.private and has_batchnorm(model):
        raise ValueError(_batchnorm_refusal(cfg.model))
    if args.process_id is None and args.coordinator != processes.AUTO and (args.processes or 1) > 1:
        return launch.launch(args.argv, args.processes, args.coordinator)
    if args.coordinator is not None:
        launch.die_with_launcher()
        processes.join(args.coordinator, args.num_processes, args.process_id)
    say = terminal.say  # stdout's reader may leave (`readers_may_leave`): the run goes on
    try:
        summary = trainer.fit(cfg, args.out, model=model, resume=args.resume,
                              overwrite=args.overwrite, progress=not args.quiet, log=say)
    except trainer.TrainingStoppedError as e:
        print(f"jaxcnn train: stopped: {e}", file=sys.stderr)
        return 1
    except trainer.Interrupted as e:
        print(f"jaxcnn train: {e}", file=sys.stderr)
        return 130
    if "test_accuracy" in summary:
        iou = (f", test mean IoU {summary['test_mean_iou']:.4f}"
               if "test_mean_iou" in summary else "")
        say(f"test accuracy {summary['test_accuracy']:.4f}{iou} after {summary['epoch']} "
            f"epochs ({summary['seconds']:.1f} s of training); results in {args.out}")
    return 0


def _batchnorm_refusal(spec: str) -> str:
    """The DP refusal of a BatchNorm model in the command line's terms: its --model names, not
    the library's `resnet20(norm="group")`.

    Args:
      spec: the --model given.

    Returns:
      the one-line message, naming the GroupNorm twin `<spec>-gn` where one is registered.
    """
    twins = [name for name in models.MODELS if name.endswith("-gn")]
    instead = (f"use --model {spec}-gn, its GroupNorm twin" if f"{spec}-gn" in models.MODELS
               else f"use a model without it, e.g. --model {' or '.join(twins)} (GroupNorm) or "
                    f"cnn1d")
    return (f"--dp-clip: --model {spec} has BatchNorm, whose batch statistics mix the examples "
            f"in training mode, so no example has a gradient of its own to clip; {instead}")


# ----------------------------------------------------------------------------- bench
def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--against", choices=("torch",), help="also time PyTorch eager on the CPU")
    p.add_argument("--impl", default="conv", help="comma-separated manual formulations to time "
                   "(conv, gemm, auto)")
    p.add_argument("--networks", default=None, help="comma-separated NAME:BATCH pairs "
                   f"(default {_pairs(bench.NETWORKS)}; with --dp {_pairs(bench_dp.NETWORKS)})")
    p.add_argument("--dp", action="store_true", help="the DP-SGD benchmark instead: the DP step "
                   "(ghost norms, clipped sum, noise) against the non-private step and "
                   "vmap(jax.grad) + clip (jaxcnn.tools.bench_dp)")
    p.add_argument("--rounds", type=POSITIVE, default=7, help="interleaved rounds")
    p.add_argument("--precision", choices=tuple(bench.PRECISIONS), default="highest",
                   help="precision of every product ('default' is TF32 on recent NVIDIA GPUs)")
    p.add_argument("--no-per-example", action="store_true", help="skip per-example gradients")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--markdown", metavar="PATH", help="also write the table to PATH")


def _pairs(networks: tuple[tuple[str, int], ...]) -> str:
    return ",".join(f"{n}:{b}" for n, b in networks)


def _bench(args: argparse.Namespace) -> int:
    networks = []
    default = bench_dp.NETWORKS if args.dp else bench.NETWORKS
    for item in (_pairs(default) if args.networks is None else args.networks).split(","):
        name, _, batch = item.partition(":")
        if name not in models.MODELS or not batch.isdigit() or int(batch) < 1:
            raise ValueError(f"--networks: {item!r} must be NAME:BATCH with NAME one of "
                             f"{', '.join(models.MODELS)} and BATCH >= 1")
        networks.append((name, int(batch)))
    impls = tuple(args.impl.split(","))
    if not set(impls) <= set(models.IMPLS):
        raise ValueError(f"--impl must list conv, gemm or auto; got {args.impl!r}")
    _check_parent("--json", args.json)
    _check_parent("--markdown", args.markdown)
    if args.dp:
        result = bench_dp.run(tuple(networks), rounds=args.rounds)
        text = bench_dp.to_markdown(result)
        for path, out in ((args.json, json.dumps(result, indent=1)), (args.markdown, text)):
            if path:
                Path(path).write_text(out + "\n")
        print(text)
        return 0
    try:
        result = bench.run(tuple(networks), impls=impls, against_torch=args.against == "torch",
                           per_example=not args.no_per_example, rounds=args.rounds,
                           precision=args.precision, log=lambda s: print(s, file=sys.stderr))
    except ImportError as e:  # --against torch without torch: a setup problem, not a bug
        if str(e) != bench_torch.TORCH_MISSING:
            raise
        raise ValueError(str(e)) from None
    bench.save(result, args.json or None, args.markdown or None)
    print(bench.to_markdown(result))
    return 0


register("train", "train a model with the hand-written gradients (the main job)", _train_args,
         _train)
register("walkthrough", "the seed CNN's (or a residual block's) forward and backward pass, "
         "tensor by tensor, manual vs jax.grad", _walkthrough_args, _walkthrough)
register("gradcheck", "check a model's manual gradients against jax.grad and finite differences",
         _gradcheck_args, _gradcheck)
register("bench", "time manual vs autodiff (and PyTorch) train steps, interleaved", _bench_args,
         _bench)
register("explain", "derive a conv's or pool's backward rule with this configuration's numbers, "
         "and check it against jax.vjp", explain.add_arguments, explain.run)

if __name__ == "__main__":
    raise SystemExit(main())
