"""The README's quickstart sweep, run once for this module: stopped with Ctrl-C mid-sweep, continued with --resume,
its driver killed (kill -9: nothing closes its runs) as Tune deletes a checkpoint, and continued again to the end.
Each test below checks one thing of that one sweep."""

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import sweep_runs

from gkd_tune import export, search
from gkd_tune.cli import EXIT_INTERRUPTED

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Quickstart:
    folder: Path  # the driver's working folder (its reports/ are below it)
    db: Path
    storage: Path
    argv: list  # the command line that ran it
    interrupted: tuple  # (exit status, console, sweep run status, trial run statuses) after Ctrl-C
    killed: tuple  # (exit status, sweep run status) after kill -9
    lost: list  # trials whose checkpoint in the saved sweep state had been deleted when the driver was killed
    resumed: subprocess.CompletedProcess  # the --resume that ran the sweep to its end

    def runs(self):
        return sweep_runs(f"sqlite:///{self.db}", "quickstart")

    def trial_runs(self):
        """The search's trial runs that finished (not the confirmation's), and the MLflow client."""
        client, _, children = self.runs()
        return client, [r for r in children if "gkd_tune.confirm" not in r.data.tags and r.info.status == "FINISHED"]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Quickstart:
    folder = tmp_path_factory.mktemp("quickstart")
    db, storage = folder / "mlflow.db", folder / "runs"
    # the quickstart's 8 trials: its first 4 run the whole budget, so ASHA judges 4
    argv = [sys.executable, "-m", "gkd_tune.search", "--space", str(QUICKSTART), "--storage-path", str(storage),
            "--tracking-uri", f"sqlite:///{db}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def start_then_signal(extra: list[str], checkpoints: int, signal_number: int, log_name: str,
                          at_a_deletion: bool = False) -> tuple[int, str]:
        """Run the driver until its trials have saved `checkpoints` new epochs (and then, `at_a_deletion`, until
        Tune deletes a trial's previous checkpoint: the moment its saved state may still name that one)."""
        before = set(storage.glob("quickstart/trial-*/checkpoint_*"))
        with open(folder / log_name, "w") as log:
            driver = subprocess.Popen(argv + extra, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env)
            deadline, seen = time.time() + 400, set()
            while time.time() < deadline and driver.poll() is None:
                now = set(storage.glob("quickstart/trial-*/checkpoint_*"))
                if len(now - before) >= checkpoints and (not at_a_deletion or seen - now):
                    break
                seen = now
                time.sleep(0.005 if at_a_deletion else 2)
            driver.send_signal(signal_number)
            return driver.wait(timeout=180), (folder / log_name).read_text()

    def statuses():
        _, parent, children = sweep_runs(f"sqlite:///{db}", "quickstart")
        return parent[0].info.status, [r.info.status for r in children]

    rc, printed = start_then_signal([], 2, signal.SIGINT, "first.log")
    interrupted = (rc, printed, *statuses())
    rc, _ = start_then_signal(["--resume"], 2, signal.SIGKILL, "second.log", at_a_deletion=True)
    killed = (rc, statuses()[0])
    from ray.tune import ExperimentAnalysis

    # Killed as Tune deleted a checkpoint, the saved state usually still names it: --resume puts it back
    lost = [Path(t.checkpoint.path).parent.name.removeprefix("trial-")  # t07
            for t in ExperimentAnalysis(str(storage / "quickstart")).trials
            if t.checkpoint is not None and not Path(t.checkpoint.path).exists()]
    resumed = subprocess.run(argv + ["--resume"], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    return Quickstart(folder, db, storage, argv, interrupted, killed, lost, resumed)


def test_ctrl_c_ends_the_sweep_with_how_to_continue_and_no_run_left_running(quickstart):
    rc, printed, sweep_status, trial_statuses = quickstart.interrupted
    assert rc == EXIT_INTERRUPTED, printed[-3000:]
    assert "The sweep was interrupted" in printed and "--resume" in printed
    assert sweep_status == "KILLED" and "RUNNING" not in trial_statuses


def test_kill_9_leaves_the_sweep_run_open_and_the_resume_ends_it(quickstart):
    assert quickstart.killed == (-signal.SIGKILL, "RUNNING")  # left open by the killed driver
    resumed = quickstart.resumed
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _, [parent], _ = quickstart.runs()
    assert parent.info.status == "FINISHED"


def test_the_resumed_sweep_prints_its_answer_and_names_each_deleted_checkpoint_it_put_back(quickstart):
    out = quickstart.resumed.stdout
    assert "8 trials: " in out and "best student:" in out and "mlflow ui" in out
    assert "Early-stopping fidelity over 4 full-budget trials" in out
    assert all(f"{t}: its checkpoint in the saved sweep state was deleted" in out for t in quickstart.lost)
    assert "0 failed" in out, out[-3000:]
    # the winner's resolution, then its confirmation at new seeds with the baselines, with intervals
    assert "Resolution: 144 validation images" in out and "McNemar p = " in out
    assert "Confirmation: 2 configuration(s) and 2 baseline(s) at 4 epochs, seeds 1, 2" in out
    assert "The answer: t" in out and re.search(r"t\d+ - kd: test_acc [+-]0\.\d{4} \[", out)
    assert "Tuning bought" in out, out[-3000:]
    assert (quickstart.storage / "quickstart" / "best" / "student.pt").exists()


def test_every_trial_ran_once_in_one_run_and_a_run_the_kill_left_unrestored_is_closed_killed(quickstart):
    _, _, children = quickstart.runs()
    children = [r for r in children if "gkd_tune.confirm" not in r.data.tags]
    # A trial the killed driver had opened a run for, but not yet written into Tune's experiment state, is not
    # restored: its run is closed KILLED. Every other trial ran once, in one run.
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children), [
        (r.info.run_name, r.info.status, r.data.tags.get("gkd_tune.outcome"), r.data.tags.get("gkd_tune.error"))
        for r in children]
    _, finished = quickstart.trial_runs()
    trial_ids = [r.data.tags["gkd_tune.trial_id"] for r in finished]
    assert len(finished) == 8 and len(set(trial_ids)) == 8  # no duplicate trials, no duplicate runs


def test_each_trial_run_has_every_epochs_curves_its_params_and_its_student_with_the_same_plan(quickstart, tmp_path):
    from gkd_tune.core.models import load_model

    client, finished = quickstart.trial_runs()
    for run in finished:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, len(steps) + 1)), f"{run.info.run_name}: steps {steps}"
        for metric in ("loss_ce", "loss_wasserstein", "loss_grad", "loss_kd", "beta", "lr", "train_acc",
                       "images_per_s"):
            assert len(client.get_metric_history(run.info.run_id, metric)) == len(steps), metric
        assert {"b", "c", "r", "tau", "beta_min", "beta_max"} <= set(run.data.params)
        assert {"beta_curve.png", "checkpoint"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        student_file = client.download_artifacts(run.info.run_id, "checkpoint/student.pt",
                                                 str(tmp_path / run.info.run_id))
        _, metadata = load_model(Path(student_file), "resnet8", 10)
        assert metadata["epoch"] == len(steps)
        # the trial's plan, resolved once in the trial: the student file's params are its MLflow params
        assert {k: str(v) for k, v in metadata["params"].items()} == run.data.params


def test_only_the_best_completed_trial_is_tested_once_and_a_stopped_trial_never_wins(quickstart):
    client, finished = quickstart.trial_runs()
    outcomes = [r.data.tags["gkd_tune.outcome"] for r in finished]
    assert outcomes.count("stopped_by_asha") >= 1 and outcomes.count("completed") >= 1
    final_accuracy = {r.data.tags["gkd_tune.trial_id"]: r.data.metrics["val_acc"] for r in finished}
    completed = {r.data.tags["gkd_tune.trial_id"] for r in finished if r.data.tags["gkd_tune.outcome"] == "completed"}
    [tested] = [r for r in finished if "test_acc" in r.data.metrics]  # the test split, once, for the best only
    assert len(client.get_metric_history(tested.info.run_id, "test_acc")) == 1
    winner = tested.data.tags["gkd_tune.trial_id"]
    assert final_accuracy[winner] == max(final_accuracy[t] for t in completed)
    _, [parent], _ = quickstart.runs()
    assert parent.data.metrics["best_test_acc"] == tested.data.metrics["test_acc"] > 0.3


def test_the_confirmation_runs_are_tested_once_and_the_shipped_student_is_the_answers_median_run(quickstart):
    client, [parent], children = quickstart.runs()
    confirming = [r for r in children if "gkd_tune.confirm" in r.data.tags]
    assert len(confirming) == 8 and all(r.info.status == "FINISHED" and "test_acc" in r.data.metrics
                                        for r in confirming)
    assert all(len(client.get_metric_history(r.info.run_id, "test_acc")) == 1 for r in confirming)
    best = parent.data.tags["best_trial"]
    [champion_run] = [r for r in confirming if r.data.tags["gkd_tune.trial_id"] == best]
    assert champion_run.info.run_name == parent.data.tags["gkd_tune.champion_run"]
    # registered as quickstart@champion from that run
    assert "now models:/quickstart@champion" in quickstart.resumed.stdout
    assert client.get_model_version_by_alias("quickstart", "champion").run_id == champion_run.info.run_id


def test_the_report_has_each_epoch_of_each_trial_once(quickstart):
    import pyarrow.parquet as pq

    rows = pq.read_table(quickstart.folder / "reports" / "quickstart" / "trials.parquet", columns=["trial_id", "epoch"])
    keys = list(zip(*(rows.column(name).to_pylist() for name in ("trial_id", "epoch"))))
    assert len(keys) == len(set(keys)), "an epoch twice in trials.parquet"


def test_the_champion_exports_within_parity(quickstart, tmp_path, capsys):
    assert export.main(["--model", "models:/quickstart@champion", "--tracking-uri", f"sqlite:///{quickstart.db}",
                        "--out", str(tmp_path / "exported")]) == 0
    out = capsys.readouterr().out
    assert [line.endswith(": ok") for line in out.splitlines() if line.startswith(("pt2:", "onnx:"))] == [True, True]


@pytest.mark.parametrize("extra, changed", [(["--num-samples", "9"], "search.num_samples"),
                                            (["--seed", "7"], "search.seed")])
def test_resuming_the_finished_sweep_with_other_options_is_refused_and_changes_nothing(quickstart, monkeypatch, capsys,
                                                                                       extra, changed):
    _, [before], _ = quickstart.runs()
    monkeypatch.chdir(quickstart.folder)
    assert search.main(quickstart.argv[3:] + extra + ["--resume"]) == 2
    assert re.search(rf"error: --resume: .* differs from what this run started with \({changed}; ",
                     capsys.readouterr().err.splitlines()[-1])
    _, [after], _ = quickstart.runs()
    assert (after.info.status, after.data.metrics, after.data.tags) == (before.info.status, before.data.metrics,
                                                                        before.data.tags)
