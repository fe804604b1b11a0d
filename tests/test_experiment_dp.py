"""experiments/dp_digits.py with tiny settings: it runs, writes its figure and record, and each
private run's epsilon is the accountant's for its sigma, sample rate and steps."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from jaxcnn.training import dp

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "dp_digits.py"


def test_dp_digits_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("experiments_dp_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    fig, js = tmp_path / "dp.png", tmp_path / "dp.json"
    module.main(["--sigmas", "0,1.2", "--epochs", "0.2", "--figure", str(fig), "--json", str(js)])
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(js.read_text())
    base, private = record["runs"]
    assert base["sigma"] == 0 and base["epsilon"] is None  # infinite: no privacy
    assert private["steps"] == 5  # ceil(0.2 / (64 / 1437))
    assert private["epsilon"] == dp.epsilon(1.2, private["sample_rate"], 5, 1e-5)
    assert 0 <= private["test_accuracy"] <= 1 and private["test_accuracy"] > 0.1
