#!/usr/bin/env bash
# Every GPU check of gkd-tune in one call, within 9 minutes on one H200, cold compiles included. Each stage has a
# time limit of its own and writes its files as soon as it ends, so a stage that runs long costs its own result,
# not the others', and a call cut short keeps what was done:
#   1. the real result (at most 330 s): `python -m gkd_tune.train` on the whole of CIFAR-10 (JPEG), a ResNet50
#      teacher, then MobileNetV2 students alone, with KD and with Gompertz KD, at the fixed values of
#      search_spaces/gompertz.yaml (batch 512, multistep, student lr 0.08, teacher lr 0.1) and the paper's b=2,
#      c=6, beta 0.1..1.0, r=0.5, tau=4; 20 epochs each, 1 seed, validation from the training split, the test split
#      once at the end. The three students train at once, sharing the GPU (their img/s say so);
#   2. the CUDA tests (pytest marker `gpu`, at most 150 s);
#   3. the step benchmark table (benchmarks/step_throughput.py, eager and CUDA graphs, at most 60 s).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          (default: gpu-check-<date>)
#
# Writes to OUT_DIR (8 files at most, for the device tool): gpu_check.log (everything), real-teacher.log,
# real-student.log, real-kd.log, real-gompertz.log, real_result.json (per run: val acc and img/s per epoch, test
# acc; rewritten after each run), pytest.log, step_throughput.json. Checkpoints and students go to WORK_DIR
# (default: a temporary folder).
#
# Needs gkd-tune's core dependencies (torch, torchvision, geomloss, pyarrow, pillow, filelock, numpy) and pytest;
# not Ray, MLflow or Optuna. PYTHON picks the interpreter (default: .venv/bin/python where there is one, else
# python3). The data: GKD_TUNE_GPU_DATA, a folder with train.parquet and test.parquet (default
# ../shared/data/cifar10-full). On the device tool's machine (no ../shared, no geomloss), prepare here with
# `bash benchmarks/prepare_device.sh`, which prints the command to give the tool.
set -uo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}")"
mkdir -p "$out"
work="${WORK_DIR:-$(mktemp -d)}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
data="$(realpath -m "${GKD_TUNE_GPU_DATA:-../shared/data/cifar10-full}")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# the data set decoded once for every run of this call, and its teacher; the compile cache as the machine has it
export GKD_TUNE_CACHE="$work/cache"

stage_real_result() {
    echo "== 1. the real result: CIFAR-10 (JPEG, 45,000 train / 5,000 val / 10,000 test), ResNet50 -> MobileNetV2"
    local start=$SECONDS deadline=$((SECONDS + 330))
    local common=(--source "parquet:$data" --val-fraction 0.1 --max-epochs 20 --batch-size 512
                  --lr-schedule multistep --seed 0 --test)
    local teacher=(--teacher-arch resnet50 --teacher-checkpoint "$work/teacher/student.pt")
    local paper=(--b 2 --c 6 --beta-min 0.1 --beta-max 1.0 --r 0.5 --tau 4)
    timeout -s INT $((deadline - SECONDS)) "$PYTHON" -m gkd_tune.train "${common[@]}" --student resnet50 \
        --method student --lr 0.1 --out "$work/teacher" > "$out/real-teacher.log" 2>&1
    echo "   teacher: exit $?, $((SECONDS - start)) s"
    summarise
    if [ -f "$work/teacher/student.pt" ]; then
        local pids=()
        for method in student kd gompertz; do
            timeout -s INT $((deadline - SECONDS)) "$PYTHON" -m gkd_tune.train "${common[@]}" --student mobilenet_v2 \
                --method "$method" --lr 0.08 "${teacher[@]}" "${paper[@]}" --out "$work/student-$method" \
                > "$out/real-$method.log" 2>&1 &
            pids+=($!)
        done
        local methods=(student kd gompertz)
        for i in 0 1 2; do
            wait "${pids[$i]}"
            echo "   student ${methods[$i]}: exit $?"
        done
    fi
    echo "   $((SECONDS - start)) s"
    summarise
}

summarise() {  # real_result.json and a table, from every run's metrics.json so far
    "$PYTHON" - "$work" "$out/real_result.json" <<'EOF'
import json, sys
from pathlib import Path

work, result = Path(sys.argv[1]), Path(sys.argv[2])
runs = {}
for name in ("teacher", "student-student", "student-kd", "student-gompertz"):
    file = work / name / "metrics.json"
    if file.exists():
        rows = json.loads(file.read_text())
        runs[name] = {"epochs": len(rows), "outcome": rows[-1].get("outcome"), "val_acc": [r["val_acc"] for r in rows],
                      "images_per_s": [round(r["images_per_s"]) for r in rows], "test_acc": rows[-1].get("test_acc")}
result.write_text(json.dumps({"data": "CIFAR-10, JPEG (../shared/data/cifar10-full), 1 seed", "runs": runs}, indent=1))
for name, run in runs.items():
    test = f"{run['test_acc']:.4f}" if run["test_acc"] is not None else "-"
    print(f"   {name:<17} epochs {run['epochs']:>2}  val acc {run['val_acc'][-1]:.4f}  test acc {test}  "
          f"img/s {run['images_per_s'][-1]}")
sys.exit(0 if len(runs) == 4 and all(run["outcome"] == "completed" and run["test_acc"] for run in runs.values()) else 1)
EOF
}

stage_cuda_tests() {
    echo "== 2. the CUDA tests"
    local start=$SECONDS
    timeout -s INT 150 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -rs > "$out/pytest.log" 2>&1
    local rc=$?
    tail -n 15 "$out/pytest.log"
    echo "   tests: exit $rc, $((SECONDS - start)) s"
    return $rc
}

stage_step_benchmark() {
    echo "== 3. the step (resnet50 -> mobilenet_v2, batch 512): eager and CUDA graphs"
    local start=$SECONDS
    timeout -s INT 60 "$PYTHON" benchmarks/step_throughput.py --modes off,cudagraphs --packing "" --timeout 25 \
        --json "$out/step_throughput.json"
    local rc=$?
    echo "   $((SECONDS - start)) s"
    return $rc
}

main() {
    echo "== gkd-tune GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || return 1
    "$PYTHON" -c "import torch, geomloss; print('python', __import__('sys').version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'geomloss', geomloss.__version__); assert torch.cuda.is_available(), 'no CUDA device'" \
        || return 1
    [ -f "$data/train.parquet" ] && [ -f "$data/test.parquet" ] || { echo "no CIFAR-10 at $data"; return 1; }
    local status=0
    stage_real_result || status=1
    stage_cuda_tests || status=1
    stage_step_benchmark || status=1
    echo "== done: exit $status, work files in $work"
    return $status
}

# the log through a pipe that the script waits for: its end is never lost
main 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
