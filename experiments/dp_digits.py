"""DP-SGD on the 8x8 digits: test accuracy against epsilon, beside the non-private run.

    python experiments/dp_digits.py

A small GroupNorm CNN (conv 3x3 16 SAME -> GroupNorm 4 -> ReLU -> max pool -> conv 3x3 32 SAME ->
GroupNorm 4 -> ReLU -> max pool -> flatten -> dense 10) trained with `jaxcnn.training.dp`: each
step a Poisson sample of the training set (rate q = `--batch` / n), the clipped sum from the
hand-written per-example norms (clip norm `--clip`), Gaussian noise sigma C, divided by the
expected batch; momentum SGD. One run per noise multiplier in `--sigmas`, each for `--epochs`
epochs (steps = epochs / q), its epsilon at `--delta` from dp-accounting's RDP accountant; the
non-private run is the same loop with sigma 0 and no clipping effect (clip norm 1e6).

Prints a markdown table and writes runs/experiments/dp_digits.png (`--figure`) and
runs/experiments/dp_digits.json (`--json`); the committed record is in experiments/results/ and
experiments/figures/.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from jaxcnn.nn import layers
from jaxcnn.nn.network import SOFTMAX, Network
from jaxcnn.training import data, dp, optim
from jaxcnn.training import steps as train_steps

HERE = Path(__file__).resolve().parent
FIGURE = HERE.parent / "runs" / "experiments" / "dp_digits.png"
RESULTS = HERE.parent / "runs" / "experiments" / "dp_digits.json"


def gn_cnn() -> Network:
    """The GroupNorm CNN of the experiment, for (8, 8, 1) digits."""
    return Network("gn_cnn_digits", [
        layers.Conv2D(16, 3, padding="SAME", name="conv1"), layers.GroupNorm(4, name="gn1"),
        layers.ReLU(name="relu1"), layers.MaxPool(2, name="pool1"),
        layers.Conv2D(32, 3, padding="SAME", name="conv2"), layers.GroupNorm(4, name="gn2"),
        layers.ReLU(name="relu2"), layers.MaxPool(2, name="pool2"),
        layers.Flatten(), layers.Dense(10, name="dense"),
    ], (8, 8, 1), SOFTMAX)


def train(ds: data.Dataset, sigma: float, args: argparse.Namespace) -> dict:
    """One DP-SGD run; returns its test accuracy, epsilon, steps and seconds."""
    model = gn_cnn()
    n = len(ds.x_train)
    q = args.batch / n
    steps = math.ceil(args.epochs / q)
    clip = args.clip if sigma > 0 else 1e6
    opt = optim.make_optimizer("momentum", args.lr)
    step = dp.make_dp_train_step(model, opt, clip_norm=clip, noise_multiplier=sigma,
                                 expected_batch_size=args.batch)
    params = model.init(jax.random.key(args.seed))
    opt_state = opt.init(params)
    x_train, y_train = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    started = time.perf_counter()
    for t, (idx, mask) in enumerate(dp.poisson_batches(n, q, steps, seed=args.seed)):
        params, _, opt_state, _ = step(params, {}, opt_state,
                                       (x_train[idx], y_train[idx], jnp.asarray(mask)),
                                       jax.random.fold_in(jax.random.key(args.seed + 1), t))
    test = train_steps.evaluate(model, params, {}, ds.x_test, ds.y_test)
    eps = dp.epsilon(sigma, q, steps, args.delta) if sigma > 0 else math.inf
    return {"sigma": sigma, "epsilon": eps, "steps": steps, "sample_rate": q,
            "test_accuracy": test["accuracy"], "seconds": time.perf_counter() - started}


def figure(runs: list[dict], path: Path) -> None:
    private = [r for r in runs if r["sigma"] > 0]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot([r["epsilon"] for r in private], [100 * r["test_accuracy"] for r in private], "o-",
            label="DP-SGD (manual ghost norms)")
    for r in private:
        ax.annotate(f"σ={r['sigma']:g}", (r["epsilon"], 100 * r["test_accuracy"]),
                    textcoords="offset points", xytext=(4, -12), fontsize=8)
    base = [r for r in runs if r["sigma"] == 0]
    if base:
        ax.axhline(100 * base[0]["test_accuracy"], color="gray", ls="--", label="non-private")
    ax.set_xscale("log")
    ax.set_xlabel(f"ε (δ = {runs[0]['delta']:g}, RDP)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("DP-SGD on the 8x8 digits")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sigmas", default="0,0.7,1.0,1.5,3.0",
                   help="noise multipliers, 0 for the non-private run")
    p.add_argument("--epochs", type=float, default=30)
    p.add_argument("--batch", type=int, default=64, help="expected batch size q n")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", type=Path, default=FIGURE)
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    ds = data.load_digits(seed=args.seed)
    runs = [dict(train(ds, float(s), args), delta=args.delta) for s in args.sigmas.split(",")]
    print("| sigma | epsilon | steps | test accuracy | seconds |\n|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['sigma']:g} | {r['epsilon']:.2f} | {r['steps']} | "
              f"{100 * r['test_accuracy']:.2f}% | {r['seconds']:.1f} |")
    result = {"config": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in vars(args).items() if k not in ("figure", "json")},
              "runs": [{k: (None if isinstance(v, float) and math.isinf(v) else v)
                        for k, v in r.items()} for r in runs]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    figure(runs, args.figure)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
