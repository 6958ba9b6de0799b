"""The doctor's verdicts on what each node's probe saw (here, from made-up probes), and its bad command lines.
It runs for real on the fake local cluster in tests/test_cluster.py."""

import re
import time

import pytest

from gkd_tune import doctor as doctor_command
from gkd_tune.cluster import doctor
from gkd_tune.sweep.storage import SweepStorage

STORAGE = SweepStorage("/shared/runs/sweep")


STEP_OK = {"device": "cuda:0", "compile": "cudagraphs", "ok": True, "seconds": 41.2, "error": None}


def node(gpus=1.0, cuda=("NVIDIA A10G",), cuda_error=None, logical=False, auth="token", storage_error=None,
         visible=True, error=None, steps=(STEP_OK,), on_driver_disk=False) -> doctor.NodeFindings:
    seen = None if error else {"cuda": list(cuda), "cuda_error": cuda_error, "torch_cuda": "12.8", "driver": "570.1",
                               "gpu_ids": ["0"], "logical_gpus": logical, "auth": auth, "storage_error": storage_error,
                               "steps": list(steps)}
    return doctor.NodeFindings("f" * 56, "10.0.1.7", False, 4.0, gpus, seen=seen, error=error, file_visible=visible,
                               storage_on_driver_disk=on_driver_disk)


def test_a_healthy_gpu_node_has_no_problem_and_its_row_names_the_card_and_the_driver():
    healthy = node()
    assert doctor.judge(healthy, STORAGE) == []
    healthy.problems = []
    row = doctor.table([healthy]).splitlines()[1]
    assert re.search(r"ffffffff \(10.0.1.7\) +4 CPU, 1 GPU +1 x NVIDIA A10G \(CUDA 12.8, driver 570.1\) +"
                     r"ok \(cudagraphs, 41 s\) +read\+write +token +ok$", row), row


@pytest.mark.parametrize("findings, problem", [
    (node(cuda=()), r"node ffffffff \(10.0.1.7\) advertises GPU: 1, torch sees 0 CUDA devices: its container "
                    r"needs the GPUs \(--gpus all\) and a driver that runs CUDA 12.8"),
    (node(gpus=2.0), r"advertises GPU: 2, torch sees 1 CUDA device:"),
    (node(cuda=(), cuda_error="RuntimeError: The NVIDIA driver on your system is too old"),
     r"torch sees 0 CUDA devices \(RuntimeError: The NVIDIA driver on your system is too old\)"),
    (node(cuda=(), logical=True, gpus=2.0, steps=()), None),  # logical GPUs, allowed where the sweep starts
    # torch lists the card, but its kernel fails (a driver/runtime mismatch after enumeration, an Xid error)
    (node(cuda_error="RuntimeError: CUDA error: no kernel image is available", steps=()),
     r"node ffffffff \(10.0.1.7\): torch sees 1 CUDA device but a kernel fails there \(RuntimeError: CUDA error: "
     r"no kernel image is available\): check that its driver runs CUDA 12.8"),
    (node(steps=({**STEP_OK, "ok": False, "error": "OutOfMemoryError: CUDA out of memory. Tried to allocate"},)),
     r"a step of the space's trial fails on cuda:0 \(compile cudagraphs\): OutOfMemoryError: CUDA out of memory. "
     r"Tried to allocate \(lower training.batch_size, or use a larger GPU\); its trials would fail"),
    (node(steps=({**STEP_OK, "ok": False, "error": "BackendCompilerFailed: backend='inductor' raised"},)),
     r"fails on cuda:0 \(compile cudagraphs\): BackendCompilerFailed: backend='inductor' raised; its trials"),
    (node(auth="off"), r"runs Ray without token authentication"),
    (node(storage_error="PermissionError: denied"), r"cannot write and read /shared/runs/sweep: PermissionError"),
    (node(visible=False), r"/shared/runs/sweep is not shared: what node ffffffff \(10.0.1.7\) wrote there is not "
                          r"visible from the driver's node"),
    (node(error="no answer within 300 s"), r"node ffffffff \(10.0.1.7\): no answer within 300 s"),
    # a path on the driver's disk: not shared, though the fake cluster's node reads it (the driver's check says why)
    (node(on_driver_disk=True), None),
])
def test_each_mismatch_is_one_problem_naming_the_node(findings, problem):
    problems = doctor.judge(findings, STORAGE)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and re.search(problem, problems[0]), problems
        findings.problems = problems
        assert doctor.table([findings]).splitlines()[1].endswith("PROBLEM")


def test_a_node_whose_storage_is_the_drivers_disk_is_marked_not_shared():
    assert node(on_driver_disk=True).storage == "not shared" and node().storage == "read+write"


def test_every_problem_line_makes_the_doctor_fail_and_is_listed(capsys):
    """A worker whose storage is the driver's disk, found when the shared check saw one node (autoscaler v2 before
    the guard read it): the storage line says PROBLEM, so the exit code is 1 and the problem is listed."""
    checks = [("shared", "storage and tracking that every node of the cluster can use", None)]
    worker = node(on_driver_disk=True)
    worker.problems = doctor.judge(worker, STORAGE)
    assert worker.problems == []  # (the driver's problem, not the node's)
    assert doctor.conclude([worker], checks, STORAGE, None) == 1
    printed = capsys.readouterr()
    assert "storage    /shared/runs/sweep written from every node and read back from the driver's: PROBLEM" in \
        printed.out and "no problem found" not in printed.out
    assert "1 problem:\n- /shared/runs/sweep is not shared: what node ffffffff (10.0.1.7) wrote there" in printed.err
    # the shared check's refusal already says it: listed once
    said = "storage_path /shared/runs is on this node's disk (ext4), but this Ray cluster spans several nodes"
    assert doctor.conclude([worker], [(*checks[0][:2], said)], STORAGE, None) == 1
    assert capsys.readouterr().err.count("- ") == 1
    healthy = node()
    assert doctor.conclude([healthy], checks, STORAGE, None) == 0
    out = capsys.readouterr().out
    assert "no problem found" in out and "PROBLEM" not in out


def test_the_trial_step_runs_the_spaces_nets_at_its_batch_size_and_names_what_fails(monkeypatch):
    import torch

    from gkd_tune.sweep.space import parse_space

    space = parse_space({"name": "s", "teacher": {"arch": "resnet8"}, "student": "resnet8",
                         "training": {"batch_size": 8, "compile": "off"},
                         "params": {"method": "gompertz", "b": {"uniform": [1.0, 5.0]}}}, "x.yaml")
    step = doctor.trial_step(space, torch.device("cpu"))
    assert step["ok"] and step["error"] is None and step["compile"] == "off" and step["seconds"] > 0, step

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("gkd_tune.core.loop.Trainer.train_step", out_of_memory)
    failed = doctor.trial_step(space, torch.device("cpu"))
    assert not failed["ok"] and failed["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


@pytest.mark.parametrize("argv, message", [
    (["--address", "127.0.0.1:1"], r"--address: no Ray cluster answers at 127.0.0.1:1"),
    (["--storage-path", "/x"], r"--storage-path and --tracking-uri need --space"),
    (["--space", "/nonexistent.yaml"], r"/nonexistent.yaml: file: does not exist"),
    ([], r"--address: give the Ray cluster to check"),  # never a Ray of its own, nor any Ray it finds
])
def test_bad_command_lines_are_one_line_errors(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = time.time()
    assert doctor_command.main(argv) == 2
    err = capsys.readouterr().err
    assert re.match(f"error: .*{message}", err) and err.count("\n") == 1, err
    assert time.time() - started < 5
