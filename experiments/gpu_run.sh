#!/usr/bin/env bash
# The GPU figures of experiments/PERFORMANCE.md, in one call on a GPU machine whose Python has
# jax with its CUDA plugin, optax, chex, pytest and hypothesis (nothing is installed: run it from
# the repository root; results land in $OUT, default ./gpu_results).
#   bash experiments/gpu_run.sh [STEP ...]   STEP: bench-highest bench-default rules tests layers
# Each step has its own time limit, so one slow step cannot take the others' figures with it.
set -u
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
STEPS=${*:-bench-highest bench-default rules tests layers}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" \
  | tee -a "$OUT/gpu.txt"
for step in $STEPS; do
  echo "== $step ($(date +%T))"
  case $step in
    bench-highest|bench-default)
      p=${step#bench-}
      timeout 150 $PY -m jaxcnn.tools.cli bench --impl conv,gemm,auto --precision "$p" --rounds 5 \
        --json "$OUT/bench_gpu_$p.json" --markdown "$OUT/bench_gpu_$p.md" 2>&1 \
        | grep -v cuda_timer > "$OUT/bench_$p.log"
      tail -25 "$OUT/bench_$p.log" ;;
    rules|layers)
      timeout 150 $PY experiments/perf_probes.py --only "$step" --rounds 3 \
        --json "$OUT/probes_$step.json" 2>&1 | grep -v cuda_timer | tee "$OUT/probes_$step.log" ;;
    tests)  # the cross-checks (float64 vs jax.grad and finite differences, float32, sweeps)
      $PY -m pytest --version
      timeout 100 $PY -X faulthandler -m pytest -q -p no:cacheprovider tests/test_backward.py \
        tests/test_properties.py tests/test_network.py tests/test_ops.py 2>&1 \
        | tee "$OUT/pytest_gpu.log" | tail -15
      echo "pytest exit status ${PIPESTATUS[0]}" ;;
  esac
done
echo "== done ($(date +%T))"
