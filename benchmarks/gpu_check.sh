#!/usr/bin/env bash
# Every GPU check of gkd-tune in one call of the device tool (at most 9 minutes on one H200, cold compiles included,
# inside its 10-minute limit and the 15 minutes of device time a session has). Each stage has a time limit of its
# own and writes its files as soon as it ends, so a stage that runs long costs its own result, not the others':
#   tests  the CUDA tests (pytest marker `gpu`, at most 150 s), started first and in the background: they are
#          compilation on the CPU and small kernels, which the teacher's training leaves room for;
#   real   the real result with its error bars (at most 450 s): `python -m gkd_tune.train` on the whole of
#          CIFAR-10 (JPEG, 45,000 train / 5,000 val / 10,000 test), a ResNet50 teacher, then MobileNetV2 students
#          alone, with KD and with Gompertz KD, each at seeds 0, 1 and 2 (SEEDS), the nine at once sharing the GPU
#          (their img/s say so); the fixed values of search_spaces/gompertz.yaml (batch 512, multistep, student lr
#          0.08, teacher lr 0.1) and the paper's b=2, c=6, beta 0.1..1.0, r=0.5, tau=4; 12 epochs each (EPOCHS; 20
#          do not fit one call with the rest), validation from the training split, the test split once at the end. Then
#          Gompertz - KD and Gompertz - student alone on test, paired by seed, with 95% t-intervals and n
#          (gkd_tune.core.stats, as a sweep's confirm stage reports them; a run cut short is left out);
#   step   the step benchmark table (benchmarks/step_throughput.py, eager and CUDA graphs, at most 90 s), after the
#          other two, alone on the GPU.
# STAGES picks them (default "tests real step"), e.g. STAGES=step bash benchmarks/gpu_check.sh OUT
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          (default: gpu-check-<date>)
#
# Writes to OUT_DIR (6 files; the device tool brings back 8 at most): gpu_check.log (everything), teacher.log,
# students.log (the nine students' logs, one after the other), real_result.json (per run: val acc and img/s per
# epoch, test acc; the paired differences; written after the teacher and after the students), pytest.log,
# step_throughput.json. Checkpoints and students go to WORK_DIR (default: a temporary folder).
#
# Needs gkd-tune's core dependencies (torch, torchvision, geomloss, pyarrow, pillow, filelock, numpy, scikit-learn,
# scipy) and pytest; not Ray, MLflow or Optuna. PYTHON picks the interpreter (default: .venv/bin/python where there
# is one, else python3). The data: GKD_TUNE_GPU_DATA, a folder with train.parquet and test.parquet (default
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
SEEDS=(${SEEDS:-0 1 2})
METHODS=(student kd gompertz)
# every run: 12 epochs on the whole training split (10% validation), the test split once at the end; the teacher;
# the paper's Gompertz values
COMMON=(--source "parquet:$data" --val-fraction 0.1 --max-epochs "${EPOCHS:-12}" --batch-size 512
        --lr-schedule multistep --test)
TEACHER=(--teacher-arch resnet50 --teacher-checkpoint "$work/teacher/student.pt")
PAPER=(--b 2 --c 6 --beta-min 0.1 --beta-max 1.0 --r 0.5 --tau 4)

stage_real_result() {
    echo "== real: CIFAR-10 (JPEG), ResNet50 -> MobileNetV2 alone, KD, Gompertz at seeds ${SEEDS[*]}"
    local start=$SECONDS deadline=$((SECONDS + 450))
    timeout -s INT $((deadline - SECONDS)) "$PYTHON" -m gkd_tune.train "${COMMON[@]}" --seed 0 --student resnet50 \
        --method student --lr 0.1 --out "$work/teacher" > "$out/teacher.log" 2>&1
    echo "   teacher: exit $?, $((SECONDS - start)) s"
    summarise
    [ -f "$work/teacher/student.pt" ] || return 1
    local pids=() names=() seed method
    for seed in "${SEEDS[@]}"; do
        for method in "${METHODS[@]}"; do
            # nine compilations at once: each its share of the cores, not a pool of workers per core
            TORCHINDUCTOR_COMPILE_THREADS=2 timeout -s INT $((deadline - SECONDS)) "$PYTHON" -m gkd_tune.train \
                "${COMMON[@]}" --seed "$seed" --student mobilenet_v2 --method "$method" --lr 0.08 "${TEACHER[@]}" \
                "${PAPER[@]}" --out "$work/$method-$seed" > "$work/$method-$seed.log" 2>&1 &
            pids+=($!) names+=("$method-$seed")
        done
    done
    local i
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}"
        echo "   ${names[$i]}: exit $?, $((SECONDS - start)) s"
    done
    for i in "${names[@]}"; do echo "=== $i"; cat "$work/$i.log"; done > "$out/students.log"
    echo "   $((SECONDS - start)) s"
    summarise
}

summarise() {  # real_result.json and its tables, from every run's metrics.json so far
    "$PYTHON" - "$work" "$out/real_result.json" "${SEEDS[@]}" <<'PYTHON'
import json, sys
from pathlib import Path

from gkd_tune.core.stats import Difference

work, result, seeds = Path(sys.argv[1]), Path(sys.argv[2]), [int(s) for s in sys.argv[3:]]
methods = ("student", "kd", "gompertz")
runs, test = {}, {}  # test: method -> seed -> test acc of a completed run
for name in ["teacher"] + [f"{m}-{s}" for s in seeds for m in methods]:
    file = work / name / "metrics.json"
    if not file.exists():
        continue
    rows = json.loads(file.read_text())
    test_acc = rows[-1].get("test_acc")
    # the loop's outcome (completed, diverged) where it gave one; a run stopped before it or before its test: cut short
    outcome = rows[-1].get("outcome") or "cut short"
    if outcome == "completed" and test_acc is None:
        outcome = "cut short"
    runs[name] = {"epochs": len(rows), "outcome": outcome, "val_acc": [r["val_acc"] for r in rows],
                  "images_per_s": [round(r["images_per_s"]) for r in rows], "test_acc": test_acc}
    line = f"   {name:<11} epochs {len(rows):>2}  val acc {rows[-1]['val_acc']:.4f}  test acc "
    completed = outcome == "completed"
    print(line + (f"{test_acc:.4f}" if completed else f"- ({outcome})") + f"  img/s {runs[name]['images_per_s'][-1]}")
    if completed and name != "teacher":
        method, seed = name.rsplit("-", 1)
        test.setdefault(method, {})[int(seed)] = test_acc
paired = {}
for method, by_seed in test.items():
    print(f"   {method:<9} test acc {Difference.of(list(by_seed.values())).value_text()}  (seeds {sorted(by_seed)})")
for baseline in ("kd", "student"):
    mine, theirs = test.get("gompertz", {}), test.get(baseline, {})
    difference = Difference.of([mine[s] - theirs[s] for s in sorted(set(mine) & set(theirs))])
    if difference:
        paired[baseline] = {"mean": difference.mean, "low": difference.low, "high": difference.high,
                            "n": difference.n}
        print(f"   gompertz - {baseline:<8} test acc {difference.text()}  (paired by seed)")
result.write_text(json.dumps({"data": "CIFAR-10, JPEG (../shared/data/cifar10-full)", "seeds": seeds, "runs": runs,
                              "test_acc": test, "gompertz_minus": paired}, indent=1))
sys.exit(0 if len(runs) == 1 + 3 * len(seeds) and len(paired) == 2
         and all(run["outcome"] == "completed" for run in runs.values()) else 1)
PYTHON
}

stage_cuda_tests() {
    local start=$SECONDS
    if [ ! -f ../shared/data/cifar10/train-10k.parquet ] && [ -z "${GKD_TUNE_SHARED_DATA:-}" ]; then
        # the real-data test's sample where there is no ../shared: 10,000 images of this call's training split
        mkdir -p "$work/sample/cifar10" && export GKD_TUNE_SHARED_DATA="$work/sample"
        "$PYTHON" -c "import pyarrow.parquet as pq, sys; pq.write_table(pq.read_table(sys.argv[1]).slice(0, 10000),
sys.argv[2])" "$data/train.parquet" "$work/sample/cifar10/train-10k.parquet"
    fi
    # addopts cleared: the project's name pytest-xdist's options, which this machine's pytest may lack
    timeout -s INT 150 "$PYTHON" -m pytest -q -o addopts= -m gpu -p no:cacheprovider tests/test_gpu.py -rs \
        > "$out/pytest.log" 2>&1
    local rc=$?
    echo "== tests: the CUDA tests"
    tail -n 15 "$out/pytest.log"
    echo "   tests: exit $rc, $((SECONDS - start)) s"
    return $rc
}

stage_step_benchmark() {
    echo "== step: resnet50 -> mobilenet_v2, batch 512, eager and CUDA graphs"
    local start=$SECONDS
    timeout -s INT 90 "$PYTHON" benchmarks/step_throughput.py --modes off,cudagraphs --packing "" --timeout 40 \
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
    local status=0 stage tests=""
    for stage in ${STAGES:-tests real step}; do
        case "$stage" in
            tests) stage_cuda_tests & tests=$! ;;
            real) stage_real_result || status=1 ;;
            step) if [ -n "$tests" ]; then wait "$tests" || status=1; tests=""; fi
                  stage_step_benchmark || status=1 ;;
            *) echo "unknown stage $stage (tests, real, step)"; status=1 ;;
        esac
    done
    [ -z "$tests" ] || wait "$tests" || status=1
    echo "== done: exit $status, work files in $work"
    return $status
}

# the log through a pipe that the script waits for: its end is never lost
main 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
