"""Gompertz-curve dynamic KD, eq. 7: CE + beta(t) * (w_wass L_wasserstein + w_grad L_grad + w_kd L_kd), beta(t) the
shared schedule; a zero-weight term is not computed at all."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F

from ..losses import FEATURE_MODES, SINKHORN_SOLVERS, FeatureWasserstein, GradientMatching, kd_loss
from ..params import check, setting
from .base import Distiller, StepOutput


@dataclass(frozen=True)
class LossWeights:
    wasserstein: float = setting(1.0, "weight of L_wasserstein; 0 switches the term off", low=0, high=100,
                                 searchable=True, name="w_wasserstein")
    grad: float = setting(1.0, "weight of L_grad; 0 switches the term off", low=0, high=100, searchable=True,
                          name="w_grad")
    kd: float = setting(1.0, "weight of L_kd; 0 switches the term off", low=0, high=100, searchable=True, name="w_kd")

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class GompertzConfig:
    r: float = setting(0.5, "gradient loss: r * euclidean + (1 - r) * (1 - cos)", low=0, high=1, searchable=True)
    feature_mode: str = setting("points", "Wasserstein between channel vectors (points) or activation maps "
                                "(spatial)", choices=FEATURE_MODES, searchable=True)
    sinkhorn_blur: float = 0.05
    sinkhorn_scaling: float = 0.8
    sinkhorn_solver: str = setting("torch", "torch: gkd_tune.core.sinkhorn (compilable); geomloss: the reference",
                                   choices=SINKHORN_SOLVERS, searchable=True)
    weights: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self):
        check(self)


class GompertzKD(Distiller):
    summary = "eq. 7, the paper's method"
    uses_schedule = True
    Config = GompertzConfig

    def __init__(self, student, teacher, config):
        super().__init__(student, teacher)
        own = config.gompertz
        self.weights, self.schedule, self.tau = own.weights, config.schedule, config.tau
        if own.weights.wasserstein > 0:
            self.adapters["wasserstein"] = FeatureWasserstein(
                student.feature_channels, teacher.feature_channels, own.feature_mode,
                own.sinkhorn_blur, own.sinkhorn_scaling, own.sinkhorn_solver,
            )
        if own.weights.grad > 0:
            self.adapters["grad"] = GradientMatching(teacher.feature_channels, student.feature_channels, own.r)

    def forward_train(self, images, labels, progress):
        weights = self.weights
        student_map, logits = self.student(images)
        ce = F.cross_entropy(logits, labels)
        terms = {"ce": ce}
        beta = self.schedule(progress)
        if weights.wasserstein or weights.grad or weights.kd:
            teacher_map, teacher_logits = self.teacher_outputs(images)
        if weights.wasserstein:
            terms["wasserstein"] = self.adapters["wasserstein"](student_map, teacher_map)
        if weights.grad:
            terms["grad"] = self.adapters["grad"](student_map, logits, self.student.head, teacher_map,
                                                   self.teacher.head, labels)
        if weights.kd:
            terms["kd"] = kd_loss(logits, teacher_logits, self.tau)
        guidance = sum(getattr(weights, name) * terms[name] for name in ("wasserstein", "grad", "kd") if name in terms)
        return StepOutput(logits, ce + beta * guidance, terms, beta)
