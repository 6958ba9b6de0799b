"""Trial outcomes, what Optuna is told, the rung diagnostics and the rank correlations (no training)."""

import math
import re

import optuna
import pytest
from ray import tune

from gkd_tune.sweep.space import parse_space
from gkd_tune.sweep.strategy import (
    ASHAWithFullBudgetTrials, build_scheduler, build_searcher, rank_correlations, schedule_diagnostics, trial_outcome)

MAX_T = 4


@pytest.mark.parametrize("result, errored, outcome", [
    ({"epoch": 4, "val_acc": 0.8, "outcome": "completed"}, False, "completed"),  # the trial's own word
    ({"epoch": 2, "val_acc": 0.1, "loss_total": math.inf, "outcome": "diverged"}, False, "diverged"),
    ({"epoch": 0, "val_acc": math.nan, "outcome": "failed", "setup_error": "ValueError: x"}, False, "failed"),
    ({"epoch": 2, "val_acc": 0.8}, False, "stopped_by_asha"),  # no word: it did not end by itself
    ({"epoch": 4, "val_acc": 0.8, "outcome": "completed"}, True, "failed"),  # raised after its last report
    (None, True, "failed"),
])
def test_trial_outcome(result, errored, outcome):
    assert trial_outcome(result, errored) == outcome


@pytest.mark.parametrize("losses, outcome", [
    ([1.0, 0.9, 0.8, 0.7], "completed"), ([1.0, math.nan], "diverged"), ([1.0, 0.9, math.inf], "diverged")])
def test_the_loop_reports_how_its_run_ended_in_the_last_epoch_only(tiny_splits, monkeypatch, losses, outcome):
    from gkd_tune.core.distillers import DistillConfig, build_distiller
    from gkd_tune.core.loop import Trainer, TrainConfig
    from gkd_tune.core.models import build_model

    trainer = Trainer(build_distiller(DistillConfig(method="student"), build_model("resnet8", 3), None), tiny_splits,
                      TrainConfig(epochs=MAX_T, batch_size=16))
    epochs = iter(losses)

    def epoch():  # the metrics of an epoch, without training one
        trainer.epoch += 1
        return {"epoch": trainer.epoch, "loss_total": next(epochs), "val_loss": 1.0, "val_acc": 0.5}

    monkeypatch.setattr(trainer, "train_epoch", epoch)
    history = trainer.run()
    assert len(history) == len(losses)
    assert [row.get("outcome") for row in history] == [None] * (len(losses) - 1) + [outcome]


def space(**search):
    return parse_space({"name": "s", "training": {"max_epochs": MAX_T},
                        "params": {"b": {"uniform": [1, 5]}, "c": {"uniform": [2, 10]}},
                        "search": {"grace_period": 1, **search}})


def test_optuna_is_told_pruned_for_stopped_complete_for_finished_and_fail_for_diverged_or_failed():
    spec = space(num_samples=8)
    searcher = build_searcher(spec)
    searcher.set_search_properties("val_acc", "max", {"b": tune.uniform(1, 5), "c": tune.uniform(2, 10)})
    runs = {"finished": ([0.5, 0.6, 0.7, 0.8], False, "completed"), "stopped": ([0.3, 0.35], False, None),
            "diverged": ([0.3, math.nan], False, "diverged"), "failed": ([0.4], True, None)}
    for trial_id, (values, error, ending) in runs.items():
        assert searcher.suggest(trial_id)
        for epoch, value in enumerate(values, 1):
            result = {"epoch": epoch, "val_acc": value, "loss_total": 1.0, "training_iteration": epoch + 10}
            if epoch == len(values) and ending:
                result["outcome"] = ending
            searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, None if error else result, error=error)
    states = {t.number: t.state for t in searcher._ot_study.trials}
    S = optuna.trial.TrialState
    assert list(states.values()) == [S.COMPLETE, S.PRUNED, S.FAIL, S.FAIL]
    finished, stopped = searcher._ot_study.trials[:2]
    assert finished.value == 0.8 and finished.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8}
    # steps are epochs; Optuna keeps a pruned trial's last intermediate value (TPE ranks it by step and value)
    assert stopped.intermediate_values == {1: 0.3, 2: 0.35} and stopped.value == 0.35


def test_tpe_starts_early_and_is_multivariate():
    assert build_searcher(space(num_samples=8))._sampler._n_startup_trials == 2
    assert build_searcher(space(num_samples=64))._sampler._n_startup_trials == 10
    assert build_searcher(space(num_samples=64, startup_trials=5))._sampler._n_startup_trials == 5
    assert build_searcher(space(num_samples=8))._sampler._multivariate


def test_full_budget_trials_are_exempt_from_asha():
    scheduler = build_scheduler(space(num_samples=8, full_budget_trials=3, reduction_factor=2))
    assert isinstance(scheduler, ASHAWithFullBudgetTrials) and scheduler.rung_epochs == [1, 2]
    scheduler.set_search_properties("val_acc", "max")
    trials = [type("T", (), {"trial_id": f"t{i}"})() for i in range(5)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    assert scheduler.exempt == ["t0", "t1", "t2"]
    assert scheduler.on_trial_result(None, trials[4], {"epoch": 1, "val_acc": 0.9}) == "CONTINUE"
    for trial in trials[:3]:  # below the rung's cutoff, but exempt
        assert scheduler.on_trial_result(None, trial, {"epoch": 1, "val_acc": 0.1}) == "CONTINUE"
    assert scheduler.on_trial_result(None, trials[0], {"epoch": 2, "val_acc": 0.0}) == "CONTINUE"
    assert scheduler.on_trial_result(None, trials[3], {"epoch": 1, "val_acc": 0.05}) == "STOP"
    assert scheduler.on_trial_result(None, trials[0], {"epoch": MAX_T, "val_acc": 0.1}) == "STOP"  # the end


def test_diagnostics_on_crafted_spaces():
    never = parse_space({"name": "s", "training": {"max_epochs": 240}, "params": {"b": 6.0, "c": 2.0, "r": {
        "uniform": [0, 1]}}, "search": {"grace_period": 30, "reduction_factor": 3}})
    lines, warnings = schedule_diagnostics(never)
    assert "ASHA compares trials at epoch 30, 90 of 240" in lines[0]
    assert "epoch   30: 100.0%" in lines[1] and "epoch   90: 100.0%" in lines[2]
    assert "past the budget: 100.0%" in lines[3] and len(warnings) == 4
    late = parse_space({"name": "s", "training": {"max_epochs": 240}, "params": {
        "b": {"uniform": [1, 6]}, "inflection": {"uniform": [0.15, 0.5]}},
        "search": {"grace_period": 120, "reduction_factor": 3}})
    lines, warnings = schedule_diagnostics(late)
    assert "epoch  120:   0.0%" in lines[1] and "past the budget: 0.0%" in lines[2] and not warnings
    shipped = parse_space({"name": "s", "training": {"max_epochs": 240}, "params": {
        "b": {"uniform": [1, 6]}, "c": {"uniform": [2, 12]}}, "search": {"grace_period": 30, "reduction_factor": 3}})
    lines, _ = schedule_diagnostics(shipped)  # the measurement of the old gompertz.yaml: 86% and 51%
    assert abs(float(lines[1].split(":")[1].split("%")[0]) - 86) < 2
    assert abs(float(lines[2].split(":")[1].split("%")[0]) - 51) < 2


def test_rank_correlations():
    histories = [{1: 0.1, 2: 0.5, 4: 0.5}, {1: 0.2, 2: 0.4, 4: 0.4}, {1: 0.3, 2: 0.3, 4: 0.3},
                 {1: 0.4, 2: 0.6, 4: 0.6}, {1: 0.9, 2: 0.9}]  # the last did not reach 4: left out
    fidelity = rank_correlations(histories, [1, 2], 4)
    assert fidelity[2].rho == pytest.approx(1.0) and fidelity[1].rho == pytest.approx(0.2)  # 1 - 6 * 8 / (4 * 15)
    assert fidelity[1].n == 4 and math.isnan(rank_correlations(histories[:2], [1], 4)[1].rho)


def test_a_rank_correlation_comes_with_its_interval_and_a_judgement_that_needs_enough_trials():
    from gkd_tune.sweep.strategy import RankFidelity

    low, high = RankFidelity(0.6, 8).interval  # the example: 8 trials decide nothing
    half = 1.96 * 1.03 / math.sqrt(5)
    assert (low, high) == pytest.approx((math.tanh(math.atanh(0.6) - half), math.tanh(math.atanh(0.6) + half)))
    assert -0.25 < low < -0.15 and 0.9 < high < 0.95
    assert RankFidelity(0.6, 8).judgement().startswith("undetermined")
    assert RankFidelity(0.85, 16).judgement() == ""  # decided: the whole interval above 0.5
    assert RankFidelity(0.8, 16).judgement() == "undetermined: the interval reaches below 0.5"
    assert RankFidelity(-0.5, 16).judgement().startswith("warning: ASHA's ranking at this rung is unreliable")
    assert RankFidelity(0.9, 3).text() == "+0.90 n=3, no interval below 4 trials"
    assert RankFidelity(0.6, 8).text() == f"+0.60 [{low:+.2f}, {high:+.2f}] n=8"


def test_budget_halving_plan_budgets_and_counts():
    from gkd_tune.sweep.space import halving_plan

    spec = parse_space({"name": "s", "training": {"max_epochs": 240}, "params": {"b": {"uniform": [1, 5]}},
                        "search": {"scheduler": "budget_halving", "num_samples": 64, "grace_period": 27,
                                   "reduction_factor": 3}})
    assert halving_plan(spec) == [(27, 64), (81, 22), (240, 8)]
    assert spec.trial_count == 94
    assert build_scheduler(spec) is None  # complete runs: nothing to stop
    short = parse_space({"name": "s", "training": {"max_epochs": 4}, "params": {"b": {"uniform": [1, 5]}},
                         "search": {"scheduler": "budget_halving", "num_samples": 8, "grace_period": 2,
                                    "reduction_factor": 3}})
    assert halving_plan(short) == [(2, 8), (4, 3)]


def test_budget_halving_search_reruns_the_best_at_the_next_budget_and_tells_optuna_the_first_budget_only():
    from ray.tune.search import Searcher

    from gkd_tune.sweep.strategy import expected_runs

    spec = parse_space({"name": "s", "training": {"max_epochs": 4}, "params": {"b": {"uniform": [1, 5]}},
                        "search": {"scheduler": "budget_halving", "num_samples": 5, "grace_period": 1,
                                   "reduction_factor": 2}})
    searcher = build_searcher(spec)
    searcher.set_search_properties("val_acc", "max", {"b": tune.uniform(1, 5)})
    first = {f"r{i}": searcher.suggest(f"r{i}") for i in range(5)}
    assert [(c["config"], c["max_epochs"]) for c in first.values()] == [(f"c0{i}", 1) for i in range(1, 6)]
    assert searcher.suggest("r5") is None  # budget 1's runs are still going
    values = {"r0": 0.3, "r1": 0.9, "r2": None, "r3": 0.5, "r4": 0.7}  # r2 diverged
    for trial_id, value in values.items():
        result = {"epoch": 1, "val_acc": math.nan if value is None else value,
                  "outcome": "diverged" if value is None else "completed"}
        searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, result)
    second = [searcher.suggest(f"s{i}") for i in range(3)]  # budget 2: the best ceil(5/2) = 3
    assert [(c["config"], c["max_epochs"], c["b"]) for c in second] == [
        (name, 2, first[trial]["b"]) for name, trial in (("c02", "r1"), ("c05", "r4"), ("c04", "r3"))]
    for trial_id, value in zip(["s0", "s1", "s2"], [0.6, 0.8, 0.7]):
        searcher.on_trial_complete(trial_id, {"epoch": 2, "val_acc": value, "outcome": "completed"})
    third = [searcher.suggest(f"u{i}") for i in range(2)]  # budget 4 (max_epochs): the best 2 of budget 2
    assert [(c["config"], c["max_epochs"]) for c in third] == [("c05", 4), ("c04", 4)]
    assert searcher.suggest("u2") is None
    for trial_id in ("u0", "u1"):
        searcher.on_trial_complete(trial_id, {"epoch": 4, "val_acc": 0.9, "outcome": "completed"})
    assert searcher.suggest("u3") == Searcher.FINISHED
    # Optuna holds the 5 first-budget runs, with their budget-1 values; the later runs are not its trials
    S = optuna.trial.TrialState
    assert [(t.state, t.value) for t in searcher._ot_study.trials] == [
        (S.COMPLETE, 0.3), (S.COMPLETE, 0.9), (S.FAIL, None), (S.COMPLETE, 0.5), (S.COMPLETE, 0.7)]
    assert expected_runs([(1, 5), (2, 3), (4, 2)], {1: 4, 2: 3}) == 10
    assert expected_runs([(1, 5), (2, 3), (4, 2)], {1: 1, 2: 1}) == 7  # one completed: one run after it


def test_budget_halving_needs_a_search_and_a_first_budget_below_max_epochs():
    with pytest.raises(ValueError, match="search.scheduler: budget_halving chooses among searched"):
        parse_space({"name": "s", "params": {"b": 2.0}, "search": {"scheduler": "budget_halving"}})
    with pytest.raises(ValueError, match="search.grace_period: is budget_halving's first budget: must be below"):
        parse_space({"name": "s", "training": {"max_epochs": 4}, "params": {"b": {"uniform": [1, 5]}},
                     "search": {"scheduler": "budget_halving", "grace_period": 4}})
    with pytest.raises(ValueError, match="search.full_budget_trials: is ASHA's: budget halving stops no run early"):
        parse_space({"name": "s", "params": {"b": {"uniform": [1, 5]}}, "training": {"max_epochs": 4},
                     "search": {"scheduler": "budget_halving", "full_budget_trials": 3}})
    with pytest.raises(ValueError, match="search.scheduler: must be one of asha, budget_halving"):
        parse_space({"name": "s", "params": {"b": {"uniform": [1, 5]}}, "search": {"scheduler": "hyperband"}})


def test_budget_halving_search_survives_a_save_and_restore_mid_budget(tmp_path):
    from gkd_tune.sweep.space import halving_plan
    from gkd_tune.sweep.strategy import BudgetHalvingSearch

    spec = parse_space({"name": "s", "training": {"max_epochs": 4}, "params": {"b": {"uniform": [1, 5]}},
                        "search": {"scheduler": "budget_halving", "num_samples": 3, "grace_period": 2,
                                   "reduction_factor": 3}})
    searcher = build_searcher(spec)
    searcher.set_search_properties("val_acc", "max", {"b": tune.uniform(1, 5)})
    first = [searcher.suggest(f"r{i}") for i in range(3)]
    for i, value in enumerate((0.2, 0.6, 0.4)):
        searcher.on_trial_complete(f"r{i}", {"epoch": 2, "val_acc": value, "outcome": "completed"})
    searcher.save(str(tmp_path / "searcher.pkl"))  # what Tune keeps in the sweep's storage
    restored = BudgetHalvingSearch(halving_plan(spec))
    restored.restore(str(tmp_path / "searcher.pkl"))
    nxt = restored.suggest("s0")
    assert (nxt["config"], nxt["max_epochs"], nxt["b"]) == ("c02", 4, first[1]["b"])


def test_repeat_tells_optuna_the_mean_over_seeds_only_when_every_seed_completed(tmp_path):
    from gkd_tune.sweep.space import REPEAT_INDEX, TrialPlan
    from gkd_tune.sweep.strategy import MeanOverSeeds

    spec = space(num_samples=2, repeat=3, grace_period=MAX_T)
    searcher = build_searcher(spec)
    assert isinstance(searcher, MeanOverSeeds)
    searcher.set_search_properties("val_acc", "max", {"b": tune.uniform(1, 5), "c": tune.uniform(2, 10)})
    configs = {f"r{i}": searcher.suggest(f"r{i}") for i in range(6)}
    assert [c[REPEAT_INDEX] for c in configs.values()] == [0, 1, 2, 0, 1, 2]
    assert configs["r0"]["b"] == configs["r2"]["b"] != configs["r3"]["b"]  # one configuration, three seeds
    assert [TrialPlan.resolve(spec, configs[f"r{i}"]).train.seed for i in range(3)] == [0, 1, 2]
    for trial_id, value in zip(["r0", "r1", "r2"], [0.5, 0.6, 0.7]):
        searcher.on_trial_complete(trial_id, {"epoch": MAX_T, "val_acc": value, "outcome": "completed"})
    searcher.save(str(tmp_path / "searcher.pkl"))  # --resume: the groups come back with the study
    restored = build_searcher(spec)
    restored.restore(str(tmp_path / "searcher.pkl"))
    for trial_id, value, ending in (("r3", 0.9, "completed"), ("r4", math.nan, "diverged"), ("r5", 0.9, "completed")):
        restored.on_trial_complete(trial_id, {"epoch": MAX_T, "val_acc": value, "outcome": ending})
    first, second = restored.searcher._ot_study.trials
    S = optuna.trial.TrialState
    assert first.state == S.COMPLETE and first.value == pytest.approx(0.6)
    assert second.state == S.FAIL  # a diverged seed: not the mean of the other two (0.9)


@pytest.mark.parametrize("search, training, said", [
    ({"repeat": 3}, {}, "search.repeat: ASHA would stop a configuration's seeds one by one"),
    ({"repeat": 3, "scheduler": "budget_halving"}, {}, "search.repeat: budget halving promotes single runs"),
    ({"repeat": 3, "grace_period": MAX_T, "full_budget_trials": 3}, {}, "search.full_budget_trials: with search.repeat"),
])
def test_repeat_is_refused_where_it_cannot_work(search, training, said):
    from gkd_tune.sweep.space import SpaceError

    with pytest.raises(SpaceError, match=re.escape(said)):
        parse_space({"name": "s", "training": {"max_epochs": MAX_T, **training},
                     "params": {"b": {"uniform": [1, 5]}}, "search": {"grace_period": 1, **search}})
    with pytest.raises(SpaceError, match="search.repeat: repeats the configurations a search proposes"):
        parse_space({"name": "s", "params": {"b": 2.0}, "search": {"repeat": 2}})
