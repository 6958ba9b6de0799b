"""One distillation run, no Ray: teacher (cached or trained), student, method, epochs -> a directory of results.

    python -m gkd_tune.train --dataset digits --teacher resnet20 --student resnet8 --method gompertz \\
        --epochs 3 --out runs/digits-gompertz

writes to --out: student.pt (the final student, for gkd_tune.models.load_model), metrics.json (one row per
epoch), checkpoint.pt (the full training state after the last epoch; --resume continues from it) and config.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from .data import DataSourceError, load_splits
from .distill import METHODS, DistillConfig, LossWeights, build_distiller
from .losses import FEATURE_MODES, SINKHORN_SOLVERS
from .loop import AUTO_COMPILE, COMPILE_MODES, LR_SCHEDULES, Trainer, TrainConfig
from .models import MODELS, build_model, save_model
from .schedules import SCHEDULE_KINDS, BetaSchedule
from .teacher import TeacherRecipe, obtain_teacher


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    models = ", ".join(MODELS)
    run = parser.add_argument_group("run")
    run.add_argument("--dataset", default="digits", help="data source: cifar10, cifar100, parquet:PATH, "
                     "imagefolder:DIR or digits")
    run.add_argument("--val-fraction", type=float, default=0.1, help="stratified validation share of train")
    run.add_argument("--student", required=True, choices=list(MODELS), metavar="ARCH", help=f"one of: {models}")
    run.add_argument("--method", choices=METHODS, default="gompertz")
    run.add_argument("--out", type=Path, required=True, help="directory for the checkpoint and metrics")
    run.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    run.add_argument("--test", action="store_true", help="also evaluate the test split every epoch")

    teacher = parser.add_argument_group("teacher (for kd and gompertz)")
    teacher.add_argument("--teacher", choices=list(MODELS), metavar="ARCH", help=f"one of: {models}")
    teacher.add_argument("--teacher-checkpoint", type=Path, help="a teacher file to use instead of training one")
    teacher.add_argument("--teacher-epochs", type=int, default=TeacherRecipe.epochs)
    teacher.add_argument("--teacher-lr", type=float, default=TeacherRecipe.lr)

    training = parser.add_argument_group("training")
    defaults = TrainConfig(epochs=1)
    training.add_argument("--epochs", type=int, required=True, help="planned epochs (also the Gompertz time scale)")
    training.add_argument("--batch-size", type=int, default=defaults.batch_size)
    training.add_argument("--lr", type=float, default=defaults.lr)
    training.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    training.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=defaults.lr_schedule)
    training.add_argument("--seed", type=int, default=defaults.seed)
    training.add_argument("--compile", choices=COMPILE_MODES, default=defaults.compile,
                          help="torch.compile the step: off, on (inductor), cudagraphs (inductor + CUDA graphs); "
                               f"auto = {AUTO_COMPILE} on a GPU, off on a CPU")

    method = parser.add_argument_group("distillation")
    d, s, w = DistillConfig(), BetaSchedule(), LossWeights()
    method.add_argument("--schedule", choices=SCHEDULE_KINDS, default=s.kind, help="beta(t) shape")
    method.add_argument("--b", type=float, default=s.b, help="Gompertz offset (inflection at t = b/c)")
    method.add_argument("--c", type=float, default=s.c, help="Gompertz rate")
    method.add_argument("--beta-min", type=float, default=s.beta_min)
    method.add_argument("--beta-max", type=float, default=s.beta_max)
    method.add_argument("--r", type=float, default=d.r, help="gradient loss: r * euclidean + (1 - r) * (1 - cos)")
    method.add_argument("--tau", type=float, default=d.tau, help="KD temperature")
    method.add_argument("--alpha", type=float, default=d.alpha, help="vanilla KD: (1 - alpha) CE + alpha KD")
    method.add_argument("--feature-mode", choices=FEATURE_MODES, default=d.feature_mode)
    method.add_argument("--sinkhorn-solver", choices=SINKHORN_SOLVERS, default=d.sinkhorn_solver,
                        help="torch: gkd_tune.sinkhorn (compilable); geomloss: the reference")
    method.add_argument("--w-wasserstein", type=float, default=w.wasserstein, help="0 switches the term off")
    method.add_argument("--w-grad", type=float, default=w.grad, help="0 switches the term off")
    method.add_argument("--w-kd", type=float, default=w.kd, help="0 switches the term off")
    return parser


def format_epoch(metrics: dict, planned: int) -> str:
    losses = "  ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss_"))
    beta = f"  beta {metrics['beta']:.3f}" if "beta" in metrics else ""
    return (f"epoch {metrics['epoch']:>3}/{planned}  {losses}{beta}  train acc {metrics['train_acc']:.4f}  "
            f"val acc {metrics['val_acc']:.4f}  {metrics['epoch_time_s']:.1f}s ({metrics['images_per_s']:.0f} img/s)")


def run(args: argparse.Namespace) -> Path:
    distill_config = DistillConfig(
        method=args.method, tau=args.tau, alpha=args.alpha, r=args.r, feature_mode=args.feature_mode,
        sinkhorn_solver=args.sinkhorn_solver, weights=LossWeights(args.w_wasserstein, args.w_grad, args.w_kd),
        schedule=BetaSchedule(args.schedule, args.beta_min, args.beta_max, args.b, args.c),
    )
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, seed=args.seed,
                               evaluate_test=args.test, compile=args.compile)
    if args.method != "student" and args.teacher is None:
        raise ValueError(f"--method {args.method} needs --teacher ARCH")
    splits = load_splits(args.dataset, args.val_fraction)
    teacher = None
    if args.method != "student":
        recipe = TeacherRecipe(epochs=args.teacher_epochs, lr=args.teacher_lr, seed=args.seed)
        teacher, _, _ = obtain_teacher(splits, args.teacher, recipe, args.val_fraction,
                                       checkpoint=args.teacher_checkpoint)
    torch.manual_seed(args.seed)  # the student's initial weights do not depend on whether the teacher was cached
    student = build_model(args.student, splits.num_classes)
    trainer = Trainer(build_distiller(distill_config, student, teacher), splits, train_config)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    if args.resume:
        if not checkpoint.exists():
            raise ValueError(f"--resume: no checkpoint at {checkpoint}")
        trainer.load(checkpoint)
        print(f"resumed from {checkpoint} after epoch {trainer.epoch}")
    (out / "config.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                 "distill": asdict(distill_config), "train": asdict(train_config)},
                                                indent=2))

    def after_epoch(metrics, trainer):
        print(format_epoch(metrics, args.epochs), flush=True)
        trainer.save(checkpoint)  # every epoch: an interrupted run loses at most one epoch
        (out / "metrics.json").write_text(json.dumps(trainer.history, indent=1))

    trainer.run(after_epoch)
    save_model(out / "student.pt", student.cpu(), val_acc=trainer.history[-1]["val_acc"], method=args.method,
               dataset=args.dataset)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = run(args)
    except (DataSourceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"student: {out / 'student.pt'}\nmetrics: {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
