import json

import pytest
import torch

from gkd_tune import train
from gkd_tune.core.data import load_splits
from gkd_tune.core.distillers import DistillConfig, build_distiller
from gkd_tune.core.loop import Trainer, TrainConfig
from gkd_tune.core.models import build_model, load_model
from gkd_tune.core.teacher import TeacherRecipe, obtain_teacher


@pytest.mark.slow
def test_cli_gompertz_run_on_digits_writes_checkpoint_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--dataset", "digits", "--teacher", "resnet8", "--teacher-epochs", "2", "--student", "resnet8",
            "--method", "gompertz", "--epochs", "3", "--batch-size", "64", "--out", str(out), "--test"]
    assert train.main(argv) == 0
    printed = capsys.readouterr().out
    assert "epoch   3/3" in printed and "beta" in printed and "test acc" in printed
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r.get("outcome") for r in rows] == [None, None, "completed"]
    assert 0 <= rows[-1]["test_acc"] <= 1 and not any("test_acc" in r for r in rows[:-1])  # once, at the end
    betas = [r["beta"] for r in rows]
    assert betas[0] < betas[1] < betas[2]
    student, metadata = load_model(out / "student.pt", "resnet8", 10)
    assert metadata["val_acc"] == rows[-1]["val_acc"]
    torch.load(out / "checkpoint.pt", weights_only=True)

    # resuming a finished run trains nothing more and keeps the history
    assert train.main(argv + ["--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text()) == rows


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "nope", "--student", "resnet8", "--method", "student"], "error: data source 'nope': unknown"),
    (["--student", "resnet8", "--method", "kd"], "error: --method kd needs --teacher ARCH"),
    (["--student", "resnet8", "--method", "gompertz", "--teacher", "resnet8", "--beta-min", "2"],
     "error: beta_min must be below beta_max"),
    (["--student", "resnet8", "--method", "student", "--resume"], "error: --resume: no checkpoint"),
    (["--student", "resnet8", "--method", "student", "--seed", "-1"], "error: seed must be [0, 4294967295], got -1"),
    (["--student", "resnet8", "--method", "student", "--batch-size", str(10**20)],
     "error: batch_size must be [1, 1000000], got 100000000000000000000"),
    (["--student", "resnet8", "--method", "kd", "--teacher", "resnet8", "--teacher-seed", "-5"],
     "error: seed must be [0, 4294967295], got -5"),
    (["--student", "resnet8", "--method", "gompertz", "--teacher", "resnet8", "--b", "-1"],
     "error: b must be (0, 50], got -1.0"),
    (["--source", "digits", "--student", "resnet8", "--method", "student", "--test", "--lr", "1e300"],
     "error: lr must be (0, 10], got 1e+300"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    assert train.main(argv + ["--epochs", "1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


@pytest.mark.parametrize("prepare, resume, message", [
    (lambda out: out.write_text("a file"), False, r"error: --out \S+/x: is a file, not a folder$"),
    (lambda out: (out.mkdir(), (out / "checkpoint.pt").write_text("")), False,
     r"error: --out \S+/x: holds a run already \(\S+/checkpoint.pt\): continue it with --resume, or give another"),
    (lambda out: (out.mkdir(), (out / "checkpoint.pt").write_bytes(b"\x80\x02truncated")), True,
     r"error: --resume: \S+/checkpoint.pt cannot be loaded \(\w+: .*\): resume with the flags of the run that "),
])
def test_an_unusable_out_folder_is_a_one_line_error(tmp_path, capsys, prepare, resume, message):
    import re

    out = tmp_path / "x"
    prepare(out)
    argv = ["--source", "digits", "--student", "resnet8", "--method", "student", "--epochs", "1", "--out", str(out)]
    assert train.main(argv + (["--resume"] if resume else [])) == 2
    err = capsys.readouterr().err
    assert re.match(message, err) and err.count("\n") == 1, err


@pytest.mark.slow
def test_real_cifar10_images_lift_every_method_well_above_chance(shared_cifar10):
    # 5,000 training / 5,000 validation images of the real CIFAR-10 sample; chance is 10%
    splits = load_splits(f"parquet:{shared_cifar10}", val_fraction=0.5)
    teacher, _, metadata = obtain_teacher(splits, "resnet8", TeacherRecipe(epochs=4, lr=0.1), 0.5)
    assert metadata["val_acc"] > 0.35
    for method in ("student", "kd", "gompertz"):
        torch.manual_seed(0)
        distiller = build_distiller(DistillConfig(method=method), build_model("resnet8", 10), teacher)
        history = Trainer(distiller, splits, TrainConfig(epochs=2, batch_size=128, lr=0.1)).run()
        assert history[-1]["val_acc"] > 0.25, f"{method}: {history[-1]['val_acc']:.3f}"
        print(f"{method}: val acc {[round(h['val_acc'], 3) for h in history]}")


@pytest.mark.slow
def test_a_timm_teacher_distils_into_a_torchvision_student(tmp_path, capsys):
    """Users' own models by reference: timm's resnet10t (features and head from forward_features / forward_head)
    into torchvision's MobileNetV3 (a documented split whose head is not pool + linear: the gradient term takes the
    autograd path), every Gompertz term on, one epoch of digits; the student file works alone."""
    from gkd_tune.core.models import load_student

    out = tmp_path / "run"
    argv = ["--dataset", "digits", "--teacher", "timm:resnet10t", "--teacher-epochs", "1",
            "--student", "torchvision:mobilenet_v3_small", "--method", "gompertz", "--epochs", "1",
            "--batch-size", "64", "--out", str(out)]
    assert train.main(argv) == 0
    rows = json.loads((out / "metrics.json").read_text())
    assert rows[-1]["outcome"] == "completed"
    assert all(rows[-1][f"loss_{term}"] > 0 for term in ("wasserstein", "grad", "kd"))
    student = load_student(out / "student.pt")
    assert student.net.arch == "torchvision:mobilenet_v3_small"
    splits = load_splits("digits", 0.1)
    predicted = student.predict(splits.val.images[:16])
    assert predicted.shape == (16,) and int(predicted.max()) < 10

    # a teacher trained elsewhere, given as timm's own state_dict: loaded, and the run goes on
    import timm

    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), tmp_path / "teacher.pth")
    given = [*argv[:argv.index("--teacher-epochs")], "--teacher-checkpoint", str(tmp_path / "teacher.pth"),
             *argv[argv.index("--student"):-1], str(tmp_path / "given")]
    assert train.main(given) == 0
    assert json.loads((tmp_path / "given" / "metrics.json").read_text())[-1]["outcome"] == "completed"
