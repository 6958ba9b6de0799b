"""python -m gkd_tune.reproduce: the configuration's checks, and a smoke reproduction end to end."""

import re
import statistics
from pathlib import Path

import pytest
import yaml

from gkd_tune import reproduce

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "reproduce" / "smoke.yaml").read_text())


def test_the_shipped_configurations_load_with_the_papers_numbers():
    for name, pairs in (("table2-cifar10", 4), ("table2-cifar100", 4), ("smoke", 1)):
        config = reproduce.load_config(ROOT / "reproduce" / f"{name}.yaml")
        assert len(config.pairs) == pairs and config.methods == ("student", "kd", "gompertz")
        assert all(set(p.paper) == {"teacher", "student", "kd", "gompertz"} for p in config.pairs)
    cifar10 = reproduce.load_config(ROOT / "reproduce" / "table2-cifar10.yaml", epochs=30, seeds=2)
    assert (cifar10.epochs, cifar10.planned_epochs, cifar10.seeds, len(cifar10.cells())) == (30, 240, 2, 24)
    mbv2 = cifar10.pairs[2]
    assert (mbv2.label, mbv2.paper["kd"], mbv2.paper["gompertz"]) == ("resnet50 -> mobilenet_v2", 0.9145, 0.9574)
    assert cifar10.spec(2, "kd").fixed()["tau"] == 4.0 and cifar10.spec(2, "gompertz").fixed()["lr"] == 0.04


@pytest.mark.parametrize("change, message", [
    ({"pairs": [{"teacher": "resnet500", "student": "resnet8"}]}, r"pairs\[0\].teacher: must be one of resnet34,"),
    ({"pairs": []}, r"pairs: must be a list"),
    ({"methods": {"fitnet": {}}}, r"methods.fitnet: unknown method; allowed: student, kd, gompertz"),
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
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    config = {**SMOKE, "teacher": {"epochs": 2}, "training": {"max_epochs": 3, "batch_size": 128}, "seeds": 2,
              "pairs": [{**SMOKE["pairs"][0], "teacher": "resnet8"}],
              "tracking": {"uri": f"sqlite:///{tmp_path}/m.db"}, "storage_path": str(tmp_path / "runs")}
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

    row = next(line for line in table.splitlines() if line.startswith("| resnet8 -> resnet8"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    for column, method in zip(cells[2:5], ("student", "kd", "gompertz")):
        values = [last[(method, s)]["test_acc"] for s in (0, 1)]
        assert column.startswith(f"{statistics.fmean(values):.4f} +- {statistics.stdev(values):.4f} (")
    gains = [last[("gompertz", s)]["test_acc"] - last[("kd", s)]["test_acc"] for s in (0, 1)]
    assert cells[5].startswith(f"{statistics.fmean(gains):+.4f} +- {statistics.stdev(gains):.4f} (+0.0429)")
    assert "2 epochs" in table and "Reduced budget**: 2 of the configuration's 3 epochs" in table
    assert re.search(r"On digits \(smoke test\) at 2 epochs and 2 seed\(s\), the paper reports \+4.3 points", table)

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    runs = client.search_runs([client.get_experiment_by_name("table2-smoke").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(children) == 6 and parent.info.status == "FINISHED"
    for run in children:  # the test split, exactly once per trial
        assert len(client.get_metric_history(run.info.run_id, "test_acc")) == 1
    assert parent.data.tags["mlflow.note.content"] == table
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"table.md", "runs.parquet", "radar.png"}

    assert (out / "radar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure = reproduce.radar(reproduce.load_config(tmp_path / "smoke.yaml"), rows)
    assert len(figure.axes[0].get_xticks()) == 1  # one axis per pair

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
