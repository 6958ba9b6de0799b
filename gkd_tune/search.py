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
import os
import sys
import textwrap
from pathlib import Path

from .files import SPACE_FILE, TEACHER_FILE
from .params import declared_values
from .errors import exit_with_one_line
from .preflight import check_before_ray, check_shared_with_cluster, check_storage, wait_for_cluster_resources
from .resume import check_resume, effective, record, resume_command
from .runtime import acquire_sweep_lock, connect_to_ray, task_results, trial_task
from .space import TRIAL_PARAMS, SweepSpec, load_space, tune_space
from .storage import SweepStorage, trial_dirname

EXIT_INTERRUPTED = 130
# What --resume --accept-changes may change: what a restored sweep really applies (gkd-tune's own steps read them
# anew); Tune restores its configs, callbacks and trials (their resources too) as they were pickled.
SAFE_TO_CHANGE = frozenset({"search.test_top_k", "resources.wait_s"})
# The command line's overrides, by the space file's dotted path: part of the sweep's record (resume.py).
OVERRIDES = {"num_samples": "search.num_samples", "seed": "search.seed", "tracking_uri": "tracking.uri",
             "storage_path": "storage_path"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, required=True, help="search-space YAML file (see search_spaces/)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this space")
    parser.add_argument("--accept-changes", action="store_true",
                        help="with --resume: allow a space file that differs from the one the sweep started with in "
                             "keys a restored sweep applies (search.test_top_k, resources.wait_s)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the space and print the resolved plan; train nothing")
    parser.add_argument("--num-samples", type=int, help="number of trials (overrides search.num_samples)")
    parser.add_argument("--seed", type=int, help="Optuna sampler seed (overrides search.seed)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (overrides tracking.uri; default "
                        "sqlite:///mlflow.db in the working directory); on a cluster of several nodes, a tracking "
                        "server such as http://127.0.0.1:5000 (cluster/gpu.yaml's, on the head)")
    parser.add_argument("--storage-path", help="where trials' checkpoints and the teacher go (overrides "
                        "storage_path): a folder, or a URI such as s3://bucket/prefix (an S3-compatible store: "
                        "s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http); on a cluster of several "
                        "nodes, storage every node can read")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    parser.add_argument("--address", help="an existing Ray cluster, e.g. 'auto' or HEAD_IP:6379 (default: the "
                        "cluster in RAY_ADDRESS, as under `ray job submit`, else a new local one)")
    return parser


def sweep_storage(spec: SweepSpec) -> SweepStorage:
    return SweepStorage.for_sweep(spec.storage_path, spec.name)


def plan(spec: SweepSpec) -> tuple[str, list[str]]:
    """(the resolved sweep, its warnings): printed before it starts and by --dry-run."""
    from .strategy import schedule_diagnostics

    def listing(values: dict) -> str:
        return textwrap.fill(", ".join(f"{k}={v}" for k, v in values.items()), width=110, subsequent_indent=" " * 11)

    searched = "\n".join(f"  {name:<14} {d.kind}{list(d.values)}" for name, d in spec.searched().items())
    teacher = (f"{spec.teacher.arch} from {spec.teacher.checkpoint}" if spec.teacher.checkpoint else
               f"{spec.teacher.arch}, trained (cached by recipe): {listing(declared_values(spec.teacher.recipe))}")
    training = {k: v for k, v in declared_values(spec.training).items() if k not in TRIAL_PARAMS}
    s = spec.search
    if spec.searched():
        trials = (f"{s.num_samples}, at most {s.max_concurrent_trials} at once; Optuna TPE (multivariate, seed {s.seed}, "
                  f"{s.tpe_startup_trials} random trials first); ASHA on {s.metric} ({spec.mode}), grace "
                  f"{s.grace_period}, reduction {s.reduction_factor}" +
                  (f", the first {s.full_budget_trials} exempt" if s.full_budget_trials else "") +
                  f"; {s.max_failures} retries per trial")
    else:
        trials = (f"{spec.trial_count} ({s.num_samples} x the grid), at most {s.max_concurrent_trials} at once; a "
                  f"baseline: no search, no early stopping; {s.max_failures} retries per trial")
    rung_lines, warnings = schedule_diagnostics(spec)
    text = "\n".join([
        f"sweep      {spec.name}  ({spec.file})",
        f"data       {spec.data.source}  (validation {spec.data.val_fraction:.0%}, stratified)",
        f"teacher    {teacher}",
        f"student    {spec.student}",
        f"training   {listing(training)}  (max_epochs: ASHA's max_t)",
        f"trials     {trials}",
        "rungs      " + "\n           ".join(rung_lines),
        f"resources  {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU per trial (a cluster has "
        f"{spec.resources.wait_s:g} s to provide them)",
        f"searched\n{searched or '  (nothing)'}",
        *([f"grid       {listing({k: list(d.values) for k, d in spec.grid().items()})}"] if spec.grid() else []),
        f"fixed      {listing(spec.fixed())}",
        f"test       the top {s.test_top_k} completed trial(s) by {s.metric}, once, after the sweep",
        f"storage    {sweep_storage(spec).location}",
        f"tracking   {spec.tracking.uri}  (experiment {spec.experiment!r})",
    ])
    return text, warnings


def prepare_teacher(spec: SweepSpec, storage: SweepStorage) -> dict:
    """Put the teacher in the sweep's storage (trained, cached or given) and return its metadata.

    Training runs as a Ray task with a trial's CPUs and whole GPUs, so on a cluster it lands on a GPU worker (the
    autoscaler starts one if needed), never on the CPU-only head where the driver runs. A given teacher.checkpoint
    is a file on the driver's machine: it is checked and uploaded from here.
    """
    from .trainable import provide_teacher

    if spec.teacher.checkpoint:
        metadata = provide_teacher(spec, storage)
    else:
        metadata = task_results(trial_task(provide_teacher, spec).remote(spec, storage))
    publish_teacher(storage)
    return metadata


def publish_teacher(storage: SweepStorage) -> None:
    """The provided teacher becomes the sweep's teacher.pt, written from the driver: workers may write only below
    the scratch folder (storage.py), which goes once the teacher is published."""
    from .storage import WORKER_SCRATCH_DIR
    from .trainable import PROVIDED_TEACHER

    storage.copy(PROVIDED_TEACHER, TEACHER_FILE)
    storage.remove(WORKER_SCRATCH_DIR)


def resume_command_for(args: argparse.Namespace) -> str:
    return resume_command("gkd_tune.search", {
        "--space": args.space, "--num-samples": args.num_samples, "--seed": args.seed,
        "--tracking-uri": args.tracking_uri, "--storage-path": args.storage_path, "--address": args.address})


def effective_space(args: argparse.Namespace) -> dict:
    """The sweep's record: its space file with this command line's overrides written in."""
    return effective(args.space, {OVERRIDES[name]: getattr(args, name) for name in OVERRIDES})


def run(args: argparse.Namespace, spec: SweepSpec) -> int:
    # One trial checkpoints every epoch (to lose at most one): Tune's warning that this snapshots the experiment
    # often is expected here, not advice. Set before Tune is imported, which reads it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray
    from ray import tune

    storage = sweep_storage(spec)
    if args.resume and not tune.Tuner.can_restore(storage.tune_path, storage_filesystem=storage.tune_filesystem):
        raise ValueError(f"--resume: no sweep to continue at {storage.location}")
    check_storage(storage)
    lock = acquire_sweep_lock(storage, f"a sweep named {spec.name!r}")
    try:
        if not args.resume and storage.has_experiment():
            raise ValueError(f"a sweep named {spec.name!r} already exists at {storage.location}: continue it with "
                             f"--resume, or give another name / --storage-path")
        if args.resume and check_resume(storage, SPACE_FILE, effective_space(args), spec.file, args.accept_changes,
                                        SAFE_TO_CHANGE):
            record(storage, SPACE_FILE, effective_space(args))  # what it continues with, accepted
        joined = connect_to_ray(args.address)
        try:
            if joined:  # a Ray started here is this one machine
                check_shared_with_cluster(spec)
            wait_for_cluster_resources(spec)
            if not args.resume:
                record(storage, SPACE_FILE, effective_space(args))
            return sweep(args, spec, storage)
        finally:
            ray.shutdown()  # on a cluster: disconnects; the cluster stays
    finally:
        lock.release()


def sweep(args: argparse.Namespace, spec: SweepSpec, storage: SweepStorage) -> int:
    from .tracking import SweepTracker

    teacher_metadata = None if args.resume and storage.exists(TEACHER_FILE) else prepare_teacher(spec, storage)
    tracker = SweepTracker(spec, storage.location)
    try:
        return run_trials(args, spec, storage, tracker, teacher_metadata)
    except BaseException as error:  # nothing left RUNNING: the sweep's run and any trial run still open end here
        tracker.finish("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise


def run_trials(args: argparse.Namespace, spec: SweepSpec, storage: SweepStorage, tracker, teacher_metadata) -> int:
    from ray import tune

    from .report import outcome_counts, print_summary, summarise, winners
    from .strategy import FAILED, build_scheduler, build_searcher
    from .tracking import MlflowTrialLogger
    from .trainable import train_trial

    if teacher_metadata is not None:
        tracker.log_start(teacher_metadata)
    logger = MlflowTrialLogger(spec, storage.location)

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, spec=spec, storage=storage),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    scheduler = None
    if args.resume:
        tuner = tune.Tuner.restore(storage.tune_path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=storage.tune_filesystem)
    else:
        s = spec.search
        scheduler = build_scheduler(spec)
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(spec),
            tune_config=tune.TuneConfig(
                metric=s.metric, mode=spec.mode, num_samples=s.num_samples,
                max_concurrent_trials=s.max_concurrent_trials, search_alg=build_searcher(spec), scheduler=scheduler,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=storage.tune_path.rsplit("/", 1)[0],
                storage_filesystem=storage.tune_filesystem, callbacks=[logger], verbose=1,  # status table only
                failure_config=tune.FailureConfig(max_failures=s.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    results = tuner.fit()

    unfinished = len(results) - results.num_terminated - results.num_errors
    if unfinished or len(results) < spec.trial_count:
        tracker.finish("KILLED")
        print(f"\nThe sweep was interrupted ({results.num_terminated} of {spec.trial_count} trials ended). "
              f"Continue it with:\n  {resume_command_for(args)}")
        return EXIT_INTERRUPTED
    trials = summarise(results, spec)
    best = winners(trials)
    if not best:
        first_error = next((t.error for t in trials if t.outcome == FAILED and t.error), None)
        what = f"all {len(trials)} trials failed" if all(t.outcome == FAILED for t in trials) else \
            f"no trial completed its budget ({outcome_counts(trials)})"
        print(f"\n{what}" + (f"; first error: {first_error}" if first_error else ""), file=sys.stderr)
        tracker.finish("FAILED")
        return 1
    if spec.search.full_budget_trials:
        report_rank_correlations(results, spec, tracker, scheduler)
    evaluate_top_trials(best[: spec.search.test_top_k], spec, tracker)
    print_summary(trials, spec, tracker)
    tracker.finish("FINISHED", best[0].trial_id, float(best[0].metrics[spec.search.metric]))
    return 0


def evaluate_top_trials(top: list, spec: SweepSpec, tracker) -> None:
    """Evaluate the chosen trials once on the test split (Ray tasks with a trial's resources), after every choice
    was made on validation; log test_acc / test_loss to their runs and best_test_acc to the sweep's. Once per sweep:
    a --resume of a tested sweep only prints what was measured."""
    import ray

    from .tracking import TESTED_TAG
    from .trainable import evaluate_on_test_split

    for trial in top:  # measured already: by an earlier run of this step (it may have been interrupted)
        trial.test = tracker.test_metrics(trial.trial_id)
    if not top or tracker.tested:
        return
    untested = [trial for trial in top if trial.test is None]
    if untested:
        print(f"\nEvaluating {len(untested)} trial(s) on the test split, once ...", flush=True)
        task = trial_task(evaluate_on_test_split, spec)
        measured = ray.get([task.remote(spec, trial.checkpoint) for trial in untested])
        if measured[0] is None:
            print(f"{spec.data.source} has no test split: nothing tested")
            tracker.log_sweep_metrics({}, {TESTED_TAG: "true"})
            return
        for trial, metrics in zip(untested, measured):
            trial.test = metrics
            tracker.log_test(trial.trial_id, metrics)
    tracker.log_sweep_metrics({"best_test_acc": top[0].test["test_acc"], "best_test_loss": top[0].test["test_loss"]},
                              {TESTED_TAG: "true"})


def report_rank_correlations(results, spec: SweepSpec, tracker, scheduler) -> None:
    """For the full-budget trials (the first K created): Spearman's rank correlation
    between val metric at each rung and at max_epochs, printed and logged as rung_spearman_e<epoch>."""
    from .strategy import SPEARMAN_WARNING, build_scheduler, rank_correlations

    metric, max_t = spec.search.metric, spec.training.max_epochs
    rungs = (scheduler or build_scheduler(spec)).rung_epochs  # --resume: the same rungs, rebuilt
    histories = []
    if scheduler is not None:
        full_budget = [r for r in results if (r.metrics or {}).get("trial_id") in scheduler.exempt]
    else:  # a restored sweep: Tune kept the trials in the order they were created, as the scheduler saw them
        full_budget = list(results)[: spec.search.full_budget_trials]
    for result in full_budget:
        frame = result.metrics_dataframe
        if frame is not None and metric in frame and "epoch" in frame:
            histories.append(dict(zip(frame["epoch"].astype(int), frame[metric].astype(float))))
    correlations = rank_correlations(histories, rungs, max_t)
    complete = sum(max_t in h for h in histories)
    print(f"\nEarly-stopping fidelity over {complete} full-budget trials ({metric}, Spearman, rung vs epoch {max_t}):")
    for epoch, rho in correlations.items():
        low = rho < SPEARMAN_WARNING
        print(f"  epoch {epoch:>4}: {rho:+.2f}" + ("  warning: ASHA's ranking at this rung is unreliable for this "
                                                  "space" if low else ""))
    tracker.log_sweep_metrics({f"rung_spearman_e{e}": rho for e, rho in correlations.items() if math.isfinite(rho)})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = load_space(args.space).with_overrides(num_samples=args.num_samples, seed=args.seed,
                                                     tracking_uri=args.tracking_uri, storage_path=args.storage_path)
        text, warnings = plan(spec)
        print(text, flush=True)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        check_before_ray(spec, args.address)
        if args.dry_run:
            return 0
        return run(args, spec)
    except KeyboardInterrupt:  # before the trials started (Tune handles Ctrl-C itself once they run)
        print("\ninterrupted before any trial started; nothing to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # one line (the sweep's MLflow run was closed as FAILED)
        return exit_with_one_line(error, args.debug)


if __name__ == "__main__":
    sys.exit(main())
