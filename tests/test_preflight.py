"""Checks before Ray starts: each failure is one line, in seconds, and nothing is written."""

from pathlib import Path

import pytest

from gkd_tune import search
from gkd_tune.cluster.preflight import check_local_resources, check_storage, check_tracking
from gkd_tune.sweep.space import parse_space
from gkd_tune.sweep.storage import SweepStorage

ROOT = Path(__file__).resolve().parents[1]


def spec(cpu=1.0, gpu=0.0):
    return parse_space({"name": "s", "resources": {"cpu": cpu, "gpu": gpu}}, "x.yaml")


@pytest.mark.parametrize("resources, machine, message", [
    ((1, 0.5), (2, 0), r"resources.gpu: needs 1 GPU for the teacher and 0.5 per trial; this machine has 0 GPUs: set "
                       r"resources.gpu: 0 in x.yaml, or pass --address"),
    ((1, 2), (2, 1), r"needs 2 GPU for the teacher and 2 per trial; this machine has 1 GPU:"),
    ((16, 0), (2, 0), r"resources.cpu: needs 16 CPUs per trial; this machine has 2"),
])
def test_a_local_ray_that_can_never_run_the_trials_is_refused(resources, machine, message):
    with pytest.raises(ValueError, match=message):
        check_local_resources(spec(*resources), *machine)
    check_local_resources(spec(*resources), 64, 8)  # a machine that has them: fine


def test_the_paper_space_on_this_cpu_machine_fails_at_once(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert search.main(["--space", str(ROOT / "search_spaces" / "gompertz.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: resources.gpu: needs 1 GPU for the teacher and 1 per trial") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_unwritable_storage_and_unusable_tracking(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"storage_path: cannot write to .*/file/s"):
        check_storage(SweepStorage.for_sweep(str(tmp_path / "file"), "s"))
    check_storage(SweepStorage.for_sweep(str(tmp_path / "ok"), "s"))
    assert list((tmp_path / "ok" / "s").iterdir()) == []  # the probe is gone (the folder stays, as Tune makes it)
    with pytest.raises(ValueError, match=r"tracking.uri: sqlite:////nonexistent/dir/x.db: the folder /nonexistent/dir"):
        check_tracking("sqlite:////nonexistent/dir/x.db")
    with pytest.raises(ValueError, match=r"tracking.uri: bogus://x cannot be used"):
        check_tracking("bogus://x")
    check_tracking(f"sqlite:///{tmp_path}/m.db")


@pytest.mark.slow
def test_a_cluster_that_does_not_provide_a_trials_resources_in_time_is_named_not_waited_on_forever(capsys):
    import time

    import ray

    from gkd_tune.cluster.preflight import cluster_spans_nodes, wait_for_cluster_resources

    # a Ray of its own: a plain ray.init() joins any cluster a stale ray_current_cluster file names
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False)
    try:
        assert not cluster_spans_nodes()  # a Ray of its own: one node, and no autoscaler to add any
        wait_for_cluster_resources(spec(cpu=2))  # provided at once: silent
        assert capsys.readouterr().out == ""
        started = time.time()
        gpu_sweep = parse_space({"name": "s", "resources": {"cpu": 1, "gpu": 0.5, "wait_s": 3}}, "x.yaml")
        with pytest.raises(ValueError, match=r"resources: the Ray cluster did not provide 1 CPU \+ 1 GPU on one node "
                                             r"within 3 s \(it has 2 CPU, 0 GPU on 1 node\): check that a worker"):
            wait_for_cluster_resources(gpu_sweep, report_every_s=1)
        assert time.time() - started < 15
        out = capsys.readouterr().out
        assert "waiting for the Ray cluster to provide 1 CPU + 1 GPU on one node" in out and "still waiting" in out
        wait_for_cluster_resources(spec(cpu=2))  # the request was withdrawn: the CPUs are free again
    finally:
        ray.shutdown()


MOUNTS = """overlay / overlay rw,relatime 0 0
/dev/vda1 /data ext4 rw,relatime 0 0
fs-0abc.efs.us-west-2.amazonaws.com:/ /mnt/efs nfs4 rw,relatime 0 0
/dev/vdb /mnt/my\\040disk xfs rw 0 0
"""


@pytest.mark.parametrize("storage_path, verdict", [
    ("/data/runs", "on this node's disk (ext4)"),
    ("/mnt/efs/runs", None),  # NFS: every node mounts it
    ("file:///mnt/efs/runs", None),
    ("/mnt/efsx/runs", "on this node's disk (overlay)"),  # a prefix of a mount point's name is not below it
    ("/mnt/my disk/runs", "on this node's disk (xfs)"),  # /proc/mounts writes a space as \040
    ("s3://bucket/runs?endpoint_override=10.0.0.5:8333", None),
    ("gs://bucket/runs", None),
])
def test_which_storage_paths_are_on_this_node_alone(storage_path, verdict):
    from gkd_tune.cluster.preflight import node_local_storage

    assert node_local_storage(storage_path, MOUNTS) == verdict


@pytest.mark.parametrize("uri, local", [
    ("sqlite:///mlflow.db", True), ("file:///x/mlruns", True), ("mlruns", True), ("/abs/mlruns", True),
    ("http://127.0.0.1:5000", False), ("https://mlflow.example.com", False), ("databricks", False),
    ("postgresql://u@db:5432/mlflow", False),
])
def test_which_tracking_stores_are_files_on_this_node(uri, local):
    from gkd_tune.cluster.preflight import node_local_tracking

    assert node_local_tracking(uri) is local


def test_a_cluster_that_spans_nodes_refuses_this_nodes_disk_and_a_tracking_file_naming_the_flags(monkeypatch):
    from gkd_tune.cluster import preflight

    local = parse_space({"name": "s", "storage_path": "/data/runs", "tracking": {"uri": "sqlite:///mlflow.db"}},
                        "x.yaml")
    shared = local.with_overrides(storage_path="s3://bucket/runs", tracking_uri="http://127.0.0.1:5000")
    monkeypatch.setattr(preflight, "cluster_spans_nodes", lambda: True)
    with pytest.raises(ValueError) as refused:
        preflight.check_shared_with_cluster(local, MOUNTS)
    assert str(refused.value) == (
        "storage_path /data/runs is on this node's disk (ext4) and tracking.uri sqlite:///mlflow.db is a file on this "
        "node, but this Ray cluster spans several nodes (or its autoscaler adds them): pass --storage-path "
        "s3://BUCKET/PREFIX (or another URI every node reads, or a network filesystem every node mounts) "
        "--tracking-uri http://127.0.0.1:5000 (an MLflow server: cluster/gpu.yaml starts one on the head)")
    with pytest.raises(ValueError, match=r"^tracking.uri file:///x/mlruns is a file on this node, but .* pass "
                                         r"--tracking-uri http://127.0.0.1:5000 \(an MLflow server"):
        preflight.check_shared_with_cluster(shared.with_overrides(tracking_uri="file:///x/mlruns"), MOUNTS)
    preflight.check_shared_with_cluster(shared, MOUNTS)
    monkeypatch.setattr(preflight, "cluster_spans_nodes", lambda: False)  # one machine: its own disk is fine
    preflight.check_shared_with_cluster(local, MOUNTS)


def test_a_storage_or_tracking_probe_that_does_not_answer_ends_in_one_line(tmp_path, monkeypatch):
    """pyarrow's GCS client retries for many minutes without a network; every probe has a deadline instead."""
    import time

    from types import SimpleNamespace

    from gkd_tune.cluster import preflight

    monkeypatch.setenv(preflight.PROBE_TIMEOUT_ENV, "0.5")

    def hangs(*args, **kwargs):
        time.sleep(30)

    storage = SimpleNamespace(location="gs://no-network/runs/s", _resolve=hangs, has_experiment=hangs)
    for probe in (lambda: preflight.check_storage(storage), lambda: preflight.read_storage(storage, storage.has_experiment)):
        started = time.monotonic()
        with pytest.raises(ValueError, match=rf"storage_path {storage.location}: no answer within 0.5 s"):
            probe()
        assert time.monotonic() - started < 2

    def refuses():
        raise OSError("When resolving region for bucket 'b': AWS Error NETWORK_CONNECTION\nmore")

    with pytest.raises(ValueError, match=r"storage_path: cannot read .*: OSError: When resolving region .*CONNECTION$"):
        preflight.read_storage(storage, refuses)

    def invalid(*args, **kwargs):  # pyarrow's ArrowInvalid is a ValueError: worded as the probe's, not passed on
        raise ValueError("Expected a local filesystem path, got a URI\nmore")

    storage = SimpleNamespace(location="s3://b/runs/s", _resolve=invalid)
    with pytest.raises(ValueError, match=r"^storage_path: cannot write to s3://b/runs/s: ValueError: Expected a local "
                                         r"filesystem path, got a URI$"):
        preflight.check_storage(storage)


def test_a_sqlite_store_on_a_full_disk_is_found_before_anything_starts(tmp_path, monkeypatch):
    from collections import namedtuple

    from gkd_tune.cluster import preflight

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - (5 << 20), 5 << 20))
    with pytest.raises(ValueError, match=rf"tracking.uri: sqlite:///{tmp_path}/m.db: 5 MB free on the disk of "
                                         rf"{tmp_path}, a sweep's store needs at least 64 MB"):
        preflight.check_tracking(f"sqlite:///{tmp_path}/m.db")


def marked(key: str) -> list[int]:
    """The processes whose environment holds the own-Ray mark of a sweep key."""
    from pathlib import Path

    from gkd_tune.cluster.runtime import OWN_RAY_MARK

    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"{OWN_RAY_MARK}={key}:".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_the_processes_a_killed_driver_left_are_ended_by_the_next_and_only_those(tmp_path):
    """kill -9 to a sweep driver's process group while its teacher trains: Ray's workers have process groups of
    their own and outlive it (Ray 2.60's for a few seconds, until they notice their raylet is gone; a busy GPU
    kernel longer). The sweep's next driver ends them at once (engine.run calls end_leftovers holding the sweep's
    lock); another sweep's, or a live driver's, are left alone."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from gkd_tune.cluster.runtime import OWN_RAY_MARK, end_leftovers, sweep_key
    from gkd_tune.sweep.storage import SweepStorage

    space = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"
    storage = SweepStorage.for_sweep(str(tmp_path / "runs"), "quickstart")
    key = sweep_key(storage)
    driver = subprocess.Popen([sys.executable, "-m", "gkd_tune.search", "--space", str(space), "--storage-path",
                               str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    others = [subprocess.Popen(["sleep", "120"], env=dict(os.environ, **{OWN_RAY_MARK: mark}))
              for mark in (f"{'0' * 16}:{driver.pid}",  # another sweep's, its driver about to go too
                           f"{key}:{os.getpid()}")]  # this sweep's, its driver alive (here)

    def workers(task: bytes = b"ray::") -> list[int]:  # this sweep's Ray workers (`task`: running it)
        found = []
        for pid in marked(key):
            try:
                if pid != others[1].pid and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(task):
                    found.append(pid)
            except OSError:
                pass
        return found

    deadline = time.time() + 120
    while time.time() < deadline and not workers(b"ray::provide_teacher"):
        time.sleep(0.5)
    assert workers(b"ray::provide_teacher"), "the driver's Ray never ran the teacher's task"
    time.sleep(2)  # training
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    left = workers()
    ended = end_leftovers(storage)
    assert left and set(left) <= set(ended), (left, ended)  # the workers outlived their driver, and were ended
    time.sleep(0.5)
    assert marked(key) == [others[1].pid]
    assert all(other.poll() is None for other in others)
    for other in others:
        other.kill()
