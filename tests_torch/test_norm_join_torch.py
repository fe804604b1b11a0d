"""The norms, joins, global pooling and upsampling against torch's own ops (channels-first,
autograd). PyTorch is an optional extra, absent from CI: `pip install -e ".[torch]"`, then
`pytest tests_torch`."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

jax.config.update("jax_enable_x64", True)  # the float64 comparisons of tests/test_norm_join.py
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_norm_join import CASES, _factors, _problem  # noqa: E402

from helpers import assert_close  # noqa: E402


@pytest.mark.parametrize("case", [c for c in CASES if c.op != "add"], ids=lambda c: c.id)
def test_matches_torch_forward_and_gradients(case):
    """torch's own ops (channels-first, autograd) give the same outputs and gradients."""
    tf = torch.nn.functional
    dy, args = _problem(case)
    kw = case.options
    def first(t):  # channels-last -> channels-first
        return t.movedim(-1, 1)

    def last(t):
        return t.movedim(1, -1)

    ts = [torch.tensor(np.asarray(a), requires_grad=True) for a in args]
    c = args[0].shape[-1]
    y = {
        "group_norm": lambda: last(tf.group_norm(first(ts[0]), kw["groups"], ts[1], ts[2], 1e-5)),
        "layer_norm": lambda: tf.layer_norm(ts[0], (c,), ts[1], ts[2], 1e-5),
        "global_avg_pool": lambda: ts[0].mean(tuple(range(1, ts[0].dim() - 1))),
        "upsample_nearest": lambda: last(tf.interpolate(
            first(ts[0]), scale_factor=_factors(kw.get("scale", 2), ts[0].dim()),
            mode="nearest")),
        "concat": lambda: torch.cat(ts, -1),
    }[case.op]()
    y.backward(torch.tensor(np.asarray(dy)))
    assert_close(case.jit_forward(*args), y.detach().numpy(), 1e-12, f"{case.id} forward")
    for i, (m, t) in enumerate(zip(case.jit_manual(dy, *args), ts)):
        assert_close(m, t.grad.numpy(), 1e-10, f"{case.id} input {i}")
