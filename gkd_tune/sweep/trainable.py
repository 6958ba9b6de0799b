"""What runs on the cluster's worker nodes: the teacher's preparation and the Ray Tune trainable.

One trial = one run of the plain-PyTorch loop, reported to Tune every epoch. Tune only sees this thin wrapper: the
loop reports through its callback, each epoch's metrics go to ``tune.report`` with a checkpoint (full trainer
state + the student model file), and a retried or restored trial continues from ``tune.get_checkpoint()``, on
whichever node it lands. The teacher travels by file through the sweep's shared storage, never pickled.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from ..core.data import load_splits
from ..core.distillers import Distiller, build_distiller, distillation_method
from ..core.errors import error_line
from ..core.files import STUDENT_FILE, STUDENT_WEIGHTS_FILE, TEACHER_FILE, TRAINER_FILE
from ..core.loop import OUTCOME, Trainer, default_device, evaluate, evaluation_loader
from ..core.models import build_model, initial_student, load_model, save_model
from ..core.teacher import TeacherProgress, obtain_teacher
from .resume import KNOWN_EPOCH_FILE
from .space import PLAN_KEY, SweepSpec, TrialPlan
from .storage import CONFIRM_KEY, WORKER_SCRATCH_DIR, SweepStorage
from .strategy import FAILED, SETUP_ERROR

# Set (to 1) where Ray's GPUs are logical, not CUDA devices (cluster/local.yaml's fake nodes): a task given a GPU
# may then run on the CPU. Set where the driver starts; cluster.runtime.connect_to_ray hands it to every task and
# trial.
LOGICAL_GPUS_ENV = "GKD_TUNE_LOGICAL_GPUS"

# In a sweep's storage: the teacher that provide_teacher trained or took; the driver publishes it as TEACHER_FILE.
PROVIDED_TEACHER = f"{WORKER_SCRATCH_DIR}/{TEACHER_FILE}"


def provide_teacher(spec: SweepSpec, storage: SweepStorage) -> dict:
    """Train the teacher (or take it from this node's cache, or from teacher.checkpoint), check it against the arch
    and the class count, and put it in the sweep's storage as PROVIDED_TEACHER. Returns its metadata. Its training
    keeps its state in the storage every epoch: a retry on another node (a spot reclaim) continues from there.
    Runs on a worker node, which writes only below WORKER_SCRATCH_DIR: the driver publishes the file for the trials
    (engine.publish_teacher)."""
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    if not spec.teacher.checkpoint:  # trained here (a given one is checked by the driver, which may have no GPU)
        check_gpu_visible(spec)
    splits = load_splits(spec.data.source, spec.data.val_fraction, image_size=spec.data.image_size)
    checkpoint = Path(spec.teacher.checkpoint).expanduser() if spec.teacher.checkpoint else None

    def restore(key: str, local: Path) -> bool:  # a retried task (max_retries) continues from the last epoch
        kept = f"{WORKER_SCRATCH_DIR}/{key}.pt"
        return storage.exists(kept) and storage.get(kept, local) is not None

    progress = TeacherProgress(restore, lambda key, local: storage.put(local, f"{WORKER_SCRATCH_DIR}/{key}.pt"))
    _, local_file, metadata = obtain_teacher(splits, spec.teacher.arch, spec.teacher.recipe, spec.data.val_fraction,
                                             checkpoint=checkpoint, compile=spec.training.compile, progress=progress)
    storage.put(local_file, PROVIDED_TEACHER)
    return metadata


def check_gpu_visible(spec: SweepSpec) -> None:
    """A task that asked Ray for a GPU and sees no CUDA device says so, instead of training on the CPU at GPU prices
    (a worker container started without --gpus, a driver too old for the image's CUDA)."""
    if spec.resources.gpu > 0 and not torch.cuda.is_available() and os.environ.get(LOGICAL_GPUS_ENV) != "1":
        # (asked only inside Ray: ray.get_gpu_ids() would start a Ray of its own anywhere else)
        node, ids = (ray.get_runtime_context().get_node_id(), ray.get_gpu_ids()) if ray.is_initialized() else ("?", [])
        raise RuntimeError(f"resources.gpu is {spec.resources.gpu:g} and Ray gave this task a GPU on node {node}, but "
                           f"torch sees no CUDA device (ray.get_gpu_ids() = {ids}): check the node's driver and that "
                           f"its container has the GPU (--gpus all); `python -m gkd_tune.doctor` checks every node. "
                           f"{LOGICAL_GPUS_ENV}=1 where the sweep starts allows Ray's logical GPUs, as on "
                           f"cluster/local.yaml")


def quiet_ray_logs() -> None:
    """In a worker: Ray Train's INFO line for every checkpoint written or restored (hundreds in a sweep) off."""
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def train_trial(config: dict, spec: SweepSpec, storage: SweepStorage) -> None:
    quiet_ray_logs()
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    check_gpu_visible(spec)  # raises (retried, perhaps on another node): not a set-up error of the trial's own
    plan = None
    try:
        plan = TrialPlan.resolve(spec, config)
        trainer = set_up_trial(plan, storage)
    except ValueError as error:  # configuration, data (DataSourceError), teacher file: the same on every retry
        report_setup_failure(spec, plan, error)
        return
    unseen = []  # epochs of a put-back checkpoint that Tune has not seen (resume.repair_lost_checkpoints)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load(Path(directory) / TRAINER_FILE)
            known = Path(directory) / KNOWN_EPOCH_FILE
            if known.exists():
                known_epoch = json.loads(known.read_text())["epoch"]
                unseen = [metrics for metrics in trainer.history if metrics["epoch"] > known_epoch]
    # which node ran each epoch, in the trial's results: placement and retries on a cluster are visible
    node_id = ray.get_runtime_context().get_node_id()
    announced = {PLAN_KEY: plan.to_json()}  # in the first result of this start only

    def report(metrics: dict, trainer: Trainer | None = None) -> None:
        """One epoch's result to Tune, with a checkpoint of `trainer` (none for an epoch reported again). ASHA stops
        a trial by raising out of tune.report."""
        result = {**metrics, "node_id": node_id, **announced}
        announced.clear()
        if trainer is None:
            tune.report(result)
            return
        with tempfile.TemporaryDirectory() as directory:
            trainer.save(Path(directory) / TRAINER_FILE)
            save_model(Path(directory) / STUDENT_FILE, trainer.distiller.student, val_acc=metrics["val_acc"],
                       epoch=metrics["epoch"], params=plan.params, **trainer.input_card)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))

    for metrics in unseen:
        report(metrics)
    trainer.run(report)


def confirmation_of(train):
    """The trainable of confirmation runs (sweep/confirm.py): `train` (the sweep's trainable), given the run's entry's
    values (a configuration's, or a baseline method's, at its seed)."""

    def train_confirmation(config: dict, spec: SweepSpec, storage: SweepStorage) -> None:
        train(config[CONFIRM_KEY]["values"], spec, storage)

    return train_confirmation


def set_up_trial(plan: TrialPlan, storage: SweepStorage) -> Trainer:
    splits = load_splits(plan.data.source, plan.data.val_fraction, image_size=plan.data.image_size)
    teacher = None
    if distillation_method(plan.distill.method).needs_teacher:
        with tempfile.TemporaryDirectory() as directory:
            teacher_file = storage.get(TEACHER_FILE, Path(directory) / TEACHER_FILE)
            teacher, _ = load_model(teacher_file, plan.teacher.arch, splits.num_classes)
    torch.manual_seed(plan.train.seed)
    if plan.student_weights:
        with tempfile.TemporaryDirectory() as directory:
            given = storage.get(STUDENT_WEIGHTS_FILE, Path(directory) / STUDENT_WEIGHTS_FILE)
            student = initial_student(given, plan.student, splits.num_classes)
    else:
        student = build_model(plan.student, splits.num_classes)
    return Trainer(build_distiller(plan.distill, student, teacher), splits, plan.train)


def report_setup_failure(spec: SweepSpec, plan: TrialPlan | None, error: Exception) -> None:
    """End the trial as failed without raising, so Tune does not retry what a retry cannot change. The metric is
    NaN (Tune requires it in every result); the plan comes along when the trial got as far as resolving it."""
    tune.report({spec.search.metric: float("nan"), "epoch": 0, OUTCOME: FAILED, SETUP_ERROR: error_line(error),
                 **({PLAN_KEY: plan.to_json()} if plan else {})})


def evaluate_on_test_split(spec: SweepSpec, checkpoint: tune.Checkpoint) -> dict | None:
    """The test split's loss and accuracy of a trial's final student (a checkpoint's student file), or None when the
    source has no test split. Run once per chosen trial, after the sweep: nothing that selects uses it."""
    with checkpoint.as_directory() as directory:
        return test_split_metrics(spec, Path(directory) / STUDENT_FILE, spec.student)


def evaluate_teacher_on_test_split(spec: SweepSpec, storage: SweepStorage) -> dict | None:
    """The same for the teacher in a storage folder (a reproduction's teacher column)."""
    with tempfile.TemporaryDirectory() as directory:
        return test_split_metrics(spec, storage.get(TEACHER_FILE, Path(directory) / TEACHER_FILE), spec.teacher.arch)


def test_split_metrics(spec: SweepSpec, model_file: Path, arch: str) -> dict | None:
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    splits = load_splits(spec.data.source, spec.data.val_fraction, image_size=spec.data.image_size)
    if splits.test is None:
        return None
    model, _ = load_model(model_file, arch, splits.num_classes)
    device = default_device()
    loader = evaluation_loader(splits.test, splits.channel_stats(), spec.training.batch_size, device)
    test_loss, test_acc = evaluate(Distiller(model).to(device), loader)
    return {"test_loss": test_loss, "test_acc": test_acc}
