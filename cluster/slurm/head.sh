#!/bin/bash
# The head's part of gkd-tune.sbatch, run by `ray symmetric-run` once Ray is up on every node: an MLflow server on
# loopback (its store in the sweep folder), the sweep on the job's Ray cluster (its report in the sweep folder
# too), then the server stopped. The exit code is the sweep's.
set -uo pipefail
space="$(readlink -f "$1")" sweep_dir="$2" address="$3"
cd "$sweep_dir"   # the report (reports/<name>/) beside the runs
mlflow server --host 127.0.0.1 --port "${MLFLOW_PORT:-5000}" \
    --backend-store-uri "sqlite:///$sweep_dir/mlflow.sqlite" --artifacts-destination "$sweep_dir/mlflow-artifacts" \
    > "$sweep_dir/mlflow-server.log" 2>&1 &
mlflow_pid=$!
trap 'kill $mlflow_pid 2>/dev/null' EXIT
for _ in $(seq 120); do
    python -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1])" \
        "http://127.0.0.1:${MLFLOW_PORT:-5000}/health" 2>/dev/null && break
    sleep 1
done
python -m gkd_tune.search --space "$space" --address "$address" --storage-path "$sweep_dir/runs" \
    --tracking-uri "http://127.0.0.1:${MLFLOW_PORT:-5000}" ${RESUME:+--resume}
