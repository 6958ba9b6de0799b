#!/usr/bin/env bash
# Every GPU check of gkd-tune, about 12 minutes on one H200, cold compiles included. Each stage has a
# time limit of its own and writes its files as soon as it ends, so a stage that runs long costs its own result,
# not the others', and a call cut short keeps what was done:
#   1. the real result (at most 330 s): `python -m gkd_tune.train` on the whole of CIFAR-10 (JPEG), a ResNet50
#      teacher, then MobileNetV2 students alone, with KD and with Gompertz KD, at the fixed values of
#      search_spaces/gompertz.yaml (batch 512, multistep, student lr 0.08, teacher lr 0.1) and the paper's b=2,
#      c=6, beta 0.1..1.0, r=0.5, tau=4; 20 epochs each, 1 seed, validation from the training split, the test split
#      once at the end. The three students train at once, sharing the GPU (their img/s say so);
#   2. the confirmation (at most 200 s): the same three students at seeds 1 and 2 (the six at once), paired by
#      seed with stage 1's seed 0: Gompertz - KD and Gompertz - student alone on test, with 95% t-intervals and n
#      (gkd_tune.core.stats, as a sweep's confirm stage reports them; a run cut short by the limit is left out);
#   3. the CUDA tests (pytest marker `gpu`, at most 150 s);
#   4. the step benchmark table (benchmarks/step_throughput.py, eager and CUDA graphs, at most 60 s).
# All four take about 12 minutes: more than one call of the device tool (600 s). STAGES picks them, e.g.
#   STAGES="real confirm" WORK_DIR=w bash benchmarks/gpu_check.sh OUT; STAGES="tests step" bash ... OUT2
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          (default: gpu-check-<date>; STAGES default: all four)
#
# Writes to OUT_DIR (10 files at most, for the device tool): gpu_check.log (everything), real-teacher.log,
# real-student.log, real-kd.log, real-gompertz.log, real_result.json (per run: val acc and img/s per epoch, test
# acc; rewritten after each run), confirm.log (the six runs' logs, one after the other), confirm.json (per method
# and seed the test acc, and the paired differences), pytest.log, step_throughput.json. Checkpoints and students
# go to WORK_DIR (default: a temporary folder; stage 2 needs stage 1's, so give one to run them in two calls).
#
# Needs gkd-tune's core dependencies (torch, torchvision, geomloss, pyarrow, pillow, filelock, numpy, scikit-learn,
# scipy) and pytest; not Ray, MLflow or Optuna. PYTHON picks the interpreter (default: .venv/bin/python where there is one, else
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
# every student run: 20 epochs on the whole training split (10% validation), the test split once at the end; the
# stage-1 teacher; the paper's Gompertz values
COMMON=(--source "parquet:$data" --val-fraction 0.1 --max-epochs 20 --batch-size 512 --lr-schedule multistep --test)
TEACHER=(--teacher-arch resnet50 --teacher-checkpoint "$work/teacher/student.pt")
PAPER=(--b 2 --c 6 --beta-min 0.1 --beta-max 1.0 --r 0.5 --tau 4)

stage_real_result() {
    echo "== 1. the real result: CIFAR-10 (JPEG, 45,000 train / 5,000 val / 10,000 test), ResNet50 -> MobileNetV2"
    local start=$SECONDS deadline=$((SECONDS + 330))
    local common=("${COMMON[@]}" --seed 0)
    local teacher=("${TEACHER[@]}") paper=("${PAPER[@]}")
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

stage_confirmation() {
    echo "== 2. the confirmation: student alone, KD and Gompertz at seeds 1 and 2, paired by seed with seed 0"
    [ -f "$work/teacher/student.pt" ] || { echo "   no teacher from stage 1 in $work"; return 1; }
    local start=$SECONDS pids=() names=()
    for seed in 1 2; do
        for method in student kd gompertz; do
            timeout -s INT 200 "$PYTHON" -m gkd_tune.train "${COMMON[@]}" --seed "$seed" --student mobilenet_v2 \
                --method "$method" --lr 0.08 "${TEACHER[@]}" "${PAPER[@]}" --out "$work/confirm-$method-$seed" \
                > "$work/confirm-$method-$seed.log" 2>&1 &
            pids+=($!) names+=("$method seed $seed")
        done
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}"
        echo "   ${names[$i]}: exit $?"
    done
    for log in "$work"/confirm-*.log; do echo "=== $log"; cat "$log"; done > "$out/confirm.log"
    echo "   $((SECONDS - start)) s"
    "$PYTHON" - "$work" "$out/confirm.json" <<'EOF'
import json, sys
from pathlib import Path

from gkd_tune.core.stats import Difference

work, result = Path(sys.argv[1]), Path(sys.argv[2])
test = {}  # method -> seed -> test acc of a completed run
for method in ("student", "kd", "gompertz"):
    for seed, folder in ((0, f"student-{method}"), (1, f"confirm-{method}-1"), (2, f"confirm-{method}-2")):
        file = work / folder / "metrics.json"
        rows = json.loads(file.read_text()) if file.exists() else []
        if rows and rows[-1].get("outcome") == "completed" and rows[-1].get("test_acc") is not None:
            test.setdefault(method, {})[seed] = rows[-1]["test_acc"]
lines, paired = [], {}
for method, by_seed in test.items():
    lines.append(f"   {method:<9} test acc {Difference.of(list(by_seed.values())).value_text()}  (seeds {sorted(by_seed)})")
for baseline in ("kd", "student"):
    mine, theirs = test.get("gompertz", {}), test.get(baseline, {})
    difference = Difference.of([mine[s] - theirs[s] for s in sorted(set(mine) & set(theirs))])
    if difference:
        paired[baseline] = {"mean": difference.mean, "low": difference.low, "high": difference.high, "n": difference.n}
        lines.append(f"   gompertz - {baseline:<8} test acc {difference.text()}")
result.write_text(json.dumps({"test_acc": test, "gompertz_minus": paired}, indent=1))
print("\n".join(lines))
sys.exit(0 if len(paired) == 2 and all(d["n"] == 3 for d in paired.values()) else 1)
EOF
}

stage_cuda_tests() {
    echo "== 3. the CUDA tests"
    local start=$SECONDS
    timeout -s INT 150 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -rs > "$out/pytest.log" 2>&1
    local rc=$?
    tail -n 15 "$out/pytest.log"
    echo "   tests: exit $rc, $((SECONDS - start)) s"
    return $rc
}

stage_step_benchmark() {
    echo "== 4. the step (resnet50 -> mobilenet_v2, batch 512): eager and CUDA graphs"
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
    "$PYTHON" -c "import torch, geomloss, sklearn, scipy; print('python', __import__('sys').version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'geomloss', geomloss.__version__); assert torch.cuda.is_available(), 'no CUDA device'" \
        || return 1
    [ -f "$data/train.parquet" ] && [ -f "$data/test.parquet" ] || { echo "no CIFAR-10 at $data"; return 1; }
    local status=0 stage
    for stage in ${STAGES:-real confirm tests step}; do
        case "$stage" in
            real) stage_real_result || status=1 ;;
            confirm) stage_confirmation || status=1 ;;
            tests) stage_cuda_tests || status=1 ;;
            step) stage_step_benchmark || status=1 ;;
            *) echo "unknown stage $stage (real, confirm, tests, step)"; status=1 ;;
        esac
    done
    echo "== done: exit $status, work files in $work"
    return $status
}

# the log through a pipe that the script waits for: its end is never lost
main 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
