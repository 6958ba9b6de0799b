"""Vanilla Hinton KD: (1 - alpha) CE + alpha L_kd, at the shared temperature tau."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..losses import kd_loss
from ..params import check, setting
from .base import Distiller, StepOutput


@dataclass(frozen=True)
class KDConfig:
    alpha: float = setting(0.9, "vanilla KD: (1 - alpha) CE + alpha KD", low=0, high=1, searchable=True)

    def __post_init__(self):
        check(self)


class VanillaKD(Distiller):
    summary = "Hinton KD"
    Config = KDConfig

    def __init__(self, student, teacher, config):
        super().__init__(student, teacher)
        self.alpha, self.tau = config.kd.alpha, config.tau

    def forward_train(self, images, labels, progress):
        _, logits = self.student(images)
        _, teacher_logits = self.teacher_outputs(images)
        ce = F.cross_entropy(logits, labels)
        kd = kd_loss(logits, teacher_logits, self.tau)
        return StepOutput(logits, (1 - self.alpha) * ce + self.alpha * kd, {"ce": ce, "kd": kd})
