"""Teachers: trained once per (dataset, arch, recipe, seed) and cached under a hash of that, or loaded from a file.

    python -m gkd_tune.teacher --dataset digits --arch resnet20 --epochs 15

trains (or finds in the cache) a teacher and prints where it lives and its validation accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .data import DataSourceError, Splits, cache_root, load_splits
from .distill import StudentOnly
from .loop import Trainer, TrainConfig
from .models import MODELS, SplitNet, build_model, load_model, save_model


@dataclass(frozen=True)
class TeacherRecipe:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    seed: int = 0

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           weight_decay=self.weight_decay, lr_schedule=self.lr_schedule, seed=self.seed)


def teacher_path(splits: Splits, arch: str, recipe: TeacherRecipe, val_fraction: float, directory: Path) -> Path:
    """The cache file of a teacher: a hash of the data (its cache fingerprint), split, arch and recipe."""
    key = json.dumps({"data": splits.cache_path.name, "val_fraction": val_fraction, "arch": arch,
                      "recipe": asdict(recipe)}, sort_keys=True)
    return directory / f"{arch}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def obtain_teacher(splits: Splits, arch: str, recipe: TeacherRecipe, val_fraction: float, *,
                   checkpoint: Path | None = None, directory: Path | None = None,
                   log=print) -> tuple[SplitNet, Path, dict]:
    """(teacher, its file, its metadata): loaded from `checkpoint`, else from the cache, else trained and cached."""
    if checkpoint is not None:
        net, metadata = load_model(checkpoint, arch, splits.num_classes)
        return net, Path(checkpoint), metadata
    path = teacher_path(splits, arch, recipe, val_fraction, directory or cache_root() / "teachers")
    if path.exists():
        net, metadata = load_model(path, arch, splits.num_classes)
        log(f"teacher {arch}: cached at {path} (val acc {metadata.get('val_acc', float('nan')):.4f})")
        return net, path, metadata
    log(f"teacher {arch}: training {recipe.epochs} epochs on {splits.source} -> {path}")
    torch.manual_seed(recipe.seed)
    net = build_model(arch, splits.num_classes)
    trainer = Trainer(StudentOnly(net), splits, recipe.train_config())

    def show(metrics, _):
        log(f"  teacher epoch {metrics['epoch']:>3}/{recipe.epochs}  loss {metrics['loss_total']:.4f}  "
            f"train acc {metrics['train_acc']:.4f}  val acc {metrics['val_acc']:.4f}  "
            f"({metrics['images_per_s']:.0f} img/s)")

    history = trainer.run(show)
    metadata = {"val_acc": history[-1]["val_acc"], "dataset": splits.source, "recipe": asdict(recipe),
                "val_fraction": val_fraction}
    save_model(path, net.cpu(), **metadata)
    return net, path, metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.teacher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="data source, e.g. digits, cifar10, parquet:PATH")
    parser.add_argument("--arch", required=True, choices=list(MODELS), metavar="ARCH",
                        help=f"one of: {', '.join(MODELS)}")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    defaults = TeacherRecipe()
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--lr-schedule", choices=["cosine", "multistep"], default=defaults.lr_schedule)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cache-dir", type=Path, help="where teachers are cached (default $GKD_TUNE_CACHE/teachers)")
    args = parser.parse_args(argv)
    recipe = TeacherRecipe(args.epochs, args.batch_size, args.lr, args.weight_decay, args.lr_schedule, args.seed)
    try:
        splits = load_splits(args.dataset, args.val_fraction)
        _, path, metadata = obtain_teacher(splits, args.arch, recipe, args.val_fraction, directory=args.cache_dir)
    except (DataSourceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"teacher {args.arch} on {args.dataset}: val acc {metadata['val_acc']:.4f}\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
