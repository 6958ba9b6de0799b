"""The no-teacher baseline, and how teachers are trained: cross-entropy alone."""

from __future__ import annotations

import torch.nn.functional as F

from .base import Distiller, StepOutput


class StudentOnly(Distiller):
    summary = "CE alone (the baseline; also how teachers train)"
    needs_teacher = False

    def __init__(self, student, teacher=None, config=None):
        super().__init__(student)

    def forward_train(self, images, labels, progress):
        _, logits = self.student(images)
        ce = F.cross_entropy(logits, labels)
        return StepOutput(logits, ce, {"ce": ce})
