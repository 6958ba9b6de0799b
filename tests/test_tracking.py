"""The trial runs' bookkeeping in MLflow, with stand-in trials (no Ray): what a --resume finds and completes."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import new_tracking_store

from gkd_tune.sweep import tracking
from gkd_tune.sweep.space import PLAN_KEY, TrialPlan, load_space

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_whose_driver_died_while_logging_its_plan_gets_its_params_and_beta_curve_on_resume(tmp_path, monkeypatch):
    uri = new_tracking_store(tmp_path / "mlflow.db")
    spec = load_space(ROOT / "search_spaces" / "quickstart.yaml").with_overrides(tracking_uri=uri)
    location = str(tmp_path / "runs" / "quickstart")
    config = {"b": 2.0, "inflection": 0.3, "r": 0.5, "tau": 4.0, "beta_min": 0.1, "beta_max": 0.8}
    trial = SimpleNamespace(trial_id="trial001", config=config, experiment_tag="1_b=2.0", checkpoint=None,
                            last_result={}, error_file=None)

    def killed(*args):  # the driver dies while the figure is drawn (matplotlib's first import takes seconds)
        raise KeyboardInterrupt

    plan = TrialPlan.resolve(spec, config).to_json()  # what the trial announces in its first result of each start
    with monkeypatch.context() as patch:
        patch.setattr(tracking, "beta_curve", killed)
        first = tracking.MlflowTrialLogger(spec, location)
        first.on_trial_start(0, [], trial)
        with pytest.raises(KeyboardInterrupt):
            first.on_trial_result(0, [], trial, {"epoch": 1, "val_acc": 0.5, PLAN_KEY: plan})
    resumed = tracking.MlflowTrialLogger(spec, location)  # the next driver, on --resume: the trial starts again
    resumed.on_trial_start(0, [], trial)
    resumed.on_trial_result(0, [], trial, {"epoch": 2, "val_acc": 0.6, PLAN_KEY: plan})

    client = resumed.client
    runs = client.search_runs([resumed.tracker.experiment_id], "tags.`gkd_tune.trial_id` = 'trial001'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags[tracking.SET_UP_TAG] == "true" and run.data.params["b"] == "2.0"
    assert "beta_curve.png" in {artifact.path for artifact in client.list_artifacts(run.info.run_id)}


def test_a_finished_sweeps_run_stays_finished_whatever_a_later_resume_ends_with(tmp_path):
    spec = load_space(ROOT / "search_spaces" / "quickstart.yaml").with_overrides(
        tracking_uri=new_tracking_store(tmp_path / "mlflow.db"))
    location = str(tmp_path / "runs" / "quickstart")
    first = tracking.SweepTracker(spec, location)
    first.finish("FINISHED", "trial001", 0.9)
    interrupted = tracking.SweepTracker(spec, location)  # a --resume of the finished sweep, reopened, then killed
    interrupted.finish("KILLED")
    assert first.client.get_run(first.parent_id).info.status == "FINISHED"
    unfinished = tracking.SweepTracker(spec, str(tmp_path / "runs" / "other"))  # a sweep never finished: as told
    unfinished.finish("KILLED")
    assert first.client.get_run(unfinished.parent_id).info.status == "KILLED"


@pytest.mark.realstack
@pytest.mark.slow
def test_sixteen_trial_results_arriving_within_a_second_all_land_in_the_team_tracking_server(mlflow_server):
    """The team setup (an MLflow server on PostgreSQL): 16 trials' epoch results delivered at once, from 16 threads,
    through the sweep's own logger, are all stored: no "database is locked", no metric lost."""
    import dataclasses
    import threading
    import time
    import uuid

    spec = load_space(ROOT / "search_spaces" / "quickstart.yaml").with_overrides(tracking_uri=mlflow_server.uri)
    spec = dataclasses.replace(spec, name=f"burst-{uuid.uuid4().hex[:8]}")
    logger = tracking.MlflowTrialLogger(spec, f"s3://bucket/runs/{spec.name}")
    config = {"b": 2.0, "inflection": 0.3, "r": 0.5, "tau": 4.0, "beta_min": 0.1, "beta_max": 0.8}
    trials = [SimpleNamespace(trial_id=f"trial{i:03d}", config=config, experiment_tag=f"{i}_b=2.0", checkpoint=None,
                              last_result={}, error_file=None) for i in range(16)]
    for trial in trials:
        logger.on_trial_start(0, [], trial)
    start, errors, epochs = threading.Barrier(len(trials)), [], (1, 2)

    def deliver(trial, index):
        start.wait()
        try:
            for epoch in epochs:
                logger.on_trial_result(0, [], trial, {"epoch": epoch, "val_acc": index / 100 + epoch / 10,
                                                      "loss_total": 1.0 / epoch, "beta": 0.1 * epoch})
        except Exception as error:  # noqa: BLE001 (collected: the assertion below names it)
            errors.append(f"{trial.trial_id}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=deliver, args=(trial, i)) for i, trial in enumerate(trials)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - started
    assert errors == []
    client = logger.client
    for index, trial in enumerate(trials):
        run_id = logger.tracker.trial_run_id(trial.trial_id)
        for key, expected in (("val_acc", [index / 100 + e / 10 for e in epochs]), ("beta", [0.1 * e for e in epochs])):
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            assert [(m.step, round(m.value, 6)) for m in history] == \
                [(e, round(v, 6)) for e, v in zip(epochs, expected)], (trial.trial_id, key)
    assert "database is locked" not in mlflow_server.log.read_text()
    print(f"{len(trials) * len(epochs)} results from {len(trials)} threads stored in {took:.2f} s")
