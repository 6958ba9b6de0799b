"""Distillers: for one batch and the current training progress, the student's logits and its named loss terms.

One small class per method (mdistiller's shape). The training loop backpropagates ``total`` and logs ``terms``
(unweighted) and ``beta``. The teacher is frozen: eval mode, no gradients, never updated.

    student   CE only (the no-teacher baseline; also how teachers are trained)
    kd        vanilla Hinton KD: (1 - alpha) CE + alpha L_kd
    gompertz  eq. 7: CE + beta(t) * (w_wass L_wasserstein + w_grad L_grad + w_kd L_kd); a zero-weight term is
              not computed at all
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .losses import FEATURE_MODES, SINKHORN_SOLVERS, FeatureWasserstein, GradientMatching, kd_loss
from .models import SplitNet
from .params import check, setting
from .schedules import BetaSchedule

METHODS = ("student", "kd", "gompertz")


@dataclass(frozen=True)
class LossWeights:
    wasserstein: float = setting(1.0, "weight of L_wasserstein; 0 switches the term off", low=0, searchable=True,
                                 name="w_wasserstein")
    grad: float = setting(1.0, "weight of L_grad; 0 switches the term off", low=0, searchable=True, name="w_grad")
    kd: float = setting(1.0, "weight of L_kd; 0 switches the term off", low=0, searchable=True, name="w_kd")

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class DistillConfig:
    method: str = setting("gompertz", "student: CE alone; kd: Hinton KD; gompertz: eq. 7", choices=METHODS,
                          searchable=True)
    tau: float = setting(4.0, "KD temperature", low=0, above_low=True, searchable=True)
    alpha: float = setting(0.9, "vanilla KD: (1 - alpha) CE + alpha KD", low=0, high=1, searchable=True)
    r: float = setting(0.5, "gradient loss: r * euclidean + (1 - r) * (1 - cos)", low=0, high=1, searchable=True)
    feature_mode: str = setting("points", "Wasserstein between channel vectors (points) or activation maps "
                                "(spatial)", choices=FEATURE_MODES, searchable=True)
    sinkhorn_blur: float = 0.05
    sinkhorn_scaling: float = 0.8
    sinkhorn_solver: str = setting("torch", "torch: gkd_tune.sinkhorn (compilable); geomloss: the reference",
                                   choices=SINKHORN_SOLVERS, searchable=True)
    weights: LossWeights = field(default_factory=LossWeights)
    schedule: BetaSchedule = field(default_factory=BetaSchedule)

    def __post_init__(self):
        check(self)


@dataclass
class StepOutput:
    logits: torch.Tensor  # B x num_classes, the student's
    total: torch.Tensor  # scalar to backpropagate
    terms: dict[str, torch.Tensor]  # unweighted loss terms, for logging
    beta: float | None = None


class Distiller(nn.Module):
    """The student being trained, an optional frozen teacher, and the learnable parts of the losses (adapters)."""

    def __init__(self, student: SplitNet, teacher: SplitNet | None = None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.adapters = nn.ModuleDict()
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BN statistics of the teacher never move
        return self

    def compile_step(self, mode: str | None = None) -> None:
        """torch.compile, in place, what a training step calls: the student, the teacher and each loss adapter.

        In place (nn.Module.compile), so state dicts keep their keys and checkpoints stay interchangeable with
        eager runs. The small glue between them (CE, the beta-weighted sum) stays eager: beta changes every step
        and would otherwise be a compiled constant. A part compiled already is left as it is.
        """
        # Every part compiled this way shares the code object nn.Module._call_impl, and dynamo keeps at most
        # `recompile_limit` (8) compiled versions of one code object: a process that builds several models (a
        # teacher and its students, the tests, the benchmark) would silently fall back to eager beyond it.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        for part in (self.student, self.teacher, *self.adapters.values()):
            if part is not None and getattr(part, "_compiled_call_impl", None) is None:
                part.compile(mode=mode)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.student.parameters()) + list(self.adapters.parameters())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The student's logits, for evaluation: always its eager forward, also after compile_step (evaluation's
        batch sizes, a larger one and a short last one, would each cost a compilation)."""
        return self.student.forward(images)[1]

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, progress: float) -> StepOutput:
        raise NotImplementedError

    def teacher_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.teacher(images)


class StudentOnly(Distiller):
    def forward_train(self, images, labels, progress):
        _, logits = self.student(images)
        ce = F.cross_entropy(logits, labels)
        return StepOutput(logits, ce, {"ce": ce})


class VanillaKD(Distiller):
    def __init__(self, student, teacher, config: DistillConfig):
        super().__init__(student, teacher)
        self.alpha, self.tau = config.alpha, config.tau

    def forward_train(self, images, labels, progress):
        _, logits = self.student(images)
        _, teacher_logits = self.teacher_outputs(images)
        ce = F.cross_entropy(logits, labels)
        kd = kd_loss(logits, teacher_logits, self.tau)
        return StepOutput(logits, (1 - self.alpha) * ce + self.alpha * kd, {"ce": ce, "kd": kd})


class GompertzKD(Distiller):
    def __init__(self, student, teacher, config: DistillConfig):
        super().__init__(student, teacher)
        self.config = config
        if config.weights.wasserstein > 0:
            self.adapters["wasserstein"] = FeatureWasserstein(
                student.feature_channels, teacher.feature_channels, config.feature_mode,
                config.sinkhorn_blur, config.sinkhorn_scaling, config.sinkhorn_solver,
            )
        if config.weights.grad > 0:
            self.adapters["grad"] = GradientMatching(teacher.feature_channels, student.feature_channels, config.r)

    def forward_train(self, images, labels, progress):
        weights = self.config.weights
        student_map, logits = self.student(images)
        ce = F.cross_entropy(logits, labels)
        terms = {"ce": ce}
        beta = self.config.schedule(progress)
        if weights.wasserstein or weights.grad or weights.kd:
            teacher_map, teacher_logits = self.teacher_outputs(images)
        if weights.wasserstein:
            terms["wasserstein"] = self.adapters["wasserstein"](student_map, teacher_map)
        if weights.grad:
            terms["grad"] = self.adapters["grad"](student_map, logits, self.student.head, teacher_map,
                                                   self.teacher.head, labels)
        if weights.kd:
            terms["kd"] = kd_loss(logits, teacher_logits, self.config.tau)
        guidance = sum(getattr(weights, name) * terms[name] for name in ("wasserstein", "grad", "kd") if name in terms)
        return StepOutput(logits, ce + beta * guidance, terms, beta)


def build_distiller(config: DistillConfig, student: SplitNet, teacher: SplitNet | None) -> Distiller:
    if config.method == "student":
        return StudentOnly(student)
    if teacher is None:
        raise ValueError(f"method {config.method!r} needs a teacher")
    if config.method == "kd":
        return VanillaKD(student, teacher, config)
    return GompertzKD(student, teacher, config)
