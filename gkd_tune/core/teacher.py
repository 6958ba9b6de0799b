"""Teachers: trained once per (dataset, arch, recipe, seed) and cached under a hash of that, or loaded from a file
(`python -m gkd_tune.teacher` trains or finds one: gkd_tune/teacher.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from filelock import FileLock

from .data import Splits
from .distillers import StudentOnly
from .errors import error_line
from .files import cache_root
from .loop import LR_SCHEDULES, Trainer, TrainConfig
from .models import MODEL_NAMES, SplitNet, build_model, file_part, load_model, save_model
from .params import SEED_RANGE, check, setting


@dataclass(frozen=True)
class TeacherRecipe:
    """How a teacher is trained (method student: CE alone); its cache key."""

    epochs: int = setting(10, "epochs of the teacher's training", low=1)
    batch_size: int = setting(128, "the teacher's batch size", low=1)
    lr: float = setting(0.05, "the teacher's SGD learning rate", low=0, above_low=True, high=10)
    weight_decay: float = setting(5e-4, "the teacher's SGD weight decay", low=0, high=1)
    lr_schedule: str = setting("cosine", "the teacher's learning-rate schedule", choices=LR_SCHEDULES)
    seed: int = setting(0, "the teacher's seed (weights, batch order, augmentation)", **SEED_RANGE)

    def __post_init__(self):
        check(self)

    def train_config(self, compile: str = "auto") -> TrainConfig:
        """The recipe as a training run; `compile` is how it runs (TrainConfig.compile), not part of the recipe:
        it changes no cached teacher."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           weight_decay=self.weight_decay, lr_schedule=self.lr_schedule, seed=self.seed,
                           compile=compile)


@dataclass(frozen=True)
class TeacherSpec:
    arch: str = setting("resnet20", "the teacher's architecture", choices=MODEL_NAMES, aliases=("teacher",))
    checkpoint: str | None = setting(None, "a trained teacher's file, used instead of training one")
    recipe: TeacherRecipe = field(default_factory=TeacherRecipe)

    def __post_init__(self):
        check(self)


def teacher_path(splits: Splits, arch: str, recipe: TeacherRecipe, val_fraction: float, directory: Path) -> Path:
    """The cache file of a teacher: a hash of the data (its cache fingerprint), split, arch and recipe."""
    key = json.dumps({"data": splits.cache_path.name, "val_fraction": val_fraction, "arch": arch,
                      "recipe": asdict(recipe)}, sort_keys=True)
    return directory / f"{file_part(arch)}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


@dataclass(frozen=True)
class TeacherProgress:
    """Where a teacher in training keeps its full state after every epoch, so that a retry (a spot reclaim, a crash)
    continues from the last epoch instead of from scratch. Both take the teacher's cache key and a local file:
    `restore` fills the file with the kept state and says whether there was one; `save` keeps the file."""

    restore: Callable[[str, Path], bool]
    save: Callable[[str, Path], None]


def obtain_teacher(splits: Splits, arch: str, recipe: TeacherRecipe, val_fraction: float, *,
                   checkpoint: Path | None = None, directory: Path | None = None, compile: str = "auto",
                   progress: TeacherProgress | None = None, log=print) -> tuple[SplitNet, Path, dict]:
    """(teacher, its file, its metadata): loaded from `checkpoint`, else from the cache, else trained (with the
    run's `compile` mode, continuing from `progress` if it holds this teacher's state) and cached."""
    if checkpoint is not None:
        net, metadata = load_model(checkpoint, arch, splits.num_classes)
        if "weights_from" not in metadata:
            return net, Path(checkpoint), metadata
        # bare weights (timm's, torchvision's): as a gkd-tune model file, which trials and reports load as it is
        path = (directory or cache_root() / "teachers") / f"{file_part(arch)}-given-{Path(checkpoint).stem}.pt"
        save_model(path, net, **metadata)
        return net, path, metadata
    path = teacher_path(splits, arch, recipe, val_fraction, directory or cache_root() / "teachers")
    path.parent.mkdir(parents=True, exist_ok=True)
    # one trainer per teacher file: two sweeps (or a sweep and `train`) wanting the same teacher train it once
    with FileLock(f"{path}.lock"):
        cached = _load_cached(path, arch, splits.num_classes, log)
        if cached is not None:
            return cached[0], path, cached[1]
        return _train_teacher(splits, arch, recipe, val_fraction, path, compile, progress, log)


def _load_cached(path: Path, arch: str, num_classes: int, log) -> tuple[SplitNet, dict] | None:
    """A cached teacher, or None; a damaged file is removed (and the teacher trained again) with a warning."""
    if not path.exists():
        return None
    try:
        net, metadata = load_model(path, arch, num_classes)
    except ValueError as error:
        log(f"warning: cached teacher {path} cannot be read ({error}); training it again")
        path.unlink(missing_ok=True)
        return None
    log(f"teacher {arch}: cached at {path} (val acc {metadata.get('val_acc', float('nan')):.4f})")
    return net, metadata


def _train_teacher(splits: Splits, arch: str, recipe: TeacherRecipe, val_fraction: float, path: Path, compile: str,
                   progress: TeacherProgress | None, log) -> tuple[SplitNet, Path, dict]:
    log(f"teacher {arch}: training {recipe.epochs} epochs on {splits.source} -> {path}")
    torch.manual_seed(recipe.seed)
    net = build_model(arch, splits.num_classes)
    trainer = Trainer(StudentOnly(net), splits, recipe.train_config(compile))
    state_file = path.with_name(f"{path.stem}.progress.pt")
    if progress is not None and progress.restore(path.stem, state_file):
        try:
            trainer.load(state_file)
            log(f"  teacher {arch}: continuing after epoch {trainer.epoch} (kept by an interrupted try)")
        except Exception as error:  # a state cut short by the interruption itself: start over
            log(f"warning: the kept state of teacher {arch} cannot be loaded ({error_line(error)}); training from "
                f"epoch 1")

    def show(metrics, trainer):
        log(f"  teacher epoch {metrics['epoch']:>3}/{recipe.epochs}  loss {metrics['loss_total']:.4f}  "
            f"train acc {metrics['train_acc']:.4f}  val acc {metrics['val_acc']:.4f}  "
            f"({metrics['images_per_s']:.0f} img/s)")
        if progress is not None:
            trainer.save(state_file)
            progress.save(path.stem, state_file)

    history = trainer.run(show)
    state_file.unlink(missing_ok=True)
    metadata = {"val_acc": history[-1]["val_acc"], "recipe": asdict(recipe), "val_fraction": val_fraction,
                **trainer.input_card}
    save_model(path, net.cpu(), **metadata)
    return net, path, metadata
