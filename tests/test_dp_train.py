"""`jaxcnn train --dp-clip C --dp-noise SIGMA`: the run loop's DP-SGD (jaxcnn.training.run with
jaxcnn.training.dp): epsilon after every epoch in metrics.jsonl and the log, resume to the same
parameters, and the refusals."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxcnn.tools import cli
from jaxcnn.training import dp
from jaxcnn.training import run as trainer

SMALL = dict(model="seed", data="synthetic", epochs=2, batch_size=16, lr=0.05, log_every=5,
             dp_clip=1.0, dp_noise=1.1)


def test_dp_run_reports_epsilon_and_resumes_to_the_same_parameters(tmp_path):
    cfg = trainer.TrainConfig(**SMALL)
    lines = []
    full = trainer.fit(cfg, tmp_path / "full", progress=False, log=lines.append)
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").open()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    q = 16 / 512  # batch size over the 512 training images of "synthetic"
    for e in epochs:
        assert e["epsilon"] == dp.epsilon(1.1, q, e["step"], 1e-5) and e["dp_delta"] == 1e-5
    assert epochs[1]["epsilon"] > epochs[0]["epsilon"] > 0
    assert any("epsilon" in line for line in lines)
    stopped = trainer.fit(cfg, tmp_path / "cut", progress=False, log=lambda s: None,
                          stop_after_steps=32 + 5)
    assert stopped == {"stopped_at_step": 37}
    resumed = trainer.fit(cfg, tmp_path / "cut", resume=True, progress=False, log=lambda s: None)
    jax.tree.map(np.testing.assert_array_equal, resumed["params"], full["params"])


@pytest.mark.parametrize("change,message", [
    (dict(dp_noise=None), "--dp-clip and --dp-noise go together"),
    (dict(dp_clip=0.0), "clip_norm must be a number > 0"),
    (dict(dp_noise=-1.0), "--dp-noise: noise_multiplier (sigma) must be a number >= 0"),
    (dict(dp_delta=1.0), "delta must be in (0, 1)"),
    (dict(grad="autodiff"), "use --grad manual"),
    (dict(model="deep-digits", data="digits"), "BatchNorm"),
])
def test_bad_dp_settings_are_refused(tmp_path, change, message):
    cfg = trainer.TrainConfig(**{**SMALL, **change})
    with pytest.raises(ValueError) as info:
        trainer.fit(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert message in str(info.value)
    if "BatchNorm" in message:
        assert "GroupNorm" in str(info.value)


def test_the_cli_flags_reach_the_run(tmp_path, capsys):
    rc = cli.main(["train", "--model", "seed", "--data", "synthetic", "--epochs", "1",
                   "--batch-size", "32", "--dp-clip", "0.5", "--dp-noise", "2.0",
                   "--dp-delta", "1e-6", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["dp_clip"], config["dp_noise"], config["dp_delta"]) == (0.5, 2.0, 1e-6)
    assert "epsilon" in capsys.readouterr().out
