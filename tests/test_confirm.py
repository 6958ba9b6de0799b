"""The confirmation stage: the search's top configurations again at new seeds beside the baselines, the answer by
mean validation, the median-seed champion, the test split once per run, paired differences by seed."""

import os
import signal

import pytest
from conftest import sweep_runs
from test_search import run_fake_sweep

from gkd_tune.cli import EXIT_INTERRUPTED
from gkd_tune.core.stats import Difference
from gkd_tune.sweep.confirm import Confirmation, entries
from gkd_tune.sweep.report import TrialSummary
from gkd_tune.sweep.space import parse_space
from gkd_tune.sweep.storage import CONFIRM_KEY

SPACE = {"name": "s", "training": {"max_epochs": 2}, "params": {"b": {"uniform": [1.0, 5.0]}},
         "search": {"num_samples": 4}, "confirm": {"top_k": 2, "seeds": 3, "baselines": ["student", "kd"]}}
SEED_OFFSET = {1: 0.03, 2: 0.0, 3: 0.01}  # seed 3 is every configuration's median


def run(label, seed, val, test=None, outcome="completed", baseline=False):
    entry = {"label": label, "seed": seed, "baseline": baseline, "values": {}}
    return TrialSummary(f"{label}-{seed}", outcome, {"val_acc": val, "epoch": 2}, {CONFIRM_KEY: entry}, None,
                        test={"test_acc": test, "test_loss": 1.0} if test is not None else None, name=f"{label}.s{seed}")


def test_entries_are_each_top_configuration_and_baseline_at_every_new_seed():
    spec = parse_space(SPACE)
    top = [TrialSummary(t, "completed", {}, {"b": b}, None, name=t) for t, b in (("t03", 4.0), ("t01", 3.0), ("t02", 1.0))]
    made = entries(spec, top)
    assert [(e["label"], e["seed"]) for e in made] == [(label, seed) for seed in (1, 2, 3)
                                                      for label in ("t03", "t01", "student", "kd")]
    assert made[0]["values"] == {"b": 4.0, "seed": 1} and made[2]["values"] == {"method": "student", "seed": 1}
    assert [e["baseline"] for e in made[:4]] == [False, False, True, True]


def test_the_answer_is_the_best_mean_and_the_champion_its_median_seed():
    spec = parse_space(SPACE)
    runs = [run("t03", s, 0.80 + SEED_OFFSET[s] + (0.10 if s == 1 else 0)) for s in (1, 2, 3)]  # one lucky seed
    runs += [run("t01", s, 0.86 + SEED_OFFSET[s]) for s in (1, 2, 3)]
    runs += [run("kd", s, 0.84 + SEED_OFFSET[s], baseline=True) for s in (1, 2, 3)]
    confirmation = Confirmation.of(spec, runs)
    # t03's best single run (0.93) beats t01's (0.89), but its mean (0.8467) is below t01's (0.8733)
    assert confirmation.answer().label == "t01"
    assert confirmation.champion().name == "t01.s3"  # 0.89, 0.87, 0.86: the median, not the luckiest
    assert confirmation.answer().mean("val_acc").value_text() == Difference.of([0.89, 0.86, 0.87]).value_text()
    # tested after the choice: paired by seed, the seed offsets cancel
    for r in confirmation.runs_to_test():
        r.test = {"test_acc": float(r.metrics["val_acc"]) - 0.05, "test_loss": 1.0}
    kd = confirmation.baselines[0]
    paired = confirmation.paired(kd, "test_acc")
    assert paired.n == 3 and paired.mean == pytest.approx(0.02) and paired.low == pytest.approx(0.02)
    assert confirmation.worth().startswith("Tuning bought something: t01 beats kd (test_acc, paired by seed")
    said = "\n".join(confirmation.lines())
    assert "The answer: t01 (the best mean val_acc over 3 seeds); its median-val_acc run t01.s3 is the champion" in said
    assert "t01 - kd: test_acc +0.0200" in said


def test_a_configuration_that_failed_a_seed_never_wins_and_an_unresolved_gain_is_said():
    spec = parse_space(SPACE)
    runs = [run("t03", 1, 0.99), run("t03", 2, float("nan"), outcome="diverged"), run("t03", 3, 0.99)]
    runs += [run("t01", s, 0.80 + SEED_OFFSET[s]) for s in (1, 2, 3)]
    runs += [run("kd", s, v, baseline=True) for s, v in ((1, 0.79), (2, 0.83), (3, 0.80))]
    confirmation = Confirmation.of(spec, runs)
    assert confirmation.answer().label == "t01"
    assert "not completed (never chosen): t03.s2 diverged" in "\n".join(confirmation.lines())
    assert confirmation.worth().startswith("Tuning bought nothing resolvable: t01 cannot be told from kd (val_acc")
    assert {r.name for r in confirmation.runs_to_test()} == {f"{l}.s{s}" for l in ("t01", "kd") for s in (1, 2, 3)} | {
        "t03.s1", "t03.s3"}
    only_failures = Confirmation.of(spec, [run("t03", 1, 0.9), run("t03", 2, 0.0, outcome="failed")])
    assert only_failures.answer() is None and "no confirmed answer" in "\n".join(only_failures.lines())


def test_confirm_is_refused_where_it_cannot_work():
    from gkd_tune.sweep.space import SpaceError

    with pytest.raises(SpaceError, match="confirm: confirms the configurations a search proposes"):
        parse_space({**SPACE, "params": {"b": 2.0}})
    with pytest.raises(SpaceError, match=r"confirm.baselines\[1\]: must be one of student, kd, dkd, gompertz"):
        parse_space({**SPACE, "confirm": {"baselines": ["kd", "fitnet"]}})
    with pytest.raises(SpaceError, match="confirm.top_k: must be <= search.num_samples"):
        parse_space({**SPACE, "confirm": {"top_k": 5}})


def confirming_trainable(driver_pid: int, marker: str):
    """Search runs (seed 0) rank high b first; at the confirmation's seeds low b is better, each seed offset alike
    for every configuration and baseline. The first confirmation run at seed 3 interrupts the driver (Ctrl-C) once."""

    def trainable(config, spec, storage):
        import os
        import signal
        import tempfile
        import time

        from ray import tune

        from gkd_tune.sweep.space import PLAN_KEY, TrialPlan

        plan = TrialPlan.resolve(spec, config)
        seed, method = plan.train.seed, plan.distill.method
        if seed == 0:
            val = 0.5 + 0.1 * config["b"]
        else:
            val = (0.9 - 0.05 * config["b"] if method == "gompertz" else {"student": 0.6, "kd": 0.7}[method]) + \
                  {1: 0.03, 2: 0.0, 3: 0.01}[seed]
            if seed == 3 and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(driver_pid, signal.SIGINT)
                time.sleep(3)
        for epoch in range(1, plan.train.epochs + 1):
            with tempfile.TemporaryDirectory() as directory:
                for name, text in (("student.pt", "not a model"), ("val.txt", str(val))):
                    with open(os.path.join(directory, name), "w") as file:
                        file.write(text)
                announced = {PLAN_KEY: plan.to_json()} if epoch == 1 else {}
                ending = {"outcome": "completed"} if epoch == plan.train.epochs else {}
                tune.report({"epoch": epoch, "val_acc": val, "loss_total": 1.0, **announced, **ending},
                            checkpoint=tune.Checkpoint.from_directory(directory))

    return trainable


def counting_evaluation(calls: str):
    def evaluate(spec, checkpoint):
        import os

        with checkpoint.as_directory() as directory:
            val = float(open(os.path.join(directory, "val.txt")).read())
        with open(calls, "a") as file:
            file.write(f"{val}\n")
        return {"test_loss": 1.0, "test_acc": val - 0.02}

    return evaluate


@pytest.mark.slow
def test_a_confirmation_interrupted_midway_resumes_and_tests_each_run_once(tmp_path, monkeypatch, capsys):
    # ASHA with grace_period = max_epochs stops no run: the top 2 are always there to confirm
    space = {**{key: value for key, value in SPACE.items() if key != "name"},
             "search": {**SPACE["search"], "grace_period": 2}}
    trainable = confirming_trainable(os.getpid(), str(tmp_path / "interrupted"))
    evaluate = counting_evaluation(str(tmp_path / "calls"))
    rc, _ = run_fake_sweep(tmp_path, monkeypatch, space, trainable, evaluate=evaluate)
    out = capsys.readouterr().out
    assert rc == EXIT_INTERRUPTED, out[-3000:]
    assert "Confirming the top 2 configuration(s) beside" in out
    assert "The confirmation was interrupted" in out and "--resume" in out
    client, parent, children = sweep_runs(f"sqlite:///{tmp_path}/m.db", "fake")
    assert parent[0].info.status == "KILLED" and all(r.info.status != "RUNNING" for r in children)

    rc, _ = run_fake_sweep(tmp_path, monkeypatch, space, trainable, "--resume", evaluate=evaluate)
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    client, parent, children = sweep_runs(f"sqlite:///{tmp_path}/m.db", "fake")
    assert parent[0].info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in children)
    confirming = [r for r in children if "gkd_tune.confirm" in r.data.tags]
    assert len(confirming) == 12 and len(children) == 4 + 12  # every run once, also across the resume
    assert {r.data.tags["gkd_tune.group"] for r in confirming} == {"confirm student", "confirm kd"} | {
        f"confirm {label}" for label in {r.data.tags["gkd_tune.confirm"] for r in confirming} - {"student", "kd"}}
    # the search's winner has the highest b; at the new seeds the lower b of the top 2 wins on its mean
    tuned = {r.data.tags["gkd_tune.confirm"]: float(r.data.params["b"]) for r in confirming
             if r.data.tags["gkd_tune.confirm"] not in ("student", "kd")}
    answer = min(tuned, key=tuned.get)
    tags, metrics = parent[0].data.tags, parent[0].data.metrics
    assert tags["gkd_tune.confirmed"] == answer and tags["gkd_tune.champion_run"] == f"{answer}.s3"
    assert f"The answer: {answer}" in out and f"best student: " in out and f"({answer}.s3, the confirmed" in out
    # the test split once per confirmation run (12) and once for the search's winner: never again on --resume
    assert len((tmp_path / "calls").read_text().split()) == 13
    assert all("test_acc" in r.data.metrics for r in confirming)
    # paired by seed: the seed offsets cancel, the interval is the point
    expected = 0.2 - 0.05 * tuned[answer]
    assert metrics["confirm.minus_kd.test_acc_mean"] == pytest.approx(expected)
    assert metrics["confirm.minus_kd.test_acc_low"] == pytest.approx(expected)
    assert metrics["confirm.minus_kd.test_acc_n"] == 3
    assert "Tuning bought something" in tags["gkd_tune.tuning_worth"]
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "reports" / "fake" / "trials.parquet").to_pylist()
    assert {r["stage"] for r in rows} == {"search", "confirm"}
    assert "## Confirmation" in (tmp_path / "reports" / "fake" / "summary.md").read_text()
