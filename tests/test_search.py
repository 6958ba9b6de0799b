import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gkd_tune import search

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    argv = ["--space", str(QUICKSTART), "--dry-run", "--num-samples", "3", "--storage-path", str(tmp_path / "s"),
            "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    assert search.main(argv) == 0
    out = capsys.readouterr().out
    assert "trials     3, at most 2 at once; Optuna TPE seed 0; ASHA on val_acc (max), grace 1" in out
    assert f"storage    {tmp_path / 's' / 'quickstart'}" in out and f"sqlite:///{tmp_path}/m.db" in out
    for name in ("b", "c", "r", "tau", "beta_min", "beta_max"):
        assert f"\n  {name:<14} " in out
    assert not (tmp_path / "s").exists() and not (tmp_path / "m.db").exists()


def test_bad_space_is_a_one_line_error(tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text("name: x\nparams:\n  beta_mim: 0.1\n")
    assert search.main(["--space", str(space), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {space}: params.beta_mim: unknown key (did you mean 'beta_min'?); allowed: method, b,")
    assert err.count("\n") == 1


def test_resume_without_a_sweep_is_an_error(tmp_path, capsys):
    argv = ["--space", str(QUICKSTART), "--resume", "--storage-path", str(tmp_path)]
    assert search.main(argv) == 2
    assert "error: --resume: no sweep to continue at" in capsys.readouterr().err


@pytest.mark.slow
def test_teacher_task_error_comes_back_as_one_line(tmp_path, capsys):
    """The teacher is prepared by a Ray task; its failure is reported as the error itself, not a remote traceback."""
    space = tmp_path / "space.yaml"
    space.write_text("name: broken\ndata: {source: 'parquet:missing.parquet'}\nteacher: {arch: resnet8, epochs: 1}\n")
    argv = ["--space", str(space), "--storage-path", str(tmp_path / "s"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    assert search.main(argv) == 2
    err = capsys.readouterr().err  # (Ray's own log lines come first)
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: data source 'parquet:") and last.endswith("missing.parquet")
    assert "Traceback" not in err and "RayTaskError" not in err


def child_runs(db):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parent, children


@pytest.mark.slow
def test_quickstart_sweep_interrupted_then_resumed(tmp_path):
    """The README's quickstart, stopped with Ctrl-C mid-sweep and continued with --resume."""
    db, storage = tmp_path / "mlflow.db", tmp_path / "runs"
    argv = [sys.executable, "-m", "gkd_tune.search", "--space", str(QUICKSTART), "--storage-path", str(storage),
            "--tracking-uri", f"sqlite:///{db}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    # wait for three trials to have reported, then Ctrl-C
    deadline = time.time() + 400
    while time.time() < deadline and first.poll() is None:
        if len(list(storage.glob("quickstart/train_trial_*/checkpoint_*"))) >= 3:
            break
        time.sleep(2)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=180) == search.EXIT_INTERRUPTED, (tmp_path / "first.log").read_text()[-3000:]
    printed = (tmp_path / "first.log").read_text()
    assert "The sweep was interrupted" in printed and "--resume" in printed
    _, parent, children = child_runs(db)
    assert parent[0].info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in children)

    resumed = subprocess.run(argv + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Top trials of 8" in resumed.stdout and "best student:" in resumed.stdout and "mlflow ui" in resumed.stdout

    client, parent, children = child_runs(db)
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    trial_ids = [r.data.tags["gkd_tune.trial_id"] for r in children]
    assert len(children) == 8 and len(set(trial_ids)) == 8  # no duplicate trials, no duplicate runs
    final_accuracy = {}
    for run in children:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, len(steps) + 1)), f"{run.info.run_name}: steps {steps}"
        for metric in ("loss_ce", "loss_wasserstein", "loss_grad", "loss_kd", "beta", "lr", "train_acc",
                       "images_per_s"):
            assert len(client.get_metric_history(run.info.run_id, metric)) == len(steps), metric
        assert {"b", "c", "r", "tau", "beta_min", "beta_max"} <= set(run.data.params)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"beta_curve.png", "checkpoint"} <= artifacts
        student_file = client.download_artifacts(run.info.run_id, "checkpoint/student.pt", str(tmp_path / run.info.run_id))
        from gkd_tune.models import load_model

        net, metadata = load_model(Path(student_file), "resnet8", 10)
        assert metadata["epoch"] == len(steps)
        final_accuracy[run.data.tags["gkd_tune.trial_id"]] = run.data.metrics["val_acc"]
    outcomes = [r.data.tags["gkd_tune.outcome"] for r in children]
    assert outcomes.count("stopped_by_asha") >= 1 and outcomes.count("completed") >= 1
    best = parent[0].data.tags["best_trial"]
    assert final_accuracy[best] == max(final_accuracy.values())
