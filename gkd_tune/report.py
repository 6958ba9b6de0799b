"""The end-of-sweep summary: top trials, the best student's file, and how to open the MLflow UI on them."""

from __future__ import annotations

from pathlib import Path

from .space import SweepSpec
from .tracking import SweepTracker
from .trainable import STUDENT_FILE

TOP = 5


def mlflow_ui_command(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())  # relative -> absolute, works anywhere
    return f"mlflow ui --backend-store-uri {uri}"


def print_summary(results, spec: SweepSpec, tracker: SweepTracker) -> tuple[str, float]:
    """Print the top trials (by the last epoch's metric) and return (best trial id, its metric value)."""
    metric = spec.search.metric
    finished = [r for r in results if r.error is None and r.metrics and metric in r.metrics]
    finished.sort(key=lambda r: r.metrics[metric], reverse=spec.mode == "max")
    searched = list(spec.searched())
    header = f"{'rank':<5}{'trial':<10}{metric:>9}{'epochs':>8}  " + "  ".join(f"{n:>9}" for n in searched)
    print(f"\nTop trials of {len(finished)} ({metric}, last epoch):\n{header}")
    for rank, result in enumerate(finished[:TOP], 1):
        values = "  ".join(f"{_short(result.config.get(n)):>9}" for n in searched)
        print(f"{rank:<5}{result.metrics['trial_id']:<10}{result.metrics[metric]:>9.4f}"
              f"{result.metrics['epoch']:>8}  {values}")
    best = finished[0]
    student = Path(best.checkpoint.path) / STUDENT_FILE if best.checkpoint else None
    print(f"\nbest student: {student}  (gkd_tune.models.load_model)")
    experiment_url = f"#/experiments/{tracker.experiment_id}"
    print(f"MLflow: {mlflow_ui_command(spec.tracking.uri)}   then open http://127.0.0.1:5000/{experiment_url}")
    return best.metrics["trial_id"], float(best.metrics[metric])


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
