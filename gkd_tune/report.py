"""The end-of-sweep summary: each trial's outcome, the top completed trials, the best student's file, and how to open
the MLflow UI on them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .files import STUDENT_FILE
from .space import SweepSpec
from .errors import error_line
from .strategy import COMPLETED, DIVERGED, FAILED, SETUP_ERROR, STOPPED, trial_outcome
from .tracking import VIEW_KEY, SweepTracker, short

TOP = 5


def mlflow_ui_hint(uri: str, experiment_id: str) -> str:
    """How to look at the sweep's runs: a tracking server is already a UI; a store needs `mlflow ui`."""
    # the runs table in "Model training" mode, in the sweep's saved view (tracking.VIEW_KEY: trials grouped by
    # outcome, accuracies as columns); MLflow 3's bare experiment page opens its GenAI overview instead
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/{page} (on a cluster through the tunnel: see cluster/README.md)"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())  # relative -> absolute, works anywhere
    return f"mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000/{page}"


def checkpoint_location(checkpoint) -> str:
    """A Tune checkpoint's folder as a path or URI (s3://...) that can be typed elsewhere."""
    filesystem = checkpoint.filesystem
    if filesystem is None or filesystem.type_name == "local":
        return checkpoint.path
    scheme = {"gcs": "gs"}.get(filesystem.type_name, filesystem.type_name)  # pyarrow's name -> the URI scheme
    return f"{scheme}://{checkpoint.path}"


@dataclass
class TrialSummary:
    """One trial as the summary sees it: its outcome decided once (strategy.trial_outcome)."""

    trial_id: str
    outcome: str
    metrics: dict  # the last reported result
    config: dict
    checkpoint: object | None  # a Tune Checkpoint
    error: str | None = None
    test: dict | None = None  # test_loss, test_acc: filled for the top-k after the sweep


def summarise(results, spec: SweepSpec) -> list[TrialSummary]:
    """Every trial of a ResultGrid with its outcome, completed ones first, best first (by the last epoch's metric)."""
    trials = []
    for result in results:
        metrics = result.metrics or {}
        error = error_line(result.error) if result.error else metrics.get(SETUP_ERROR)
        outcome = trial_outcome(metrics, spec.search.metric, spec.training.max_epochs, result.error is not None)
        trials.append(TrialSummary(metrics.get("trial_id") or result.path.rsplit("/", 1)[-1], outcome, metrics,
                                   result.config or {}, result.checkpoint, error))
    sign = -1 if spec.mode == "max" else 1
    trials.sort(key=lambda t: (t.outcome != COMPLETED, sign * t.metrics.get(spec.search.metric, 0.0)
                               if t.outcome == COMPLETED else 0.0))
    return trials


def winners(trials: list[TrialSummary]) -> list[TrialSummary]:
    """The trials that may win: completed, finite metric; best first. Stopped, diverged and failed ones never do."""
    return [t for t in trials if t.outcome == COMPLETED]


def outcome_counts(trials: list[TrialSummary]) -> str:
    counts = {o: sum(t.outcome == o for t in trials) for o in (COMPLETED, STOPPED, DIVERGED, FAILED)}
    return ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in counts.items())


def results_table(trials: list[TrialSummary], spec: SweepSpec) -> str:
    """The outcome counts, the top completed trials (by the last epoch's validation metric; test metrics where
    evaluated) and every diverged or failed trial with its error."""
    metric = spec.search.metric
    shown = list(spec.searched()) + list(spec.grid())
    lines = [f"{len(trials)} trials: {outcome_counts(trials)}",
             f"Top completed trials ({metric} at epoch {spec.training.max_epochs}; test split once, after the sweep):",
             f"{'rank':<5}{'trial':<10}{metric:>9}{'test_acc':>9}{'epochs':>8}  " + "  ".join(f"{n:>9}" for n in shown)]
    for rank, trial in enumerate(winners(trials)[:TOP], 1):
        test = f"{trial.test['test_acc']:>9.4f}" if trial.test else f"{'-':>9}"
        values = "  ".join(f"{short(trial.config.get(n), 4):>9}" for n in shown)
        lines.append(f"{rank:<5}{trial.trial_id:<10}{trial.metrics[metric]:>9.4f}{test}{trial.metrics['epoch']:>8}  "
                     f"{values}")
    lines += [f"{t.outcome}: {t.trial_id}" + (f"  ({t.error})" if t.error else "")
              for t in trials if t.outcome in (DIVERGED, FAILED)]
    return "\n".join(lines)


def print_summary(trials: list[TrialSummary], spec: SweepSpec, tracker: SweepTracker) -> None:
    """The results table, the best student's file and how to open MLflow; the table also becomes the description
    of the sweep's MLflow run, so the answer is on its page."""
    table = results_table(trials, spec)
    print(f"\n{table}")
    tracker.describe(f"```\n{table}\n```")
    top = winners(trials)[0]
    student = f"{checkpoint_location(top.checkpoint)}/{STUDENT_FILE}" if top.checkpoint else None
    print(f"\nbest student: {student}  (gkd_tune.models.load_student; also the best run's checkpoint/student.pt "
          f"artifact in MLflow)")
    print(f"MLflow: {mlflow_ui_hint(spec.tracking.uri, tracker.experiment_id)}")
