"""The training loop: epochs, optimiser, learning-rate schedule, evaluation, checkpoints. Plain PyTorch.

It knows nothing of Ray or MLflow: after every epoch it calls ``on_epoch(metrics, trainer)``, so the same loop
runs in a test, in a single CLI run and inside a Ray Tune trial (which saves ``trainer.state_dict()``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data import DeviceLoader, ImageArrays, Splits, check_fits
from .distillers import Distiller, StepOutput
from .files import load_checked, save_atomically
from .params import SEED_RANGE, check, setting
from .stats import pack_correct

LR_SCHEDULES = ("cosine", "multistep")
# off: eager. on: torch.compile (inductor). cudagraphs: inductor + CUDA graphs (torch's "reduce-overhead").
# auto: AUTO_COMPILE on CUDA; off on CPU, where a process compiles for 5 s to over a minute (warm or cold cache)
# to make a CIFAR gompertz step 13% faster on 2 cores: a loss for the short CPU runs (quickstart, tests).
# On an H200 (docs/performance.md) the R50 -> MobileNetV2 gompertz step at batch 512 took 40.7 ms eager, 30.3 ms
# compiled and 20.8 ms with CUDA graphs: the student's step is launch-bound until the graphs replay it.
COMPILE_MODES = ("auto", "off", "on", "cudagraphs")
AUTO_COMPILE = "cudagraphs"
# Evaluation has no gradients to keep: on a GPU, larger batches keep it from being launch-bound.
CUDA_EVAL_BATCH_SIZE = 1024
# How a run ended, as data: the last epoch's metrics say it under OUTCOME. The loop knows two endings; a sweep adds
# its own (strategy.py: stopped early, failed).
OUTCOME = "outcome"
COMPLETED, DIVERGED = "completed", "diverged"
# Each epoch's result: which validation images the student got right (stats.pack_correct), so that two runs can be
# compared image by image (McNemar's test) instead of by two accuracies that each carry the split's noise.
VAL_CORRECT = "val_correct"


@dataclass(frozen=True)
class TrainConfig:
    # the planned budget: progress t = epochs done / epochs, also when stopped early; ASHA's max_t in a sweep
    epochs: int = setting(10, "planned epochs: the budget (ASHA's max_t) and the Gompertz time scale", low=1,
                          name="max_epochs", aliases=("epochs",))
    batch_size: int = setting(128, "training batch size", low=1)
    lr: float = setting(0.05, "SGD learning rate (Nesterov momentum 0.9)", low=0, above_low=True, high=10,
                       searchable=True)
    momentum: float = 0.9
    weight_decay: float = setting(5e-4, "SGD weight decay", low=0, high=1, searchable=True)
    lr_schedule: str = setting("cosine", "cosine annealing per step, or multistep: x0.1 at 62.5/75/87.5% of the "
                               "budget", choices=LR_SCHEDULES)
    # multistep: lr x 0.1 at these fractions of the budget (RepDistiller's 150/180/210 of 240 epochs)
    milestones: tuple[float, ...] = (0.625, 0.75, 0.875)
    seed: int = setting(0, "seed of the student's weights, the batch order and the augmentation", **SEED_RANGE,
                        searchable=True)  # a space file's params: a seed grid repeats a baseline
    compile: str = setting("auto", f"torch.compile the step: off, on (inductor), cudagraphs (inductor + CUDA "
                           f"graphs); auto = {AUTO_COMPILE} on a GPU, off on a CPU", choices=COMPILE_MODES)

    def __post_init__(self):
        check(self)

    @property
    def max_epochs(self) -> int:
        """The budget by its public name (search-space files and MLflow call it max_epochs)."""
        return self.epochs


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The step's autocast precision: bf16 on a CUDA device that has it (Ampere and later), fp16 on an older one
    (training then scales its loss: Trainer.scaler), None (float32) elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device):
    dtype = amp_dtype(device)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def evaluate(model: Distiller, loader: DeviceLoader) -> tuple[float, float]:
    """(mean CE, accuracy) of the model's logits over a whole split, on the loader's device."""
    loss, correct = evaluate_per_image(model, loader)
    return loss, float(correct.mean())


@torch.no_grad()
def evaluate_per_image(model: Distiller, loader: DeviceLoader) -> tuple[float, np.ndarray]:
    """(mean CE, whether each image was classified right: bools in the split's order) over a whole split."""
    model.eval()
    loss = torch.zeros((), device=loader.device)
    correct = []
    for images, labels in loader:
        with autocast(loader.device):
            logits = model(images).float()
        loss += F.cross_entropy(logits, labels, reduction="sum")
        correct.append(logits.argmax(1) == labels)
    return loss.item() / len(loader.labels), torch.cat(correct).cpu().numpy()


def evaluation_loader(arrays: ImageArrays, stats: tuple, batch_size: int, device: torch.device) -> DeviceLoader:
    """A split in order, normalised with `stats` (the training split's mean and std), at the evaluation batch size:
    on a GPU at least CUDA_EVAL_BATCH_SIZE."""
    if device.type == "cuda":
        batch_size = max(batch_size, CUDA_EVAL_BATCH_SIZE)
    mean, std = stats
    return DeviceLoader(arrays, batch_size, train=False, mean=mean, std=std, device=device)


EpochCallback = Callable[[dict, "Trainer"], None]


class Trainer:
    """Trains `distiller` on `splits`. ``run()`` continues from ``epoch`` (0, or a loaded checkpoint's)."""

    def __init__(self, distiller: Distiller, splits: Splits, config: TrainConfig, device: torch.device | None = None):
        self.config = config
        self.device = device or default_device()
        self.splits = splits
        torch.manual_seed(config.seed)
        cuda = self.device.type == "cuda"
        self.distiller = distiller.to(self.device)
        if cuda:
            self.distiller.to(memory_format=torch.channels_last)
        self.compile_mode = (AUTO_COMPILE if cuda else "off") if config.compile == "auto" else config.compile
        if self.compile_mode != "off":
            self.distiller.compile_step("reduce-overhead" if self.compile_mode == "cudagraphs" else None)
        stats = splits.channel_stats()
        # what a saved model needs to be used alone (models.load_student): its input and its classes
        self.input_card = {"mean": list(stats[0]), "std": list(stats[1]), "image_size": splits.train.images.shape[-1],
                           "class_names": [str(name) for name in splits.class_names], "dataset": splits.source}
        # the splits live on the device: refused up front when they would not fit, and said how much they take
        self.data_line = check_fits({"training": splits.train, "validation": splits.val}, self.device)
        self.train_loader = DeviceLoader(splits.train, config.batch_size, train=True, mean=stats[0], std=stats[1],
                                         device=self.device, seed=config.seed)
        self.val_loader = evaluation_loader(splits.val, stats, config.batch_size, self.device)
        self.optimizer = torch.optim.SGD(
            distiller.trainable_parameters(), lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay, nesterov=True, fused=cuda,  # fused: one kernel for the update
        )
        # fp16 gradients underflow without loss scaling; bf16 and float32 ones do not (a disabled scaler passes
        # everything through)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype(self.device) == torch.float16)
        total_steps = config.epochs * len(self.train_loader)
        if config.lr_schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total_steps)
        else:
            steps = [round(f * total_steps) for f in config.milestones]
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=steps, gamma=0.1)
        self.epoch = 0
        self.history: list[dict] = []

    # ---------------------------------------------------------------------------------------- training

    def run(self, on_epoch: EpochCallback | None = None) -> list[dict]:
        """Train to the planned epochs; a diverged run (a non-finite loss: its weights are NaN now, no epoch can
        recover them) stops after that epoch. The last epoch's metrics carry the run's OUTCOME."""
        while self.epoch < self.config.epochs and not self.diverged:
            metrics = self.train_epoch()
            if self.is_diverged(metrics):
                metrics[OUTCOME] = DIVERGED
            elif self.epoch >= self.config.epochs:
                metrics[OUTCOME] = COMPLETED
            self.history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics, self)
        return self.history

    @staticmethod
    def is_diverged(metrics: dict) -> bool:
        return not all(math.isfinite(metrics.get(name, 0.0)) for name in ("loss_total", "val_loss", "val_acc"))

    @property
    def diverged(self) -> bool:
        return bool(self.history) and self.is_diverged(self.history[-1])

    def _autocast(self):
        return autocast(self.device)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, progress: float) -> StepOutput:
        """One optimisation step at training progress t = `progress`; nothing in it waits for the device."""
        if self.compile_mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be overwritten now
        with self._autocast():
            out = self.distiller.forward_train(images, labels, progress)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return out

    def train_epoch(self) -> dict:
        self.distiller.train()
        steps = len(self.train_loader)
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=self.device)
        seen, beta_sum = 0, 0.0
        start = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        for step, (images, labels) in enumerate(self.train_loader):
            out = self.train_step(images, labels, (self.epoch + step / steps) / self.config.epochs)
            # accumulate on the device: no host sync per step
            for name, value in {"total": out.total, **out.terms}.items():
                sums[name] = sums.get(name, 0) + value.detach().float()
            correct += (out.logits.argmax(1) == labels).sum()
            seen += len(labels)
            beta_sum += out.beta or 0.0
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        self.epoch += 1
        metrics = {"epoch": self.epoch, "lr": lr}
        metrics.update({f"loss_{name}": (value / steps).item() for name, value in sums.items()})
        if out.beta is not None:
            metrics["beta"] = beta_sum / steps
        metrics["train_acc"] = correct.item() / seen
        metrics["val_loss"], correct = evaluate_per_image(self.distiller, self.val_loader)
        metrics["val_acc"], metrics[VAL_CORRECT] = float(correct.mean()), pack_correct(correct)
        metrics["epoch_time_s"] = elapsed
        metrics["images_per_s"] = seen / elapsed
        return metrics

    def evaluate(self, loader: DeviceLoader) -> tuple[float, float]:
        """(mean CE, accuracy) of the student over a whole split."""
        return evaluate(self.distiller, loader)

    # ------------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: weights, optimiser, schedule, epoch, every RNG. weights_only-safe."""
        state = {
            "epoch": self.epoch,
            "student": self.distiller.student.state_dict(),
            "adapters": self.distiller.adapters.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "train_loader": self.train_loader.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "config": asdict(self.config),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.distiller.student.load_state_dict(state["student"])
        self.distiller.adapters.load_state_dict(state["adapters"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # a checkpoint from another kind of device: this device's kernel
            group["fused"] = self.device.type == "cuda"
        self.scheduler.load_state_dict(state["scheduler"])
        self.train_loader.load_state_dict(state["train_loader"])
        if state.get("scaler"):  # an fp16 run's loss scale (empty for bf16 and float32 runs)
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        self.epoch = state["epoch"]
        self.history = list(state["history"])

    def save(self, path: Path) -> None:
        save_atomically(self.state_dict(), path)

    def load(self, path: Path) -> None:
        self.load_state_dict(load_checked(path, map_location=self.device))
