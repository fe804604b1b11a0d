#!/usr/bin/env bash
# The GPU figures of experiments/PERFORMANCE.md, in one call on a GPU machine whose Python has
# jax with its CUDA plugin, optax, chex, pytest and hypothesis (no install: run from the
# repository root; results land in $OUT, default ./gpu_results).
#   bash experiments/gpu_run.sh
set -u
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" \
  | tee -a "$OUT/gpu.txt"
for p in highest default; do
  timeout 200 $PY -m jaxcnn.cli bench --impl conv,gemm --precision $p --rounds 5 \
    --json "$OUT/bench_gpu_$p.json" --markdown "$OUT/bench_gpu_$p.md" 2>&1 | tee "$OUT/bench_$p.log"
done
# The cross-checks (float64 against jax.grad and finite differences, float32, property sweeps)
# on the GPU.
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_backward.py tests/test_properties.py \
  tests/test_network.py tests/test_ops.py tests/test_transforms.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -40
