"""cluster/kuberay/rayjob.yaml against what the rest of cluster/ states (it cannot run here: no Kubernetes)."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def documents() -> dict:
    return {d["kind"] + "/" + d["metadata"]["name"]: d
            for d in yaml.safe_load_all((ROOT / "cluster" / "kuberay" / "rayjob.yaml").read_text())}


def test_the_rayjob_splits_head_and_worker_rights_runs_token_auth_and_the_pinned_ray():
    found = documents()
    job = found["RayJob/gkd-tune-gompertz"]["spec"]
    cluster = job["rayClusterSpec"]
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "cluster" / "constraints.txt").read_text(), re.M)[1]
    assert cluster["rayVersion"] == pinned and cluster["authOptions"] == {"mode": "token"}
    assert cluster["enableInTreeAutoscaling"] and cluster["autoscalerOptions"]["version"] == "v2"
    head = cluster["headGroupSpec"]["template"]["spec"]
    [workers] = cluster["workerGroupSpecs"]
    accounts = {head["serviceAccountName"], workers["template"]["spec"]["serviceAccountName"]}
    assert accounts == {"gkd-tune-head", "gkd-tune-worker"}
    roles = {name: found[f"ServiceAccount/{name}"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
             for name in accounts}
    assert roles["gkd-tune-head"].endswith(":role/gkd-tune-head-k8s")
    assert roles["gkd-tune-worker"].endswith(":role/gkd-tune-worker-k8s")
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0" and workers["minReplicas"] == 0
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # MLflow on the head pod's loopback, where the entrypoint (the driver) logs to it
    mlflow = next(c for c in head["containers"] if c["name"] == "mlflow")["command"]
    assert mlflow[mlflow.index("--host") + 1] == "127.0.0.1"
    assert "--tracking-uri http://127.0.0.1:5000" in job["entrypoint"] and job["shutdownAfterJobFinishes"]
    assert "--storage-path s3://" in job["entrypoint"]  # storage every pod reads
