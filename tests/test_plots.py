"""The run's figures say what they show: the model and the data in every title, IoU and
"pixel accuracy" for per-position heads, epsilon for DP-SGD runs, one (colour, line style) per
layer however many layers, and 1-D / 3-D filters drawn (or a note where there is no
convolution). Checked on the matplotlib objects the `*_figure` functions build, not on pixels;
`test_plot_run_writes_titled_figures` also writes the three files of a run folder."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from jaxcnn.training import plots


def epoch_records(n=3, *, iou=False, epsilon=False):
    out = []
    for e in range(1, n + 1):
        r = {"kind": "epoch", "epoch": e, "step": 10 * e, "train_loss": 1.0 / e,
             "train_accuracy": 0.5 + 0.1 * e, "test_loss": 1.1 / e, "test_accuracy": 0.4 + e / 10}
        if iou:
            r["test_mean_iou"] = 0.2 * e
        if epsilon:
            r |= {"epsilon": 0.7 * e, "dp_delta": 1e-5}
        out.append(r)
    return out


def step_records(layers, n=4):
    return [{"kind": "step", "step": s, "epoch": 1, "loss": 1.0, "grad_norm": 1.0,
             "layer_grad_norms": {name: (i + 1) * 0.1 * s for i, name in enumerate(layers)}}
            for s in range(1, n + 1)]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_a_classifier_has_loss_and_accuracy_panels_only():
    fig = plots.curves_figure(epoch_records(), "lenet5-digits on digits")
    assert titles(fig) == ["loss", "accuracy"]
    assert fig.axes[1].get_ylabel() == "accuracy"
    assert fig.get_suptitle() == "lenet5-digits on digits"
    assert [line.get_label() for line in fig.axes[1].lines] == ["train", "test"]
    assert list(fig.axes[0].get_xticks()) == [1, 2, 3]  # whole epochs only
    one = plots.curves_figure(epoch_records(1))
    assert list(one.axes[1].get_xticks()) == [1]


def test_a_per_pixel_head_plots_iou_and_says_pixel_accuracy():
    epochs = epoch_records(iou=True)
    fig = plots.curves_figure(epochs, "unet on shapes")
    assert titles(fig) == ["loss", "pixel accuracy", "test mean IoU (over classes)"]
    assert fig.axes[1].get_ylabel() == "pixel accuracy"
    (line,) = fig.axes[2].lines
    np.testing.assert_allclose(line.get_ydata(), [r["test_mean_iou"] for r in epochs])


def test_a_private_run_plots_epsilon():
    epochs = epoch_records(epsilon=True)
    fig = plots.curves_figure(epochs, "cnn1d on signals")
    assert titles(fig)[-1] == "epsilon at delta 1e-05" and len(fig.axes) == 3
    np.testing.assert_allclose(fig.axes[2].lines[0].get_ydata(), [0.7, 1.4, 2.1])
    fig = plots.curves_figure(epoch_records(iou=True, epsilon=True))
    assert len(fig.axes) == 4 and fig.get_suptitle() == ""


@pytest.mark.parametrize("n", [3, 10, 13, 23, 40, 57])
def test_every_layer_gets_its_own_colour_and_line_style(n):
    layers = [f"layer{i}" for i in range(n)]
    fig = plots.grad_norms_figure(step_records(layers), "resnet20 on digits32")
    lines = fig.axes[0].lines
    assert [line.get_label() for line in lines] == layers
    styles = {(tuple(np.round(plt.matplotlib.colors.to_rgba(line.get_color()), 6)),
               line.get_linestyle()) for line in lines}
    assert len(styles) == n, "two layers share a colour and a line style"
    assert fig.axes[0].get_title() == "resnet20 on digits32: gradient norm per layer"
    assert len(fig.axes[0].get_legend().get_texts()) == n


def test_the_resnet20_layers_are_told_apart():
    """The case seen: conv and stage3_block2 drawn in the same blue (13 layers, 10 colours)."""
    from jaxcnn.nn import models

    layers = list(models.get("resnet20").param_shapes)  # the layers with parameters
    assert len(layers) > 10
    fig = plots.grad_norms_figure(step_records(layers))
    pairs = {line.get_label(): (line.get_color(), line.get_linestyle())
             for line in fig.axes[0].lines}
    assert pairs["conv"] != pairs["stage3_block2"]
    assert len(set(map(str, pairs.values()))) == len(layers)


def test_filters_of_each_rank():
    rng = np.random.default_rng(0)
    fig2 = plots.filters_figure(rng.standard_normal((3, 3, 1, 4)), "lenet5 on mnist")
    assert sum(bool(ax.images) for ax in fig2.axes) == 4
    assert fig2.get_suptitle() == "lenet5 on mnist: first-layer filters"
    w1 = rng.standard_normal((7, 1, 16))
    fig1 = plots.filters_figure(w1, "cnn1d on signals")
    drawn = [ax for ax in fig1.axes if ax.lines]
    assert len(drawn) == 16 and "1-D filters" in fig1.get_suptitle()
    np.testing.assert_allclose(drawn[5].lines[0].get_ydata(), w1[:, 0, 5])
    fig3 = plots.filters_figure(rng.standard_normal((3, 3, 3, 1, 8)), "cnn3d on volumes")
    assert sum(bool(ax.images) for ax in fig3.axes) == 8 and "depth slice 1 of 3" in (
        fig3.get_suptitle())
    note = plots.filters_figure(None, "mlp on digits")
    assert "no convolution" in note.axes[0].texts[0].get_text()
    with pytest.raises(ValueError, match=r"filters: w must be a conv kernel.*\(4, 1\)"):
        plots.filters_figure(np.zeros((4, 1)))


def test_first_conv_finds_kernels_of_every_rank_in_order():
    w1, w3 = np.zeros((7, 1, 16)), np.zeros((3, 3, 3, 1, 8))
    assert plots.first_conv([{"gamma": np.ones(3)}, {"w": np.zeros((4, 2))}, {"w": w1}]) is w1
    assert plots.first_conv([{"block": {"conv": {"w": w3}}}]) is w3
    assert plots.first_conv([{"w": np.zeros((4, 2))}, None]) is None
    assert plots.first_conv2d([{"w": w1}]) is None


@pytest.mark.parametrize("config, title", [
    ({"model": "unet", "data": "shapes", "dp_clip": None, "dp_noise": None}, "unet on shapes"),
    ({"model": "cnn1d", "data": "signals", "dp_clip": 1.0, "dp_noise": 1.1, "dp_delta": 1e-5},
     "cnn1d on signals, DP-SGD (clip 1, noise 1.1, delta 1e-05)"),
    (None, ""),
])
def test_run_title(config, title):
    assert plots.run_title(config) == title


def test_plot_run_writes_titled_figures(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model": "cnn1d", "data": "signals"}))
    lines = [json.dumps(r) for r in [*step_records(["conv1", "dense"]), *epoch_records()]]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    seen = []
    real_save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, path: seen.append(
        [fig.get_suptitle(), *titles(fig)]) or real_save(fig, path))
    written = plots.plot_run(tmp_path, np.zeros((7, 1, 16)))
    assert [p.name for p in written] == ["curves.png", "grad_norms.png", "filters.png"]
    assert all(p.stat().st_size > 0 for p in written)
    assert seen[0][0] == "cnn1d on signals"
    assert seen[1][1] == "cnn1d on signals: gradient norm per layer"
    assert seen[2][0] == "cnn1d on signals: first-layer 1-D filters (weight per tap)"
    (tmp_path / "config.json").write_text("{not json")
    seen.clear()
    plots.plot_run(tmp_path, None)  # an unreadable config: figures without the names
    assert seen[0][0] == "" and seen[1][1] == "gradient norm per layer"
