"""`jaxcnn bench --against torch` without PyTorch installed: a clear ImportError.

The PyTorch twins themselves are tested in tests_torch/ (run where torch is installed).
"""

import sys

import pytest

from jaxcnn import models
from jaxcnn.tools import bench_torch


def test_missing_torch_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    bench_torch._torch.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0 \(CPU build\)"):
            bench_torch.torch_model(models.seed_cnn())
    finally:
        bench_torch._torch.cache_clear()



def test_resnet20_flops_need_no_torch(monkeypatch):
    """`jaxcnn bench` without --against torch walks the blocks' specs through bench_torch's
    torch-free helpers. With torch unimportable, resnet20's step FLOPs are the hand count of
    its MACs: the stem (forward and dW only), then per stage 3x3 convolutions of 16, 32, 64
    filters on 32x32, 16x16, 8x8 maps, the 1x1 stride-2 projections, and the dense layer."""
    from jaxcnn.tools import bench

    monkeypatch.setitem(sys.modules, "torch", None)
    bench_torch._torch.cache_clear()
    try:
        flops = bench.step_flops(models.resnet20(), 1)
    finally:
        bench_torch._torch.cache_clear()
    stem = 32 * 32 * 16 * 27
    stage1 = 6 * 32 * 32 * 16 * 144
    stage2 = 16 * 16 * 32 * 144 + 16 * 16 * 32 * 16 + 5 * 16 * 16 * 32 * 288
    stage3 = 8 * 8 * 64 * 288 + 8 * 8 * 64 * 32 + 5 * 8 * 8 * 64 * 576
    assert flops == 2 * (2 * stem + 3 * (stage1 + stage2 + stage3 + 64 * 10))
