"""Seed 003's vanishing gradients: deep sigmoid vs ReLU stacks, gradient norm against depth.

    python experiments/vanishing_gradients.py

Two stacks on the 8x8 digits, built from `jaxcnn.nn.layers`: `--depth` (8) convolutions 3x3 SAME of
`--channels` (16) filters, each followed by `Sigmoid()` in one net and `ReLU()` in the other, then
Flatten and Dense(10), softmax cross-entropy. Both are initialised with He normal (the library's
default); the sigmoid stack is also shown with Glorot normal, the init meant for it.

Every gradient is the hand-written backward pass: the per-layer norms ||dL/dW_l|| (weights only)
come from `grads.manual_grad` on one fixed batch of `--grad-batch` training images, at
initialisation and again after `--steps` (200) steps of plain SGD (`--lr` 0.05, batch 32), whose
per-step norms come from `jaxcnn.training.steps.make_train_step`'s
metrics["layer_grad_norms"] (weights and bias).
conv1 has one input channel, so `--channels` times fewer weights than the other convolutions: its
norm is somewhat lower even where nothing vanishes (the ReLU stack).

Also an exploding case (skip with `--no-explode`): the ReLU stack initialised with twice He's
standard deviation, so each layer doubles the signal, trained with the same SGD with and without
`optim.make_optimizer(..., clip=1.0)` (clipping by global norm, seed 003's remedy).

Prints a markdown table (first/last conv gradient norm and their ratio at init and after
training, final test accuracy) and writes runs/experiments/vanishing_gradients.png
(`--figure`) and runs/experiments/vanishing_gradients.json (`--json`; the committed record is in
experiments/results/ and experiments/figures/).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from jaxcnn.nn import grads, layers, network
from jaxcnn.training import data, optim, plots
from jaxcnn.training import steps as train_steps

HERE = Path(__file__).resolve().parent
# written under runs/ (not tracked) unless asked: the committed record changes only on purpose
FIGURE = HERE.parent / "runs" / "experiments" / "vanishing_gradients.png"
RESULTS = HERE.parent / "runs" / "experiments" / "vanishing_gradients.json"

HE = layers.HE_NORMAL
GLOROT = jax.nn.initializers.glorot_normal()
HE_X2 = jax.nn.initializers.variance_scaling(8.0, "fan_in", "normal")  # std 2 * sqrt(2 / fan_in)
# name, activation, init, clip (None: no clipping), line style
NETS = [
    ("sigmoid, He normal", layers.Sigmoid, HE, None, dict(color="tab:red", ls="-")),
    ("sigmoid, Glorot normal", layers.Sigmoid, GLOROT, None, dict(color="tab:orange", ls="-")),
    ("ReLU, He normal", layers.ReLU, HE, None, dict(color="tab:blue", ls="-")),
]
EXPLODING = [
    ("ReLU, 2x He std", layers.ReLU, HE_X2, None, dict(color="tab:gray", ls=":")),
    ("ReLU, 2x He std, clip 1.0", layers.ReLU, HE_X2, 1.0, dict(color="tab:green", ls="--")),
]


def stack(activation, w_init, depth: int, channels: int, name: str) -> network.Network:
    """depth x (conv 3x3 SAME, activation), Flatten, Dense(10) on 8x8x1 images."""
    ls = []
    for i in range(1, depth + 1):
        ls += [layers.Conv2D(channels, 3, padding="SAME", w_init=w_init, name=f"conv{i}"),
               activation(name=f"act{i}")]
    ls += [layers.Flatten(), layers.Dense(10, w_init=w_init, name="dense")]
    return network.Network(name, ls, (8, 8, 1), network.SOFTMAX)


def weight_norms(grad_fn, params) -> list[float]:
    """||dL/dW_l|| for every layer with parameters, input to output."""
    _, g = grad_fn(params)
    return [float(np.linalg.norm(np.asarray(g[name]["w"], np.float64))) for name in params]


def run(net: tuple, ds: data.Dataset, args: argparse.Namespace) -> dict:
    name, activation, w_init, clip, _ = net
    model = stack(activation, w_init, args.depth, args.channels, name)
    params = model.init(jax.random.key(args.seed))
    names = list(params)
    xg, yg = ds.x_train[:args.grad_batch], ds.y_train[:args.grad_batch]
    grad_fn = jax.jit(lambda p: grads.manual_grad(model, p, xg, yg))  # the manual backward
    at_init = weight_norms(grad_fn, params)
    optimizer = optim.make_optimizer("sgd", args.lr, clip=clip)
    state, opt_state = model.init_state(), optimizer.init(params)
    step_fn = train_steps.make_train_step(model, optimizer, "manual")
    metrics, step, epoch = [], 0, 0
    while step < args.steps:
        for xb, yb in data.batches(ds.x_train, ds.y_train, args.batch_size, seed=args.seed,
                                   epoch=epoch):
            params, state, opt_state, m = step_fn(params, state, opt_state, (xb, yb),
                                                  jax.random.key(step))
            metrics.append(m)
            step += 1
            if step == args.steps:
                break
        epoch += 1
    metrics = jax.device_get(metrics)
    losses = [float(m["loss"]) for m in metrics]
    per_step = {n: [float(m["layer_grad_norms"][n]) for m in metrics] for n in names}
    diverged = next((i + 1 for i, v in enumerate(losses) if not math.isfinite(v)), None)
    after = weight_norms(grad_fn, params)
    test = train_steps.evaluate(model, params, state, ds.x_test, ds.y_test)
    convs = [i for i, n in enumerate(names) if n.startswith("conv")]
    first, last = convs[0], convs[-1]

    def ratio(norms):
        return norms[first] / norms[last] if norms[last] > 0 else float("nan")

    return {"name": name, "clip": clip, "layers": names,
            "init": {"norms": at_init, "first_conv": at_init[first],
                     "last_conv": at_init[last], "ratio_first_last": ratio(at_init)},
            "trained": {"norms": after, "first_conv": after[first], "last_conv": after[last],
                        "ratio_first_last": ratio(after)},
            "losses": losses, "grad_norm": [float(m["grad_norm"]) for m in metrics],
            "layer_grad_norms": per_step, "diverged_at_step": diverged,
            "final_loss": losses[-1] if losses else float("nan"),
            "test_accuracy": test["accuracy"]}


def finite_or_none(obj):
    """The same structure with NaN / inf floats as None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return obj if not isinstance(obj, float) or math.isfinite(obj) else None


def plot(results: list[dict], styles: dict, path: Path, args: argparse.Namespace) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (ax_init, ax_end), (ax_steps, ax_loss) = axes
    for r in results:
        st = styles[r["name"]]
        depth = np.arange(1, len(r["layers"]) + 1)
        for ax, key in ((ax_init, "init"), (ax_end, "trained")):
            if key == "init" and r["clip"] is not None:
                continue  # the same initialisation as the run without clipping
            norms = np.array(r[key]["norms"])
            ok = np.isfinite(norms) & (norms > 0)
            if ok.any():
                label = r["name"] + (" (both runs)" if key == "init" and r["name"] ==
                                     EXPLODING[0][0] else "")
                ax.plot(depth[ok], norms[ok], marker="o", ms=4, label=label, **st)
        steps = np.arange(1, len(r["losses"]) + 1)
        ax_loss.plot(steps, r["losses"], lw=1.2, label=r["name"], **st)
        if r["diverged_at_step"]:
            s = r["diverged_at_step"]
            ax_loss.axvline(s, color=st["color"], lw=0.8, ls=":")
            ax_loss.annotate(f"{r['name']}:\nloss non-finite from step {s}", (s, 1.0),
                             xycoords=("data", "axes fraction"), xytext=(5, -30),
                             textcoords="offset points", fontsize=8, color=st["color"])
        if r["clip"] is None and r["name"] in {n[0] for n in NETS}:
            first, last = r["layers"][0], [n for n in r["layers"] if n.startswith("conv")][-1]
            ax_steps.plot(steps, r["layer_grad_norms"][first], lw=1, color=st["color"],
                          ls="-", label=f"{r['name']}: {first}")
            ax_steps.plot(steps, r["layer_grad_norms"][last], lw=1, color=st["color"],
                          ls="--", label=f"{r['name']}: {last}")
    layer_names = results[0]["layers"]
    for ax, when in ((ax_init, "at initialisation"),
                     (ax_end, f"after {args.steps} SGD steps (lr {args.lr})")):
        ax.set_xticks(np.arange(1, len(layer_names) + 1), layer_names, fontsize=8)
        ax.set(xlabel="layer (input -> output)", ylabel="||dL/dW_l|| (manual backward)",
               yscale="log", title=f"gradient norm per layer {when}")
    ax_steps.set(xlabel="step", ylabel="||dL/dθ_l|| (weights and bias)", yscale="log",
                 title="first and last convolution's gradient norm during training")
    ax_loss.set(xlabel="step", ylabel="training loss (batch)", yscale="log",
                title="training loss", ylim=(1e-3, None))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{args.depth} conv 3x3 SAME x {args.channels} channels + activation, then "
                 f"dense 10, on the 8x8 digits; gradient norms on {args.grad_batch} training "
                 f"images")
    return plots.save(fig, path)


def table(results: list[dict]) -> str:
    lines = ["| network | init: ‖dW‖ conv1 | init: ‖dW‖ last conv | init: ratio | "
             "trained: ratio | final loss | test acc |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        final = (f"non-finite from step {r['diverged_at_step']}" if r["diverged_at_step"]
                 else f"{r['final_loss']:.3f}")
        lines.append(f"| {r['name']} | {r['init']['first_conv']:.2e} | "
                     f"{r['init']['last_conv']:.2e} | {r['init']['ratio_first_last']:.1e} | "
                     f"{r['trained']['ratio_first_last']:.1e} | {final} | "
                     f"{r['test_accuracy']:.3f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=8, help="number of conv + activation blocks")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--steps", type=int, default=200, help="SGD steps of the training run")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--grad-batch", type=int, default=256,
                   help="training images the per-layer norms at init / after training use")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-explode", action="store_true",
                   help="skip the exploding case (2x He std, with and without clipping)")
    p.add_argument("--figure", type=Path, default=FIGURE, help="PNG to write")
    p.add_argument("--json", type=Path, default=RESULTS, help="JSON of the numbers to write")
    args = p.parse_args(argv)
    if args.depth < 2 or args.steps < 1:
        p.error("--depth must be >= 2 and --steps >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    ds = data.load_digits(seed=args.seed)
    nets = NETS + ([] if args.no_explode else EXPLODING)
    results = [run(net, ds, args) for net in nets]
    print(f"{args.depth} x (conv 3x3 SAME, {args.channels} ch, activation) + dense 10 on the "
          f"8x8 digits; SGD lr {args.lr}, batch {args.batch_size}, {args.steps} steps; "
          f"ratio = ||dL/dW|| of conv1 / of conv{args.depth} (manual backward, "
          f"{args.grad_batch} images)\n")
    print(table(results))
    fig = plot(results, {n[0]: n[4] for n in nets}, args.figure, args)
    out = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                          if k not in ("figure", "json")},
           "results": finite_or_none([{k: v for k, v in r.items()
                                       if k not in ("losses", "grad_norm", "layer_grad_norms")}
                                      for r in results]),
           "seconds": time.perf_counter() - t0}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, allow_nan=False))
    print(f"\nwrote {fig} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
