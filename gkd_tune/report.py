"""The end-of-sweep summary: top trials, the best student's file, and how to open the MLflow UI on them."""

from __future__ import annotations

from pathlib import Path

from .files import STUDENT_FILE
from .space import SweepSpec
from .tracking import SweepTracker

TOP = 5


def mlflow_ui_hint(uri: str, experiment_id: str) -> str:
    """How to look at the sweep's runs: a tracking server is already a UI; a store needs `mlflow ui`."""
    page = f"#/experiments/{experiment_id}"
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
    student = f"{checkpoint_location(best.checkpoint)}/{STUDENT_FILE}" if best.checkpoint else None
    print(f"\nbest student: {student}  (gkd_tune.models.load_model; also the best run's checkpoint/student.pt "
          f"artifact in MLflow)")
    print(f"MLflow: {mlflow_ui_hint(spec.tracking.uri, tracker.experiment_id)}")
    return best.metrics["trial_id"], float(best.metrics[metric])


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
