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
