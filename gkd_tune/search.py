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
import sys
import textwrap
from pathlib import Path

from . import engine
from .cli import check_output_folder, run_command, shared_options
from .cluster.preflight import check_before_ray
from .core.files import SPACE_FILE
from .core.params import declared_values
from .engine import Trials, TuneSettings, evaluate_once
from .sweep.resume import effective, resume_command
from .sweep.space import TRIAL_PARAMS, SweepSpec, load_space, tune_space
from .sweep.storage import SweepStorage

# What --resume --accept-changes may change: what a restored sweep really applies (gkd-tune's own steps read them
# anew); Tune restores its configs, callbacks and trials (their resources too) as they were pickled.
SAFE_TO_CHANGE = frozenset({"search.test_top_k", "resources.wait_s"})
# The command line's overrides, by the space file's dotted path: part of the sweep's record (resume.py).
OVERRIDES = {"num_samples": "search.num_samples", "seed": "search.seed", "tracking_uri": "tracking.uri",
             "storage_path": "storage_path"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.search", description=__doc__.split("\n\n")[0],
                                     parents=[shared_options(trials=True)])
    parser.add_argument("--space", type=Path, required=True, help="search-space YAML file (see search_spaces/)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this space")
    parser.add_argument("--accept-changes", action="store_true",
                        help="with --resume: allow a space file that differs from the one the sweep started with in "
                             "keys a restored sweep applies (search.test_top_k, resources.wait_s)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the space and print the resolved plan; train nothing")
    parser.add_argument("--num-samples", type=int, help="number of trials, or with budget_halving of "
                        "configurations (overrides search.num_samples)")
    parser.add_argument("--seed", type=int, help="Optuna sampler seed (overrides search.seed)")
    return parser


def sweep_storage(spec: SweepSpec) -> SweepStorage:
    return SweepStorage.for_sweep(spec.storage_path, spec.name)


def plan(spec: SweepSpec) -> tuple[str, list[str]]:
    """(the resolved sweep, its warnings): printed before it starts and by --dry-run."""
    from .sweep.strategy import schedule_diagnostics

    def listing(values: dict) -> str:
        return textwrap.fill(", ".join(f"{k}={v}" for k, v in values.items()), width=110, subsequent_indent=" " * 11)

    searched = "\n".join(f"  {name:<14} {d.kind}{list(d.values)}" for name, d in spec.searched().items())
    teacher = (f"{spec.teacher.arch} from {spec.teacher.checkpoint}" if spec.teacher.checkpoint else
               f"{spec.teacher.arch}, trained (cached by recipe): {listing(declared_values(spec.teacher.recipe))}")
    training = {k: v for k, v in declared_values(spec.training).items() if k not in TRIAL_PARAMS}
    s = spec.search
    if spec.searched() and s.scheduler == "budget_halving":
        trials = (f"{s.num_samples} configurations, at most {s.max_concurrent_trials} runs at once; Optuna TPE "
                  f"(multivariate, seed {s.seed}, {s.tpe_startup_trials} random first), told the first budget's "
                  f"results; budget halving on {s.metric} ({spec.mode}), reduction {s.reduction_factor}; "
                  f"{s.max_failures} retries per run")
    elif spec.searched() and s.repeat > 1:
        trials = (f"{s.num_samples} configurations x {s.repeat} seeds ({s.num_samples * s.repeat} trials), at most "
                  f"{s.max_concurrent_trials} at once; Optuna TPE (multivariate, seed {s.seed}, {s.tpe_startup_trials} "
                  f"random first) told each configuration's mean {s.metric} over its seeds, once all completed (Ray "
                  f"Tune's Repeater); ASHA stops nothing (grace_period = max_epochs); {s.max_failures} retries per "
                  f"trial")
    elif spec.searched():
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
        textwrap.fill(f"resolution {resolution_line(spec)}", width=120, subsequent_indent=" " * 11),
        f"teacher    {teacher}",
        f"student    {spec.student}",
        f"training   {listing(training)}  (max_epochs: " + ("the full budget)" if s.scheduler == "budget_halving"
                                                               else "ASHA's max_t)"),
        f"trials     {trials}",
        ("budgets    " if s.scheduler == "budget_halving" else "rungs      ") + "\n           ".join(rung_lines),
        f"resources  {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU per trial (a cluster has "
        f"{spec.resources.wait_s:g} s to provide them)",
        f"searched\n{searched or '  (nothing)'}",
        *([f"grid       {listing({k: list(d.values) for k, d in spec.grid().items()})}"] if spec.grid() else []),
        f"fixed      {listing(read_by_the_method(spec))}",
        f"test       the top {s.test_top_k} completed trial(s) by {s.metric}, once, after the sweep",
        *([textwrap.fill(f"confirm    {confirm_line(spec)}", width=120, subsequent_indent=" " * 11)] if spec.confirm
          else []),
        f"storage    {sweep_storage(spec).location}",
        f"tracking   {spec.tracking.uri}  (experiment {spec.experiment!r})",
    ])
    return text, warnings


def resolution_line(spec: SweepSpec) -> str:
    """What the validation split can tell apart: its size, the binomial standard error of an accuracy on it, and
    the smallest difference between two runs that a 95% test resolves."""
    from .core.data import validation_size
    from .core.stats import binomial_se, resolvable_difference

    n = validation_size(spec.data.source, spec.data.val_fraction)
    if n is None:
        return "the validation split's size is known once the data is loaded (the summary gives it)"
    return (f"{n} validation images: an accuracy on them has a standard error of {100 * binomial_se(0.5, n):.1f} "
            f"points at 50%, {100 * binomial_se(0.9, n):.1f} at 90%; two runs' accuracies must differ by "
            f"{100 * resolvable_difference(0.5, n):.1f} / {100 * resolvable_difference(0.9, n):.1f} points to be "
            f"told apart (95%); the summary compares the top runs image by image (McNemar)")


def confirm_line(spec: SweepSpec) -> str:
    from .sweep.confirm import confirmation_seeds

    c, epochs = spec.confirm, spec.training.max_epochs
    runs = (c.top_k + len(c.baselines)) * c.seeds
    return (f"then the top {c.top_k} configuration(s) again at {epochs} epochs with {c.seeds} new seeds "
            f"({', '.join(map(str, confirmation_seeds(spec)))}), beside {', '.join(c.baselines)} at the same seeds: "
            f"{runs} runs, {runs * epochs} epochs; the answer by mean {spec.search.metric} over the seeds, each run "
            f"tested once after that, its median-{spec.search.metric} run the champion")


def read_by_the_method(spec: SweepSpec) -> dict:
    """The fixed values a trial uses: with one method, not the other methods' settings (a gompertz sweep's dkd_beta)."""
    from .core.distillers import read_by_method

    fixed = spec.fixed()
    return fixed if "method" in spec.searched() or "method" in spec.grid() else read_by_method(fixed)


def resume_command_for(args: argparse.Namespace) -> str:
    return resume_command("gkd_tune.search", {
        "--space": args.space, "--num-samples": args.num_samples, "--seed": args.seed,
        "--tracking-uri": args.tracking_uri, "--storage-path": args.storage_path, "--address": args.address})


def effective_space(args: argparse.Namespace) -> dict:
    """The sweep's record: its space file with this command line's overrides written in."""
    return effective(args.space, {OVERRIDES[name]: getattr(args, name) for name in OVERRIDES})


class SweepTrials(Trials):
    """A sweep's trials for the engine: the space's teacher, the Optuna search with ASHA (or a baseline's grid),
    then the top trials tested once, the summary and the report."""

    kind = "sweep"
    record_name = SPACE_FILE
    safe_changes = SAFE_TO_CHANGE

    def __init__(self, spec: SweepSpec, args: argparse.Namespace):
        super().__init__(spec, effective_space(args), args.resume, args.address, args.accept_changes, args.verbose)
        self.args = args
        self.scheduler = None  # a new run's, kept for the rank correlations of its full-budget trials

    @property
    def count(self) -> int:
        return self.spec.trial_count

    def expected(self, results) -> int:
        if self.spec.search.scheduler != "budget_halving":
            return self.count
        from .sweep.space import halving_plan
        from .sweep.strategy import BUDGET_KEY, COMPLETED, OUTCOME, expected_runs

        completed: dict[int, int] = {}
        for result in results:
            if not result.error and (result.metrics or {}).get(OUTCOME) == COMPLETED:
                budget = int((result.config or {}).get(BUDGET_KEY, 0))
                completed[budget] = completed.get(budget, 0) + 1
        return expected_runs(halving_plan(self.spec), completed)

    def resume_command(self) -> str:
        return resume_command_for(self.args)

    def teachers(self, storage: SweepStorage) -> list:
        return [(self.spec, storage)]

    def trainable(self, storage: SweepStorage, teachers: list):
        from ray import tune

        from .sweep.trainable import train_trial

        return tune.with_parameters(train_trial, spec=self.spec, storage=storage)

    def tune_settings(self, storage: SweepStorage, tracker, teachers_metadata: list[dict]) -> TuneSettings:
        from .sweep.strategy import build_scheduler, build_searcher
        from .sweep.tracking import MlflowTrialLogger

        if teachers_metadata:
            tracker.log_start(teachers_metadata[0])
        spec = self.spec
        self.scheduler = build_scheduler(spec)
        return TuneSettings(
            param_space=tune_space(spec), callbacks=[MlflowTrialLogger(spec, storage.location)],
            tune_config={"metric": spec.search.metric, "mode": spec.mode,
                         # budget halving: every run at every budget; else Tune repeats a grid num_samples times
                         "num_samples": self.count if spec.search.scheduler == "budget_halving" else
                         spec.search.num_samples * spec.search.repeat,
                         "search_alg": build_searcher(spec), "scheduler": self.scheduler})

    def finish(self, results, tracker, teachers: list) -> int:
        from .cli import EXIT_INTERRUPTED
        from .sweep.report import outcome_counts, print_summary, shipped_run, summarise, winners
        from .sweep.strategy import FAILED

        spec = self.spec
        trials = summarise(results, spec)
        best = winners(trials)
        if not best:
            first_error = next((t.error for t in trials if t.outcome == FAILED and t.error), None)
            what = f"all {len(trials)} trials failed" if all(t.outcome == FAILED for t in trials) else \
                f"no trial completed its budget ({outcome_counts(trials)})"
            print(f"\n{what}" + (f"; first error: {first_error}" if first_error else ""), file=sys.stderr)
            tracker.finish("FAILED")
            return 1
        if spec.search.scheduler == "budget_halving":
            report_budget_fidelity(trials, spec, tracker)
        elif spec.search.full_budget_trials:
            report_rank_correlations(results, spec, tracker, self.scheduler)
        evaluate_top_trials(best[: spec.search.test_top_k], spec, tracker)
        confirmation = None
        if spec.confirm:
            confirmation = confirm_answer(self, teachers[0][1], tracker, best)
            if confirmation is None:  # interrupted: said how to continue
                tracker.finish("KILLED")
                return EXIT_INTERRUPTED
        chosen = shipped_run(trials, confirmation)
        if chosen.checkpoint is not None:
            from .sweep.registry import register_best

            print(register_best(spec, tracker, chosen), flush=True)
        print_summary(trials, spec, tracker, confirmation)
        tracker.finish("FINISHED", chosen.trial_id, float(chosen.metrics[spec.search.metric]))
        return 0


class ConfirmTrials(Trials):
    """The confirmation stage's runs for the engine (sweep/confirm.py): one grid of (configuration or baseline,
    seed) entries in the sweep folder's CONFIRM_DIR, the sweep's trainable and MLflow run."""

    kind = "confirmation"

    def __init__(self, sweep: SweepTrials, sweep_storage: SweepStorage, entries: list[dict], resume: bool):
        super().__init__(sweep.spec, sweep.configuration, resume, sweep.address, verbose=sweep.verbose)
        self.sweep, self.sweep_storage, self.entries = sweep, sweep_storage, entries

    @property
    def count(self) -> int:
        return len(self.entries)

    def resume_command(self) -> str:
        return self.sweep.resume_command()

    def trainable(self, storage: SweepStorage, teachers: list):  # the sweep's teacher, in place
        from ray import tune

        from .sweep.trainable import confirmation_of, train_trial

        return tune.with_parameters(confirmation_of(train_trial), spec=self.spec, storage=self.sweep_storage)

    def tune_settings(self, storage: SweepStorage, tracker, teachers_metadata: list[dict]) -> TuneSettings:
        from ray import tune

        from .sweep.storage import CONFIRM_KEY
        from .sweep.tracking import MlflowTrialLogger

        return TuneSettings(param_space={CONFIRM_KEY: tune.grid_search(self.entries)},
                            callbacks=[MlflowTrialLogger(self.spec, self.sweep_storage.location)])


def confirm_answer(sweep: SweepTrials, storage: SweepStorage, tracker, best: list):
    """Run (or continue) the confirmation of the search's top configurations, choose its answer by mean validation,
    test every confirmation run once after that, and log it to the sweep's run. None where it was interrupted."""
    from .sweep.confirm import Confirmation, entries
    from .sweep.report import summarise
    from .sweep.storage import CONFIRM_DIR

    spec = sweep.spec
    folder = storage.child(CONFIRM_DIR)
    runs = entries(spec, best)
    tuned = len(runs) // spec.confirm.seeds - len(spec.confirm.baselines)
    short = f" (confirm.top_k is {spec.confirm.top_k}: only {tuned} completed the full budget)" \
        if tuned < spec.confirm.top_k else ""
    print(f"\nConfirming the top {tuned} configuration(s){short} beside {', '.join(spec.confirm.baselines)} at "
          f"{spec.training.max_epochs} epochs, {spec.confirm.seeds} new seeds each: {len(runs)} runs ...", flush=True)
    results = engine.fit(ConfirmTrials(sweep, storage, runs, resume=folder.has_experiment()), folder, tracker)
    if results is None:
        return None
    confirmation = Confirmation.of(spec, summarise(results, spec))
    if confirmation.answer() is not None:  # chosen on validation; only now is anything tested
        evaluate_once([(run, spec) for run in confirmation.runs_to_test()], tracker)
    metrics, tags = confirmation.logged()
    tracker.log_sweep_metrics(metrics, tags)
    return confirmation


def evaluate_top_trials(top: list, spec: SweepSpec, tracker) -> None:
    """Evaluate the chosen trials once on the test split, after every choice was made on validation; log test_acc /
    test_loss to their runs and best_test_acc to the sweep's. Once per sweep: a --resume of a tested sweep only
    prints what was measured."""
    from .sweep.tracking import TESTED_TAG

    if tracker.tested:  # measured by an earlier run of this step: only shown
        for trial in top:
            trial.test = tracker.test_metrics(trial.trial_id)
        return
    if not top:
        return
    if evaluate_once([(trial, spec) for trial in top], tracker)[0] is None:
        print(f"{spec.data.source} has no test split: nothing tested")
        tracker.log_sweep_metrics({}, {TESTED_TAG: "true"})
        return
    tracker.log_sweep_metrics({"best_test_acc": top[0].test["test_acc"], "best_test_loss": top[0].test["test_loss"]},
                              {TESTED_TAG: "true"})


def report_rank_correlations(results, spec: SweepSpec, tracker, scheduler) -> None:
    """For the full-budget trials (the first K created): Spearman's rank correlation between the val metric at each
    rung and at max_epochs, with n and its 95% interval, printed and logged (rung_spearman_e<epoch>,
    rung_spearman_low_e / _high_e / _n_e<epoch>)."""
    from .sweep.strategy import build_scheduler, rank_correlations

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
    print(f"\nEarly-stopping fidelity over {complete} full-budget trials ({metric}, Spearman, rung vs epoch {max_t}; "
          f"95% interval):")
    logged = {}
    for epoch, fidelity in correlations.items():
        judgement = fidelity.judgement()
        print(f"  epoch {epoch:>4}: {fidelity.text()}" + (f"  {judgement}" if judgement else ""))
        low, high = fidelity.interval
        logged.update({f"rung_spearman_{key}e{epoch}": value for key, value in
                       (("", fidelity.rho), ("low_", low), ("high_", high)) if math.isfinite(value)})
        logged[f"rung_spearman_n_e{epoch}"] = fidelity.n
    tracker.log_sweep_metrics(logged)


def report_budget_fidelity(trials: list, spec: SweepSpec, tracker) -> None:
    """For budget halving: Spearman's rank correlation between each lower budget's result and the full budget's,
    over the configurations run at both (the promoted ones: the best of each budget, a top-heavy sample), with n
    and its 95% interval; printed and logged
    (budget_spearman_b<budget>, budget_spearman_low_ / _high_ / _n_b<budget>)."""
    from .sweep.space import halving_plan
    from .sweep.strategy import BUDGET_KEY, COMPLETED, CONFIG_KEY, RankFidelity, spearman

    full = spec.training.max_epochs
    finals: dict[int, dict[str, float]] = {}
    for trial in trials:
        if trial.outcome == COMPLETED and CONFIG_KEY in trial.config:
            finals.setdefault(int(trial.config[BUDGET_KEY]), {})[trial.config[CONFIG_KEY]] = \
                float(trial.metrics[spec.search.metric])
    at_full = finals.get(full, {})
    print(f"\nBudget fidelity ({spec.search.metric}, Spearman, each budget's result vs the {full}-epoch one, over the "
          f"configurations run at both; 95% interval):")
    logged = {}
    for budget, _ in halving_plan(spec)[:-1]:
        pairs = [(value, at_full[name]) for name, value in finals.get(budget, {}).items() if name in at_full]
        fidelity = RankFidelity(spearman(pairs), len(pairs))
        print(f"  budget {budget:>4}: {fidelity.text()}")
        low, high = fidelity.interval
        logged.update({f"budget_spearman_{key}b{budget}": value for key, value in
                       (("", fidelity.rho), ("low_", low), ("high_", high)) if math.isfinite(value)})
        logged[f"budget_spearman_n_b{budget}"] = fidelity.n
    tracker.log_sweep_metrics(logged)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def sweep() -> int:
        spec = load_space(args.space).with_overrides(num_samples=args.num_samples, seed=args.seed,
                                                     tracking_uri=args.tracking_uri, storage_path=args.storage_path)
        text, warnings = plan(spec)
        print(text, flush=True)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        check_before_ray(spec, args.address)
        check_output_folder(Path("reports") / spec.name, "the report folder")  # written at the end
        return 0 if args.dry_run else engine.run(SweepTrials(spec, args))

    # Ctrl-C reaches here only before the trials start: Tune handles it once they run
    return run_command(sweep, args.debug, lambda: "interrupted before any trial started; nothing to resume")

if __name__ == "__main__":
    sys.exit(main())
