"""The benchmark's bookkeeping (not its timings: performance is measured by `jaxcnn bench`)."""

import json

from jaxcnn import models
from jaxcnn.tools import bench, cli


def test_step_flops_of_the_seed_net():
    """conv 3x3 on 6x6 -> 4x4: 2 * 16 * 9 FLOPs forward, counted twice (forward and dW; the
    first layer's dx is not needed); dense 4 -> 1: 2 * 4, counted three times."""
    assert bench.step_flops(models.seed_cnn(), 1) == 2 * 16 * 9 * 2 + 2 * 4 * 3
    assert bench.step_flops(models.seed_cnn(), 10) == 10 * bench.step_flops(models.seed_cnn(), 1)


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
