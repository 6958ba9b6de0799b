#!/usr/bin/env bash
# The README's quickstart as a new user runs it, timed: in a fresh folder, with an empty gkd-tune cache (the digits
# teacher is trained, the arrays decoded), then once more with the cache warm. Prints the wall time of each, the
# console's line count and the best trial's test accuracy. Run it on an idle machine:
#   bash benchmarks/quickstart_time.sh            (PYTHON=... for another interpreter than .venv/bin/python;
#                                                  KEEP=DIR keeps the two consoles there)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for run in cold warm; do
    folder="$work/$run"
    mkdir -p "$folder"
    start=$(date +%s.%N)
    (cd "$folder" && GKD_TUNE_CACHE="$work/cache" "$python" -m gkd_tune.search \
        --space "$root/search_spaces/quickstart.yaml" > console.txt 2>&1)
    end=$(date +%s.%N)
    best=$(grep -E '^1 +t[0-9]+' "$folder/console.txt" | awk '{print $4}')
    [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$folder/console.txt" "$KEEP/$run.txt"
    printf '%s cache: %.0f s, %d console lines, best trial test_acc %s\n' "$run" "$(awk "BEGIN {print $end - $start}")" \
        "$(wc -l < "$folder/console.txt")" "$best"
done
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%d)"
