"""The doctor's verdicts on what each node's probe saw (here, from made-up probes), and its bad command lines.
It runs for real on the fake local cluster in tests/test_cluster.py."""

import re
import time

import pytest

from gkd_tune import doctor
from gkd_tune.storage import SweepStorage

STORAGE = SweepStorage("/shared/runs/sweep")


def node(gpus=1.0, cuda=("NVIDIA A10G",), cuda_error=None, logical=False, auth="token", storage_error=None,
         visible=True, error=None) -> doctor.NodeFindings:
    seen = None if error else {"cuda": list(cuda), "cuda_error": cuda_error, "torch_cuda": "12.8", "driver": "570.1",
                               "gpu_ids": ["0"], "logical_gpus": logical, "auth": auth, "storage_error": storage_error}
    return doctor.NodeFindings("f" * 56, "10.0.1.7", False, 4.0, gpus, seen=seen, error=error, file_visible=visible)


def test_a_healthy_gpu_node_has_no_problem_and_its_row_names_the_card_and_the_driver():
    healthy = node()
    assert doctor.judge(healthy, STORAGE) == []
    healthy.problems = []
    row = doctor.table([healthy]).splitlines()[1]
    assert re.search(r"ffffffff \(10.0.1.7\) +4 CPU, 1 GPU +1 x NVIDIA A10G \(CUDA 12.8, driver 570.1\) +"
                     r"read\+write +token +ok$", row), row


@pytest.mark.parametrize("findings, problem", [
    (node(cuda=()), r"node ffffffff \(10.0.1.7\) advertises GPU: 1, torch sees 0 CUDA devices: its container "
                    r"needs the GPUs \(--gpus all\) and a driver that runs CUDA 12.8"),
    (node(gpus=2.0), r"advertises GPU: 2, torch sees 1 CUDA device:"),
    (node(cuda=(), cuda_error="RuntimeError: The NVIDIA driver on your system is too old"),
     r"torch sees 0 CUDA devices \(RuntimeError: The NVIDIA driver on your system is too old\)"),
    (node(cuda=(), logical=True, gpus=2.0), None),  # logical GPUs, allowed where the sweep starts
    (node(auth="off"), r"runs Ray without token authentication"),
    (node(storage_error="PermissionError: denied"), r"cannot write and read /shared/runs/sweep: PermissionError"),
    (node(visible=False), r"/shared/runs/sweep is not shared: what node ffffffff \(10.0.1.7\) wrote there is not "
                          r"visible from the driver's node"),
    (node(error="no answer within 300 s"), r"node ffffffff \(10.0.1.7\): no answer within 300 s"),
])
def test_each_mismatch_is_one_problem_naming_the_node(findings, problem):
    problems = doctor.judge(findings, STORAGE)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and re.search(problem, problems[0]), problems
        findings.problems = problems
        assert doctor.table([findings]).splitlines()[1].endswith("PROBLEM")


@pytest.mark.parametrize("argv, message", [
    (["--address", "127.0.0.1:1"], r"--address: no Ray cluster answers at 127.0.0.1:1"),
    (["--storage-path", "/x"], r"--storage-path and --tracking-uri need --space"),
    (["--space", "/nonexistent.yaml"], r"/nonexistent.yaml: file: does not exist"),
])
def test_bad_command_lines_are_one_line_errors(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = time.time()
    assert doctor.main(argv) == 2
    err = capsys.readouterr().err
    assert re.match(f"error: .*{message}", err) and err.count("\n") == 1, err
    assert time.time() - started < 5
