import math

import pytest
import torch

from gkd_tune.core.distillers import DistillConfig, build_distiller
from gkd_tune.core.loop import Trainer, TrainConfig
from gkd_tune.core.models import build_model


def gompertz_trainer(splits, lr_schedule="cosine"):
    torch.manual_seed(1)
    distiller = build_distiller(DistillConfig(), build_model("resnet8", 3), build_model("resnet8", 3))
    return Trainer(distiller, splits, TrainConfig(epochs=3, batch_size=16, lr_schedule=lr_schedule))


@pytest.mark.parametrize("lr_schedule", ["cosine", "multistep"])
def test_resume_equals_uninterrupted(tiny_splits, tmp_path, lr_schedule):
    straight = gompertz_trainer(tiny_splits, lr_schedule)
    straight.run()

    first = gompertz_trainer(tiny_splits, lr_schedule)
    first.train_epoch()
    first.history.append({})  # history travels with the checkpoint
    first.save(tmp_path / "ckpt.pt")
    torch.manual_seed(123)  # a different global RNG state: the checkpoint must restore it
    resumed = gompertz_trainer(tiny_splits, lr_schedule)
    resumed.load(tmp_path / "ckpt.pt")  # loads with weights_only=True
    assert resumed.epoch == 1 and resumed.history == [{}]
    resumed.run()

    for name, value in straight.distiller.student.state_dict().items():
        assert torch.equal(value, resumed.distiller.student.state_dict()[name]), name
    for name, value in straight.distiller.adapters.state_dict().items():
        assert torch.equal(value, resumed.distiller.adapters.state_dict()[name]), name
    assert resumed.history[-1]["val_acc"] == straight.history[-1]["val_acc"]
    assert resumed.history[-1]["loss_total"] == straight.history[-1]["loss_total"]


def test_callback_gets_every_epoch_with_all_metrics(tiny_splits):
    trainer = gompertz_trainer(tiny_splits)
    seen = []
    trainer.run(lambda metrics, t: seen.append((metrics, t.epoch)))
    assert [m["epoch"] for m, _ in seen] == [1, 2, 3] and [e for _, e in seen] == [1, 2, 3]
    keys = set(seen[0][0])
    assert {"loss_total", "loss_ce", "loss_wasserstein", "loss_grad", "loss_kd", "beta", "lr", "train_acc",
            "val_acc", "val_loss", "epoch_time_s", "images_per_s"} <= keys
    betas = [m["beta"] for m, _ in seen]
    assert betas == sorted(betas) and betas[0] < betas[-1]
    lrs = [m["lr"] for m, _ in seen]
    assert lrs[0] == 0.05 and lrs == sorted(lrs, reverse=True)


def test_invalid_train_config():
    with pytest.raises(ValueError, match="lr_schedule must be one of cosine, multistep"):
        TrainConfig(epochs=1, lr_schedule="step")
    with pytest.raises(ValueError, match=r"max_epochs must be \[1, 1000000\], got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match=r"weight_decay must be \[0, 1\], got -0.1"):
        TrainConfig(weight_decay=-0.1)


def test_a_diverged_run_stops_after_reporting_its_nan_epoch(tiny_splits):
    torch.manual_seed(0)
    trainer = Trainer(build_distiller(DistillConfig(method="student"), build_model("resnet8", 3), None), tiny_splits,
                      TrainConfig(epochs=5, batch_size=16))
    # a learning rate no config admits (lr <= 10), set where the schedule reads it: the weights blow up
    trainer.scheduler.base_lrs = [1e30 for _ in trainer.scheduler.base_lrs]
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e30
    reported = []
    history = trainer.run(lambda metrics, _: reported.append(metrics["loss_total"]))
    assert trainer.diverged and len(history) == len(reported) < 5
    assert not math.isfinite(reported[-1]) and all(math.isfinite(x) for x in reported[:-1])
