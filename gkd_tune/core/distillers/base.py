"""What every distillation method is: a Distiller, which for one batch and the training progress returns the
student's logits and its named loss terms (StepOutput). The teacher is frozen: eval mode, no gradients, never
updated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..models import SplitNet

@dataclass
class StepOutput:
    logits: torch.Tensor  # B x num_classes, the student's
    total: torch.Tensor  # scalar to backpropagate
    terms: dict[str, torch.Tensor]  # unweighted loss terms, for logging
    beta: float | None = None


# Every part compiled by Distiller.compile_step shares the code object nn.Module._call_impl, and dynamo keeps at
# most 8 compiled versions of one code object: a process that builds several models (a teacher and its students,
# the tests, the benchmark) would silently fall back to eager beyond that.
RECOMPILE_LIMIT = 64


def raise_recompile_limit(dynamo_config) -> None:
    """At least RECOMPILE_LIMIT compiled versions per code object: `recompile_limit` from torch 2.7, its old name
    `cache_size_limit` before."""
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), RECOMPILE_LIMIT))


class Distiller(nn.Module):
    """The student being trained, an optional frozen teacher, and the learnable parts of the losses (adapters).

    A method is a subclass in a file of its own, registered in gkd_tune.core.distillers.METHODS. It says what it
    needs: a teacher (`needs_teacher`), the beta(t) schedule (`uses_schedule`: the sweep's schedule checks and plots
    apply to it), and settings of its own (a `Config` dataclass, found in DistillConfig under the method's name).
    """

    summary: ClassVar[str] = ""  # one line, for --help and docs
    needs_teacher: ClassVar[bool] = True
    uses_schedule: ClassVar[bool] = False
    Config: ClassVar[type | None] = None

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
        raise_recompile_limit(torch._dynamo.config)
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
