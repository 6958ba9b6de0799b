"""Decoupled KD (Zhao et al., CVPR 2022), the strongest logit baseline of the KD benchmarks (mdistiller):
CE + min(t / warmup, 1) * (dkd_alpha TCKD + dkd_beta NCKD), at the shared temperature tau.

TCKD is the KL between teacher and student over two outcomes (the target class, any other class); NCKD the KL
between their distributions over the non-target classes alone. Vanilla KD is TCKD + (1 - p_target^T) NCKD: DKD
frees NCKD's weight from the teacher's confidence. The warm-up is a fraction of the planned training (mdistiller's
20 epochs of 240 by default), since the loop's progress t runs from 0 to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..params import check, setting
from .base import Distiller, StepOutput


@dataclass(frozen=True)
class DKDConfig:
    alpha: float = setting(1.0, "DKD: weight of TCKD (target vs the rest)", low=0, high=100, searchable=True,
                           name="dkd_alpha")
    beta: float = setting(8.0, "DKD: weight of NCKD (among the non-target classes)", low=0, high=100,
                          searchable=True, name="dkd_beta")
    warmup: float = setting(20 / 240, "DKD: share of the training over which its weight rises from 0 to 1", low=0,
                            above_low=True, high=1, searchable=True, name="dkd_warmup")

    def __post_init__(self):
        check(self)


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each tau^2 * KL(teacher || student), batch mean, computed in log space throughout."""
    batch, classes = student_logits.shape
    target = F.one_hot(labels, classes).bool()

    def split(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log [p_target, p_rest], log-softmax over the non-target classes) of logits / tau."""
        scaled = logits / tau
        log_all = torch.logsumexp(scaled, dim=1, keepdim=True)
        others = scaled[~target].view(batch, classes - 1)
        log_rest = torch.logsumexp(others, dim=1, keepdim=True)
        binary = torch.cat([scaled[target].view(batch, 1), log_rest], dim=1) - log_all
        return binary, others - log_rest

    student_binary, student_others = split(student_logits)
    teacher_binary, teacher_others = split(teacher_logits)

    def kl(student_log: torch.Tensor, teacher_log: torch.Tensor) -> torch.Tensor:
        return F.kl_div(student_log, teacher_log, reduction="batchmean", log_target=True) * tau**2

    return kl(student_binary, teacher_binary), kl(student_others, teacher_others)


class DecoupledKD(Distiller):
    summary = "decoupled KD (Zhao et al. 2022), the KD benchmarks' strong baseline"
    Config = DKDConfig

    def __init__(self, student, teacher, config):
        super().__init__(student, teacher)
        self.own, self.tau = config.dkd, config.tau

    def forward_train(self, images, labels, progress):
        _, logits = self.student(images)
        _, teacher_logits = self.teacher_outputs(images)
        ce = F.cross_entropy(logits, labels)
        tckd, nckd = dkd_terms(logits, teacher_logits, labels, self.tau)
        ramp = min(progress / self.own.warmup, 1.0)
        total = ce + ramp * (self.own.alpha * tckd + self.own.beta * nckd)
        return StepOutput(logits, total, {"ce": ce, "tckd": tckd, "nckd": nckd})
