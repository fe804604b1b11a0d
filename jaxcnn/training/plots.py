"""Figures of a training run, drawn with matplotlib's Agg backend (no display needed).

    curves.png      per epoch: loss, accuracy (pixel accuracy for per-position heads), and where
                    the run records them the test mean IoU and DP-SGD's epsilon
    filters.png     the first convolution's filters: images for 2-D kernels, lines for 1-D,
                    the middle depth slice for 3-D; a note saying why, for a model without one
    grad_norms.png  every layer's gradient norm over the steps (log scale): the overview's vanishing
                    and exploding gradients, made visible; each layer its own colour and line
                    style, however many layers there are

Every figure's title names the model and the data (and the DP-SGD settings), read from the run's
config.json. The `*_figure` functions build a figure without writing it (what tests inspect);
`curves`, `filters` and `grad_norms` write one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

from jaxcnn.training import checkpoint, rundir, safefiles

LINESTYLES = ("-", "--", "-.", ":")  # with the 10 colours of tab10: 40 distinct (colour, style)


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


def run_title(config: dict | None) -> str:
    """What a run's figures are of: "MODEL on DATA" from its config.json record, with the DP-SGD
    settings of a private run ("" without a config)."""
    if not config:
        return ""
    title = f"{config.get('model', '?')} on {config.get('data', '?')}"
    if config.get("dp_clip") is not None and config.get("dp_noise") is not None:
        title += (f", DP-SGD (clip {config['dp_clip']:g}, noise {config['dp_noise']:g}, "
                  f"delta {config.get('dp_delta', float('nan')):g})")
    return title


def read_config(out: str | Path) -> dict | None:
    """The run's config.json as a dict, or None where it is absent or unreadable (the figures
    are then drawn without the model's and the data's names)."""
    try:
        config = json.loads(safefiles.read_bytes(Path(out) / rundir.CONFIG))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def curves_figure(epochs: list[dict], title: str = "") -> Any:
    """Per epoch, train and test: loss (log scale) and accuracy, called "pixel accuracy" where
    the records carry a test mean IoU (a per-position head: the accuracy is over pixels); then a
    panel for the test mean IoU and one for epsilon (DP-SGD), where the records have them.

    Args:
      epochs: the epoch records of metrics.jsonl (`read_metrics`).
      title: the figure's title (`run_title`).

    Returns:
      the matplotlib Figure; its axes in the order above.
    """
    per_pixel = any("test_mean_iou" in r for r in epochs)
    private = any("epsilon" in r for r in epochs)
    n = 2 + per_pixel + private
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    axes = list(axes[0])
    e = [r["epoch"] for r in epochs]
    accuracy = "pixel accuracy" if per_pixel else "accuracy"
    for split in ("train", "test"):
        axes[0].plot(e, [r[f"{split}_loss"] for r in epochs], marker=".", label=split)
        axes[1].plot(e, [r[f"{split}_accuracy"] for r in epochs], marker=".", label=split)
    axes[0].set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    axes[1].set(xlabel="epoch", ylabel=accuracy, title=accuracy)
    extra = [("test_mean_iou", "mean IoU", "test mean IoU (over classes)", "test", "C1")
             ] if per_pixel else []
    extra += [("epsilon", "epsilon", _epsilon_title(epochs), "after the epoch", "C2")
              ] if private else []
    for ax, (key, ylabel, name, label, colour) in zip(axes[2:], extra):
        kept = [r for r in epochs if key in r]
        ax.plot([r["epoch"] for r in kept], [r[key] for r in kept], marker=".", color=colour,
                label=label)
        ax.set(xlabel="epoch", ylabel=ylabel, title=name)
    for ax in axes:
        ax.grid(alpha=0.3)
        if 0 < len(e) <= 12:  # every epoch a tick (one epoch: no fractional ticks around it)
            ax.set_xticks(e)
        else:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def _epsilon_title(epochs: list[dict]) -> str:
    deltas = {r["dp_delta"] for r in epochs if "dp_delta" in r}
    return f"epsilon at delta {deltas.pop():g}" if len(deltas) == 1 else "epsilon"


def curves(epochs: list[dict], path: str | Path, title: str = "") -> Path:
    """Write `curves_figure(epochs, title)` to `path`; returns the path."""
    return save(curves_figure(epochs, title), path)


def filters_figure(w: Any, title: str = "") -> Any:
    """The first convolution's filters, one panel per output channel (the first input channel
    shown): w (kh, kw, C_in, C_out) as images sharing one symmetric colour scale (a colour bar),
    w (k, C_in, C_out) of a 1-D convolution as lines (weight against kernel tap) on one shared
    y axis, w (kd, kh, kw, C_in, C_out) of a 3-D one as images of its middle depth slice. With
    w None (no convolution in the model) the figure is a note that says so.

    Returns:
      the matplotlib Figure.
    """
    if w is None:
        return _note("no filters to draw: this model has no convolution", title)
    w = np.asarray(w, np.float64)
    if w.ndim not in (3, 4, 5):
        raise ValueError(f"filters: w must be a conv kernel (k, C_in, C_out), (kh, kw, C_in, "
                         f"C_out) or (kd, kh, kw, C_in, C_out); got shape {w.shape}")
    n = w.shape[-1]
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 1.0, 1.6 * rows + 0.6),
                             squeeze=False, layout="constrained", sharey=w.ndim == 3)
    vmax = np.abs(w).max() or 1.0
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
        elif w.ndim == 3:
            ax.plot(np.arange(w.shape[0]), w[:, 0, i], marker=".")
            ax.axhline(0.0, color="0.6", lw=0.5)
            ax.set_ylim(-1.05 * vmax, 1.05 * vmax)
            ax.tick_params(labelsize=6)
        else:
            ax.axis("off")
            kernel = w[w.shape[0] // 2] if w.ndim == 5 else w
            image = ax.imshow(kernel[:, :, 0, i], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        if i < n:
            ax.set_title(f"filter {i}", fontsize=8)
    what = {3: "1-D filters (weight per tap)", 4: "filters",
            5: f"3-D filters (depth slice {w.shape[0] // 2} of {w.shape[0]})"}[w.ndim]
    fig.suptitle(f"{title}: first-layer {what}" if title else f"first-layer {what}")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    return fig


def filters(w: Any, path: str | Path, title: str = "") -> Path:
    """Write `filters_figure(w, title)` (w a conv kernel (k, C_in, C_out), (kh, kw, C_in,
    C_out) or (kd, kh, kw, C_in, C_out), or None) to `path`; returns the path."""
    return save(filters_figure(w, title), path)


def _note(text: str, title: str) -> Any:
    fig, ax = plt.subplots(figsize=(6, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    if title:
        fig.suptitle(title)
    return fig


def layer_styles(n: int) -> list[tuple[Any, str]]:
    """n distinct (colour, line style) pairs: tab10's colours with solid lines up to 10 layers,
    then the same colours with dashed, dash-dot and dotted lines (40), beyond that n colours
    spread over a colour map, each with a line style."""
    if n > 10 * len(LINESTYLES):
        cmap = matplotlib.colormaps["turbo"]
        return [(cmap(i / max(n - 1, 1)), LINESTYLES[i % len(LINESTYLES)]) for i in range(n)]
    tab10 = matplotlib.colormaps["tab10"].colors
    return [(tab10[i % 10], LINESTYLES[i // 10]) for i in range(n)]


def grad_norms_figure(steps: list[dict], title: str = "") -> Any:
    """Each layer's gradient norm against the step, log scale; every layer its own
    (colour, line style) pair (`layer_styles`), the legend beside the axes.

    Returns:
      the matplotlib Figure.
    """
    layers = list(steps[0]["layer_grad_norms"]) if steps else []
    fig, ax = plt.subplots(figsize=(8 + 2 * (len(layers) > 12), 4.5))
    s = [r["step"] for r in steps]
    for layer, (colour, style) in zip(layers, layer_styles(len(layers))):
        ax.plot(s, [max(r["layer_grad_norms"][layer], 1e-30) for r in steps], label=layer,
                color=colour, linestyle=style)
    ax.set(xlabel="step", ylabel="||dL/dparams||", yscale="log",
           title=f"{title}: gradient norm per layer" if title else "gradient norm per layer")
    ax.grid(alpha=0.3)
    if layers:  # a run shorter than log_every has no step records to draw
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncol=1 + len(layers) // 25)
    return fig


def grad_norms(steps: list[dict], path: str | Path, title: str = "") -> Path:
    """Write `grad_norms_figure(steps, title)` to `path`; returns the path."""
    return save(grad_norms_figure(steps, title), path)


def plot_run(out: str | Path, first_conv_w: Any | None) -> list[Path]:
    """The three figures of the run in `out`, titled with the model and the data of its
    config.json; `first_conv_w` is the first convolution's kernel
    ((k, C_in, C_out), (kh, kw, C_in, C_out) or (kd, kh, kw, C_in, C_out); `first_conv`), None
    for a model without one (filters.png then says so). Returns the paths written."""
    out = Path(out)
    steps, epochs = read_metrics(out / rundir.METRICS)
    title = run_title(read_config(out))
    return [curves(epochs, out / "curves.png", title),
            grad_norms(steps, out / "grad_norms.png", title),
            filters(first_conv_w, out / "filters.png", title)]


def save(fig: Any, path: str | Path) -> Path:
    """Lay out (unless the figure has its own layout engine), write (creating the folder) and
    close a figure; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    try:  # atomically, as the checkpoint: a link or FIFO in its place is refused, not followed
        checkpoint.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110,
                                                            bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def first_conv(tree: Any) -> Any:
    """The first convolution kernel "w" ((k, C_in, C_out), (kh, kw, C_in, C_out) or
    (kd, kh, kw, C_in, C_out): 3 to 5 axes) in a list or dict of layers' params, in order
    (inside combinators too), else None."""
    if isinstance(tree, list):
        return next((w for v in tree if (w := first_conv(v)) is not None), None)
    if not isinstance(tree, dict):
        return None
    if "w" in tree and getattr(tree["w"], "ndim", 0) in (3, 4, 5):
        return tree["w"]
    return next((w for v in tree.values() if (w := first_conv(v)) is not None), None)


def first_conv2d(tree: Any) -> Any:
    """The first (kh, kw, C_in, C_out) "w" in a list or dict of layers' params, in order
    (inside combinators too), else None (1-D and 3-D kernels are skipped: `first_conv` finds
    those too)."""
    if isinstance(tree, list):
        return next((w for v in tree if (w := first_conv2d(v)) is not None), None)
    if not isinstance(tree, dict):
        return None
    if "w" in tree and getattr(tree["w"], "ndim", 0) == 4:
        return tree["w"]
    return next((w for v in tree.values() if (w := first_conv2d(v)) is not None), None)
