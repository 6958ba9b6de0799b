"""Checks a sweep makes before it starts Ray or trains a teacher: each failure is one ValueError naming the field and
what to do, in seconds, instead of a hang or a failure after hours of teacher training.

    resources   on a new local Ray: this machine can ever run the teacher task and a trial
    storage     the storage path can be written (a probe file, written and deleted)
    tracking    the MLflow tracking URI works (a sqlite store's folder exists; a server answers)
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

from .space import SweepSpec
from .storage import SweepStorage

# A tracking server that does not answer within this many seconds is reported, not retried for minutes.
TRACKING_TIMEOUT_S = 10


def check_local_resources(spec: SweepSpec, cpus: int | None = None, gpus: int | None = None) -> None:
    """On a Ray started here: the teacher task needs ceil(resources.gpu) GPUs and resources.cpu CPUs, a trial
    resources.gpu and resources.cpu; Ray would otherwise wait for them forever."""
    import torch

    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    gpus = torch.cuda.device_count() if gpus is None else gpus
    wanted_gpu, wanted_cpu = spec.resources.gpu, spec.resources.cpu
    if math.ceil(wanted_gpu) > gpus:
        raise ValueError(
            f"resources.gpu: needs {math.ceil(wanted_gpu):g} GPU for the teacher and {wanted_gpu:g} per trial; this "
            f"machine has {gpus} GPU{'s' if gpus != 1 else ''}: set resources.gpu: 0 in {spec.file}, or pass "
            f"--address to run on a Ray cluster that has them")
    if wanted_cpu > cpus:
        raise ValueError(f"resources.cpu: needs {wanted_cpu:g} CPUs per trial; this machine has {cpus}: lower "
                         f"resources.cpu in {spec.file}, or pass --address to run on a Ray cluster")


def check_storage(storage: SweepStorage) -> None:
    """Write and delete a probe file in the storage path (creating the folder, as Ray Tune would)."""
    probe = f".gkd-tune-probe-{uuid.uuid4().hex[:8]}"
    try:
        filesystem, path = storage._resolve(probe)
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(b"probe")
        filesystem.delete_file(path)
    except Exception as error:  # pyarrow raises OSError, ArrowInvalid, PermissionError ... by filesystem
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"storage_path: cannot write to {storage.location}: {message}") from None


def check_tracking(uri: str) -> None:
    """The tracking URI can be used: a sqlite store's folder must exist (MLflow would create it silently), other
    stores must answer a search within TRACKING_TIMEOUT_S."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).expanduser().resolve().parent
        if not folder.is_dir():
            raise ValueError(f"tracking.uri: {uri}: the folder {folder} does not exist")
        return
    from mlflow.tracking import MlflowClient

    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(TRACKING_TIMEOUT_S)}
    saved = {name: os.environ.get(name) for name in quick}
    os.environ.update(quick)  # for this probe only: the sweep itself keeps MLflow's retries
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"tracking.uri: {uri} cannot be used: {message}") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
