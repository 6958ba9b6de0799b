"""The best student shipped: after a sweep's test step, its best completed trial's student is logged to the trial's
run as an MLflow PyTorch model (uint8 images N x 3 x H x W in, logits out, its normalisation inside; the class names
in its metadata) and registered under the sweep's name. The alias `champion` marks the registered version with the
best validation metric: a later sweep of the same name moves it only by doing better.

    mlflow.pyfunc.load_model("models:/<name>@champion").predict(images)   # logits; argmax = load_student's predict
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from ..core.models import ImagesToLogits, load_student
from .storage import copy_student

CHAMPION = "champion"
METRIC_TAG = "gkd_tune.val_metric"  # on a model version: the validation metric it was chosen by
REGISTERED_TAG = "gkd_tune.registered"  # on the sweep's run: the version this sweep registered (once per sweep)


def register_best(spec, tracker, trial) -> str:
    """Log and register `trial`'s student (a report.TrialSummary with a checkpoint); the line to print."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    client = tracker.client
    done = client.get_run(tracker.parent_id).data.tags.get(REGISTERED_TAG)
    if done:
        return f"registered: models:/{spec.name}/{done} (by this sweep, earlier)"
    with tempfile.TemporaryDirectory() as directory:
        try:
            student = load_student(copy_student(trial.checkpoint, Path(directory)))
        except ValueError as error:  # the sweep's answer stands; only its shipping is missed
            return f"warning: not registered: the best trial's student cannot be loaded ({error})"
    model = ImagesToLogits(student).eval()
    size = model.image_size
    example = np.zeros((2, 3, size, size), dtype=np.uint8)
    with torch.no_grad():
        signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
    value = float(trial.metrics[spec.search.metric])
    mlflow.set_tracking_uri(spec.tracking.uri)
    run_id = tracker.trial_run_id(trial.trial_id)
    metadata = {"class_names": student.class_names, spec.search.metric: value, "image_size": size,
                "dataset": student.metadata.get("dataset"), "arch": student.net.arch}

    def log(serialization: str):
        return mlflow.pytorch.log_model(
            model, name="model", signature=signature, input_example=example, registered_model_name=spec.name,
            await_registration_for=60, serialization_format=serialization, metadata=metadata,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"]
            + (["gkd-tune"] if serialization == "pickle" else []))

    try:  # (MLflow's own "Successfully registered" lines: the line this returns says it)
        with mlflow.start_run(run_id=run_id), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            try:  # a torch.export program: loads without gkd-tune, and without unpickling code
                info = log("pt2")
            except MlflowException:
                raise
            except Exception:  # a model of the user's that torch.export cannot trace: the module, pickled
                info = log("pickle")
    except MlflowException as error:  # a store without a model registry (a plain mlruns folder)
        return f"not registered: {str(error).splitlines()[0]}"
    finally:  # the trial's run was finished: it stays so
        client.set_terminated(run_id, "FINISHED")
    version = str(info.registered_model_version)
    client.set_model_version_tag(spec.name, version, METRIC_TAG, str(value))
    tracker.log_sweep_metrics({}, {REGISTERED_TAG: version})
    try:
        champion = client.get_model_version_by_alias(spec.name, CHAMPION)
        held = float(champion.tags.get(METRIC_TAG, "nan"))
    except MlflowException:  # no champion yet
        champion, held = None, float("nan")
    better = champion is None or not held == held or (value > held if spec.mode == "max" else value < held)
    if better:
        client.set_registered_model_alias(spec.name, CHAMPION, version)
        return (f"registered: models:/{spec.name}/{version}, now models:/{spec.name}@{CHAMPION} "
                f"({spec.search.metric} {value:.4f})")
    return (f"registered: models:/{spec.name}/{version} ({spec.search.metric} {value:.4f}); {CHAMPION} stays "
            f"version {champion.version} ({held:.4f})")
