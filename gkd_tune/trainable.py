"""The Ray Tune trainable: one trial = one run of the plain-PyTorch loop, reported to Tune every epoch.

Tune only sees this thin wrapper: the loop reports through its callback, each epoch's metrics go to
``tune.report`` with a checkpoint (full trainer state + the student model file), and a retried or restored trial
continues from ``tune.get_checkpoint()``. The teacher arrives by file location, never pickled into the trial.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from ray import tune

from .data import load_splits
from .distill import build_distiller
from .loop import Trainer
from .models import build_model, load_model, save_model
from .space import SweepSpec, trial_configs

TRAINER_FILE = "trainer.pt"
STUDENT_FILE = "student.pt"


def train_trial(config: dict, spec: SweepSpec, teacher_file: str) -> None:
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    distill_config, train_config = trial_configs(spec, config)
    splits = load_splits(spec.data.source, spec.data.val_fraction)
    teacher = None
    if distill_config.method != "student":
        teacher, _ = load_model(Path(teacher_file), spec.teacher.arch, splits.num_classes)
    torch.manual_seed(train_config.seed)
    student = build_model(spec.student, splits.num_classes)
    trainer = Trainer(build_distiller(distill_config, student, teacher), splits, train_config)

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load(Path(directory) / TRAINER_FILE)

    def report(metrics: dict, trainer: Trainer) -> None:
        with tempfile.TemporaryDirectory() as directory:
            trainer.save(Path(directory) / TRAINER_FILE)
            save_model(Path(directory) / STUDENT_FILE, trainer.distiller.student, val_acc=metrics["val_acc"],
                       epoch=metrics["epoch"], method=distill_config.method, dataset=spec.data.source)
            # ASHA stops a trial by raising out of this call
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    trainer.run(report)
