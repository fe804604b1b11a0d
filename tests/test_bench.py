"""The benchmark's bookkeeping (not its timings: performance is measured by `jaxcnn bench`)."""

import json

from jaxcnn import models
from jaxcnn.nn import layers
from jaxcnn.nn.combinators import Residual, Serial, SkipConcat
from jaxcnn.nn.network import PIXEL_SOFTMAX, SOFTMAX, Network
from jaxcnn.tools import bench, cli


def test_step_flops_of_the_seed_net():
    """conv 3x3 on 6x6 -> 4x4: 2 * 16 * 9 FLOPs forward, counted twice (forward and dW; the
    first layer's dx is not needed); dense 4 -> 1: 2 * 4, counted three times."""
    assert bench.step_flops(models.seed_cnn(), 1) == 2 * 16 * 9 * 2 + 2 * 4 * 3
    assert bench.step_flops(models.seed_cnn(), 10) == 10 * bench.step_flops(models.seed_cnn(), 1)


def test_step_flops_walks_blocks_and_transposed_convs():
    """(4, 4, 2) -> Residual(conv 3x3 SAME, 3 | shortcut conv 1x1, 3): both read the input, so
    forward and dW only (2x): 2 * (4*4*3) * 9 * 2 and 2 * (4*4*3) * 1 * 2 -> SkipConcat(max pool
    -> transposed conv 2x2 stride 2, 4 on (2, 2, 3): 2 * (2*2*3) * 4 * 4, 3x) -> (4, 4, 7) ->
    conv 1x1, 2: 2 * (4*4*2) * 1 * 7, 3x."""
    net = Network("blocks", [
        Residual(Serial(layers.Conv2D(3, 3, padding="SAME", name="c"), name="f"),
                 layers.Conv2D(3, 1, name="p"), name="res"),
        SkipConcat(Serial(layers.MaxPool(2), layers.ConvTranspose2D(4, 2, stride=2, name="t"),
                          name="down"), name="skip"),
        layers.Conv2D(2, 1, name="logits")], (4, 4, 2), PIXEL_SOFTMAX)
    expected = (2 * (2 * 48 * 9 * 2) + 2 * (2 * 48 * 1 * 2) + 3 * (2 * 12 * 4 * 4)
                + 3 * (2 * 32 * 1 * 7))
    assert bench.step_flops(net, 1) == expected
    assert bench.step_flops(net, 5) == 5 * expected


def test_step_flops_of_1d_and_3d_convs():
    """(8, 2) -> conv 3, 4, groups 2 -> (6, 4): 2 * 24 * 3 * 2 / 2 (2x) -> global average pool
    -> dense 4 -> 3 (3x); (3, 3, 3, 1) -> conv 2x2x2, 2 -> (2, 2, 2, 2): 2 * 16 * 8 * 1 (2x)
    -> flatten -> dense 16 -> 2 (3x)."""
    net1 = Network("c1", [layers.Conv1D(4, 3, groups=2), layers.GlobalAvgPool(),
                          layers.Dense(3)], (8, 2), SOFTMAX)
    net3 = Network("c3", [layers.Conv3D(2, 2), layers.Flatten(), layers.Dense(2)],
                   (3, 3, 3, 1), SOFTMAX)
    assert bench.step_flops(net1, 2) == 2 * (2 * (2 * 24 * 3 * 2 // 2) + 3 * (2 * 4 * 3))
    assert bench.step_flops(net3, 1) == 2 * (2 * 16 * 8) + 3 * (2 * 16 * 2)


def test_interleaved_ratios():
    times = bench.interleaved({"a": lambda: 1, "b": lambda: 2}, rounds=3, block_s=0.001,
                              rest_s=0.0)
    assert set(times) == {"a", "b"} and all(len(t) == 3 for t in times.values())
    r = bench.ratios([1.0, 2.0, 4.0], [2.0, 2.0, 2.0])
    assert r == {"median": 1.0, "min": 0.5, "max": 2.0}


def test_bench_cli_writes_json_and_markdown(tmp_path, capsys):
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    code = cli.main(["bench", "--networks", "seed:2", "--impl", "conv,gemm", "--rounds", "1",
                     "--json", str(out_json), "--markdown", str(out_md)])
    assert code == 0
    result = json.loads(out_json.read_text())
    variants = result["networks"][0]["variants"]
    assert set(variants) == {"manual[conv]", "manual[gemm]", "autodiff"}
    assert variants["manual[conv]"]["temp_bytes"] is not None
    assert "vs_autodiff" in variants["manual[gemm]"]
    assert "per_example" in result["networks"][0]
    assert "| seed | 2 | manual[conv] |" in out_md.read_text()
    assert cli.main(["bench", "--networks", "nosuch:3"]) == 2


def test_bench_at_default_precision(tmp_path):
    out_json = tmp_path / "b.json"
    assert cli.main(["bench", "--networks", "seed:2", "--rounds", "1", "--no-per-example",
                     "--precision", "default", "--json", str(out_json), "--markdown", ""]) == 0
    result = json.loads(out_json.read_text())
    assert result["precision"] == "default" and "manual[conv]" in result["networks"][0]["variants"]
    assert "default precision" in bench.to_markdown(result)


def test_bench_runs_the_unet_and_resnet20_is_a_default(tmp_path):
    """The per-pixel head's (N, H, W) labels reach both steps; resnet20 b64 and unet b16 are in
    the default run."""
    assert {("resnet20", 64), ("unet", 16)} <= set(bench.NETWORKS)
    out_json = tmp_path / "b.json"
    assert cli.main(["bench", "--networks", "unet:2", "--rounds", "1", "--no-per-example",
                     "--json", str(out_json), "--markdown", ""]) == 0
    net = json.loads(out_json.read_text())["networks"][0]
    assert set(net["variants"]) == {"manual[conv]", "autodiff"}
    assert net["flops"] == bench.step_flops(models.get("unet"), 2) > 0
    assert all(v["median_ms"] > 0 for v in net["variants"].values())
