"""cluster/slurm/gkd-tune.sbatch on a real SLURM: Debian's slurm-wlm, one slurmctld and one slurmd on loopback with
two fake GPUs (gres on /dev/null and /dev/zero), started here; a tiny sweep submitted with sbatch as a user would."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import sweep_runs
from realstack import free_port, missing, stop
from test_cluster import processes_matching

ROOT = Path(__file__).resolve().parents[1]
SLURM_CONF = """ClusterName=gkdtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
SPACE = """name: slurm-tiny
data: {source: digits, image_size: 16}
teacher: {arch: resnet8, epochs: 1}
student: resnet8
training: {max_epochs: 1, batch_size: 64}
params: {method: gompertz, b: {uniform: [1.0, 5.0]}, c: {uniform: [2.0, 10.0]}, tau: 4.0, lr: 0.1}
search: {num_samples: 2, max_concurrent_trials: 2, grace_period: 1}
resources: {cpu: 1, gpu: 1}
"""


@pytest.fixture
def slurm(tmp_path):
    """A single-node SLURM on loopback (root only: slurmd runs jobs as their users); its environment."""
    tools = ("slurmctld", "slurmd", "sbatch", "scontrol", "unshare")
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in tools):
        missing("a SLURM test needs root, Debian's slurm-wlm (slurmctld, slurmd, sbatch) and util-linux's unshare")
    folder = tmp_path / "slurm"
    for name in ("state", "spool"):
        (folder / name).mkdir(parents=True)
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(ctld_port=free_port(), d_port=free_port(), dir=folder, cpus=os.cpu_count()))
    (folder / "gres.conf").write_text("NodeName=localhost Name=gpu File=/dev/null\n"
                                      "NodeName=localhost Name=gpu File=/dev/zero\n")
    (folder / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")
    env = dict(os.environ, SLURM_CONF=str(conf))
    # slurmd, and so the job, in a PID namespace of its own, as on a node of its own: `ray symmetric-run` refuses to
    # start where it sees any other Ray running on the machine (a developer's own, a test's run beside this one)
    own_pids = ["unshare", "--pid", "--fork", "--mount-proc"]
    daemons = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                start_new_session=True)
               for command in (["slurmctld", "-D", "-f", str(conf), "-i"],
                               [*own_pids, "slurmd", "-D", "-f", str(conf), "-N", "localhost"])]
    try:
        deadline = time.time() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                           text=True).stdout:
            logs = "".join((folder / f).read_text() for f in ("slurmctld.log", "slurmd.log") if (folder / f).exists())
            assert time.time() < deadline and all(d.poll() is None for d in daemons), logs[-3000:]
            time.sleep(1)
        yield env
    finally:
        for daemon in daemons:
            stop(daemon)


def job_state(env: dict, job: str) -> dict:
    shown = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", shown))


def trial_processes_of(job: str) -> set[int]:
    """The pids of Ray Tune trial actors whose environment says they run in SLURM job `job`, as they see them
    (in the job's PID namespace: the last of /proc's NSpid)."""
    found = set()
    for pid in processes_matching(re.compile(r"^ray::ImplicitFunc")):
        try:
            if f"SLURM_JOB_ID={job}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.add(int(re.search(r"^NSpid:.*?(\d+)$", Path(f"/proc/{pid}/status").read_text(), re.M)[1]))
        except OSError:  # ended meanwhile
            pass
    return found


@pytest.mark.slow
@pytest.mark.realstack
def test_the_sbatch_template_runs_a_sweep_whose_trials_are_slurm_tasks_and_whose_runs_all_finish(slurm, tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(SPACE)
    sweep = tmp_path / "sweep"
    env = dict(slurm, SPACE=str(space), SWEEP_DIR=str(sweep), GKD_TUNE_LOGICAL_GPUS="1",
               RAY_PORT=str(free_port()), MLFLOW_PORT=str(free_port()), VENV=str(Path(sys.executable).parent.parent))
    submitted = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--gres=gpu:2", "--cpus-per-task=2",
                                f"--output={tmp_path}/job-%j.log", str(ROOT / "cluster" / "slurm" / "gkd-tune.sbatch")],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    trial_pids, deadline = set(), time.time() + 540
    while job_state(slurm, job).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
        assert time.time() < deadline, (tmp_path / f"job-{job}.log").read_text()[-3000:]
        trial_pids |= trial_processes_of(job)
        time.sleep(0.3)
    log = (tmp_path / f"job-{job}.log").read_text()
    state = job_state(slurm, job)
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", log[-5000:]
    assert "on 1 node(s) (localhost), head localhost (127.0.0.1), 2 GPU(s) and 2 CPUs per node" in log
    assert "2 trials: 2 completed" in log, log[-5000:]
    # each trial's actor ran inside the job (SLURM_JOB_ID in its environment), as the trials' own results say
    import json

    reported = {json.loads(line)["pid"] for file in (sweep / "runs" / "slurm-tiny").glob("trial-*/result.json")
                for line in file.read_text().splitlines() if line.strip()}
    assert len(reported) == 2 and reported <= trial_pids, (reported, trial_pids)
    # MLflow on the head's loopback, its store in the sweep folder: every run ended
    _, [parent], children = sweep_runs(f"sqlite:///{sweep}/mlflow.sqlite", "slurm-tiny")
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in [parent, *children])
    assert (sweep / "reports" / "slurm-tiny" / "summary.md").exists()
    assert (sweep / "ray-token").stat().st_mode & 0o077 == 0
