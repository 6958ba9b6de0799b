"""The best student shipped: registered in MLflow's Model Registry with the alias `champion`, and exported."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import new_tracking_store

from gkd_tune.core.files import STUDENT_FILE
from gkd_tune.core.models import build_model, load_student, save_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # MLflow model logging, exports and subprocesses: seconds each
METADATA = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "image_size": 32,
            "class_names": [str(i) for i in range(10)], "dataset": "digits"}


def student_file(folder: Path, arch="resnet8", seed=0) -> Path:
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(folder / STUDENT_FILE, build_model(arch, 10), val_acc=0.5, epoch=1, **METADATA)
    return folder / STUDENT_FILE


def finished_trial(tracker, trial_id: str, folder: Path, val_acc: float):
    """A completed trial as the sweep's finish step sees it: its run, its checkpoint, its last metrics."""
    from ray import tune

    from gkd_tune.sweep.tracking import TRIAL_TAG

    run = tracker.client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": tracker.parent_id,
                                                                 TRIAL_TAG: trial_id})
    tracker.client.log_artifact(run.info.run_id, str(student_file(folder, seed=hash(trial_id) % 100)), "checkpoint")
    tracker.client.set_terminated(run.info.run_id, "FINISHED")
    return SimpleNamespace(trial_id=trial_id, checkpoint=tune.Checkpoint.from_directory(str(folder)),
                           metrics={"val_acc": val_acc})


def test_the_champion_is_the_best_by_validation_and_predicts_as_the_student_does(tmp_path):
    import mlflow

    from gkd_tune.sweep.registry import register_best
    from gkd_tune.sweep.space import parse_space
    from gkd_tune.sweep.tracking import SweepTracker

    uri = new_tracking_store(tmp_path / "m.db")
    spec = parse_space({"name": "shipped", "tracking": {"uri": uri}})
    said = []
    for sweep, val_acc in (("first", 0.6), ("second", 0.7), ("third", 0.65)):  # one sweep name, three runs of it
        tracker = SweepTracker(spec, str(tmp_path / sweep))
        trial = finished_trial(tracker, f"{sweep}-t1", tmp_path / sweep / "checkpoint", val_acc)
        said.append(register_best(spec, tracker, trial))
        assert register_best(spec, tracker, trial).endswith("(by this sweep, earlier)")  # once per sweep
        tracker.finish("FINISHED")
    assert said[0] == "registered: models:/shipped/1, now models:/shipped@champion (val_acc 0.6000)"
    assert said[1] == "registered: models:/shipped/2, now models:/shipped@champion (val_acc 0.7000)"
    assert said[2] == "registered: models:/shipped/3 (val_acc 0.6500); champion stays version 2 (0.7000)"

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    assert all(r.info.status == "FINISHED" for r in client.search_runs(
        [client.get_experiment_by_name("shipped").experiment_id]))  # every run closed
    champion = mlflow.pyfunc.load_model("models:/shipped@champion")
    assert champion.metadata.metadata["class_names"] == METADATA["class_names"]
    from gkd_tune.core.data import load_splits

    images = np.asarray(load_splits("digits", 0.1).test.images[:50])
    logits = champion.predict(images)
    student = load_student(tmp_path / "second" / "checkpoint" / STUDENT_FILE)
    assert logits.shape == (50, 10)
    assert torch.equal(torch.as_tensor(logits).argmax(1), student.predict(images))


def untraceable(num_classes):
    """A student torch.export cannot trace: its features branch on the data."""
    from torch import nn

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(x) if float(x.sum()) > 0 else -self.conv(x)

    return Branchy(), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def export(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "gkd_tune.export", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_export_writes_both_formats_within_parity_of_a_student_file(tmp_path):
    done = export(["--model", str(student_file(tmp_path / "s")), "--out", str(tmp_path / "out")], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for kind in ("pt2", "onnx"):
        assert (tmp_path / "out" / f"student.{kind}").stat().st_size > 0
        line = next(line for line in done.stdout.splitlines() if line.startswith(f"{kind}: "))
        assert "top-1 agreement 100.00%" in line and line.endswith(": ok") and "test split of digits" in line
    # the ONNX file runs alone, for any batch size
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "student.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        out = session.run(None, {session.get_inputs()[0].name: np.zeros((batch, 3, 32, 32), np.uint8)})[0]
        assert out.shape == (batch, 10)


def test_a_model_that_cannot_be_exported_fails_in_one_line(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        file = student_file(tmp_path / "s", arch="test_registry:untraceable")
    finally:
        sys.path.remove(str(Path(__file__).parent))
    done = export(["--model", str(file), "--format", "pt2", "--out", str(tmp_path / "out")], tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert "pt2: torch.export cannot trace this model: Could not guard on data-dependent expression" in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("argv, message", [
    (["--model", "models:/nothing@champion"], r"error: --model models:/nothing@champion: .*\(registry sqlite:///"),
    (["--model", "missing.pt"], r"error: model file missing.pt does not exist"),
    (["--model", "missing.pt", "--format", "tflite"], r"error: --format: tflite is not one of pt2, onnx"),
])
def test_export_errors_are_one_line(tmp_path, argv, message):
    import re

    done = export([*argv, "--out", str(tmp_path / "out"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], tmp_path)
    assert done.returncode == 2 and re.match(message, done.stderr.strip().splitlines()[-1]), done.stderr[-2000:]
