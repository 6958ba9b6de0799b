"""The run engine under `search` and `reproduce`: one driver's lock -> the storage and the resume record -> Ray ->
storage and tracking every node can use -> a trial's resources -> the teachers -> a Ray Tune run (new, or restored)
-> the command's results -> the sweep's MLflow run closed. A command describes its trials as a `Trials` (what to
record, which teachers, the trainable, the search, how the results are read); the engine runs them, and is the only
place that makes or restores a `tune.Tuner`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cli import EXIT_INTERRUPTED
from .cluster.preflight import check_shared_with_cluster, check_storage, read_storage, wait_for_cluster_resources
from .cluster.runtime import acquire_sweep_lock, connect_to_ray, end_leftovers, task_results, trial_task
from .core.files import STUDENT_WEIGHTS_FILE, TEACHER_FILE, cache_root
from .sweep.resume import check_resume, record, repair_lost_checkpoints
from .sweep.space import SweepSpec
from .sweep.storage import WORKER_SCRATCH_DIR, SweepStorage, trial_dirname, trial_name


@dataclass
class TuneSettings:
    """What a new Ray Tune run is made with, besides what the engine sets for every run (name, storage, trial
    folders, concurrency, retries, checkpoints kept)."""
    param_space: dict
    callbacks: list
    tune_config: dict = field(default_factory=dict)  # metric, mode, num_samples, search_alg, scheduler


class Trials:
    """A command's trials: what the engine asks of them. `spec` carries what every trial shares (name, storage,
    tracking, resources, search.max_concurrent_trials and max_failures)."""

    kind = "sweep"  # what messages call it
    record_name = ""  # the resume record's file in the storage (resume.py)
    safe_changes: frozenset[str] = frozenset()

    def __init__(self, spec: SweepSpec, configuration: dict, resume: bool, address: str | None,
                 accept_changes: bool = False, verbose: bool = False):
        self.spec, self.configuration = spec, configuration
        self.resume, self.address, self.accept_changes = resume, address, accept_changes
        self.verbose = verbose  # Ray Tune's tables and Ray's log lines, instead of one line per trial event

    @property
    def count(self) -> int:
        raise NotImplementedError

    def expected(self, results) -> int:
        """The trials a run that ended by itself holds, given its results (fewer than `count` where a failed trial
        leaves nothing to run after it)."""
        return self.count

    def resume_command(self) -> str:
        raise NotImplementedError

    def teachers(self, storage: SweepStorage) -> list[tuple[SweepSpec, SweepStorage]]:
        """(spec, storage folder) of each teacher to put in place before the trials."""
        raise NotImplementedError

    def trainable(self, storage: SweepStorage, teachers: list[tuple[SweepSpec, SweepStorage]]):
        raise NotImplementedError

    def tune_settings(self, storage: SweepStorage, tracker, teachers_metadata: list[dict]) -> TuneSettings:
        """The new run's search (and what its MLflow run records at the start)."""
        raise NotImplementedError

    def finish(self, results, tracker, teachers: list[tuple[SweepSpec, SweepStorage]]) -> int:
        """Read the finished run: test once, present, close the tracker; the command's exit code."""
        raise NotImplementedError


def run(trials: Trials) -> int:
    # One trial checkpoints every epoch (to lose at most one): Tune's warning that this snapshots the experiment
    # often is expected here, not advice. Set before Tune is imported, which reads it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray
    from ray import tune

    spec = trials.spec
    storage = SweepStorage.for_sweep(spec.storage_path, spec.name)
    # a storage that does not answer ends the command within seconds, here (read before written: a --resume of
    # nothing writes nothing)
    if trials.resume and not read_storage(storage, lambda: tune.Tuner.can_restore(
            storage.tune_path, storage_filesystem=storage.tune_filesystem)):
        raise ValueError(f"--resume: no {trials.kind} to continue at {storage.location}")
    check_storage(storage)
    lock = acquire_sweep_lock(storage, f"a {trials.kind} named {spec.name!r}")
    left = end_leftovers(storage)
    if left:
        print(f"ended {len(left)} process(es) that a killed driver of this {trials.kind} had left running", flush=True)
    try:
        if not trials.resume and storage.has_experiment():
            raise ValueError(f"a {trials.kind} named {spec.name!r} already exists at {storage.location}: continue it "
                             f"with --resume, or give another name / --storage-path")
        if trials.resume and check_resume(storage, trials.record_name, trials.configuration, spec.file,
                                          trials.accept_changes, trials.safe_changes):
            record(storage, trials.record_name, trials.configuration)  # what it continues with, accepted
        if trials.resume:
            for name in repair_lost_checkpoints(storage):
                print(f"{name}: its checkpoint in the saved sweep state was deleted as the driver was killed; it "
                      f"continues from the next one", flush=True)
        log_file = None if trials.verbose else \
            cache_root() / "logs" / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        joined = connect_to_ray(trials.address, storage=storage, log_file=log_file)
        if log_file is not None:
            print(f"log: {log_file} (Ray's, Ray Tune's, MLflow's and Optuna's lines; --verbose shows them here)",
                  flush=True)
        try:
            if joined:  # a Ray started here is this one machine
                check_shared_with_cluster(spec)
            wait_for_cluster_resources(spec)
            if not trials.resume:
                record(storage, trials.record_name, trials.configuration)
            return run_on_ray(trials, storage)
        finally:
            ray.shutdown()  # on a cluster: disconnects; the cluster stays
    finally:
        lock.release()


def run_on_ray(trials: Trials, storage: SweepStorage) -> int:
    from .sweep.tracking import SweepTracker

    spec = trials.spec
    teachers = trials.teachers(storage)
    wanted = [(teacher_spec, folder) for teacher_spec, folder in teachers
              if not (trials.resume and folder.exists(TEACHER_FILE))]
    metadata = prepare_teachers(wanted)
    publish_student_weights(spec, storage)
    tracker = SweepTracker(spec, storage.location)
    try:
        results = fit(trials, storage, tracker, teachers, metadata)
        if results is None:
            tracker.finish("KILLED")
            return EXIT_INTERRUPTED
        return trials.finish(results, tracker, teachers)
    except BaseException as error:  # nothing left RUNNING: the sweep's run and any trial run still open end here
        tracker.finish("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise


def fit(trials: Trials, storage: SweepStorage, tracker, teachers: list | None = None,
        teachers_metadata: list[dict] | None = None):
    """Run `trials` in a Ray Tune experiment in `storage` (new, or restored with trials.resume) to its end: its
    results, or None (said how to continue) where it was interrupted. `teachers` (spec, folder) are in place,
    `teachers_metadata` what a new run records of them."""
    from ray import tune

    from .sweep.progress import ConsoleProgress
    from .sweep.trial_history import trial_history_loggers
    from .sweep.worker_files import TextErrorsOnly

    spec = trials.spec
    trainable = tune.with_resources(trials.trainable(storage, teachers or []),
                                    {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    if trials.resume:
        tuner = tune.Tuner.restore(storage.tune_path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=storage.tune_filesystem)
    else:
        settings = trials.tune_settings(storage, tracker, teachers_metadata or [])
        # pickled with the run, so a --resume keeps them too
        settings.callbacks += [TextErrorsOnly(), *trial_history_loggers()]
        if not trials.verbose:  # pickled with the run: a --resume keeps its console
            settings.callbacks.append(ConsoleProgress(trials.count, spec.search.metric))
        tuner = tune.Tuner(
            trainable, param_space=settings.param_space,
            # reuse_actors: a trial starts in a finished trial's worker (torch and gkd_tune already imported)
            # instead of a new process; every trial seeds and sets its threads itself
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.search.max_concurrent_trials, reuse_actors=True,
                                        trial_name_creator=trial_name, trial_dirname_creator=trial_dirname,
                                        **settings.tune_config),
            run_config=tune.RunConfig(
                name=storage.name, storage_path=storage.tune_path.rsplit("/", 1)[0],
                storage_filesystem=storage.tune_filesystem, callbacks=settings.callbacks,
                verbose=1 if trials.verbose else 0,  # 1: status tables; 0: the ConsoleProgress lines
                failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    results = tuner.fit()
    if len(results) - results.num_terminated - results.num_errors or len(results) < trials.expected(results):
        print(f"\nThe {trials.kind} was interrupted ({results.num_terminated} of {trials.count} trials ended). "
              f"Continue it with:\n  {trials.resume_command()}")
        return None
    return results


def prepare_teachers(teachers: list[tuple[SweepSpec, SweepStorage]]) -> list[dict]:
    """Put each teacher in its storage folder (trained, cached or given) and return their metadata, in order.

    Training runs as Ray tasks with a trial's CPUs and whole GPUs, so on a cluster they land on GPU workers (the
    autoscaler starts them), never on the CPU-only head where the driver runs; they run side by side. A given
    teacher.checkpoint is a file on the driver's machine: it is checked and uploaded from here.
    """
    from .sweep.trainable import provide_teacher

    if not teachers:
        return []
    if len(teachers) > 1:
        print(f"Preparing {len(teachers)} teachers: {', '.join(spec.teacher.arch for spec, _ in teachers)} ...",
              flush=True)
    pending = {i: trial_task(provide_teacher, spec).remote(spec, folder)
               for i, (spec, folder) in enumerate(teachers) if not spec.teacher.checkpoint}
    given = {i: provide_teacher(spec, folder) for i, (spec, folder) in enumerate(teachers) if spec.teacher.checkpoint}
    metadata = {**given, **dict(zip(pending, task_results(list(pending.values()))))}
    for _, folder in teachers:
        publish_teacher(folder)
    return [metadata[i] for i in range(len(teachers))]


def publish_student_weights(spec: SweepSpec, storage: SweepStorage) -> None:
    """A given student_weights file, checked here against the student (all or nothing, keys named) and put in the
    sweep's storage, where every trial reads it."""
    if not spec.student_weights or storage.exists(STUDENT_WEIGHTS_FILE):
        return
    from .core.data import load_splits
    from .core.models import initial_student

    classes = load_splits(spec.data.source, spec.data.val_fraction, image_size=spec.data.image_size).num_classes
    initial_student(Path(spec.student_weights), spec.student, classes)
    storage.put(Path(spec.student_weights), STUDENT_WEIGHTS_FILE)


def publish_teacher(storage: SweepStorage) -> None:
    """The provided teacher becomes the sweep's teacher.pt, written from the driver: workers may write only below
    the scratch folder (storage.py), which goes once the teacher is published."""
    from .sweep.trainable import PROVIDED_TEACHER

    storage.copy(PROVIDED_TEACHER, TEACHER_FILE)
    storage.remove(WORKER_SCRATCH_DIR)


def evaluate_once(pairs: list[tuple[object, SweepSpec]], tracker) -> list[dict | None]:
    """The test split's metrics of each (trial summary, its spec) not measured yet, measured once by Ray tasks with
    a trial's resources, after every choice was made on validation, and logged to the trial's run. None where the
    data source has no test split."""
    import ray

    from .sweep.trainable import evaluate_on_test_split

    for summary, _ in pairs:  # measured already: by an earlier, interrupted run of this step
        summary.test = summary.test or tracker.test_metrics(summary.trial_id)
    untested = [(summary, spec) for summary, spec in pairs if summary.test is None]
    if not untested:
        return [summary.test for summary, _ in pairs]
    print(f"\nEvaluating {len(untested)} trial(s) on the test split, once ...", flush=True)
    task = trial_task(evaluate_on_test_split, untested[0][1])
    for (summary, _), metrics in zip(untested, ray.get([task.remote(spec, summary.checkpoint)
                                                        for summary, spec in untested])):
        if metrics is not None:
            tracker.log_test(summary.trial_id, metrics)
            summary.test = metrics
    return [summary.test for summary, _ in pairs]
