"""Run a Gompertz-KD hyperparameter sweep: Ray Tune trials, Optuna TPE search, ASHA early stopping, MLflow runs.

    python -m gkd_tune.search --space search_spaces/quickstart.yaml
    mlflow ui            # in the same folder: the sweep's experiment, one child run per trial

The teacher is trained (or loaded) once, before any trial, and handed to trials by its file in the sweep's
storage directory. An interrupted sweep continues with --resume.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from .data import DataSourceError, load_splits
from .space import SpaceError, SweepSpec, load_space, tune_space

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
                        "storage_path); must be readable by every node of a cluster")
    parser.add_argument("--address", help="an existing Ray cluster, e.g. 'auto' or ray://HEAD:10001 "
                        "(default: start a local one)")
    return parser


def sweep_dir(spec: SweepSpec) -> Path:
    return Path(spec.storage_path).expanduser().resolve() / spec.name


def plan(spec: SweepSpec) -> str:
    searched = "\n".join(f"  {name:<14} {d.kind}{list(d.values)}" for name, d in spec.searched().items())
    fixed = ", ".join(f"{k}={v}" for k, v in spec.fixed().items()) or "(defaults)"
    teacher = spec.teacher.checkpoint or (f"{spec.teacher.arch}, trained {spec.teacher.epochs} epochs "
                                          f"(cached by recipe)")
    s = spec.search
    return "\n".join([
        f"sweep      {spec.name}  ({spec.file})",
        f"data       {spec.data.source}  (validation {spec.data.val_fraction:.0%}, stratified)",
        f"teacher    {teacher}",
        f"student    {spec.student}",
        f"budget     {spec.training.max_epochs} epochs max (ASHA max_t), batch {spec.training.batch_size}, "
        f"lr schedule {spec.training.lr_schedule}",
        f"trials     {s.num_samples}, at most {s.max_concurrent_trials} at once; Optuna TPE seed {s.seed}; "
        f"ASHA on {s.metric} ({spec.mode}), grace {s.grace_period}, reduction {s.reduction_factor}; "
        f"{s.max_failures} retries per trial",
        f"resources  {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU per trial",
        f"searched\n{searched or '  (nothing)'}",
        f"fixed      {fixed}",
        f"storage    {sweep_dir(spec)}",
        f"tracking   {spec.tracking.uri}  (experiment {spec.experiment!r})",
    ])


def prepare_teacher(spec: SweepSpec, directory: Path) -> tuple[Path, dict]:
    """Train or load the teacher once, and put it where every trial (on any node) can read it.

    obtain_teacher has already checked the file against the arch and the class count; the copy is byte-identical.
    """
    from .teacher import obtain_teacher

    splits = load_splits(spec.data.source, spec.data.val_fraction)
    checkpoint = Path(spec.teacher.checkpoint).expanduser() if spec.teacher.checkpoint else None
    _, source, metadata = obtain_teacher(splits, spec.teacher.arch, spec.teacher.recipe(), spec.data.val_fraction,
                                         checkpoint=checkpoint)
    shared = directory / "teacher.pt"
    directory.mkdir(parents=True, exist_ok=True)
    if source.resolve() != shared.resolve():
        shutil.copyfile(source, shared)
    return shared, metadata


def resume_command(args: argparse.Namespace) -> str:
    argv = [a for a in sys.argv[1:] if a != "--resume"] if sys.argv[0].endswith("search.py") else []
    argv = argv or ["--space", str(args.space)]
    return "python -m gkd_tune.search " + " ".join(shlex.quote(a) for a in argv) + " --resume"


def run(args: argparse.Namespace, spec: SweepSpec) -> int:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from .report import print_summary
    from .tracking import MlflowTrialLogger, SweepTracker
    from .trainable import train_trial

    directory = sweep_dir(spec)
    if args.resume and not tune.Tuner.can_restore(str(directory)):
        raise ValueError(f"--resume: no sweep to continue at {directory}")
    if not args.resume and directory.exists() and any(directory.glob("experiment_state*")):
        raise ValueError(f"a sweep named {spec.name!r} already exists at {directory}: continue it with --resume, "
                         f"or give another name / --storage-path")

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(include_dashboard=False)
    teacher_file, teacher_metadata = prepare_teacher(spec, directory)
    tracker = SweepTracker(spec, directory)
    tracker.log_start(teacher_metadata)
    logger = MlflowTrialLogger(spec, directory)

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, spec=spec, teacher_file=str(teacher_file)),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    if args.resume:
        tuner = tune.Tuner.restore(str(directory), trainable, resume_unfinished=True, resume_errored=True)
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
                name=spec.name, storage_path=str(directory.parent), callbacks=[logger],
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


if __name__ == "__main__":
    sys.exit(main())
