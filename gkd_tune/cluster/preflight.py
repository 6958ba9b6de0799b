"""Checks a sweep makes before it starts Ray or trains a teacher: each failure is one ValueError naming the field and
what to do, in seconds, instead of a hang or a failure after hours of teacher training.

    resources   on a new local Ray: this machine can ever run the teacher task and a trial
    address     on a Ray cluster given as HOST:PORT: something answers there
    storage     the storage path can be written (a probe file, written and deleted)
    tracking    the MLflow tracking URI works (a sqlite store's folder exists; a server answers)

and, once Ray is up and before any work on it, `check_shared_with_cluster`: on a cluster of several nodes (or one
whose autoscaler adds nodes), a storage path on this node's own disk or a tracking store in a file here is refused,
with the flags to pass; then `wait_for_cluster_resources`: a cluster that does not provide a trial's resources
within resources.wait_s is named as such, instead of trials pending forever.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from ..core.data import check_source
from ..core.errors import error_line
from ..sweep.space import SweepSpec
from ..sweep.storage import SweepStorage, is_uri

# A storage path, tracking server or Ray cluster that does not answer within this many seconds is reported, not
# retried for minutes. 5 s is many round trips for a probe file's write; with the command's imports, a dead address
# ends the command within 10 s. The environment variable is for storage that is slow but works.
PROBE_TIMEOUT_ENV, PROBE_TIMEOUT_S = "GKD_TUNE_PROBE_TIMEOUT_S", 5.0
MAX_PROBE_TIMEOUT_S = 600


def probe_timeout_s() -> float:
    """The probes' deadline: PROBE_TIMEOUT_S, or the number in GKD_TUNE_PROBE_TIMEOUT_S."""
    text = os.environ.get(PROBE_TIMEOUT_ENV, "").strip()
    if not text:
        return PROBE_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_PROBE_TIMEOUT_S:  # NaN fails too
        raise ValueError(f"{PROBE_TIMEOUT_ENV}: must be a number of seconds in (0, {MAX_PROBE_TIMEOUT_S}], got "
                         f"{text!r}")
    return seconds
# A sqlite tracking store's disk: a sweep's runs, metrics and plots, with room to spare.
MIN_SQLITE_FREE_BYTES = 64 << 20


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


def check_ray_address(address: str, field: str) -> None:
    """A HOST:PORT cluster address answers a TCP connection: Ray itself retries a dead one for many minutes.
    ("auto", "local" and ray:// addresses are left to Ray.)"""
    if address.count(":") != 1 or "://" in address:
        return
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=probe_timeout_s()).close()
    except (OSError, ValueError) as error:
        raise ValueError(f"{field}: no Ray cluster answers at {address} ({error or type(error).__name__}): check the "
                         f"address and that the cluster is up (`ray status` on its head), or leave it out to run on "
                         f"this machine") from None


class NoAnswer(ValueError):
    """A probe that did not answer within its deadline: bad input (exit 2), and told apart from a ValueError the
    probe itself raised (pyarrow's ArrowInvalid is one), which the checks below word as theirs."""


def within_deadline(probe, what: str, seconds: float | None = None):
    """probe()'s result, or a ValueError naming `what` when it has not answered within `seconds` (default
    probe_timeout_s()): a storage or tracking probe that retries without a network (pyarrow's GCS client does, for
    many minutes) must not hang a command. The probe goes on in a daemon thread, which the command's exit abandons."""
    seconds = probe_timeout_s() if seconds is None else seconds
    outcome = {}

    def run():
        try:
            outcome["value"] = probe()
        except BaseException as error:  # noqa: BLE001 (raised again in the caller's thread)
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True, name=f"gkd-tune probe: {what}")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise NoAnswer(f"{what}: no answer within {seconds:g} s (check the address, the credentials and the "
                       f"network; {PROBE_TIMEOUT_ENV}=60 waits longer)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def check_storage(storage: SweepStorage) -> None:
    """Write and delete a probe file in the storage path (creating the folder, as Ray Tune would), within
    probe_timeout_s()."""
    probe = f".gkd-tune-probe-{uuid.uuid4().hex[:8]}"

    def write_and_delete():
        filesystem, path = storage._resolve(probe)
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(b"probe")
        filesystem.delete_file(path)

    probe_storage(storage, write_and_delete, "write to")


def read_storage(storage: SweepStorage, read):
    """read(), a command's first read of a sweep's storage (report, --resume), within probe_timeout_s()."""
    return probe_storage(storage, read, "read")


def probe_storage(storage: SweepStorage, action, verb: str):
    """action()'s result within probe_timeout_s(); whatever it raises as one line naming storage_path."""
    try:
        return within_deadline(action, f"storage_path {storage.location}")
    except NoAnswer:
        raise
    except Exception as error:  # pyarrow raises OSError, ArrowInvalid, PermissionError ... by filesystem
        raise ValueError(f"storage_path: cannot {verb} {storage.location}: {error_line(error)}") from None


# Filesystems that other machines mount too: a local path on one of them can be a cluster's shared storage.
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "ceph", "glusterfs", "gpfs", "beegfs", "fuse.s3fs",
                       "fuse.gcsfuse", "fuse.juicefs", "fuse.mountpoint-s3", "fuse.sshfs", "fuse.glusterfs")
# What a cluster-wide sweep passes instead (cluster/README.md): S3, and gpu.yaml's MLflow server on the head.
SHARED_STORAGE_FLAG = "--storage-path s3://BUCKET/PREFIX"
SHARED_TRACKING_FLAG = "--tracking-uri http://127.0.0.1:5000"


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """The type of the filesystem holding `path` ('ext4', 'nfs4', ...): the longest mount point above it in
    /proc/mounts ('' where that cannot be read)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return ""
    best, kind = "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (str(path) == point or str(path).startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def node_local_storage(storage_path: str, mounts: str | None = None) -> str | None:
    """Why `storage_path` is on this node alone ('on this node's disk (ext4)'), or None: a URI other than file://,
    or a path on a network filesystem, which every node can read."""
    if is_uri(storage_path) and not storage_path.startswith("file://"):
        return None
    path = Path(storage_path.removeprefix("file://")).expanduser().resolve()
    kind = filesystem_type(path, mounts)
    return None if kind in NETWORK_FILESYSTEMS else f"on this node's disk ({kind or 'local'})"


def node_local_tracking(uri: str) -> bool:
    """A tracking URI that is a file here (a sqlite database, an mlruns folder, a plain path): other machines never
    see it, and on a cluster's head it lives in the container that the next `ray up` may replace."""
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    return scheme in ("", "file", "sqlite") and uri not in ("databricks", "databricks-uc")


def cluster_spans_nodes(wait_s: float = 12.0) -> bool:
    """Whether the connected Ray cluster has several nodes, or an autoscaler that adds them (cluster/gpu.yaml starts
    with its head alone). Under autoscaler v2 (what `ray up` and KubeRay run), a node that a cluster launcher started
    carries its node type's name, a node of a plain `ray start` none. Autoscaler v1's monitor reports every few
    seconds instead (waited for, at most `wait_s`, on a cluster that has just started); a head without a cluster
    config runs Ray's read-only autoscaler, whose node types are the nodes' own ids (`format_readonly_node_type`),
    while a configured one names its node types."""
    import ray
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray._raylet import GcsClient
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.autoscaler.v2.sdk import get_cluster_resource_state
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    if sum(1 for node in ray.nodes() if node.get("Alive")) > 1:
        return True
    try:
        gcs = GcsClient(ray.get_runtime_context().gcs_address)
        v2 = is_autoscaler_v2(fetch_from_server=True, gcs_client=gcs)
    except Exception:  # a Ray Client driver (ray://) has no GCS address of its own: v1's status is what it can read
        v2 = False
    if v2:  # it never writes v1's status
        return any(node.ray_node_type_name for node in get_cluster_resource_state(gcs).node_states)
    readonly_prefix = format_readonly_node_type("")
    deadline = time.monotonic() + wait_s
    while True:
        if sum(1 for node in ray.nodes() if node.get("Alive")) > 1:
            return True
        status = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
        report = (json.loads(status).get("autoscaler_report") or {}) if status else {}
        if report.get("active_nodes"):
            return any(not node_type.startswith(readonly_prefix) for node_type in report["active_nodes"])
        if time.monotonic() > deadline:  # no autoscaler reports here: a Ray that adds no nodes
            return False
        time.sleep(0.5)


def check_shared_with_cluster(spec: SweepSpec, mounts: str | None = None) -> None:
    """On a Ray cluster that spans nodes, the storage path must be storage every node reads and the tracking store
    must not be a file on the driver's node: otherwise the teacher trains for hours onto one worker's disk and every
    trial then fails, or the runs stay in a container. Call after connecting, before any work on the cluster."""
    local_storage = node_local_storage(spec.storage_path, mounts)
    local_tracking = node_local_tracking(spec.tracking.uri)
    if not (local_storage or local_tracking) or not cluster_spans_nodes():
        return
    problems, flags = [], []
    if local_storage:
        problems.append(f"storage_path {spec.storage_path} is {local_storage}")
        flags.append(f"{SHARED_STORAGE_FLAG} (or another URI every node reads, or a network filesystem every node "
                     f"mounts)")
    if local_tracking:
        problems.append(f"tracking.uri {spec.tracking.uri} is a file on this node")
        flags.append(f"{SHARED_TRACKING_FLAG} (an MLflow server: cluster/gpu.yaml starts one on the head)")
    raise ValueError(f"{' and '.join(problems)}, but this Ray cluster spans several nodes (or its autoscaler adds "
                     f"them): pass {' '.join(flags)}")


def check_tracking(uri: str) -> None:
    """The tracking URI can be used: a sqlite store's folder must exist (MLflow would create it silently), other
    stores must answer a search within probe_timeout_s()."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).expanduser().resolve().parent
        if not folder.is_dir():
            raise ValueError(f"tracking.uri: {uri}: the folder {folder} does not exist")
        free = shutil.disk_usage(folder).free
        if free < MIN_SQLITE_FREE_BYTES:  # found before the teacher, not by the first write after it
            raise ValueError(f"tracking.uri: {uri}: {free >> 20} MB free on the disk of {folder}, a sweep's store "
                             f"needs at least {MIN_SQLITE_FREE_BYTES >> 20} MB")
        return
    from mlflow.tracking import MlflowClient

    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(math.ceil(probe_timeout_s()))}
    saved = {name: os.environ.get(name) for name in quick}
    os.environ.update(quick)  # for this probe only: the sweep itself keeps MLflow's retries
    try:
        within_deadline(lambda: MlflowClient(tracking_uri=uri).search_experiments(max_results=1), f"tracking.uri {uri}")
    except NoAnswer:
        raise
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"tracking.uri: {uri} cannot be used: {message}") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def wait_for_cluster_resources(spec: SweepSpec, report_every_s: float = 60.0) -> None:
    """Wait until the Ray cluster can place the teacher task (resources.cpu CPUs and ceil(resources.gpu) GPUs, which
    also fits a trial), at most resources.wait_s seconds.

    The request is a placement group, which an autoscaler sees as demand and starts a worker for: minutes on a
    cloud. A cluster that never provides it (no worker type offers it, a cloud quota of 0) would otherwise leave the
    teacher task and every trial pending with no end; here it is one error naming what is missing.
    """
    from ray.util.placement_group import placement_group, remove_placement_group

    gpus = math.ceil(spec.resources.gpu)
    bundle = {"CPU": spec.resources.cpu, **({"GPU": float(gpus)} if gpus else {})}
    wanted = task_resources(spec)
    timeout_s = spec.resources.wait_s
    group = placement_group([bundle])
    started = time.monotonic()
    try:
        if group.wait(timeout_seconds=1):
            return
        print(f"waiting for the Ray cluster to provide {wanted} on one node (it has {cluster_size()}; an autoscaler "
              f"may be starting a worker); giving up after {timeout_s:g} s (resources.wait_s)", flush=True)
        while (left := timeout_s - (time.monotonic() - started)) > 0:
            if group.wait(timeout_seconds=max(1, min(report_every_s, left))):
                return
            print(f"  still waiting for {wanted} after {time.monotonic() - started:.0f} s "
                  f"(the cluster has {cluster_size()})", flush=True)
        raise ValueError(
            f"resources: the Ray cluster did not provide {wanted} on one node within {timeout_s:g} s (it has "
            f"{cluster_size()}): check that a worker type offers them and can start (`ray status`; the autoscaler's "
            f"log on the head, /tmp/ray/session_latest/logs/monitor.log, says why a launch failed: a cloud quota, "
            f"the spot service-linked role, capacity), lower resources in {spec.file}, or raise resources.wait_s")
    finally:
        remove_placement_group(group)


def task_resources(spec: SweepSpec) -> str:
    """What the teacher task asks for, and a trial fits in: '2 CPU + 1 GPU'."""
    gpus = math.ceil(spec.resources.gpu)
    return f"{spec.resources.cpu:g} CPU" + (f" + {gpus} GPU" if gpus else "")


def cluster_size() -> str:
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    total = ray.cluster_resources()
    return (f"{total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU on {len(nodes)} node"
            + ("s" if len(nodes) != 1 else ""))


def check_before_ray(spec: SweepSpec, address: str | None) -> None:
    """Before Ray starts: a given cluster answers, or this machine can run the trials; the tracking URI works; the
    data can be read and split (data.check_source; its warnings printed)."""
    for warning in check_source(spec.data.source, spec.data.val_fraction):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    if not check_given_cluster(address):  # a Ray started here: can it ever run the trials?
        check_local_resources(spec)
    check_tracking(spec.tracking.uri)


def check_given_cluster(address: str | None) -> bool:
    """The cluster named by --address, else by RAY_ADDRESS, answers (Ray itself retries a dead one for many
    minutes); False when none is named."""
    cluster = address or os.environ.get("RAY_ADDRESS")
    if cluster:
        check_ray_address(cluster, "--address" if address else "RAY_ADDRESS")
    return bool(cluster)
