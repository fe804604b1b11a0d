"""Figures of a training run, drawn with matplotlib's Agg backend (no display needed).

    curves.png      loss and accuracy per epoch, train and test
    filters.png     the learned first-layer convolution filters
    grad_norms.png  every layer's gradient norm over the steps (log scale): the overview's vanishing
                    and exploding gradients, made visible
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from jaxcnn.training import rundir


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """metrics.jsonl -> (step records, epoch records).

    Args:
      path: the file.

    Returns:
      (step records, epoch records), in file order.

    Raises:
      ValueError: naming the file and the line of a line that is not a metrics record.
    """
    records = [record for _, record in rundir.read_metrics(Path(path))[0]]
    return ([r for r in records if r["kind"] == "step"],
            [r for r in records if r["kind"] == "epoch"])


def curves(epochs: list[dict], path: str | Path) -> Path:
    """Loss (left) and accuracy (right) per epoch, train and test."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    e = [r["epoch"] for r in epochs]
    for split in ("train", "test"):
        ax_loss.plot(e, [r[f"{split}_loss"] for r in epochs], marker=".", label=split)
        ax_acc.plot(e, [r[f"{split}_accuracy"] for r in epochs], marker=".", label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return save(fig, path)


def filters(w: Any, path: str | Path) -> Path:
    """The first convolution's filters, w (kh, kw, C_in, C_out): one panel per output channel
    (the first input channel shown), sharing one symmetric colour scale, drawn as a colour bar."""
    w = np.asarray(w, np.float64)
    n = w.shape[-1]
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 1.0, 1.6 * rows + 0.4),
                             squeeze=False, layout="constrained")
    vmax = np.abs(w).max() or 1.0
    image = None
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            image = ax.imshow(w[:, :, 0, i], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_title(f"filter {i}", fontsize=8)
    fig.suptitle("first-layer filters")
    fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    return save(fig, path)


def grad_norms(steps: list[dict], path: str | Path) -> Path:
    """Each layer's gradient norm against the step, log scale."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    s = [r["step"] for r in steps]
    for layer in steps[0]["layer_grad_norms"] if steps else []:
        ax.plot(s, [max(r["layer_grad_norms"][layer], 1e-30) for r in steps], label=layer)
    ax.set(xlabel="step", ylabel="||dL/dparams||", yscale="log", title="gradient norm per layer")
    ax.grid(alpha=0.3)
    if steps:  # a run shorter than log_every has no step records to draw
        ax.legend(fontsize=8)
    return save(fig, path)


def plot_run(out: str | Path, first_conv_w: Any | None) -> list[Path]:
    """All three figures of the run in `out` (filters.png only given the first convolution's
    kernel); returns the paths written."""
    out = Path(out)
    steps, epochs = read_metrics(out / "metrics.jsonl")
    written = [curves(epochs, out / "curves.png"), grad_norms(steps, out / "grad_norms.png")]
    if first_conv_w is not None:
        written.append(filters(first_conv_w, out / "filters.png"))
    return written


def save(fig: Any, path: str | Path) -> Path:
    """Lay out (unless the figure has its own layout engine), write (creating the folder) and
    close a figure; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def first_conv2d(tree: Any) -> Any:
    """The first (kh, kw, C_in, C_out) "w" in a list or dict of layers' params, in order
    (inside combinators too), else None (1-D and 3-D kernels are not drawn)."""
    if isinstance(tree, list):
        return next((w for v in tree if (w := first_conv2d(v)) is not None), None)
    if not isinstance(tree, dict):
        return None
    if "w" in tree and getattr(tree["w"], "ndim", 0) == 4:
        return tree["w"]
    return next((w for v in tree.values() if (w := first_conv2d(v)) is not None), None)
