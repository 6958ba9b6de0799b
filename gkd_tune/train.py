"""One distillation run, no Ray: teacher (cached or trained), student, method, epochs -> a directory of results.

    python -m gkd_tune.train --source digits --teacher-arch resnet20 --student resnet8 --method gompertz \\
        --max-epochs 3 --out runs/digits-gompertz

writes to --out: student.pt (the final student, for gkd_tune.core.models.load_student), metrics.json (one row per
epoch), checkpoint.pt (the full training state after the last epoch; --resume continues from it) and config.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from .cli import run_command, shared_options
from .core.data import DataSpec, load_splits
from .core.distillers import DistillConfig, build_distiller, distillation_method
from .core.errors import error_line
from .core.files import STUDENT_FILE
from .core.loop import Trainer, TrainConfig, evaluation_loader
from .core.models import MODELS, REFERENCE_FORMS, build_model, initial_student, model_name, save_model
from .core.params import add_flags, flatten, from_flags
from .core.teacher import TeacherSpec, obtain_teacher


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     parents=[shared_options(without_address=None, sweep=False)])
    run = parser.add_argument_group("run")
    run.add_argument("--student", required=True, type=model_name, metavar="ARCH",
                     help=f"one of: {', '.join(MODELS)}, or {REFERENCE_FORMS}")
    run.add_argument("--student-weights", type=Path, help="a file the student starts from: a gkd-tune model file or "
                     "the model's own state_dict (timm, torchvision); a classifier for another class count is left "
                     "fresh")
    run.add_argument("--out", type=Path, required=True, help="directory for the checkpoint and metrics")
    run.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    run.add_argument("--test", action="store_true", help="evaluate the final student once on the test split (after "
                     "the last epoch, nothing chosen on it): test_loss and test_acc in the last row of metrics.json")
    add_flags(parser.add_argument_group("data"), DataSpec)
    teacher = parser.add_argument_group("teacher (for kd and gompertz)")
    add_flags(teacher, TeacherSpec, prefix="teacher-")
    teacher.set_defaults(teacher_arch=None)  # named on the command line, never assumed
    add_flags(parser.add_argument_group("training"), TrainConfig)
    add_flags(parser.add_argument_group("distillation"), DistillConfig)
    return parser


def format_epoch(metrics: dict, planned: int) -> str:
    losses = "  ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss_"))
    beta = f"  beta {metrics['beta']:.3f}" if "beta" in metrics else ""
    return (f"epoch {metrics['epoch']:>3}/{planned}  {losses}{beta}  train acc {metrics['train_acc']:.4f}  "
            f"val acc {metrics['val_acc']:.4f}  {metrics['epoch_time_s']:.1f}s ({metrics['images_per_s']:.0f} img/s)")


def check_out(out: Path, resume: bool) -> Path:
    """--out before any work: a folder (made if missing), holding no earlier run unless --resume continues it."""
    checkpoint = out / "checkpoint.pt"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder")
    if resume and not checkpoint.exists():
        raise ValueError(f"--resume: no checkpoint at {checkpoint}")
    if not resume and checkpoint.exists():
        raise ValueError(f"--out {out}: holds a run already ({checkpoint}): continue it with --resume, or give "
                         f"another --out")
    return checkpoint


def run(args: argparse.Namespace) -> Path:
    out: Path = args.out
    checkpoint = check_out(out, args.resume)
    data = from_flags(args, DataSpec)
    distill_config = from_flags(args, DistillConfig)
    train_config = from_flags(args, TrainConfig)
    teacher_spec = None
    if distillation_method(distill_config.method).needs_teacher:
        if args.teacher_arch is None:
            raise ValueError(f"--method {distill_config.method} needs --teacher ARCH")
        teacher_spec = from_flags(args, TeacherSpec, prefix="teacher-")
    splits = load_splits(data.source, data.val_fraction, image_size=data.image_size)
    if args.test and splits.test is None:
        raise ValueError(f"--test: data source {data.source!r} has no test split")
    teacher = None
    if teacher_spec is not None:
        given = Path(teacher_spec.checkpoint).expanduser() if teacher_spec.checkpoint else None
        teacher, _, _ = obtain_teacher(splits, teacher_spec.arch, teacher_spec.recipe, data.val_fraction,
                                       checkpoint=given, compile=train_config.compile)
    torch.manual_seed(train_config.seed)  # the student's initial weights do not depend on whether the teacher was cached
    student = initial_student(args.student_weights.expanduser(), args.student, splits.num_classes) \
        if args.student_weights else build_model(args.student, splits.num_classes)
    trainer = Trainer(build_distiller(distill_config, student, teacher), splits, train_config)
    print(trainer.data_line, flush=True)

    out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        try:
            trainer.load(checkpoint)
        except Exception as error:  # truncated, not a checkpoint, or another run's (other models or method)
            raise ValueError(f"--resume: {checkpoint} cannot be loaded ({error_line(error)}): resume with the flags "
                             f"of the run that wrote it, or start over with another --out") from None
        print(f"resumed from {checkpoint} after epoch {trainer.epoch}")
    (out / "config.json").write_text(json.dumps({
        "student": args.student, "data": asdict(data), "teacher": asdict(teacher_spec) if teacher_spec else None,
        "distill": asdict(distill_config), "train": asdict(train_config)}, indent=2))

    def after_epoch(metrics, trainer):
        print(format_epoch(metrics, train_config.epochs), flush=True)
        trainer.save(checkpoint)  # every epoch: an interrupted run loses at most one epoch
        (out / "metrics.json").write_text(json.dumps(trainer.history, indent=1))

    trainer.run(after_epoch)
    if trainer.diverged:
        raise ValueError(f"diverged at epoch {trainer.epoch} (loss {trainer.history[-1]['loss_total']}): stopped; "
                         f"try a lower --lr")
    if args.test and "test_acc" not in trainer.history[-1]:  # once; a resumed finished run was tested already
        loader = evaluation_loader(splits.test, splits.channel_stats(), train_config.batch_size, trainer.device)
        test_loss, test_acc = trainer.evaluate(loader)
        trainer.history[-1].update(test_loss=test_loss, test_acc=test_acc)
        trainer.save(checkpoint)
        (out / "metrics.json").write_text(json.dumps(trainer.history, indent=1))
        print(f"test acc {test_acc:.4f}  (test loss {test_loss:.4f}; {len(splits.test)} images, once, after epoch "
              f"{trainer.epoch})", flush=True)
    params = {**flatten(distill_config), **flatten(train_config), "student": args.student}
    save_model(out / STUDENT_FILE, student.cpu(), val_acc=trainer.history[-1]["val_acc"], epoch=trainer.epoch,
               params=params, **trainer.input_card)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def train() -> int:
        out = run(args)
        print(f"student: {out / STUDENT_FILE}\nmetrics: {out / 'metrics.json'}")
        return 0

    def interrupted() -> str:
        saved = (args.out / "checkpoint.pt").exists()
        return "interrupted: " + ("continue with the same command and --resume (the last finished epoch is saved)"
                                  if saved else "no epoch finished, nothing to resume")

    return run_command(train, args.debug, interrupted)

if __name__ == "__main__":
    sys.exit(main())
