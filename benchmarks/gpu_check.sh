#!/usr/bin/env bash
# Every GPU check of gkd-tune in one command, in about 8 minutes on one H100/H200:
#   1. the CUDA tests (pytest marker `gpu`): bf16 autocast, channels_last, the device loader on CUDA, the
#      compiled step (inductor, and with CUDA graphs), closed-form vs autograd gradient matching and the torch
#      Sinkhorn vs geomloss on CUDA, two epochs on the real CIFAR-10 sample;
#   2. benchmarks/step_throughput.py: eager vs compiled vs CUDA graphs, the per-term breakdown, packing 1 and
#      2 trials on the GPU, start-up times.
# Measured on an H200: tests 150 s, benchmark about 300 s.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          (default: gpu-check-<date>)
#
# Needs gkd-tune's dependencies except Ray, MLflow and Optuna (torch, geomloss, pyarrow, pillow, scikit-learn,
# filelock, pytest). The CIFAR-10 sample is read from $GKD_TUNE_SHARED_DATA (default ../shared/data); the test
# that needs it is skipped without it. Writes OUT_DIR/gpu_check.log, OUT_DIR/pytest.log and
# OUT_DIR/step_throughput.json.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
python="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# a compile cache of this run's own: the first compilation is cold, later ones (packing) find it warm
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)/inductor}"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1

echo "== gkd-tune GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || exit 1
"$python" -c "import torch, geomloss; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'geomloss', geomloss.__version__); assert torch.cuda.is_available(), 'no CUDA device'" || exit 1

status=0
echo "== 1. CUDA tests"
start=$SECONDS
timeout 200 "$python" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -rs 2>&1 | tee "$out/pytest.log"
tests_rc=${PIPESTATUS[0]}
echo "   tests: exit $tests_rc, $((SECONDS - start)) s"
[ "$tests_rc" -eq 0 ] || status=1

echo "== 2. step throughput (resnet50 -> mobilenet_v2, batch 512): eager, compiled, CUDA graphs, packing"
start=$SECONDS
timeout -s INT 330 "$python" benchmarks/step_throughput.py --modes off,on,cudagraphs --packing 1,2 \
    --packing-seconds 6 --timeout 150 --json "$out/step_throughput.json" || status=1
echo "   $((SECONDS - start)) s"
echo "== done: exit $status"
exit $status
