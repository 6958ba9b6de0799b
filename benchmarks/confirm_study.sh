#!/usr/bin/env bash
# The confirmation study on real CIFAR-10 (CPU, about 50 minutes on 2 cores): a budget-halving search of 20
# configurations, then the top 3 at 3 new seeds beside KD and the student alone (benchmarks/confirm/cifar10k.yaml).
# Writes benchmarks/results/<date>-confirm-cifar10k/: the command, console.txt, summary.md and trials.parquet.
#   bash benchmarks/confirm_study.sh        (PYTHON=... for another interpreter than .venv/bin/python;
#                                            SHARED=... where the data is, default ../shared)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
python="${PYTHON:-$root/.venv/bin/python}"
shared="${SHARED:-$root/../shared}"
data="benchmarks/data/cifar10k"   # ignored: the data never enters the repository
mkdir -p "$data"
ln -sfn "$(cd "$shared/data/cifar10" && pwd)/train-10k.parquet" "$data/train.parquet"
ln -sfn "$(cd "$shared/data/cifar10-full" && pwd)/test.parquet" "$data/test.parquet"
out="benchmarks/results/$(date -u +%Y-%m-%d)-confirm-cifar10k"
mkdir -p "$out"
command="$python -m gkd_tune.search --space benchmarks/confirm/cifar10k.yaml"
start=$(date +%s)
$command 2>&1 | tee "$out/console.txt"
echo "wall time: $(( $(date +%s) - start )) s on $(nproc) cores, $(date -u +%Y-%m-%d)" | tee -a "$out/console.txt"
cp reports/confirm-cifar10k/summary.md reports/confirm-cifar10k/trials.parquet "$out/"
cp benchmarks/confirm/cifar10k.yaml "$out/space.yaml"
echo "bash benchmarks/confirm_study.sh   # = $command" > "$out/command.txt"
