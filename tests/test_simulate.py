"""The early-stopping replay: hand-traced decisions of Ray's ASHA and of budget halving, the designs' options, and
`python -m gkd_tune.simulate` on the committed fidelity study (no training)."""

import math
from pathlib import Path

import pytest

from gkd_tune import simulate as command
from gkd_tune.sweep.report import write_parquet
from gkd_tune.sweep.simulate import (
    Configuration, configurations_from_rows, fidelity, parse_design, replay_halving, replay_prefix, simulate)

STUDY = Path(__file__).resolve().parents[1] / "benchmarks/results/2026-12-01-fidelity-cifar10k"


def test_asha_replay_stops_what_ray_s_asha_stops_in_trial_order():
    # rungs at epochs 1 and 2 (grace 1, eta 2, max_t 2); one worker: A, then B, then C
    configurations = [Configuration("A", {2: [0.5, 0.7]}), Configuration("B", {2: [0.4, 0.9]}),
                      Configuration("C", {2: [0.6, 0.8]})]
    design = parse_design("asha:grace=1,eta=2", [2])
    outcome = replay_prefix(design, configurations, [0, 1, 2], full=2, workers=1, metric="val_acc", mode="max", seed=0)
    # A: nothing recorded at epoch 1 -> continues; B: 0.4 below the median of {0.5} -> stopped after 1 epoch (B's
    # final 0.9 would have won); C: 0.6 above the median of {0.5, 0.4} -> continues
    assert outcome.epochs == 2 + 1 + 2
    assert outcome.chosen == "C"
    # in the order B, A, C: B runs first, unjudged, and wins
    outcome = replay_prefix(design, configurations, [1, 0, 2], full=2, workers=1, metric="val_acc", mode="max", seed=0)
    assert outcome.chosen == "B"


def test_budget_halving_reruns_the_best_third_of_each_budget_and_chooses_at_the_full_one():
    finals = {"a": (0.30, 0.50, 0.70), "b": (0.35, 0.55, 0.60), "c": (0.20, 0.60, 0.90), "d": (0.10, 0.40, 0.95),
              "e": (0.25, math.nan, 0.80)}
    configurations = [Configuration(n, {b: [v] * b for b, v in zip((1, 3, 9), values)}) for n, values in finals.items()]
    outcome = replay_halving(parse_design("budget_halving:eta=3", [1, 3, 9]), configurations, [1, 3, 9], "max")
    # budget 1: all 5 (5 epochs); best ceil(5/3) = 2: b, a -> budget 3 (6 epochs); best 1: b -> budget 9 (9 epochs)
    assert outcome.epochs == 5 + 6 + 9
    assert outcome.chosen == "b"


def test_simulate_counts_regret_and_top_three_against_the_best_full_budget_configuration():
    configurations = [Configuration("A", {2: [0.5, 0.7]}, {2: 0.69}), Configuration("B", {2: [0.4, 0.9]}, {2: 0.88}),
                      Configuration("C", {2: [0.6, 0.8]}, {2: 0.79}), Configuration("D", {2: [0.1, math.nan]})]
    [full, asha] = simulate(configurations, [parse_design("full", [2]), parse_design("asha:grace=1,eta=2", [2])],
                            workers=1, orders=1, metric="val_acc", mode="max")
    assert (full.epochs, full.chosen_val, full.chosen_test, full.regret, full.top) == (8, 0.9, 0.88, 0.0, 1.0)
    assert full.share == 1.0
    # order A, B, C, D: B stopped at epoch 1, C chosen: 0.1 below B; D judged at epoch 1 (0.1 < cutoff) and stopped
    assert asha.epochs == 2 + 1 + 2 + 1 and asha.chosen_val == 0.8
    assert asha.regret == pytest.approx(0.1) and asha.top == 1.0  # C is 2nd of the 3 that finished


def test_fidelity_compares_a_prefix_epoch_or_a_compressed_run_with_the_full_budget():
    configurations = [Configuration(str(i), {1: [v], 3: [0, 1 - v, v]}) for i, v in enumerate((0.1, 0.2, 0.3, 0.4))]
    assert fidelity(configurations, 1, True, 3).rho == pytest.approx(1.0)  # the compressed runs rank as the end
    assert fidelity(configurations, 2, False, 3).rho == pytest.approx(-1.0)  # epoch 2 ranks them backwards
    assert fidelity(configurations, 2, False, 3).n == 4


@pytest.mark.parametrize("text, problem", [
    ("asha:grace=27", "grace must be 1 to 26 (below the full budget, 27)"),
    ("asha:speed=2", "asha has no option 'speed'; its options: grace, eta, full"),
    ("hyperband:eta=x", "eta must be a whole number, got 'x'"),
    ("bohb", "unknown design 'bohb'; one of full, asha, hyperband, median, budget_halving"),
    ("asha:eta=1", "eta must be >= 2, got 1"),
])
def test_a_bad_design_is_named_with_what_is_allowed(text, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_design(text, [3, 9, 27])


def test_budget_halving_needs_several_budgets():
    with pytest.raises(ValueError, match="needs runs at two budgets or more"):
        parse_design("budget_halving", [27])


def test_a_sweep_s_rows_are_one_configuration_per_trial_at_its_max_epochs():
    rows = [{"trial": t, "epoch": e, "val_acc": 0.1 * e, "param.max_epochs": "4",
             "test_acc": 0.5 if e == last else None} for t, last in (("t01", 4), ("t02", 2)) for e in range(1, last + 1)]
    configurations = {c.name: c for c in configurations_from_rows(rows, "val_acc")}
    assert configurations["t01"].final(4) == pytest.approx(0.4) and configurations["t01"].test[4] == 0.5
    assert math.isnan(configurations["t02"].final(4))  # stopped at epoch 2: no final value


def test_simulate_command_on_the_committed_study(tmp_path, capsys):
    assert command.main(["--sweep", str(STUDY), "--orders", "10", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "16 configurations with a whole 27-epoch curve, runs at budgets 3, 9, 27" in printed
    for design in ("asha(grace=13, eta=3, full=2)", "hyperband(grace=3, eta=3, brackets=3)", "median(grace=3",
                   "budget_halving(eta=3)"):
        assert design in printed
    written = (tmp_path / "simulation.md").read_text()
    assert "| budget 3 (compressed) | +0.35 [-0.19, +0.73] n=16 | +0.74 [+0.37, +0.91] n=16 |" in written
    assert "| epoch 13 of 27 (prefix) | +0.18 [-0.36, +0.63] n=16 | +0.63 [+0.18, +0.86] n=16 |" in written
    assert "Judged by the full-budget validation metric" in written and "Judged by the full-budget test_acc" in written
    assert written.count("| budget_halving(eta=3) | 156 | 36% |") == 2  # its epochs do not depend on the order
    assert (tmp_path / "regret-vs-cost.png").stat().st_size > 10_000


def test_a_sweep_without_test_results_is_judged_by_val_only(tmp_path, capsys):
    rows = [{"trial": f"t0{i}", "epoch": e, "val_acc": v * e, "param.max_epochs": 2} for i, v in enumerate(
        (0.1, 0.2, 0.3, 0.4)) for e in (1, 2)]
    write_parquet(rows, tmp_path / "trials.parquet")
    assert command.main(["--sweep", str(tmp_path), "--orders", "2"]) == 0
    out = capsys.readouterr().out
    assert "Judged by the full-budget validation metric" in out and "test_acc" not in out.split("Judged")[1]
    assert command.main(["--sweep", str(tmp_path), "--judge", "test"]) == 2
    assert "not every configuration's full-budget run was tested" in capsys.readouterr().err


def test_simulate_command_refuses_curves_it_cannot_replay(tmp_path, capsys):
    write_parquet([{"trial": "t01", "epoch": 1, "val_acc": 0.5}], tmp_path / "trials.parquet")
    assert command.main(["--sweep", str(tmp_path)]) == 2
    assert "1 trial(s) have a whole 1-epoch curve; a replay needs 3 or more" in capsys.readouterr().err
    assert command.main(["--sweep", str(tmp_path / "none.parquet")]) == 2
    assert "none.parquet: no such file" in capsys.readouterr().err
