import json
import re
import time
from pathlib import Path

import pytest
from conftest import new_tracking_store, sweep_runs

from gkd_tune import engine, search

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    argv = ["--space", str(QUICKSTART), "--dry-run", "--num-samples", "3", "--storage-path", str(tmp_path / "s"),
            "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    assert search.main(argv) == 0
    out = capsys.readouterr().out
    assert ("trials     3, at most 2 at once; Optuna TPE (multivariate, seed 0, 2 random trials first); ASHA on "
            "val_acc (max), grace 2") in out
    assert "rungs      ASHA compares trials at epoch 2 of 4; of 10,000 sampled (b, c):" in out
    assert f"storage    {tmp_path / 's' / 'quickstart'}" in out and f"sqlite:///{tmp_path}/m.db" in out
    for name in ("b", "inflection", "r", "tau", "beta_min", "beta_max"):
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


# ------------------------------------------------------------------ sweeps of fake trials (no training), in-process


def fake_trainable(curve, fail: bool = False):
    """A trial that reports `curve(config, epoch)` as val_acc each epoch, with a checkpoint holding a student file,
    its plan in its first result and its outcome in its last, as a real trial does. A local function: Ray pickles
    it by value, so the trial workers run it."""

    def trainable(config, spec, storage):
        import os
        import tempfile

        from ray import tune

        from gkd_tune.sweep.space import PLAN_KEY, TrialPlan

        if fail:
            raise RuntimeError("boom")
        plan = TrialPlan.resolve(spec, config)
        for epoch in range(1, plan.train.epochs + 1):  # its budget (budget halving runs several)
            with tempfile.TemporaryDirectory() as directory:
                with open(os.path.join(directory, "student.pt"), "wb") as file:
                    file.write(b"not a model")
                announced = {PLAN_KEY: plan.to_json()} if epoch == 1 else {}
                ending = {"outcome": "completed"} if epoch == plan.train.epochs else {}
                tune.report({"epoch": epoch, "val_acc": curve(config, epoch), "loss_total": 1.0, **announced,
                             **ending}, checkpoint=tune.Checkpoint.from_directory(directory))

    return trainable


def run_fake_sweep(tmp_path, monkeypatch, space: dict, trainable, *extra, evaluate=None) -> tuple[int, dict]:
    import yaml

    from gkd_tune.sweep import strategy
    from gkd_tune.sweep import trainable as trainable_module

    monkeypatch.chdir(tmp_path)  # the report goes to ./reports/fake
    file = tmp_path / "space.yaml"
    file.write_text(yaml.safe_dump({"name": "fake", "storage_path": str(tmp_path / "runs"), "data": {"source": "digits"},
                                    "tracking": {"uri": new_tracking_store(tmp_path / "m.db")}, **space}))
    made = {}

    def keep(build):
        def wrapped(spec):
            made[build.__name__] = build(spec)
            return made[build.__name__]
        return wrapped

    monkeypatch.setattr(engine, "prepare_teachers", lambda teachers: [{} for _ in teachers])
    monkeypatch.setattr(trainable_module, "train_trial", trainable)
    monkeypatch.setattr(trainable_module, "evaluate_on_test_split",
                        evaluate or (lambda spec, checkpoint: {"test_loss": 0.5, "test_acc": 0.77}))
    monkeypatch.setattr(strategy, "build_searcher", keep(strategy.build_searcher))
    monkeypatch.setattr(strategy, "build_scheduler", keep(strategy.build_scheduler))
    return search.main(["--space", str(file), *extra]), made


@pytest.mark.slow
def test_stopped_trials_are_pruned_for_optuna_full_budget_trials_rank_the_rungs_and_the_best_is_tested_once(
        tmp_path, monkeypatch, capsys):
    import optuna
    import pyarrow.parquet as pq

    space = {"training": {"max_epochs": 4}, "params": {"b": {"uniform": [1.0, 5.0]}, "c": {"uniform": [2.0, 10.0]}},
             "search": {"num_samples": 8, "max_concurrent_trials": 2, "grace_period": 1, "reduction_factor": 2,
                        "full_budget_trials": 3}}
    rc, made = run_fake_sweep(tmp_path, monkeypatch, space, fake_trainable(lambda config, epoch: config["b"] * epoch / 20))
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    study = made["build_searcher"]._ot_study
    S = optuna.trial.TrialState
    states = [t.state for t in study.trials]
    assert states.count(S.PRUNED) >= 1 and set(states) == {S.PRUNED, S.COMPLETE}
    assert all((max(t.intermediate_values) == 4) == (t.state == S.COMPLETE) for t in study.trials), [
        (t.state, t.intermediate_values) for t in study.trials]

    client, parent, children = sweep_runs(f"sqlite:///{tmp_path}/m.db", "fake")
    metrics = parent[0].data.metrics
    assert metrics["rung_spearman_e1"] == pytest.approx(1.0) and metrics["rung_spearman_e2"] == pytest.approx(1.0)
    exempt = made["build_scheduler"].exempt
    assert len(exempt) == 3 and all(r.data.tags["gkd_tune.outcome"] == "completed" for r in children
                                    if r.data.tags["gkd_tune.trial_id"] in exempt)
    tested = [r for r in children if "test_acc" in r.data.metrics]
    assert [r.data.tags["gkd_tune.trial_id"] for r in tested] == [parent[0].data.tags["best_trial"]]
    assert metrics["best_test_acc"] == 0.77 and "0.7700" in out
    # the report: files, and its summary as the sweep run's description (the answer on the run's page)
    report = tmp_path / "reports" / "fake"
    summary = (report / "summary.md").read_text()
    assert parent[0].data.tags["mlflow.note.content"] == summary and "8 trials: " in summary
    epochs_run = sum(len(client.get_metric_history(r.info.run_id, "val_acc")) for r in children)
    assert pq.read_table(report / "trials.parquet").num_rows == epochs_run
    importances = [float(v) for v in re.findall(r"^\| [bc] \| ([0-9.]+) \|$", summary, re.M)]
    assert len(importances) == 2 and sum(importances) == pytest.approx(1.0, abs=0.002), summary
    for name in ("curves.png", "betas.png", "params.png"):
        assert (report / name).read_bytes()[:4] == b"\x89PNG"
    assert {a.path for a in client.list_artifacts(parent[0].info.run_id, "report")} >= {
        "report/summary.md", "report/trials.parquet", "report/curves.png"}
    # ... and the same from the report command, which leaves the finished sweep's run FINISHED
    from gkd_tune import report as report_command

    assert report_command.main(["--space", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "summary.md").read_text() == summary
    assert client.get_run(parent[0].info.run_id).info.status == "FINISHED"
    assert "8 trials: " in out and "stopped by asha" in out
    assert all(re.fullmatch(r"t\d\d", r.info.run_name) for r in children), [r.info.run_name for r in children]
    assert "Experiment state snapshotting" not in out

    # a --resume of the finished sweep prints the answer again and tests nothing again
    assert run_fake_sweep(tmp_path, monkeypatch, space, fake_trainable(lambda config, epoch: 0.0), "--resume")[0] == 0
    assert "0.7700" in capsys.readouterr().out
    assert len(client.get_metric_history(tested[0].info.run_id, "test_acc")) == 1


@pytest.mark.slow
def test_budget_halving_reruns_the_best_configurations_at_compressed_budgets_and_only_the_full_budget_wins(
        tmp_path, monkeypatch, capsys):
    import pyarrow.parquet as pq

    from gkd_tune import simulate

    space = {"training": {"max_epochs": 4}, "params": {"b": {"uniform": [1.0, 5.0]}},
             "search": {"scheduler": "budget_halving", "num_samples": 9, "max_concurrent_trials": 3,
                        "grace_period": 1, "reduction_factor": 2}}
    # a configuration's value at its budget's end: b ranks them the same at every budget, a higher budget higher
    rc, made = run_fake_sweep(tmp_path, monkeypatch, space, fake_trainable(
        lambda config, epoch: config["b"] / 10 + config["max_epochs"] / 100 if epoch == config["max_epochs"] else 0.0))
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "budgets       9 run(s) x    1 epochs" in out and "17 runs, 31 epochs: 86% of every configuration" in out
    assert "caveat: budget halving keeps the best 1/2 of the 1-epoch runs" in out
    client, parent, children = sweep_runs(f"sqlite:///{tmp_path}/m.db", "fake")
    assert len(children) == 9 + 5 + 3
    by_config = {}
    for run in children:
        by_config.setdefault(run.data.tags["gkd_tune.config"], []).append(int(run.data.params["max_epochs"]))
        assert run.info.status == "FINISHED"
    bs = {run.data.tags["gkd_tune.config"]: float(run.data.params["b"]) for run in children}
    ranked = sorted(bs, key=bs.get, reverse=True)  # the best 5 of budget 1 at budget 2, the best 3 of those at 4
    assert {c: sorted(budgets) for c, budgets in by_config.items()} == {
        c: [1, 2, 4] if i < 3 else [1, 2] if i < 5 else [1] for i, c in enumerate(ranked)}
    # the winner is the best full-budget run, tested once; a lower budget's run never wins
    best = parent[0].data.tags["best_trial"]
    [winner] = [r for r in children if r.data.tags["gkd_tune.trial_id"] == best]
    assert winner.data.params["max_epochs"] == "4" and winner.data.tags["gkd_tune.config"] == max(bs, key=bs.get)
    assert [r.data.tags["gkd_tune.trial_id"] for r in children if "test_acc" in r.data.metrics] == [best]
    assert "Budget fidelity" in out and parent[0].data.metrics["budget_spearman_b1"] == pytest.approx(1.0)
    view = json.loads(json.loads(client.get_experiment(parent[0].info.experiment_id).tags[
        "mlflow.sharedViewState.gkd-tune"])["state"])
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "gkd_tune.group"}]
    assert all(r.data.tags["gkd_tune.group"] == r.data.tags["gkd_tune.config"] for r in children)
    # the report's rows name each run's configuration, and the simulator replays them
    rows = pq.read_table(tmp_path / "reports" / "fake" / "trials.parquet").to_pylist()
    assert {row["config"] for row in rows} == set(bs)
    assert simulate.main(["--sweep", str(tmp_path / "reports" / "fake"), "--orders", "3"]) == 0
    assert "3 configurations with a whole 4-epoch curve, runs at budgets 1, 2, 4" in capsys.readouterr().out
    # ... and read from the sweep's storage itself (its test result from MLflow: the best run's only)
    assert simulate.main(["--sweep", str(tmp_path / "runs" / "fake"), "--orders", "3", "--out",
                          str(tmp_path / "replayed")]) == 0
    out = capsys.readouterr().out
    assert "3 configurations with a whole 4-epoch curve" in out and "Judged by the full-budget test_acc" not in out
    assert (tmp_path / "replayed" / "regret-vs-cost.png").exists()


@pytest.mark.slow
def test_a_baseline_runs_exactly_its_grid_without_optuna_and_tests_each_trial_once(tmp_path, monkeypatch):
    """baselines.yaml on a CPU: real (tiny) trials of the student alone, KD and DKD, two seeds each."""
    import yaml

    from gkd_tune.sweep import strategy

    made = []
    monkeypatch.setattr(strategy, "build_searcher", lambda spec, build=strategy.build_searcher: made.append(
        build(spec)) or made[-1])
    baselines = yaml.safe_load((ROOT / "search_spaces" / "baselines.yaml").read_text())
    baselines.update(data={"source": "digits", "image_size": 16}, teacher={"arch": "resnet8", "epochs": 1},
                     student="resnet8",
                     training={"max_epochs": 1, "batch_size": 128}, resources={"cpu": 1, "gpu": 0},
                     storage_path=str(tmp_path / "runs"), tracking={"uri": new_tracking_store(tmp_path / "m.db")})
    baselines["params"].update(seed={"grid": [0, 1]}, lr=0.1)
    baselines["search"].update(max_concurrent_trials=2, test_top_k=6)
    import torch

    from gkd_tune.core.models import build_model

    torch.save(build_model("resnet8", 10).state_dict(), tmp_path / "init.pt")  # every student starts from it
    baselines["student_weights"] = str(tmp_path / "init.pt")
    (tmp_path / "baselines.yaml").write_text(yaml.safe_dump(baselines))
    monkeypatch.chdir(tmp_path)
    assert search.main(["--space", str(tmp_path / "baselines.yaml")]) == 0
    assert made == [None]  # no Optuna
    _, parent, children = sweep_runs(f"sqlite:///{tmp_path}/m.db", baselines["name"])
    assert sorted((r.data.params["method"], r.data.params["seed"]) for r in children) == [
        (m, s) for m in ("dkd", "kd", "student") for s in ("0", "1")]
    assert all(r.data.tags["gkd_tune.outcome"] == "completed" and 0 < r.data.metrics["test_acc"] <= 1
               for r in children)
    assert all(r.data.params["student_weights"] == str(tmp_path / "init.pt") for r in children)
    assert (tmp_path / "runs" / baselines["name"] / "student-weights.pt").exists()


@pytest.mark.slow
def test_a_sweep_whose_trials_all_fail_says_so_in_one_line_and_fails_and_set_up_errors_are_not_retried(
        tmp_path, monkeypatch, capsys):
    """Trial b=1 raises (retried: it may be a lost node), trial b=4 cannot be set up (reported once, not retried)."""
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def trainable(config, spec, storage):
        from gkd_tune.sweep.trainable import report_setup_failure

        name = f"b{config['b']:g}"
        (attempts / f"{name}-{len(list(attempts.glob(name + '-*')))}").touch()
        if config["b"] < 2:
            raise RuntimeError("boom")
        report_setup_failure(spec, None, ValueError("teacher file has 100 classes, the data 10"))

    space = {"params": {"b": {"grid": [1.0, 4.0]}}, "training": {"max_epochs": 2},
             "search": {"num_samples": 1, "max_failures": 1}}
    rc, _ = run_fake_sweep(tmp_path, monkeypatch, space, trainable)
    assert rc == 1
    assert "all 2 trials failed; first error: " in capsys.readouterr().err
    assert sorted(p.name for p in attempts.iterdir()) == ["b1-0", "b1-1", "b4-0"]
    _, parent, children = sweep_runs(f"sqlite:///{tmp_path}/m.db", "fake")
    assert parent[0].info.status == "FAILED" and all(r.info.status == "FAILED" for r in children)
    assert all(r.data.tags["gkd_tune.outcome"] == "failed" for r in children)
    assert sorted(r.data.tags["gkd_tune.error"] for r in children) == [
        "RuntimeError: boom", "ValueError: teacher file has 100 classes, the data 10"]


@pytest.mark.slow
def test_an_error_after_the_trials_closes_every_run_and_prints_one_line(tmp_path, monkeypatch, capsys):
    def broken_test_split(spec, checkpoint):
        raise OSError("disk full")

    space = {"params": {"b": {"uniform": [1.0, 5.0]}}, "training": {"max_epochs": 1}, "search": {"num_samples": 2}}
    rc, _ = run_fake_sweep(tmp_path, monkeypatch, space, fake_trainable(lambda config, epoch: 0.5),
                           evaluate=broken_test_split)
    err = capsys.readouterr().err
    # gkd-tune's own output is one error line. Ray itself forwards the failed task's traceback from the worker
    # (prefixed with the task's name and pid), which this process does not control.
    assert rc == 1 and [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: OSError: disk full  (--debug shows the traceback)"]
    _, parent, children = sweep_runs(f"sqlite:///{tmp_path}/m.db", "fake")
    assert parent[0].info.status == "FAILED" and all(r.info.status == "FINISHED" for r in children)


def test_a_second_driver_of_the_same_sweep_is_refused_whatever_its_cache(tmp_path, capsys, monkeypatch):
    from gkd_tune.cluster.runtime import sweep_lock

    spec = search.load_space(QUICKSTART).with_overrides(storage_path=str(tmp_path / "runs"))
    monkeypatch.setenv("GKD_TUNE_CACHE", str(tmp_path / "first-cache"))
    with sweep_lock(search.sweep_storage(spec)):
        monkeypatch.setenv("GKD_TUNE_CACHE", str(tmp_path / "second-cache"))  # the second driver's own cache
        argv = ["--space", str(QUICKSTART), "--storage-path", str(tmp_path / "runs"),
                "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
        assert search.main(argv) == 2
    assert "error: a sweep named 'quickstart' is already running from this machine" in capsys.readouterr().err


def test_resume_refuses_a_changed_space_or_option_unless_a_restored_sweep_applies_it_and_it_is_accepted(
        tmp_path, capsys):
    from gkd_tune.sweep.resume import check_resume, effective, record
    from gkd_tune.sweep.storage import SweepStorage

    storage = SweepStorage.for_sweep(str(tmp_path / "runs"), "quickstart")
    started = effective(QUICKSTART, {"search.num_samples": 6, "search.seed": None})
    record(storage, search.SPACE_FILE, started)
    edited = tmp_path / "quickstart.yaml"
    original = QUICKSTART.read_text()

    def check(text, overrides, accept=False):
        edited.write_text(text)
        return check_resume(storage, search.SPACE_FILE, effective(edited, overrides), str(edited), accept,
                            search.SAFE_TO_CHANGE)

    assert check(original, {"search.num_samples": 6}) is False  # the same sweep: nothing to record
    # an override the restored sweep would not apply: 8 trials where Tune keeps 6
    with pytest.raises(ValueError, match=r"differs from what this run started with \(search.num_samples; .*"
                                         r"allows only resources.wait_s, search.test_top_k .*not search.num_samples"):
        check(original, {"search.num_samples": 8}, accept=True)
    assert "-  num_samples: 6\n+  num_samples: 8" in capsys.readouterr().err  # the difference is shown
    for text, overrides in ((original, {"search.num_samples": 6, "search.seed": 7}),  # a seed Tune's Optuna ignores
                            (original.replace("lr: 0.1", "lr: 0.2"), {"search.num_samples": 6}),
                            (original, {"search.num_samples": 6, "tracking.uri": "sqlite:///elsewhere.db"}),
                            (original.replace("max_concurrent_trials: 2", "max_concurrent_trials: 1"),
                             {"search.num_samples": 6})):
        with pytest.raises(ValueError, match="allows only"):
            check(text, overrides, accept=True)
    safe = original.replace("search:", "search:\n  test_top_k: 2", 1)
    with pytest.raises(ValueError, match=r"\(search.test_top_k; .*or pass --accept-changes"):
        check(safe, {"search.num_samples": 6})
    assert check(safe, {"search.num_samples": 6}, accept=True) is True  # accepted: to be recorded


def test_a_resume_command_is_the_whole_command():
    args = search.build_parser().parse_args(["--space", "s p.yaml", "--num-samples", "6", "--seed", "3",
                                             "--storage-path", "s3://b/r?endpoint_override=h:1&scheme=http",
                                             "--tracking-uri", "http://127.0.0.1:5000", "--address", "auto"])
    assert search.resume_command_for(args) == (
        "python -m gkd_tune.search --space 's p.yaml' --num-samples 6 --seed 3 --tracking-uri "
        "http://127.0.0.1:5000 --storage-path 's3://b/r?endpoint_override=h:1&scheme=http' --address auto --resume")


@pytest.mark.parametrize("extra, message", [
    (["--num-samples", "0"], r"num_samples must be \[1, 1000000\], got 0"),
    (["--num-samples", "-1"], r"num_samples must be \[1, 1000000\], got -1"),
    (["--num-samples", str(10**20)], r"num_samples must be \[1, 1000000\], got 100000000000000000000"),
    (["--seed", "-1"], r"seed must be \[0, 4294967295\], got -1"),
    (["--tracking-uri", "sqlite:////nonexistent/dir/x.db"], "tracking.uri: sqlite:////nonexistent/dir/x.db: the folder"),
    (["--tracking-uri", "bogus://x"], "tracking.uri: bogus://x cannot be used"),
    (["--space", "/nonexistent.yaml"], "/nonexistent.yaml: file: does not exist"),
    (["--space", "/"], "/: file: is a directory"),
    (["--resume"], "--resume: no sweep to continue at"),
    (["--address", "127.0.0.1:1"], r"--address: no Ray cluster answers at 127.0.0.1:1 \(\[Errno 111\] Connection"),
    (["--address", "127.0.0.1:port"], "--address: no Ray cluster answers at 127.0.0.1:port"),
])
def test_bad_command_lines_are_one_line_errors_and_write_nothing(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    argv = ["--space", str(QUICKSTART), "--storage-path", str(tmp_path / "runs"),
            "--tracking-uri", f"sqlite:///{tmp_path}/m.db", *extra]
    started = time.time()
    assert search.main(argv) == 2
    err = capsys.readouterr().err
    assert re.match(f"error: .*({message})", err) and err.count("\n") == 1, err
    assert time.time() - started < 5  # well under a Ray start
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_repeat_runs_each_configuration_at_its_seeds_and_optuna_learns_their_mean(tmp_path, monkeypatch, capsys):
    import optuna

    space = {"training": {"max_epochs": 2}, "params": {"b": {"uniform": [1.0, 5.0]}},
             "search": {"num_samples": 3, "repeat": 2, "grace_period": 2, "max_concurrent_trials": 2}}
    # val_acc = b / 10 + seed / 100: the mean over seeds 0 and 1 is b / 10 + 0.005
    rc, made = run_fake_sweep(tmp_path, monkeypatch, space, fake_trainable(
        lambda config, epoch: config["b"] / 10 + config["__trial_index__"] / 100))
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "3 configurations x 2 seeds (6 trials)" in out and "6 trials: 6 completed" in out
    study = made["build_searcher"].searcher._ot_study
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert all(t.value == pytest.approx(t.params["b"] / 10 + 0.005) for t in study.trials)
    client, parent, children = sweep_runs(f"sqlite:///{tmp_path}/m.db", "fake")
    seeds = sorted((r.data.params["b"], r.data.params["seed"]) for r in children)
    assert [seed for _, seed in seeds] == ["0", "1"] * 3  # each configuration at seeds 0 and 1
    best_b = max(float(t.params["b"]) for t in study.trials)
    winner = next(r for r in children if r.data.tags["gkd_tune.trial_id"] == parent[0].data.tags["best_trial"])
    assert float(winner.data.params["b"]) == pytest.approx(best_b)
    assert "mean over 2 seeds, each shown by its median run" in out
