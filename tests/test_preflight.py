"""Checks before Ray starts: each failure is one line, in seconds, and nothing is written."""

from pathlib import Path

import pytest

from gkd_tune import search
from gkd_tune.preflight import check_local_resources, check_storage, check_tracking
from gkd_tune.space import parse_space
from gkd_tune.storage import SweepStorage

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

    from gkd_tune.preflight import wait_for_cluster_resources

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False)
    try:
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
