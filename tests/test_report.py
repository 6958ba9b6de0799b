from types import SimpleNamespace

import pytest

from gkd_tune.core.loop import Trainer
from gkd_tune.sweep.report import mlflow_ui_hint, outcome_counts, summarise, winners
from gkd_tune.sweep.space import parse_space


def test_a_sqlite_store_needs_mlflow_ui_with_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import sys
    from pathlib import Path

    hint = mlflow_ui_hint("sqlite:///mlflow.db", "3", "abc")
    command, table, best = hint.splitlines()
    # this interpreter's mlflow, as a path that works where the sweep ran, with one worker, on loopback
    assert command == f"{Path(sys.executable).with_name('mlflow')} ui --workers 1 --host 127.0.0.1 " \
                      f"--backend-store-uri sqlite:///{tmp_path}/mlflow.db"
    assert table.endswith("http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
                          "&viewStateShareKey=gkd-tune")
    assert best.endswith("the best trial's curves: http://127.0.0.1:5000/#/experiments/3/runs/abc/model-metrics"
                         "?workflowType=machine_learning")


def test_a_tracking_server_is_already_the_ui():
    hint = mlflow_ui_hint("http://127.0.0.1:5000/", "7")
    assert hint.startswith("open http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=gkd-tune")
    assert "cluster/README.md" in hint
    assert "mlflow ui" not in hint


def result(trial_id, epoch, value, metric, loss=1.0, error=None, max_epochs=4):
    """A trial's last result as the loop reports it: with its outcome where it ended by itself."""
    metrics = {"trial_id": trial_id, "epoch": epoch, metric: value, "loss_total": loss}
    if Trainer.is_diverged(metrics):
        metrics["outcome"] = "diverged"
    elif epoch >= max_epochs:
        metrics["outcome"] = "completed"
    return SimpleNamespace(metrics=metrics, config={}, checkpoint=None, error=error, path=f"/runs/{trial_id}",
                           metrics_dataframe=None)


@pytest.mark.parametrize("metric, values, best", [
    ("val_loss", [1.8549, float("nan"), 1.8407], "c"),  # the case: NaN broke the sort
    ("val_acc", [0.81, float("nan"), 0.85], "c"),
    ("val_acc", [0.81, float("inf"), 0.80], "a"),
])
def test_nan_failed_and_stopped_trials_never_win(metric, values, best):
    spec = parse_space({"name": "s", "training": {"max_epochs": 4}, "search": {"metric": metric},
                        "params": {"b": {"uniform": [1, 5]}}})
    results = [result(t, 4, v, metric) for t, v in zip("abc", values)]
    better = 0.0 if metric == "val_loss" else 1.0
    results += [result("stopped", 2, better, metric), result("nanloss", 4, better, metric, loss=float("nan")),
                result("failed", 4, better, metric, error=RuntimeError("boom"))]
    trials = summarise(results, spec)
    assert [t.trial_id for t in winners(trials)][0] == best
    assert {t.trial_id for t in winners(trials)} <= {"a", "b", "c"}
    assert {t.trial_id: t.outcome for t in trials}["nanloss"] == "diverged"
    assert outcome_counts(trials) == "2 completed, 1 stopped by asha, 2 diverged, 1 failed"


def test_an_epoch_reported_again_after_a_restore_is_one_row():
    """A driver killed after logging epoch 2, whose saved state named epoch 1's checkpoint: the restored trial
    reports epoch 2 again. Its history has each epoch once, the last report of it."""
    import pandas as pd

    frame = pd.DataFrame([{"epoch": 0, "val_acc": float("nan")}, {"epoch": 1, "val_acc": 0.5},
                          {"epoch": 2, "val_acc": 0.6}, {"epoch": 2, "val_acc": 0.61}, {"epoch": 3, "val_acc": 0.7}])
    spec = parse_space({"name": "s", "training": {"max_epochs": 3}, "params": {"b": {"uniform": [1, 5]}}})
    restored = result("r", 3, 0.7, "val_acc")
    restored.metrics_dataframe = frame
    [trial] = summarise([restored], spec)
    assert [(row["epoch"], row["val_acc"]) for row in trial.history] == [(1, 0.5), (2, 0.61), (3, 0.7)]


def test_the_winner_is_compared_with_the_runners_up_image_by_image():
    import numpy as np

    from gkd_tune.core.loop import VAL_CORRECT
    from gkd_tune.core.stats import pack_correct
    from gkd_tune.sweep.report import results_table, summary_markdown, winner_caveat

    spec = parse_space({"name": "s", "training": {"max_epochs": 4}, "params": {"b": {"uniform": [1, 5]}}})
    rng = np.random.default_rng(0)
    base = rng.random(144) < 0.9
    close = base.copy()
    close[np.flatnonzero(base)[:2]] = False  # 2 images behind the winner
    far = base & (rng.random(144) < 0.6)  # far behind
    results = []
    for trial_id, correct in (("a", base), ("b", close), ("c", far)):
        one = result(trial_id, 4, float(correct.mean()), "val_acc")
        one.metrics[VAL_CORRECT] = pack_correct(correct)
        results.append(one)
    trials = summarise(results, spec)
    table = results_table(trials, spec)
    assert "Resolution: 144 validation images; at the winner's val_acc" in table
    line_b = next(line for line in table.splitlines() if line.strip().startswith("b "))
    assert "+0.0139" in line_b and "they disagree on 2 (2 vs 0)" in line_b and line_b.endswith(": not distinguishable")
    line_c = next(line for line in table.splitlines() if line.strip().startswith("c "))
    assert line_c.endswith(": distinguishable")
    assert winner_caveat(trials) == "not distinguishable on validation from b"
    assert "- b " in summary_markdown(trials, spec, {}, "")


def test_with_repeat_configurations_rank_by_their_mean_and_one_with_a_failed_seed_never_wins():
    spec = parse_space({"name": "s", "training": {"max_epochs": 4},
                        "params": {"b": {"uniform": [1, 5]}}, "search": {"repeat": 3, "grace_period": 4}})
    results = []
    # configuration 1: one lucky seed (0.95) but the lower mean; 2: steady; 3: the best mean, a seed diverged
    for b, values in ((1.0, [0.95, 0.70, 0.71]), (2.0, [0.85, 0.84, 0.86]), (3.0, [0.99, float("nan"), 0.99])):
        for index, value in enumerate(values):
            one = result(f"b{b:g}s{index}", 4, value, "val_acc")
            one.config = {"b": b, "__trial_index__": index}
            results.append(one)
    trials = summarise(results, spec)
    best = winners(trials)
    assert [t.trial_id for t in best] == ["b2s0", "b1s2"]  # by mean; each by its median run (0.85, 0.71)
    assert best[0].configuration_mean == pytest.approx(0.85) and best[1].configuration_mean == pytest.approx(0.7867, abs=1e-4)
    from gkd_tune.sweep.report import results_table

    assert "mean over 3 seeds, each shown by its median run" in results_table(trials, spec)
