"""python -m gkd_tune.reproduce: the configuration's checks, and a smoke reproduction end to end."""

import re
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import new_tracking_store, sweep_runs

from gkd_tune import reproduce

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "reproduce" / "smoke.yaml").read_text())


def test_the_shipped_configurations_load_with_the_published_numbers():
    for name, pairs in (("table2-cifar10", 4), ("table2-cifar100", 4), ("smoke", 1)):
        config = reproduce.load_config(ROOT / "reproduce" / f"{name}.yaml")
        assert len(config.pairs) == pairs and config.methods == ("student", "kd", "gompertz")
        assert all(set(p.paper) == {"teacher", "student", "kd", "gompertz"} for p in config.pairs)
        assert config.published_here == (name != "smoke")  # smoke runs on digits: the values are for layout only
    cifar10 = reproduce.load_config(ROOT / "reproduce" / "table2-cifar10.yaml", epochs=30, seeds=2)
    assert (cifar10.epochs, cifar10.planned_epochs, cifar10.seeds, len(cifar10.cells())) == (30, 240, 2, 24)
    mbv2 = cifar10.pairs[2]
    assert (mbv2.label, mbv2.paper["kd"], mbv2.paper["gompertz"]) == ("resnet50 -> mobilenet_v2", 0.9145, 0.9574)
    # the KD benchmarks' lr at batch 64 (0.05; MobileNetV2 0.01), x8 for batch 512, per student, every method
    assert [cifar10.spec(i, m).fixed()["lr"] for i in range(4) for m in ("student", "gompertz")] == \
        [0.4, 0.4, 0.4, 0.4, 0.08, 0.08, 0.08, 0.08]
    assert cifar10.spec(2, "kd").fixed()["tau"] == 4.0
    benchmark = reproduce.load_config(ROOT / "reproduce" / "kd-benchmark-cifar100.yaml")
    assert benchmark.methods == ("student", "kd", "dkd", "gompertz") and benchmark.published_here
    assert benchmark.pairs[0].paper == {"teacher": 0.7942, "student": 0.7250, "kd": 0.7333, "dkd": 0.7632}
    recipe = benchmark.spec(0, "dkd").fixed()
    assert (recipe["lr"], recipe["weight_decay"], recipe["dkd_beta"]) == (0.05, 0.0005, 8.0)
    assert benchmark.any_spec.training.batch_size == 64 and benchmark.epochs == 240
    ablations = reproduce.load_config(ROOT / "reproduce" / "ablations.yaml")
    assert ablations.reference == "gompertz" and not ablations.published_on and len(ablations.methods) == 11
    assert ablations.spec(0, "no_grad").fixed()["w_grad"] == 0.0 and ablations.spec(0, "no_grad").fixed()["method"] \
        == "gompertz"
    assert ablations.spec(0, "mirrored").fixed()["schedule"] == "gompertz_decay"


@pytest.mark.parametrize("change, message", [
    ({"pairs": [{"teacher": "resnet500", "student": "resnet8"}]}, r"pairs\[0\].teacher: must be one of resnet34,"),
    ({"pairs": []}, r"pairs: must be a list"),
    ({"methods": {"fitnet": {}}}, r"methods.fitnet: unknown method; allowed: student, kd, dkd, gompertz \(or a name"),
    ({"methods": {"mine": {"method": "fitnet"}}}, r"methods.mine.method: unknown method; allowed: student, kd, dkd"),
    ({"reference": "dkd"}, r"reference: must be one of the methods \(gompertz, kd, student\), got 'dkd'"),
    ({"pairs": [{"teacher": "resnet14", "student": "resnet8", "params": {"lr": -1}}]},
     r"pairs\[0\].params.lr: must be"),
    ({"methods": {"kd": {"tau": -1}}}, r"methods.kd.tau: must be \(0, 100\], got -1"),
    ({"pairs": [{"teacher": "resnet8", "student": "resnet8", "paper": {"kd": 91.45}}]},
     r"pairs\[0\].paper.kd: must be an accuracy in \[0, 1\], got 91.45"),
    ({"seeds": 0}, r"seeds: must be a whole number in \[1, 100\], got 0"),
    ({"epoch": 3}, r"epoch: unknown key; allowed: name, data,"),
    ({"methods": {"gompertz": {"from_sweep": "no-such-sweep"}}}, r"methods.gompertz.from_sweep: no finished sweep at"),
    ({"params": {"lr": float("nan")}}, r"params.lr: must be a finite number, got nan"),  # shared: its own
    ({"params": {"seed": -1}}, r"params.seed: must be \[0, 4294967295\], got -1"),
])
def test_a_bad_configuration_is_one_line_naming_the_field(tmp_path, monkeypatch, capsys, change, message):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**SMOKE, **change}))
    assert reproduce.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert re.match(rf"error: {re.escape(str(config))}: {message}", err) and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written


def test_the_printed_resume_command_is_the_whole_command():
    args = reproduce.build_parser().parse_args(["--config", "c.yaml", "--epochs", "2", "--seeds", "1", "--out", "o",
                                                "--address", "10.0.0.5:6379"])
    assert reproduce.resume_command_for(args) == \
        "python -m gkd_tune.reproduce --config c.yaml --epochs 2 --seeds 1 --out o --address 10.0.0.5:6379 --resume"


def test_a_teacher_task_that_cannot_read_its_data_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """The teachers are trained by Ray tasks; bad input there is reported as itself, as a sweep reports it."""
    monkeypatch.chdir(tmp_path)
    config = {**SMOKE, "data": {"source": "parquet:missing.parquet"}, "tracking": {"uri": f"sqlite:///{tmp_path}/m.db"},
              "storage_path": str(tmp_path / "runs")}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(config))
    assert reproduce.main(["--config", str(tmp_path / "broken.yaml")]) == 2
    err = capsys.readouterr().err  # (Ray's own log lines come first)
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: data source 'parquet:") and last.endswith("missing.parquet"), err[-2000:]
    assert "Traceback" not in err and "RayTaskError" not in err


@pytest.mark.slow
def test_a_smoke_reproduction_writes_a_table_that_the_parquet_rows_recompute(tmp_path, monkeypatch, capsys):
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    config = {**SMOKE, "data": {**SMOKE["data"], "image_size": 16},  # wiring: the digits' own detail is enough
              "teacher": {"epochs": 2}, "training": {"max_epochs": 3, "batch_size": 128}, "seeds": 2,
              "pairs": [{**SMOKE["pairs"][0], "teacher": "resnet8"}],
              "tracking": {"uri": new_tracking_store(tmp_path / "m.db")}, "storage_path": str(tmp_path / "runs")}
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(config))
    assert reproduce.main(["--config", str(tmp_path / "smoke.yaml"), "--out", str(tmp_path / "out"),
                           "--epochs", "2"]) == 0
    out = tmp_path / "out"
    table = (out / "table.md").read_text()
    rows = pq.read_table(out / "runs.parquet").to_pylist()
    assert len(rows) == 3 * 2 * 2  # methods x seeds x epochs
    methods = reproduce.load_config(tmp_path / "smoke.yaml").methods  # (safe_dump sorted them by name)
    assert [(r["method"], r["seed"], r["epoch"]) for r in rows] == \
        [(m, s, e) for m in methods for s in (0, 1) for e in (1, 2)]  # the configuration's order
    last = {(r["method"], r["seed"]): r for r in rows if r["epoch"] == 2}
    assert all(r["test_acc"] is None for r in rows if r["epoch"] == 1)

    accuracy_row, difference_row = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
                                     if line.startswith("| resnet8 -> resnet8")]
    for column, method in zip(accuracy_row[2:], methods):  # the configuration's order
        values = [last[(method, s)]["test_acc"] for s in (0, 1)]
        assert column.startswith(f"{statistics.fmean(values):.4f} +- {statistics.stdev(values):.4f} (")
    for column, method in zip(difference_row[1:], [m for m in methods if m != "gompertz"]):
        differences = [last[("gompertz", s)]["test_acc"] - last[(method, s)]["test_acc"] for s in (0, 1)]
        half = 12.7062 * statistics.stdev(differences) / 2 ** 0.5  # t(0.975, 1 degree of freedom)
        mean = statistics.fmean(differences)
        assert column.startswith(f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}] n=2"), column
    assert "2 epochs" in table and "Reduced budget**: 2 of the configuration's 3 epochs" in table
    # the paper's CIFAR-10 values beside a digits run: for layout only, and no verdict
    assert "measured on cifar10, not on this data: for layout only" in table
    assert "No verdict: the published values were measured on cifar10, this run is on digits." in table

    client, [parent], children = sweep_runs(f"sqlite:///{tmp_path}/m.db", "table2-smoke")
    assert len(children) == 6 and parent.info.status == "FINISHED"
    for run in children:  # the test split, exactly once per trial
        assert len(client.get_metric_history(run.info.run_id, "test_acc")) == 1
    assert parent.data.tags["mlflow.note.content"] == table
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"table.md", "runs.parquet", "radar.png"}

    assert (out / "radar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure = reproduce.radar(reproduce.load_config(tmp_path / "smoke.yaml"), rows)
    # one pair: a bar per method, not a one-axis radar
    assert figure.axes[0].name == "rectilinear" and len(figure.axes[0].patches) == 3

    # --resume with an edited configuration or other options is refused, writing nothing
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump({**config, "methods": {**config["methods"], "kd": {"tau": 4.0, "alpha": 0.5}}}))
    for argv, changed in ((["--config", str(edited), "--epochs", "2"], "methods.kd.alpha"),
                          (["--config", str(tmp_path / "smoke.yaml"), "--epochs", "3"], "training.max_epochs"),
                          (["--config", str(tmp_path / "smoke.yaml"), "--epochs", "2", "--seeds", "3"], "seeds")):
        capsys.readouterr()
        assert reproduce.main([*argv, "--out", str(tmp_path / "out"), "--resume"]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert re.match(rf"error: --resume: .* differs from what this run started with \({changed}; ", last), last
        assert (out / "table.md").read_text() == table
    # --resume of a finished reproduction trains and tests nothing again, and writes the same table
    assert reproduce.main(["--config", str(tmp_path / "smoke.yaml"), "--out", str(tmp_path / "out"),
                           "--epochs", "2", "--resume"]) == 0
    assert (out / "table.md").read_text() == table
    assert pq.read_table(out / "runs.parquet").to_pylist() == rows
    runs = client.search_runs([client.get_experiment_by_name("table2-smoke").experiment_id])
    assert len(runs) == 7 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags:
            assert len(client.get_metric_history(run.info.run_id, "test_acc")) == 1
            assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]


def rows_for(reproduction, accuracies: dict) -> list[dict]:
    """The last-epoch rows of a finished grid: accuracies[(pair index, method)] = one test accuracy per seed."""
    return [{"pair": reproduction.pairs[i].label, "method": method, "seed": seed, "epoch": 1,
             "trial_id": f"{i}{method}{seed}", "test_acc": value, "outcome": "completed"}
            for (i, method), values in accuracies.items() for seed, value in enumerate(values)]


def table2_like(tmp_path, seeds: int, paper: dict, source="digits", published_on="digits"):
    config = {**SMOKE, "seeds": seeds, "published_on": published_on, "data": {"source": source, "val_fraction": 0.1},
              "pairs": [{"teacher": "resnet14", "student": "resnet8", "paper": paper}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return reproduce.load_config(tmp_path / "c.yaml")


CONSISTENT = {"teacher": 0.95, "student": 0.90, "kd": 0.91, "gompertz": 0.93}


def test_the_paired_interval_is_a_t_interval_over_seeds():
    difference = reproduce.Difference.of([0.02, 0.03, 0.04])
    half = 4.302653 * 0.01 / 3 ** 0.5  # t(0.975, 2 degrees of freedom) * sd / sqrt(n)
    assert difference.n == 3 and abs(difference.mean - 0.03) < 1e-12
    assert abs(difference.low - (0.03 - half)) < 1e-6 and abs(difference.high - (0.03 + half)) < 1e-6
    assert difference.text() == f"+0.0300 [{0.03 - half:+.4f}, {0.03 + half:+.4f}] n=3" and difference.above_zero
    single = reproduce.Difference.of([0.05])
    assert single.text() == "+0.0500 (n=1, no interval)" and not single.above_zero


def test_the_verdict_needs_three_seeds_and_both_intervals_above_zero(tmp_path):
    two = table2_like(tmp_path, 2, CONSISTENT)
    rows = rows_for(two, {(0, "student"): [0.80, 0.81], (0, "kd"): [0.85, 0.86], (0, "gompertz"): [0.95, 0.96]})
    said = "\n".join(reproduce.verdict(two, rows))
    assert "no verdict: n = 2 seed(s), fewer than 3" in said and "reproduced:" not in said
    assert reproduce.VERDICT_RULE in said

    three = table2_like(tmp_path, 3, CONSISTENT)
    gains = {(0, "student"): [0.80, 0.81, 0.82], (0, "kd"): [0.85, 0.86, 0.85], (0, "gompertz"): [0.95, 0.96, 0.95]}
    said = "\n".join(reproduce.verdict(three, rows_for(three, gains)))
    assert "reproduced: Gompertz above both KD and the student alone" in said
    assert "Reproduced on 1 of 1 comparable pair(s)" in said
    # ahead of KD but not of the student alone: never a gain
    behind = {**gains, (0, "student"): [0.96, 0.97, 0.96]}
    assert "not reproduced" in "\n".join(reproduce.verdict(three, rows_for(three, behind)))
    # ahead on average, but one interval reaches 0
    noisy = {**gains, (0, "kd"): [0.97, 0.85, 0.90]}
    assert "direction only" in "\n".join(reproduce.verdict(three, rows_for(three, noisy)))


def test_an_inconsistent_published_row_is_flagged_and_left_out(tmp_path):
    # the paper's CIFAR-10 VGG16 row: KD below its student alone, the teacher below the student alone
    vgg = {"teacher": 0.8466, "student": 0.9121, "kd": 0.6991, "gompertz": 0.9399}
    three = table2_like(tmp_path, 3, vgg)
    rows = rows_for(three, {(0, "student"): [0.80, 0.81, 0.82], (0, "kd"): [0.85, 0.86, 0.85],
                            (0, "gompertz"): [0.95, 0.96, 0.95]})
    table = reproduce.table_markdown(three, rows, {})
    assert "| resnet14 -> resnet8 (!) |" in table
    assert "KD (0.6991) below its student alone (0.9121)" in table
    assert "the teacher (0.8466) below the student alone (0.9121)" in table
    assert "left out: the published row contradicts itself" in table and "reproduced:" not in table
    assert "No pair has a consistent published gain" in table


def test_a_published_row_where_gompertz_loses_is_never_reproduced(tmp_path):
    # the paper's CIFAR-100 ResNet50 -> ResNet34 row shape: Gompertz below KD in the published table itself
    losing = {"teacher": 0.95, "student": 0.90, "kd": 0.93, "gompertz": 0.92}
    three = table2_like(tmp_path, 3, losing)
    gains = {(0, "student"): [0.80, 0.81, 0.82], (0, "kd"): [0.85, 0.86, 0.85], (0, "gompertz"): [0.95, 0.96, 0.95]}
    said = "\n".join(reproduce.verdict(three, rows_for(three, gains)))
    assert "no published gain to reproduce: the published row shows Gompertz (0.9200) at or below KD (0.9300)" in said
    assert "reproduced:" not in said and "Reproduced on" not in said
    assert "No pair has a consistent published gain" in said and reproduce.VERDICT_RULE in said
    assert "never 'reproduced'" in reproduce.VERDICT_RULE
    # the measured difference is still shown, with its interval and n
    assert re.search(r"here Gompertz - KD is \+0\.\d{4} \[\+0\.\d{4}, \+0\.\d{4}\] n=3", said), said


def test_no_verdict_where_the_published_values_are_for_other_data(tmp_path):
    """The smoke reproduction: digits, against the paper's CIFAR-10 values."""
    three = table2_like(tmp_path, 3, CONSISTENT, published_on="cifar10")
    rows = rows_for(three, {(0, "student"): [0.80, 0.81, 0.82], (0, "kd"): [0.85, 0.86, 0.85],
                            (0, "gompertz"): [0.95, 0.96, 0.95]})
    table = reproduce.table_markdown(three, rows, {})
    assert "for layout only" in table and "No verdict: the published values were measured on cifar10" in table
    assert "reproduced" not in table.lower().replace("no verdict", "")
    # the differences table still shows each paired interval, with its n
    assert re.search(r"\| resnet14 -> resnet8 \| \+0\.\d{4} \[\+0\.\d{4}, \+0\.\d{4}\] n=3 better \|", table), table


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ablations", "kd-benchmark-cifar100"])
def test_the_new_configurations_run_one_epoch_on_digits_to_a_table(tmp_path, monkeypatch, name):
    """Each shipped configuration as it is (its methods, reference, published values), on digits for 1 epoch, 1 seed,
    with small nets on a CPU: it ends with its table."""
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((ROOT / "reproduce" / f"{name}.yaml").read_text())
    config.update(data={"source": "digits", "val_fraction": 0.1, "image_size": 16},
                  teacher={"epochs": 1, "batch_size": 128},
                  training={"max_epochs": 1, "batch_size": 128}, seeds=1, resources={"cpu": 1, "gpu": 0},
                  search={"max_concurrent_trials": 2}, tracking={"uri": new_tracking_store(tmp_path / "m.db")},
                  storage_path=str(tmp_path / "runs"),
                  pairs=[{**config["pairs"][0], "teacher": "resnet14", "student": "resnet8"}])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert reproduce.main(["--config", str(tmp_path / "c.yaml"), "--dry-run"]) == 0
    assert reproduce.main(["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "table.md").read_text()
    methods = list(config["methods"])
    header = next(line for line in table.splitlines() if line.startswith("| teacher -> student | teacher |"))
    assert header.count("|") == len(methods) + 3
    differences = [line for line in table.splitlines() if line.startswith("| resnet14 -> resnet8 |")][-1]
    assert differences.count("(n=1, no interval)") == len(methods) - 1  # one seed: every difference, no interval
    assert "Left out of the means" not in table  # every trial completed
    if name == "kd-benchmark-cifar100":  # published on CIFAR-100: shown for layout only, no verdict on digits
        assert "(0.7632)" in table and "No verdict: the published values were measured on cifar100" in table
