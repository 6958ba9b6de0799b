#!/usr/bin/env bash
# Makes benchmarks/gpu_check.sh ready for the device tool's GPU machine, which has torch, torchvision, pyarrow,
# pillow and pytest but not geomloss, cannot download anything, and gets only this checkout (no ../shared):
#   .whl/        geomloss's wheel (the version installed here)
#   .gpu-data/   a copy of ../shared/data/cifar10-full (55 MB of the 64 MiB a call may carry)
# Both folders are git-ignored. Then prints the command to give the tool (carry: .whl and .gpu-data).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
version="$("$python" -c 'import geomloss; print(geomloss.__version__)')"
rm -rf .whl && mkdir -p .whl
"$python" -m pip download -q --no-deps --only-binary=:all: -d .whl "geomloss==$version"
mkdir -p .gpu-data && cp -r ../shared/data/cifar10-full .gpu-data/
du -sh .whl .gpu-data
cat <<'COMMAND'
device run, carry [".whl", ".gpu-data"], timeout_s 590:
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; GKD_TUNE_GPU_DATA=.gpu-data/cifar10-full PYTHON=python3 bash benchmarks/gpu_check.sh $OUT
COMMAND
