"""Run a Gompertz-KD hyperparameter sweep: Ray Tune trials, Optuna TPE search, ASHA early stopping, MLflow runs.

    python -m gkd_tune.search --space search_spaces/quickstart.yaml
    mlflow ui            # in the same folder: the sweep's experiment, one child run per trial

The teacher is trained (or loaded) once, before any trial, by a Ray task with a trial's resources (on a cluster:
a GPU worker, never the CPU head), and handed to trials by its file in the sweep's storage. An interrupted sweep
continues with --resume.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import textwrap
from pathlib import Path

from .data import DataSourceError
from .files import TEACHER_FILE
from .params import declared_values
from .space import TRIAL_PARAMS, SpaceError, SweepSpec, load_space, tune_space
from .storage import SweepStorage

EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, required=True, help="search-space YAML file (see search_spaces/)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this space")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the space and print the resolved plan; train nothing")
    parser.add_argument("--num-samples", type=int, help="number of trials (overrides search.num_samples)")
    parser.add_argument("--seed", type=int, help="Optuna sampler seed (overrides search.seed)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (overrides tracking.uri; default "
                        "sqlite:///mlflow.db in the working directory)")
    parser.add_argument("--storage-path", help="where trials' checkpoints and the teacher go (overrides "
                        "storage_path): a folder, or a URI such as s3://bucket/prefix; on a cluster, storage "
                        "every node can read")
    parser.add_argument("--address", help="an existing Ray cluster, e.g. 'auto' or HEAD_IP:6379 (default: the "
                        "cluster in RAY_ADDRESS, as under `ray job submit`, else a new local one)")
    return parser


def sweep_storage(spec: SweepSpec) -> SweepStorage:
    return SweepStorage.for_sweep(spec.storage_path, spec.name)


def plan(spec: SweepSpec) -> str:
    def listing(values: dict) -> str:
        return textwrap.fill(", ".join(f"{k}={v}" for k, v in values.items()), width=110, subsequent_indent=" " * 11)

    searched = "\n".join(f"  {name:<14} {d.kind}{list(d.values)}" for name, d in spec.searched().items())
    teacher = (f"{spec.teacher.arch} from {spec.teacher.checkpoint}" if spec.teacher.checkpoint else
               f"{spec.teacher.arch}, trained (cached by recipe): {listing(declared_values(spec.teacher.recipe))}")
    training = {k: v for k, v in declared_values(spec.training).items() if k not in TRIAL_PARAMS}
    s = spec.search
    return "\n".join([
        f"sweep      {spec.name}  ({spec.file})",
        f"data       {spec.data.source}  (validation {spec.data.val_fraction:.0%}, stratified)",
        f"teacher    {teacher}",
        f"student    {spec.student}",
        f"training   {listing(training)}  (max_epochs: ASHA's max_t)",
        f"trials     {s.num_samples}, at most {s.max_concurrent_trials} at once; Optuna TPE seed {s.seed}; "
        f"ASHA on {s.metric} ({spec.mode}), grace {s.grace_period}, reduction {s.reduction_factor}; "
        f"{s.max_failures} retries per trial",
        f"resources  {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU per trial",
        f"searched\n{searched or '  (nothing)'}",
        f"fixed      {listing(spec.fixed())}",
        f"storage    {sweep_storage(spec).location}",
        f"tracking   {spec.tracking.uri}  (experiment {spec.experiment!r})",
    ])


def prepare_teacher(spec: SweepSpec, storage: SweepStorage) -> dict:
    """Put the teacher in the sweep's storage (trained, cached or given) and return its metadata.

    Training runs as a Ray task with a trial's CPUs and whole GPUs, so on a cluster it lands on a GPU worker (the
    autoscaler starts one if needed), never on the CPU-only head where the driver runs. A given teacher.checkpoint
    is a file on the driver's machine: it is checked and uploaded from here.
    """
    import ray
    from ray.exceptions import RayTaskError

    from .trainable import provide_teacher

    if spec.teacher.checkpoint:
        return provide_teacher(spec, storage)
    task = ray.remote(provide_teacher).options(num_cpus=spec.resources.cpu,
                                               num_gpus=math.ceil(spec.resources.gpu), max_retries=2)
    try:
        return ray.get(task.remote(spec, storage))
    except RayTaskError as error:  # a bad data source or teacher: the error itself, not a remote traceback
        raise error.cause if isinstance(error.cause, (DataSourceError, ValueError)) else error


def resume_command(args: argparse.Namespace) -> str:
    argv = [a for a in sys.argv[1:] if a != "--resume"] if sys.argv[0].endswith("search.py") else []
    argv = argv or ["--space", str(args.space)]
    return "python -m gkd_tune.search " + " ".join(shlex.quote(a) for a in argv) + " --resume"


def run(args: argparse.Namespace, spec: SweepSpec) -> int:
    import ray
    from ray import tune

    storage = sweep_storage(spec)
    if args.resume and not tune.Tuner.can_restore(storage.location):
        raise ValueError(f"--resume: no sweep to continue at {storage.location}")
    if not args.resume and storage.has_experiment():
        raise ValueError(f"a sweep named {spec.name!r} already exists at {storage.location}: continue it with "
                         f"--resume, or give another name / --storage-path")
    # address None: RAY_ADDRESS if set (`ray job submit` sets it), else a new local Ray
    ray.init(address=args.address, include_dashboard=False)
    try:
        return sweep(args, spec, storage)
    finally:
        ray.shutdown()  # on a cluster: disconnects; the cluster stays


def sweep(args: argparse.Namespace, spec: SweepSpec, storage: SweepStorage) -> int:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from .report import print_summary
    from .tracking import MlflowTrialLogger, SweepTracker
    from .trainable import train_trial

    teacher_metadata = None if args.resume and storage.exists(TEACHER_FILE) else prepare_teacher(spec, storage)
    tracker = SweepTracker(spec, storage.location)
    if teacher_metadata is not None:
        tracker.log_start(teacher_metadata)
    logger = MlflowTrialLogger(spec, storage.location)

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, spec=spec, storage=storage),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    if args.resume:
        tuner = tune.Tuner.restore(storage.location, trainable, resume_unfinished=True, resume_errored=True)
    else:
        s = spec.search
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(spec),
            tune_config=tune.TuneConfig(
                metric=s.metric, mode=spec.mode, num_samples=s.num_samples,
                max_concurrent_trials=s.max_concurrent_trials,
                search_alg=OptunaSearch(seed=s.seed),  # TPE is Optuna's default sampler
                scheduler=ASHAScheduler(time_attr="epoch", max_t=spec.training.max_epochs,
                                        grace_period=s.grace_period, reduction_factor=s.reduction_factor),
            ),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=storage.parent, callbacks=[logger],
                failure_config=tune.FailureConfig(max_failures=s.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    results = tuner.fit()

    unfinished = len(results) - results.num_terminated - results.num_errors
    if unfinished or len(results) < spec.search.num_samples:
        tracker.finish("KILLED")
        print(f"\nThe sweep was interrupted ({results.num_terminated} of {spec.search.num_samples} trials ended). "
              f"Continue it with:\n  {resume_command(args)}")
        return EXIT_INTERRUPTED
    best = print_summary(results, spec, tracker)
    tracker.finish("FINISHED", *best)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = load_space(args.space).with_overrides(num_samples=args.num_samples, seed=args.seed,
                                                     tracking_uri=args.tracking_uri, storage_path=args.storage_path)
        if args.dry_run:
            print(plan(spec))
            return 0
        print(plan(spec), flush=True)
        return run(args, spec)
    except (SpaceError, DataSourceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the trials started (Tune handles Ctrl-C itself once they run)
        print("\ninterrupted before any trial started; nothing to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
