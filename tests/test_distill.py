import pytest
import torch
import torch.nn.functional as F

from gkd_tune.core.distillers import (METHODS, DistillConfig, Distiller, GompertzConfig, GompertzKD, KDConfig,
                                      LossWeights, VanillaKD, build_distiller)
from gkd_tune.core.loop import Trainer, TrainConfig
from gkd_tune.core.losses import kd_loss
from gkd_tune.core.models import build_model
from gkd_tune.core.schedules import BetaSchedule


def pair(classes=3):
    torch.manual_seed(0)
    return build_model("resnet8", classes), build_model("resnet14", classes)


def batch(classes=3):
    return torch.randn(4, 3, 32, 32), torch.arange(4) % classes


def test_gompertz_terms_and_total():
    student, teacher = pair()
    schedule = BetaSchedule("gompertz", 0.1, 1.0, 3.0, 6.0)
    distiller = build_distiller(DistillConfig(gompertz=GompertzConfig(weights=LossWeights(0.5, 2.0, 1.0)),
                                                schedule=schedule), student, teacher)
    images, labels = batch()
    out = distiller.forward_train(images, labels, progress=0.4)
    assert set(out.terms) == {"ce", "wasserstein", "grad", "kd"}
    assert out.beta == pytest.approx(schedule(0.4))
    t = out.terms
    expected = t["ce"] + out.beta * (0.5 * t["wasserstein"] + 2.0 * t["grad"] + t["kd"])
    torch.testing.assert_close(out.total, expected)


def test_zero_weight_terms_are_not_computed(monkeypatch):
    student, teacher = pair()
    distiller = build_distiller(DistillConfig(gompertz=GompertzConfig(weights=LossWeights(0.0, 0.0, 1.0))), student, teacher)
    assert len(distiller.adapters) == 0  # no Sinkhorn adapter, no gradient remap
    out = distiller.forward_train(*batch(), progress=0.5)
    assert set(out.terms) == {"ce", "kd"}

    def no_teacher(*args):
        raise AssertionError("teacher run although every teacher term has weight 0")

    only_ce = build_distiller(DistillConfig(gompertz=GompertzConfig(weights=LossWeights(0.0, 0.0, 0.0))), *pair())
    monkeypatch.setattr(only_ce, "teacher_outputs", no_teacher)
    assert set(only_ce.forward_train(*batch(), progress=0.5).terms) == {"ce"}


def test_vanilla_kd_mixes_ce_and_kd():
    student, teacher = pair()
    distiller = build_distiller(DistillConfig(method="kd", tau=2.0, kd=KDConfig(alpha=0.7)), student, teacher)
    assert isinstance(distiller, VanillaKD)
    images, labels = batch()
    out = distiller.forward_train(images, labels, progress=0.0)
    with torch.no_grad():
        _, teacher_logits = teacher(images)
    torch.testing.assert_close(out.total, 0.3 * F.cross_entropy(out.logits, labels)
                               + 0.7 * kd_loss(out.logits, teacher_logits, 2.0))
    assert out.beta is None


def test_kd_methods_need_a_teacher_and_valid_settings():
    with pytest.raises(ValueError, match="needs a teacher"):
        build_distiller(DistillConfig(method="gompertz"), build_model("resnet8", 3), None)
    with pytest.raises(ValueError, match="method must be one of student, kd, dkd, gompertz"):
        DistillConfig(method="fitnet")


def test_teacher_is_frozen_through_training(tiny_splits):
    student, teacher = pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # running BN statistics included
    distiller = build_distiller(DistillConfig(), student, teacher)
    assert isinstance(distiller, GompertzKD)
    student_before = student.features[0].weight.clone()
    Trainer(distiller, tiny_splits, TrainConfig(epochs=1, batch_size=16)).run()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), f"teacher {name} changed"
    assert not torch.equal(student.features[0].weight, student_before)


def test_a_method_is_one_registered_class_that_says_what_it_uses():
    """The registry is the one place that names methods: each says whether it needs a teacher and uses the schedule,
    and its own settings live in DistillConfig under its name (flat by public name everywhere else)."""
    from gkd_tune.core.params import build, settings

    assert all(issubclass(method, Distiller) and method.summary for method in METHODS.values())
    assert [name for name, m in METHODS.items() if m.uses_schedule] == ["gompertz"]
    assert [name for name, m in METHODS.items() if not m.needs_teacher] == ["student"]
    for name, method in METHODS.items():
        if method.Config is not None:
            assert isinstance(getattr(DistillConfig(), name), method.Config)
    # flat public names reach the method's own config
    config = build(DistillConfig, {"method": "kd", "alpha": 0.3, "r": 0.2, "w_grad": 0.0})
    assert config.kd.alpha == 0.3 and config.gompertz.r == 0.2 and config.gompertz.weights.grad == 0.0
    names = [s.name for s in settings(DistillConfig)]
    assert len(names) == len(set(names))


def test_dkd_ramps_its_weight_over_the_warmup_then_holds_it():
    from gkd_tune.core.distillers import DecoupledKD, DKDConfig
    from gkd_tune.core.distillers.dkd import dkd_terms

    student, teacher = pair()
    config = DistillConfig(method="dkd", tau=4.0, dkd=DKDConfig(alpha=1.0, beta=8.0, warmup=0.25))
    distiller = build_distiller(config, student, teacher)
    assert isinstance(distiller, DecoupledKD)
    images, labels = batch()
    with torch.no_grad():
        _, teacher_logits = teacher(images)
    for progress, ramp in ((0.0, 0.0), (0.125, 0.5), (0.25, 1.0), (0.9, 1.0)):
        out = distiller.forward_train(images, labels, progress)
        tckd, nckd = dkd_terms(out.logits, teacher_logits, labels, 4.0)
        torch.testing.assert_close(out.total, F.cross_entropy(out.logits, labels) + ramp * (tckd + 8.0 * nckd))
        assert set(out.terms) == {"ce", "tckd", "nckd"}
