"""Ray as the commands use it: which Ray a command runs on, a task with a trial's resources, a task's bad input
returned as itself (one line, exit 2), one driver per sweep on a machine, and nothing left behind by a driver that
was killed.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from ..core.data import DataSourceError, TransientDataError
from ..sweep.space import SweepSpec
from ..sweep.storage import SweepStorage
from ..sweep.trainable import LOGICAL_GPUS_ENV


# Every process of a Ray that a sweep's driver starts for itself inherits this mark, "<sweep key>:<driver pid>":
# after a kill -9 of the driver (or of its process group: Ray's workers have groups of their own), the sweep's next
# driver finds them by it (end_leftovers).
OWN_RAY_MARK = "GKD_TUNE_OWN_RAY"


def connect_to_ray(address: str | None, own_ray: bool = True, storage: SweepStorage | None = None,
                   log_file: Path | None = None) -> bool:
    """--address, else RAY_ADDRESS (`ray job submit` sets it), else a new Ray of this driver's own on this machine,
    where `own_ray` allows one (a sweep, whose `storage` marks its processes); Ray's own default would join whatever
    `ray start` last recorded here, or fail on a cluster that has died. A driver started with GKD_TUNE_LOGICAL_GPUS=1
    passes it to every task and trial it starts. Returns whether it joined a running cluster (False: it started a
    Ray of its own). With `log_file` (a quiet console): Ray's, Ray Tune's, MLflow's and Optuna's log lines go there,
    and only their errors to the console. No colour codes around the trials' lines off a terminal."""
    import logging

    import ray

    os.environ.setdefault("RAY_COLOR_PREFIX", "1" if sys.stdout.isatty() else "0")
    if log_file is not None:
        # Ray Tune's new console output prints its header, paths and a TensorBoard hint even at verbose 0; the
        # legacy reporter at verbose 0 prints nothing
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"

    given = address or os.environ.get("RAY_ADDRESS")
    if not given and not own_ray:
        raise ValueError("--address: give the Ray cluster to check (HEAD_IP:6379, or `auto` for the one this "
                         "machine belongs to), or run this as a job on it (`ray job submit`, which sets RAY_ADDRESS)")
    field = "--address" if address else "RAY_ADDRESS" if given else "a Ray of its own"
    logical = os.environ.get(LOGICAL_GPUS_ENV) == "1"
    mark = {OWN_RAY_MARK: f"{sweep_key(storage)}:{os.getpid()}"} if storage is not None and not given else {}
    os.environ.update(mark)  # while Ray starts: its processes inherit it, this driver's later children do not
    try:
        ray.init(address=address or (None if given else "local"), include_dashboard=False,
                 logging_level=logging.ERROR if log_file is not None else logging.INFO,
                 runtime_env={"env_vars": {LOGICAL_GPUS_ENV: "1"}} if logical else None)
    except ConnectionError as error:
        raise ValueError(f"{field}: {str(error).rstrip('.')}: check that the cluster is up (`ray status` on its head)"
                         + (", or leave it out to run on this machine" if own_ray else "")) from None
    finally:
        for name in mark:
            os.environ.pop(name, None)
    if log_file is not None:
        keep_logs_in(log_file)
    return bool(given)


QUIETED_LOGGERS = ("ray", "mlflow", "alembic", "optuna")


def keep_logs_in(path: Path) -> None:
    """The libraries' log lines (INFO and up) to `path`; to the console only their errors."""
    import logging

    import mlflow  # noqa: F401 (its import installs its handlers: they are set after it)
    import optuna  # noqa: F401

    path.parent.mkdir(parents=True, exist_ok=True)
    file = logging.FileHandler(path)
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    file.gkd_tune_log = True  # an earlier command's in this process (tests, notebooks) is replaced, not added to
    for name in QUIETED_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if getattr(handler, "gkd_tune_log", False):
                logger.removeHandler(handler)
                handler.close()
            elif not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.ERROR)
        logger.setLevel(logging.INFO)
        logger.addHandler(file)


def trial_task(function, spec: SweepSpec):
    """`function` as a Ray task with a trial's CPUs and whole GPUs (so that on a cluster it lands on a GPU worker,
    never on the CPU-only head), retried twice if its node is lost or its data could not be fetched just now."""
    import ray

    return ray.remote(function).options(num_cpus=spec.resources.cpu, num_gpus=math.ceil(spec.resources.gpu),
                                        max_retries=2, retry_exceptions=[TransientDataError])


def task_results(refs):
    """ray.get, with a task's bad input (a ValueError: its data source, its teacher) raised as itself, so that the
    command line prints it as one line and exits 2, not as a remote traceback."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as error:
        raise error.cause if isinstance(error.cause, (DataSourceError, ValueError)) else error


def acquire_sweep_lock(storage: SweepStorage, what: str) -> FileLock:
    lock = sweep_lock(storage)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ValueError(f"{what} is already running from this machine ({storage.location}): wait for it to end, "
                         f"or give another name / --storage-path") from None
    return lock


def sweep_key(storage: SweepStorage) -> str:
    return hashlib.sha256(storage.location.encode()).hexdigest()[:16]


def end_leftovers(storage: SweepStorage) -> list[int]:
    """End what an earlier driver of this sweep left running on this machine when it was killed: the processes of
    its own Ray (its GCS, raylet, workers and trials), found by their OWN_RAY_MARK, whose driver is gone. Called
    holding the sweep's lock, so no live driver of this sweep can own them; never another sweep's, nor a cluster's.
    Returns the processes ended."""
    import signal

    prefix = f"{OWN_RAY_MARK}={sweep_key(storage)}:".encode()
    ended = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            mark = next((v for v in (entry / "environ").read_bytes().split(b"\0") if v.startswith(prefix)), None)
        except OSError:  # gone already, or another user's
            continue
        if mark is None or Path(f"/proc/{int(mark[len(prefix):])}").exists():
            continue  # not this sweep's, or its driver still runs
        try:
            os.kill(int(entry.name), signal.SIGKILL)
            ended.append(int(entry.name))
        except OSError:
            pass
    return ended


def sweep_lock(storage: SweepStorage) -> FileLock:
    """One driver per sweep on this machine (on a cluster every driver runs on the head), taken before the teacher
    step, during which Tune has written nothing that would show the sweep exists. Keyed to the sweep's location in
    a folder of this user's that no setting moves: two drivers with different caches (GKD_TUNE_CACHE) still meet
    here."""
    folder = Path(tempfile.gettempdir()) / f"gkd-tune-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return FileLock(folder / f"{sweep_key(storage)}.lock")
