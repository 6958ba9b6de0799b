"""A sweep's results: the end-of-sweep summary (each trial's outcome, the top completed trials, the best student's
file, how to open the MLflow UI), and the report as files and plots, written at the end of every sweep and by
`python -m gkd_tune.report` (gkd_tune/report.py) for any sweep, finished or not: trials.parquet (one row per trial
and epoch), summary.md (the top trials and Optuna's hyperparameter importances), curves.png, betas.png and
params.png, also logged to the sweep's MLflow run (whose description becomes summary.md).
"""

from __future__ import annotations

import json
import math
import numbers
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..core.distillers import distillation_method
from ..core.errors import error_line
from ..core.files import STUDENT_FILE
from ..core.loop import OUTCOME, VAL_CORRECT
from ..core.stats import PairedComparison, binomial_se, unpack_correct
from .space import PLAN_KEY, REPEAT_INDEX, SweepSpec, TrialPlan
from .storage import SweepStorage, copy_student, name_from_folder
from .strategy import BUDGET_KEY, COMPLETED, CONFIG_KEY, DIVERGED, FAILED, SETUP_ERROR, STOPPED, trial_outcome
from .tracking import VIEW_KEY, SweepTracker, short

TOP = 5
# Completed trials below which fANOVA's importances are shown with a warning
TRUSTED_IMPORTANCES = 10


def mlflow_ui_hint(uri: str, experiment_id: str, best_run_id: str | None = None) -> str:
    """How to look at the sweep's runs, as commands and links that work as printed: a tracking server is already a
    UI; a store needs `mlflow ui` (this interpreter's, one worker: the default four crowd a small machine)."""
    # the runs table in "Model training" mode, in the sweep's saved view (tracking.VIEW_KEY: trials grouped by
    # outcome, accuracies as columns); MLflow 3's bare experiment page opens its GenAI overview instead
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    best = f"#/experiments/{experiment_id}/runs/{best_run_id}/model-metrics?workflowType=machine_learning" \
        if best_run_id else ""
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
        return f"open {base}/{page} (on a cluster through the tunnel: see cluster/README.md)" + (
            f"\n        the best trial's curves: {base}/{best}" if best else "")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())  # relative -> absolute, works anywhere
    mlflow = Path(sys.executable).with_name("mlflow")
    if not mlflow.exists():
        command = "mlflow"
    elif mlflow.is_relative_to(Path.cwd()):
        command = str(mlflow.relative_to(Path.cwd()))
    else:
        command = str(mlflow)
    return (f"{command} ui --workers 1 --host 127.0.0.1 --backend-store-uri {uri}\n        then open "
            f"http://127.0.0.1:5000/{page}" + (f"\n        the best trial's curves: http://127.0.0.1:5000/{best}"
                                               if best else ""))


@dataclass
class TrialSummary:
    """One trial as the summary sees it: its outcome decided once (strategy.trial_outcome), its plan as it
    announced it (None: it never got that far)."""

    trial_id: str
    outcome: str
    metrics: dict  # the last reported result
    config: dict  # its sampled values
    checkpoint: object | None  # a Tune Checkpoint
    error: str | None = None
    test: dict | None = None  # test_loss, test_acc: filled for the top-k after the sweep
    history: list = field(default_factory=list)  # every epoch's result, in order
    plan: TrialPlan | None = None
    name: str = ""  # 't07', its folder's (storage.trial_name): what the console, the report and MLflow call it
    low_budget: bool = False  # budget halving's run below the full budget: it ranks configurations, never wins
    # search.repeat: the mean of the metric over its configuration's seeds (NaN unless every seed completed), and
    # whether it stands for its configuration (the median run); None / True without repeats
    configuration_mean: float | None = None
    representative: bool = True

    def __post_init__(self):
        self.name = self.name or self.trial_id

    @property
    def params(self) -> dict:
        return self.plan.params if self.plan else {}


def summarise(results, spec: SweepSpec) -> list[TrialSummary]:
    """Every trial of a ResultGrid with its outcome, completed ones first, best first (by the last epoch's metric)."""
    trials = []
    for result in results:
        metrics = result.metrics or {}
        error = error_line(result.error) if result.error else metrics.get(SETUP_ERROR)
        outcome = trial_outcome(metrics, result.error is not None)
        frame = result.metrics_dataframe  # None: a trial with no result yet
        rows = [] if frame is None or frame.empty else frame.to_dict("records")
        announced = next((row[PLAN_KEY] for row in rows if isinstance(row.get(PLAN_KEY), str)), None)
        trial_id = metrics.get("trial_id") or result.path.rsplit("/", 1)[-1]
        trials.append(TrialSummary(trial_id, outcome, metrics, result.config or {}, result.checkpoint, error,
                                   history=one_row_per_epoch(rows),
                                   plan=TrialPlan.from_json(announced) if announced else None,
                                   name=name_from_folder(result.path, trial_id),
                                   low_budget=int((result.config or {}).get(BUDGET_KEY, spec.training.max_epochs))
                                   < spec.training.max_epochs))
    if spec.search.repeat > 1:
        rank_by_configuration(trials, spec)
    sign = -1 if spec.mode == "max" else 1
    trials.sort(key=lambda t: (t.outcome != COMPLETED or not t.representative, sign * ranked_value(t, spec)
                               if t.outcome == COMPLETED else 0.0))
    return trials


def ranked_value(trial: TrialSummary, spec: SweepSpec) -> float:
    """What a trial is ranked by: its metric, or with search.repeat its configuration's mean over seeds."""
    value = trial.metrics.get(spec.search.metric, 0.0) if trial.configuration_mean is None else trial.configuration_mean
    return value if math.isfinite(value) else (-math.inf if spec.mode == "max" else math.inf)


def rank_by_configuration(trials: list[TrialSummary], spec: SweepSpec) -> None:
    """search.repeat: the runs of one configuration (the same values, seeds apart) ranked by their mean; a
    configuration with a seed that did not complete never wins; its median run stands for it."""
    groups: dict[str, list[TrialSummary]] = {}
    for trial in trials:
        values = {k: v for k, v in trial.config.items() if k != REPEAT_INDEX}
        groups.setdefault(json.dumps(values, sort_keys=True, default=str), []).append(trial)
    metric = spec.search.metric
    for runs in groups.values():
        whole = len(runs) == spec.search.repeat and all(run.outcome == COMPLETED for run in runs)
        mean = statistics.fmean(float(run.metrics[metric]) for run in runs) if whole else math.nan
        ordered = sorted(runs, key=lambda run: float(run.metrics.get(metric, math.nan)), reverse=spec.mode == "max")
        for run in runs:
            run.configuration_mean, run.representative = mean, whole and run is ordered[len(ordered) // 2]


def one_row_per_epoch(rows: list[dict]) -> list[dict]:
    """A trial's epoch results in order, each once: an epoch reported again after a restore counts as reported last
    (a driver killed after logging an epoch whose checkpoint its saved state never named)."""
    by_epoch = {int(row["epoch"]): row for row in rows if row.get("epoch", 0) >= 1}
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def winners(trials: list[TrialSummary]) -> list[TrialSummary]:
    """The trials that may win: completed (the loop completes a run only with finite losses and validation metrics)
    at the full budget; best first. Stopped, diverged and failed ones never do, nor budget halving's lower budgets;
    with search.repeat, one run per configuration whose every seed completed (its median run), by their mean."""
    return [t for t in trials if t.outcome == COMPLETED and not t.low_budget and t.representative]


def outcome_counts(trials: list[TrialSummary]) -> str:
    counts = {o: sum(t.outcome == o for t in trials) for o in (COMPLETED, STOPPED, DIVERGED, FAILED)}
    return ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in counts.items())


def results_table(trials: list[TrialSummary], spec: SweepSpec) -> str:
    """The outcome counts, the top completed trials (by the last epoch's validation metric; test metrics where
    evaluated) and every diverged or failed trial with its error."""
    metric = spec.search.metric
    shown = list(spec.searched()) + list(spec.grid())
    repeated = spec.search.repeat > 1
    lines = [f"{len(trials)} trials: {outcome_counts(trials)}",
             f"Top completed {'configurations' if repeated else 'trials'} ({metric} at epoch {spec.training.max_epochs}"
             + (f", mean over {spec.search.repeat} seeds, each shown by its median run" if repeated else "")
             + "; test split once, after the sweep):",
             f"{'rank':<5}{'trial':<10}{metric:>9}" + (f"{'mean':>9}" if repeated else "") +
             f"{'test_acc':>9}{'epochs':>8}  " + "  ".join(f"{n:>9}" for n in shown)]
    for rank, trial in enumerate(winners(trials)[:TOP], 1):
        test = f"{trial.test['test_acc']:>9.4f}" if trial.test else f"{'-':>9}"
        values = "  ".join(f"{short(trial.config.get(n), 4):>9}" for n in shown)
        mean = f"{trial.configuration_mean:>9.4f}" if repeated else ""
        name = trial.name + (f" {trial.config[CONFIG_KEY]}" if CONFIG_KEY in trial.config else "")  # t28 c07
        lines.append(f"{rank:<5}{name:<10}{trial.metrics[metric]:>9.4f}{mean}{test}{trial.metrics['epoch']:>8}  "
                     f"{values}")
    if winners(trials):
        lines += resolution_lines(trials, spec)
    lines += [f"{t.outcome}: {t.name}" + (f"  ({t.error})" if t.error else "")
              for t in trials if t.outcome in (DIVERGED, FAILED)]
    return "\n".join(lines)


def comparisons(trials: list[TrialSummary]) -> list[tuple[TrialSummary, PairedComparison]]:
    """The winner against each of the next top completed trials, on the same validation images (each run's
    per-image correctness at its last epoch)."""
    best = winners(trials)
    top = [t for t in best[:TOP] if VAL_CORRECT in t.metrics]
    if len(top) < 2 or top[0] is not best[0]:
        return []
    first = unpack_correct(top[0].metrics[VAL_CORRECT])
    return [(other, PairedComparison.of(first, unpack_correct(other.metrics[VAL_CORRECT]))) for other in top[1:]]


def resolution_lines(trials: list[TrialSummary], spec: SweepSpec) -> list[str]:
    """Whether the winner is distinguishable from the runners-up: the split's noise at the winner's accuracy, then
    one paired comparison per runner-up. What the console and summary.md say next to the winner."""
    top = winners(trials)
    pairs = comparisons(trials)
    if not pairs:
        return [f"{top[0].name} is the only completed trial: nothing to compare it with" if len(top) == 1 else
                "no per-image validation results to compare the top trials with"]
    n, accuracy = pairs[0][1].n, float(top[0].metrics["val_acc"])
    lines = [f"Resolution: {n} validation images; at the winner's val_acc {accuracy:.4f} the standard error is "
             f"{100 * binomial_se(accuracy, n):.1f} points.",
             f"The winner {top[0].name} against the next (val_acc difference on the same images, 95% interval, "
             f"McNemar's exact test):"]
    lines += [f"  {other.name:<8}{comparison.text()}" for other, comparison in pairs]
    return lines


def winner_caveat(trials: list[TrialSummary]) -> str:
    """'' where the winner is distinguishable from every runner-up compared, else which it cannot be told from."""
    tied = [other.name for other, comparison in comparisons(trials) if not comparison.distinguishable]
    return f"not distinguishable on validation from {', '.join(tied)}" if tied else ""


BEST_STUDENT = f"best/{STUDENT_FILE}"  # in a sweep's folder: a copy of its best trial's student


def keep_best_student(top: TrialSummary, spec: SweepSpec) -> str:
    """Copy the best trial's student to <storage>/<name>/best/student.pt; that path, relative to the working
    directory where it is below it."""
    storage = SweepStorage.for_sweep(spec.storage_path, spec.name)
    with tempfile.TemporaryDirectory() as directory:
        storage.put(copy_student(top.checkpoint, Path(directory)), BEST_STUDENT)
    where = storage.describe(BEST_STUDENT)
    if "://" not in where and Path(where).is_relative_to(Path.cwd()):
        return f"./{Path(where).relative_to(Path.cwd())}"
    return where


def shipped_run(trials: list[TrialSummary], confirmation=None) -> TrialSummary:
    """The run whose student is shipped (registered, best/student.pt, the sweep's best_trial): the confirmed
    answer's median-validation run where a confirmation chose one, else the search's winner."""
    if confirmation is not None and confirmation.answer() is not None:
        return confirmation.champion()
    return winners(trials)[0]


def print_summary(trials: list[TrialSummary], spec: SweepSpec, tracker: SweepTracker, confirmation=None) -> None:
    """The results table (and the confirmation's, where the sweep has one), the shipped student's file, the report
    (whose summary.md becomes the description of the sweep's MLflow run, so the answer is on its page) and how to
    open MLflow."""
    print(f"\n{results_table(trials, spec)}")
    if confirmation is not None:
        print("\n" + "\n".join(confirmation.lines()))
    out = Path("reports") / spec.name
    write_report(trials, spec, tracker, out, confirmation)
    confirmed = confirmation is not None and confirmation.answer() is not None
    top = shipped_run(trials, confirmation)
    if top.checkpoint is not None:
        caveat = winner_caveat(trials)
        why = (f"the confirmed answer's median-{spec.search.metric} run" if confirmed else
               f"the highest {spec.search.metric}" + (f"; {caveat}" if caveat else ""))
        print(f"\nbest student: {keep_best_student(top, spec)}  ({top.name}, {why}; "
              f"gkd_tune.core.models.load_student; also its run's checkpoint/student.pt in MLflow)")
    print(f"report: {out}/ (summary.md with the hyperparameter importances, trials.parquet, curves.png, betas.png, "
          f"params.png; also on the sweep's MLflow run)")
    print(f"MLflow: {mlflow_ui_hint(spec.tracking.uri, tracker.experiment_id, tracker.trial_run_id(top.trial_id))}")


# ------------------------------------------------------------------------------------------- the report as files


# In a result, but not its numbers: Tune's bookkeeping, and what a trial says in words (a history's table holds them
# as NaN in the rows that do not say it)
NOT_NUMBERS = ("pid", "timestamp", PLAN_KEY, OUTCOME, SETUP_ERROR, VAL_CORRECT)


def numeric(metrics: dict) -> dict:
    """A result's numbers (epoch as an int)."""
    return {k: int(v) if k == "epoch" else float(v) for k, v in metrics.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and k not in NOT_NUMBERS}


def write_parquet(rows: list[dict], path: Path) -> None:
    """Rows of differing keys as one table (a missing value is null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(dict.fromkeys(key for row in rows for key in row))
    pq.write_table(pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows]), path)


def trial_rows(trials: list[TrialSummary], confirmation=None) -> list[dict]:
    """One row per trial and epoch (`epoch_rows`) of every trial of a sweep, stage 'search'; then the
    confirmation's runs, stage 'confirm', with what they confirm and their seed."""
    rows = [row for trial in trials for row in epoch_rows(trial, stage="search")]
    if confirmation is not None:
        rows += [row for c in confirmation.configurations for seed, run in c.runs.items()
                 for row in epoch_rows(run, stage="confirm", confirms=c.label, seed=seed)]
    return rows


def epoch_rows(trial: TrialSummary, **columns) -> list[dict]:
    """One row per epoch of a trial: `columns`, trial id, outcome, every parameter (`param.*`), every metric; a
    tested trial's test metrics on its last row."""
    rows = []
    for index, result in enumerate(trial.history):
        last = index == len(trial.history) - 1
        rows.append({**columns, "trial": trial.name, "trial_id": trial.trial_id, "outcome": trial.outcome,
                     **({CONFIG_KEY: trial.config[CONFIG_KEY]} if CONFIG_KEY in trial.config else {}),
                     **{f"param.{k}": str(v) for k, v in trial.params.items()}, **numeric(result),
                     "test_acc": trial.test["test_acc"] if last and trial.test else None,
                     "test_loss": trial.test["test_loss"] if last and trial.test else None})
    return rows


def param_importances(trials: list[TrialSummary], spec: SweepSpec) -> tuple[dict[str, float], str]:
    """(searched parameter -> importance, summing to 1; how) by Optuna's default importance evaluator over the
    completed trials' final metric. Empty, with the reason, when there is nothing to rank."""
    import optuna

    searched = spec.searched()
    completed = [t for t in winners(trials) if all(name in t.config for name in searched)]
    if len(searched) < 2 or len(completed) < 3:
        return {}, (f"not computed: {len(completed)} completed trial(s) and {len(searched)} searched parameter(s) "
                    f"(needs 3 and 2)")

    def distribution(d):
        if d.kind == "choice":
            return optuna.distributions.CategoricalDistribution(list(d.values))
        if d.kind == "int":
            return optuna.distributions.IntDistribution(int(d.values[0]), int(d.values[1]))
        return optuna.distributions.FloatDistribution(*d.values, log=d.kind == "loguniform")

    distributions = {name: distribution(d) for name, d in searched.items()}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if spec.mode == "max" else "minimize")
    for trial in completed:
        study.add_trial(optuna.trial.create_trial(
            params={name: trial.config[name] for name in searched}, distributions=distributions,
            value=float(trial.metrics[spec.search.metric])))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    how = f"Optuna's fANOVA evaluator over {len(completed)} completed trials"
    if len(completed) < TRUSTED_IMPORTANCES:
        how = (f"**Indicative only**: {how}, fewer than {TRUSTED_IMPORTANCES}; a forest fitted to so few points ranks "
               f"the parameters by chance as often as not")
    return dict(importances), how


def value_at(trial: TrialSummary, metric: str, epoch: int) -> float:
    return next((r[metric] for r in trial.history if r.get("epoch") == epoch and metric in r), math.nan)


def summary_markdown(trials: list[TrialSummary], spec: SweepSpec, importances: dict, how: str,
                     confirmation=None) -> str:
    metric, shown = spec.search.metric, list(spec.searched()) + list(spec.grid())
    lines = [f"# Sweep {spec.name}", "", f"{len(trials)} trials: {outcome_counts(trials)}.", "",
             f"## Top {TOP} completed trials ({metric} at epoch {spec.training.max_epochs}; test split once, after "
             f"the sweep, for the top {spec.search.test_top_k})", "",
             "| rank | trial | " + " | ".join([metric, "test_acc", "outcome", "epochs", *shown]) + " |",
             "|" + "---|" * (6 + len(shown))]
    for rank, trial in enumerate(winners(trials)[:TOP], 1):
        test = f"{trial.test['test_acc']:.4f}" if trial.test else "-"
        lines.append(f"| {rank} | {trial.name} | {trial.metrics[metric]:.4f} | {test} | {trial.outcome} | "
                     f"{trial.metrics.get('epoch', '-')} | " + " | ".join(short(trial.config.get(n), 4) for n in shown)
                     + " |")
    if winners(trials):
        lines += ["", *[line.replace("  ", "- ", 1) if line.startswith("  ") else line
                        for line in resolution_lines(trials, spec)]]
    if confirmation is not None:
        lines += ["", "## Confirmation", "", "```", *confirmation.lines(), "```"]
    lines += ["", "## Hyperparameter importance", ""]
    if importances:
        lines += [f"{how}, on the final {metric}:", "", "| parameter | importance |", "|---|---|"]
        lines += [f"| {name} | {value:.3f} |" for name, value in importances.items()]
    else:
        lines.append(how)
    failed = [t for t in trials if t.outcome in (DIVERGED, FAILED)]
    if failed:
        lines += ["", "## Diverged and failed", ""] + [f"- {t.name}: {t.outcome}" + (f" ({t.error})" if t.error
                                                                                           else "") for t in failed]
    return "\n".join(lines) + "\n"


def report_figures(trials: list[TrialSummary], spec: SweepSpec) -> dict:
    """curves.png (the metric over epochs, every trial; the top ones in colour), betas.png (beta(t) of the top
    trials) and params.png (each searched parameter against the final metric; stopped trials marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, top = spec.search.metric, winners(trials)[:TOP]
    figures = {}
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for trial in trials:
        epochs = [r["epoch"] for r in trial.history if metric in r]
        values = [r[metric] for r in trial.history if metric in r]
        highlighted = trial in top
        axes.plot(epochs, values, color=None if highlighted else "lightgrey", linewidth=2 if highlighted else 1,
                  marker="o", markersize=3,  # a trial stopped at its first rung is one point
                  label=trial.name if highlighted else None, zorder=3 if highlighted else 1)
    axes.set(xlabel="epoch", ylabel=metric, title=f"{spec.name}: {metric} of {len(trials)} trials (top {len(top)} "
                                                   f"in colour)")
    if top:
        axes.legend(fontsize=8)
    figures["curves.png"] = figure

    figure, axes = plt.subplots(figsize=(7, 4.5))
    steps = [i / 100 for i in range(101)]
    for trial in [t for t in top if t.plan and distillation_method(t.plan.distill.method).uses_schedule]:
        schedule = trial.plan.distill.schedule
        axes.plot([t * trial.plan.train.epochs for t in steps], [schedule(t) for t in steps], label=trial.name)
    axes.set(xlabel="epoch", ylabel="beta", title=f"beta(t) of the top {len(top)} trials")
    if axes.lines:
        axes.legend(fontsize=8)
    figures["betas.png"] = figure

    # like with like: every trial at the last epoch all of them reached (a stopped trial's last value is from an
    # earlier epoch than a completed one's), and the completed trials' final values beside, marked as such
    searched = list(spec.searched()) or list(spec.grid())
    ran = [t for t in trials if any(metric in r for r in t.history)]
    common = min((max(r["epoch"] for r in t.history if metric in r) for t in ran), default=0)
    columns = max(1, min(3, len(searched)))
    rows = max(1, math.ceil(len(searched) / columns))
    figure, grid = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for axes, name in zip(grid.flat, searched):
        for outcome, marker, color in ((COMPLETED, "o", "tab:blue"), (STOPPED, "x", "tab:orange")):
            chosen = [t for t in ran if t.outcome == outcome and name in t.config]
            axes.scatter([t.config[name] for t in chosen], [value_at(t, metric, common) for t in chosen],
                         marker=marker, color=color, label=f"{outcome.replace('_', ' ')}, at epoch {common}")
        final = [t for t in ran if t.outcome == COMPLETED and name in t.config]
        axes.scatter([t.config[name] for t in final], [t.metrics[metric] for t in final], marker="o",
                     facecolors="none", edgecolors="black",
                     label=f"completed, final (epoch {spec.training.max_epochs})")
        axes.set(xlabel=name, ylabel=metric)
    for axes in list(grid.flat)[len(searched):]:
        axes.set_visible(False)
    grid.flat[0].legend(fontsize=7)
    figure.suptitle(f"{spec.name}: {metric} against each parameter, every trial at epoch {common}")
    figure.tight_layout()
    figures["params.png"] = figure
    for figure in figures.values():
        plt.close(figure)
    return figures


def write_report(trials: list[TrialSummary], spec: SweepSpec, tracker: SweepTracker, out: Path,
                 confirmation=None) -> str:
    """Write the report's files to `out`, log them to the sweep's run (its description becomes summary.md)."""
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(trial_rows(trials, confirmation), out / "trials.parquet")
    importances, how = param_importances(trials, spec)
    summary = summary_markdown(trials, spec, importances, how, confirmation)
    (out / "summary.md").write_text(summary)
    for name, figure in report_figures(trials, spec).items():
        figure.savefig(out / name, dpi=110)
    for name in ("trials.parquet", "summary.md", "curves.png", "betas.png", "params.png"):
        tracker.client.log_artifact(tracker.parent_id, str(out / name), "report")
    tracker.describe(summary)
    return summary


def sweep_results(location: str):
    """The ResultGrid of a sweep in storage (an absolute path or a URI), finished or not, without running it."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    from .storage import SweepStorage
    from .worker_files import forget_pickled_errors

    storage = SweepStorage(location)
    analysis = ExperimentAnalysis(storage.tune_path, storage_filesystem=storage.tune_filesystem)
    forget_pickled_errors(analysis.trials)  # a worker may have written them
    return ResultGrid(analysis)


def load_trials(spec: SweepSpec, tracker: SweepTracker, location: str) -> list[TrialSummary]:
    """The trials of a sweep in storage, finished or not, with the test metrics measured so far."""
    trials = summarise(sweep_results(location), spec)
    for trial in trials:
        trial.test = tracker.test_metrics(trial.trial_id)
    return trials
