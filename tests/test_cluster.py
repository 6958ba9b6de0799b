"""The cluster files: gpu.yaml checked offline against the installed Ray's own cluster schema; local.yaml started for
real (Ray's fake multi-node autoscaler, token auth on) to run a sweep over two worker nodes and lose one midway."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml
from ray._common.utils import get_ray_address_file
from ray.autoscaler._private.util import prepare_config, validate_config


ROOT = Path(__file__).resolve().parents[1]
GPU_YAML = ROOT / "cluster" / "gpu.yaml"
LOCAL_YAML = ROOT / "cluster" / "local.yaml"


def prepared_gpu_config() -> dict:
    """What `ray up` does before it contacts AWS: merge the provider's defaults, then the schema check."""
    config = prepare_config(yaml.safe_load(GPU_YAML.read_text()))
    validate_config(config)
    return config


def test_gpu_cluster_file_passes_rays_own_validation():
    config = prepared_gpu_config()
    assert config["provider"]["type"] == "aws"
    for name, node_type in config["available_node_types"].items():
        assert "resources" in node_type, f"{name}: the autoscaler needs explicit resources offline"


def test_gpu_cluster_head_runs_no_trials_and_workers_autoscale_from_zero():
    config = prepared_gpu_config()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    assert any("--num-cpus=0" in command for command in config["head_start_ray_commands"])
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(w["min_workers"] == 0 and w["resources"]["GPU"] >= 1 for w in workers)
    assert 0 < sum(w["max_workers"] for w in workers) <= config["max_workers"]


def test_gpu_cluster_pins_the_ray_the_project_runs():
    config = prepared_gpu_config()
    docker = config["docker"]
    images = {"head": docker["head_image"], "worker": docker["worker_image"], "default": docker["image"]}
    assert images["default"] == images["worker"]
    pythons = set()
    for node, name in images.items():
        # a pinned CUDA on the workers (the -gpu alias floats), the CPU image on the head, which trains nothing
        platform = "cpu" if node == "head" else r"cu1[23]\d"
        image = re.fullmatch(rf"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d)(?P<minor>\d+)-{platform}", name)
        assert image, (node, name)
        assert image["ray"] == ray.__version__
        assert (int(image["py"]), int(image["minor"])) >= (3, 10)  # pyproject's requires-python
        pythons.add(image["py"] + image["minor"])
    assert len(pythons) == 1  # the driver on the head and the trials on the workers run the same Python
    setup = " ".join(config["setup_commands"])
    assert re.search(rf'"ray\[[a-z,]+\]=={re.escape(ray.__version__)}"', setup)
    assert "pip install --quiet -e ~/gkd-tune" in setup and config["file_mounts"]["~/gkd-tune"] == "."


def test_gpu_cluster_is_locked_down():
    config = prepared_gpu_config()
    # token auth in every container, the token shipped by file mount (never written into the file)
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # own security groups on every node type: Ray's auto-created group would open SSH to 0.0.0.0/0
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"].get("SecurityGroupIds"), name
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0 --port=8265" not in start
    # MLflow server on the head: sqlite backend there, artifacts proxied into S3
    assert re.search(r"mlflow server --backend-store-uri sqlite:////home/ray/\S+ --artifacts-destination s3://", start)
    assert "--host 127.0.0.1 --port 5000" in start  # the driver on the head is its only client; users tunnel


def test_local_cluster_file_matches_rays_schema():
    config = yaml.safe_load(LOCAL_YAML.read_text())
    validate_config(config)  # complete as written: the wheel has no defaults file for the fake provider
    assert config["provider"]["type"] == "fake_multinode" and config["provider"]["gcs_address"]
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}


# ------------------------------------------------------------------------------------------------ live cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_matching(pattern: re.Pattern) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if pattern.search(command):
                found.append(int(entry.name))
    return found


def kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # gone already, or not ours
            pass


def descendants(pid: int) -> list[int]:
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        found = children.get(todo.pop(), [])
        out += found
        todo += found
    return out


def lose_node(node_id: str) -> None:
    """What a machine dying looks like to Ray: its raylet and every process under it vanish at once."""
    raylets = processes_matching(re.compile(rf"raylet/raylet .*--node_id={node_id}"))
    assert raylets, f"no raylet for node {node_id}"
    for raylet in raylets:
        kill(descendants(raylet) + [raylet])


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """cluster/local.yaml started as its comment says (on a free port), with token authentication on; shared by the
    tests below (the doctor's, then the sweep's, which finds the worker the doctor had started)."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    port = free_port()
    config = yaml.safe_load(LOCAL_YAML.read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    config_file = tmp_path / "local.yaml"
    config_file.write_text(yaml.safe_dump(config))
    token = tmp_path / "auth_token"
    token.write_text("gkd-tune-test-token-" + os.urandom(16).hex())
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    address = f"127.0.0.1:{port}"
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [RAY_CLI, "start", "--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false",
         f"--autoscaling-config={config_file}", "--block"],
        env=dict(env, RAY_FAKE_CLUSTER="1"), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.time() + 90
        while ray_status(address, env).returncode != 0:
            assert time.time() < deadline and head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(2)
        yield address, env
    finally:
        # every process of this cluster (head, GCS, raylets, workers) names its port; the fake provider's worker
        # raylets outlive the head otherwise (`ray stop` would catch them, and any other Ray on this machine too)
        kill(processes_matching(re.compile(rf"(:|port=){port}\b")))
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        # and the "current cluster" file, which a later plain ray.init() would otherwise try to join
        current = Path(get_ray_address_file(None))
        if current.exists() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


RAY_CLI = str(Path(sys.executable).parent / "ray")


def ray_status(address: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([RAY_CLI, "status", "--address", address], env=env, capture_output=True, text=True,
                          timeout=60)


SWEEP = """
name: cluster-test
data: {{source: digits}}
teacher: {{arch: resnet8, epochs: 1}}
student: resnet8
training: {{max_epochs: 2, batch_size: 64}}
params: {{method: gompertz, b: {{uniform: [1.0, 5.0]}}, c: {{uniform: [2.0, 10.0]}}, tau: 4.0, lr: 0.1}}
search: {{num_samples: 4, max_concurrent_trials: 4, grace_period: 2, max_failures: 3}}
resources: {{cpu: 1, gpu: 0.5}}
tracking: {{uri: "sqlite:///{db}"}}
storage_path: "{storage}"
"""


def trial_results(sweep: Path) -> dict[str, list[dict]]:
    """Every result a trial reported, in order, from the result.json Tune writes in the shared storage."""
    results = {}
    for file in sweep.glob("train_trial_*/result.json"):
        rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        if rows:
            results[rows[0]["trial_id"]] = rows
    return results


@pytest.mark.slow
def test_doctor_finds_the_fake_clusters_gpus_are_not_cuda_devices_unless_told_they_are_logical(local_cluster,
                                                                                              tmp_path):
    address, env = local_cluster
    space = tmp_path / "space.yaml"
    space.write_text(SWEEP.format(db=tmp_path / "mlflow.db", storage=f"file://{tmp_path / 'shared'}"))
    command = [sys.executable, "-m", "gkd_tune.doctor", "--space", str(space), "--address", address]

    # no GPU worker is up (min_workers 0): the doctor asks for a trial's resources, the autoscaler starts one
    found = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    printed = found.stdout + found.stderr
    assert found.returncode == 1, printed
    rows = [line for line in found.stdout.splitlines() if re.match(r"[0-9a-f]{8} \(", line)]  # the table's
    head = next(row for row in rows if ", head)" in row)
    workers = [row for row in rows if row is not head]
    assert re.search(r"0 CPU, 0 GPU +0 CUDA devices +read\+write +token +ok$", head), printed
    assert workers and all(re.search(r"2 CPU, 1 GPU +0 CUDA devices +read\+write +token +PROBLEM$", row)
                           for row in workers), printed
    assert re.search(r"advertises GPU: 1, torch sees 0 CUDA devices: its container needs the GPUs \(--gpus all\)",
                     found.stderr), printed
    assert "a client with a wrong token is refused: ok" in found.stdout
    assert f"{tmp_path / 'shared'}/cluster-test written from every node and read back from the driver's: ok" in \
        found.stdout

    # the opt-out, where the driver starts: the same cluster passes, and the doctor left nothing in the storage
    passed = subprocess.run(command, cwd=tmp_path, env=dict(env, GKD_TUNE_LOGICAL_GPUS="1"), capture_output=True,
                            text=True, timeout=400)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "logical GPUs: GKD_TUNE_LOGICAL_GPUS=1" in passed.stdout and "no problem found" in passed.stdout
    assert list((tmp_path / "shared" / "cluster-test").iterdir()) == []


@pytest.mark.slow
def test_sweep_on_the_local_cluster_survives_losing_a_node(local_cluster, tmp_path):
    address, env = local_cluster
    env = dict(env, GKD_TUNE_LOGICAL_GPUS="1")  # the fake nodes' GPUs are logical: trials run on the CPU
    # token auth is really on: the cluster answered the right token (the fixture), it refuses a wrong one
    wrong = ray_status(address, dict(env, RAY_AUTH_TOKEN="not-the-token"))
    assert wrong.returncode != 0 and "InvalidAuthToken" in wrong.stdout + wrong.stderr

    storage, db = tmp_path / "shared", tmp_path / "mlflow.db"
    space = tmp_path / "space.yaml"
    space.write_text(SWEEP.format(db=db, storage=f"file://{storage}"))
    sweep_dir = storage / "cluster-test"
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "gkd_tune.search", "--space", str(space), "--address", address],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)

    # once trials report from two nodes, one node dies: the one whose trial reported last, so that its trials
    # still have an epoch to run
    deadline, first = time.time() + 420, {}
    while time.time() < deadline and driver.poll() is None:
        first = {trial: rows[0] for trial, rows in trial_results(sweep_dir).items()}
        if len({row["node_id"] for row in first.values()}) >= 2:
            break
        time.sleep(1)
    assert len({row["node_id"] for row in first.values()}) >= 2, \
        f"trials never spread over two nodes: {first}\n" + (tmp_path / "driver.log").read_text()[-3000:]
    latest = max(first.values(), key=lambda row: row["timestamp"])
    lost = latest["node_id"]
    # Not within the instant after a report: Ray 2.60's controller can handle the node's failure before it has
    # registered that report's checkpoint, and then restarts the trial from scratch (seen in 2 of 4 runs when
    # the node died within a second of the report). The trial is mid-epoch 2 by now, with a checkpoint to go on from.
    time.sleep(max(0.0, latest["timestamp"] + 3 - time.time()))
    lose_node(lost)

    assert driver.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-5000:]
    printed = (tmp_path / "driver.log").read_text()

    # every trial accounted for; those on the lost node went on elsewhere from their checkpoint, not from scratch
    results = trial_results(sweep_dir)
    assert len(results) == 4
    moved = 0
    for trial, rows in results.items():
        epochs = [row["epoch"] for row in rows]
        assert epochs == [1, 2], f"{trial}: epochs {epochs}"  # no epoch repeated, none skipped
        nodes = [row["node_id"] for row in rows]
        if lost in nodes and nodes[-1] != lost:
            moved += 1
            switch = next(i for i, node in enumerate(nodes) if node != lost)
            assert epochs[switch] == epochs[switch - 1] + 1 > 1
    assert moved >= 1, {t: [r["node_id"][-5:] for r in rows] for t, rows in results.items()}

    # all results in one MLflow store, and the best student readable from the driver's side
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("cluster-test")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 5 and len(children) == 4
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["gkd_tune.outcome"] == "completed"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    best = re.search(r"best student: (\S+)", printed)[1]
    from gkd_tune.models import load_model

    _, metadata = load_model(Path(best), "resnet8", 10)
    assert metadata["epoch"] == 2
    assert "4 trials: 4 completed" in printed and re.search(r"\n1 +\w+ +[0-9.]+ +0\.[0-9]{4} +2 ", printed)  # tested


def test_gpu_cluster_is_ready_for_a_real_account(tmp_path):
    """What cluster/README.md's review found missing before a real `ray up` (see its "What is checked where")."""
    import fnmatch
    import shutil
    import subprocess
    from importlib.metadata import version

    config = prepared_gpu_config()
    types = config["available_node_types"]
    for name, node_type in types.items():
        node = node_type["node_config"]
        assert node.get("ImageId"), f"{name}: no ImageId: Ray would fill in its end-of-life default AMI"
        assert node["MetadataOptions"]["HttpTokens"] == "required", name
        for device in node["BlockDeviceMappings"]:
            assert device["Ebs"]["VolumeType"] == "gp3" and device["Ebs"]["Encrypted"] is True, name
            assert device["Ebs"]["VolumeSize"] >= 150, name
    assert types[config["head_node_type"]]["node_config"]["IamInstanceProfile"]["Arn"].endswith("/gkd-tune-head")
    assert "--gpus all" in config["docker"]["worker_run_options"]
    setup = " ".join(config["setup_commands"])
    assert "chmod 600 ~/.ray/auth_token" in setup and "-c ~/gkd-tune/cluster/constraints.txt" in setup
    for line in (ROOT / "cluster" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            package, pinned = line.split("==")
            assert version(package) == pinned, f"constraints.txt pins {line}, tests run {version(package)}"

    # the MLflow store: on the head's disk, under a name that `ray rsync-down` (which applies rsync_exclude to the
    # file it is asked for) copies, and a start that fails `ray up` when the server does not answer
    start = " ".join(config["head_start_ray_commands"])
    store = re.search(r"--backend-store-uri sqlite:////home/ray/mlflow-state/(\S+)", start)[1]
    assert any(option.endswith(":/home/ray/mlflow-state") for option in config["docker"]["head_run_options"])
    patterns = config["rsync_exclude"]
    assert not any(fnmatch.fnmatch(store, pattern) for pattern in patterns), (store, patterns)
    if shutil.which("rsync"):  # rsync's own matching, as `ray rsync-down` runs it
        (tmp_path / store).write_text("runs")
        excludes = [argument for pattern in patterns for argument in ("--exclude", pattern)]
        subprocess.run(["rsync", "-a", *excludes, str(tmp_path / store), str(tmp_path / "copy")], check=True)
        assert (tmp_path / "copy").read_text() == "runs"
    assert re.search(r"curl -sf http://127.0.0.1:5000/health .*exit 1", start)


def test_cluster_readme_sets_token_auth_before_every_ray_job_command():
    """The job client sends the token only with RAY_AUTH_MODE=token in its shell: each code block that runs
    `ray job` exports it first."""
    readme = (ROOT / "cluster" / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    job_blocks = [block for block in blocks if re.search(r"^ray job ", block, re.M)]
    assert len(job_blocks) >= 2
    for block in job_blocks:
        lines = block.splitlines()
        first_job = next(i for i, line in enumerate(lines) if line.startswith("ray job "))
        assert any(line.startswith("export RAY_AUTH_MODE=token") for line in lines[:first_job]), block


def test_a_task_given_a_gpu_that_torch_cannot_see_fails_instead_of_training_on_the_cpu(monkeypatch):
    from gkd_tune.space import parse_space
    from gkd_tune.trainable import check_gpu_visible

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.delenv("GKD_TUNE_LOGICAL_GPUS", raising=False)
    gpu_sweep = parse_space({"name": "s", "resources": {"gpu": 0.5}}, "x.yaml")
    with pytest.raises(RuntimeError, match=r"resources.gpu is 0.5 and Ray gave this task a GPU on node .*, but torch "
                                           r"sees no CUDA device .*--gpus all"):
        check_gpu_visible(gpu_sweep)
    check_gpu_visible(parse_space({"name": "s", "resources": {"gpu": 0}}, "x.yaml"))  # a CPU sweep: fine
    monkeypatch.setenv("GKD_TUNE_LOGICAL_GPUS", "1")  # the fake local cluster's logical GPUs
    check_gpu_visible(gpu_sweep)
    assert not ray.is_initialized()  # checking started no Ray in this process
