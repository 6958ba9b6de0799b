"""The cluster files: gpu.yaml checked offline against the installed Ray's own cluster schema; local.yaml started for
real (Ray's fake multi-node autoscaler, token auth on) to run sweeps over two worker nodes, on S3 and a tracking
server on PostgreSQL (tests/realstack.py): one by budget halving, one that loses a node midway."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
import yaml
from conftest import assert_budget_halving_promoted_the_best, sweep_runs
from ray._common.utils import get_ray_address_file
from ray.autoscaler._private.util import prepare_config, validate_config
from realstack import ARTIFACTS_PREFIX, HEAD_KEYS, RUNS_PREFIX, WORKER_KEYS, free_port


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


@dataclass(frozen=True)
class LocalCluster:
    address: str
    env: dict  # the driver's: token auth, and the head's S3 credentials
    temp_dir: Path  # Ray's session folders (the driver's staging of Tune's results among them)


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory, seaweedfs):
    """cluster/local.yaml started as its comment says (on a free port), with token authentication on; shared by the
    tests below (the doctor's, then the sweeps', which find the worker the doctor had started).

    The nodes run with the workers' S3 credentials (cluster/README.md's worker policy: their trials' folders and
    teacher-progress/ only), the drivers with the head's, as on gpu.yaml's instance profiles: the fake nodes share a
    disk but not the rights, so a write that only the head may make fails the sweep here as it would on AWS. The
    head's come from a credentials file, as an instance profile's come from outside the environment (Ray Tune hands
    a driver's AWS_* variables to its trials)."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    port = free_port()
    config = yaml.safe_load(LOCAL_YAML.read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    config_file = tmp_path / "local.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = token_env(tmp_path)
    with ray_head(port, env, tmp_path / "head.log", "--num-cpus=0", "--num-gpus=0",
                  f"--autoscaling-config={config_file}",
                  extra_env=dict(RAY_FAKE_CLUSTER="1", **seaweedfs.env(WORKER_KEYS))) as temp_dir:
        yield LocalCluster(f"127.0.0.1:{port}", dict(env, **seaweedfs.profile_env(HEAD_KEYS, tmp_path)), temp_dir)


def token_env(folder: Path) -> dict:
    """This environment with token authentication on, a new token in `folder`, and no RAY_ADDRESS."""
    token = folder / "auth_token"
    token.write_text("gkd-tune-test-token-" + os.urandom(16).hex())
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


@contextlib.contextmanager
def ray_head(port: int, env: dict, log_file: Path, *options: str, extra_env: dict | None = None):
    """A Ray head started with `options` on `port`, answering `ray status`; its session folder. Ended with every
    process that names its port (head, GCS, raylets, workers)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="gkdray-"))  # short: Ray's socket paths live below it
    log = open(log_file, "w")
    head = subprocess.Popen(
        [RAY_CLI, "start", "--head", f"--port={port}", "--include-dashboard=false", *options, f"--temp-dir={temp_dir}",
         "--block"], env=dict(env, **(extra_env or {})), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while ray_status(f"127.0.0.1:{port}", env).returncode != 0:
            assert time.time() < deadline and head.poll() is None, log_file.read_text()[-3000:]
            time.sleep(2)
        yield temp_dir
    finally:
        # the fake provider's worker raylets outlive the head otherwise (`ray stop` would catch them, and any other
        # Ray on this machine too)
        kill(processes_matching(re.compile(rf"(:|port=){port}\b")))
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        # and the "current cluster" file, which a later plain ray.init() would otherwise try to join
        current = Path(get_ray_address_file(None))
        if current.exists() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
        shutil.rmtree(temp_dir, ignore_errors=True)


RAY_CLI = str(Path(sys.executable).parent / "ray")


def ray_status(address: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([RAY_CLI, "status", "--address", address], env=env, capture_output=True, text=True,
                          timeout=60)


MAX_EPOCHS = 4  # the target trial loses its node mid-epoch 3 and goes on elsewhere

SWEEP = """
name: {name}
data: {{source: digits}}
teacher: {{arch: resnet8, epochs: 1}}
student: resnet8
training: {{max_epochs: {epochs}, batch_size: 64}}
params: {{method: gompertz, b: {{uniform: [1.0, 5.0]}}, c: {{uniform: [2.0, 10.0]}}, tau: 4.0, lr: 0.1}}
search: {{num_samples: 4, max_concurrent_trials: 4, grace_period: {epochs}, max_failures: 3}}
resources: {{cpu: 1, gpu: 0.5}}
tracking: {{uri: "{tracking}"}}
storage_path: "{storage}"
"""


def space_file(folder: Path, name: str, storage: str, tracking: str, search: dict | None = None, **sections) -> Path:
    space = folder / f"{name}.yaml"
    text = SWEEP.format(name=name, storage=storage, tracking=tracking, epochs=MAX_EPOCHS)
    if search or sections:
        spec = yaml.safe_load(text)
        spec["search"].update(search or {})
        spec.update(sections)
        text = yaml.safe_dump(spec)
    space.write_text(text)
    return space


def staged_results(cluster: LocalCluster, name: str) -> dict[str, list[dict]]:
    """Every result a trial reported so far, in order, from the result.json that Tune's driver stages in its
    session folder before it syncs the sweep's folder to S3."""
    results = {}
    for file in cluster.temp_dir.glob(f"session_*/artifacts/*/{name}/driver_artifacts/trial-*/result.json"):
        rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        if rows:
            results[rows[0]["trial_id"]] = rows
    return results


def s3_results(seaweedfs, name: str) -> dict[str, list[dict]]:
    """The same, from the sweep's folder in S3."""
    results = {}
    for key in seaweedfs.keys(f"{RUNS_PREFIX}/{name}"):
        if key.endswith("/result.json"):
            with seaweedfs.filesystem().open_input_stream(f"{seaweedfs.bucket}/{key}") as stream:
                rows = [json.loads(line) for line in stream.read().decode().splitlines() if line.strip()]
            if rows:
                results[rows[0]["trial_id"]] = rows
    return results


@pytest.mark.slow
@pytest.mark.realstack
def test_doctor_on_the_fake_cluster_finds_logical_gpus_and_storage_on_one_nodes_disk_and_passes_s3(
        local_cluster, seaweedfs, mlflow_server, tmp_path):
    # node-local storage and a sqlite store, and the nodes' logical GPUs, which the driver was not told about: no
    # GPU worker is up (min_workers 0), the doctor asks for a trial's resources and the autoscaler starts one
    local = space_file(tmp_path, "doctor-local", str(tmp_path / "shared"), f"sqlite:///{tmp_path / 'mlflow.db'}")
    command = [sys.executable, "-m", "gkd_tune.doctor", "--address", local_cluster.address, "--space"]
    found = subprocess.run(command + [str(local)], cwd=tmp_path, env=local_cluster.env, capture_output=True,
                           text=True, timeout=500)
    printed = found.stdout + found.stderr
    assert found.returncode == 1, printed
    rows = [line for line in found.stdout.splitlines() if re.match(r"[0-9a-f]{8} \(", line)]  # the table's
    head = next(row for row in rows if ", head)" in row)
    workers = [row for row in rows if row is not head]
    assert re.search(r"0 CPU, 0 GPU +0 CUDA devices +- +read\+write +token +ok$", head), printed
    assert workers and all(re.search(r"2 CPU, 1 GPU +0 CUDA devices +- +not shared +token +PROBLEM$", row)
                           for row in workers), printed
    assert re.search(r"advertises GPU: 1, torch sees 0 CUDA devices: its container needs the GPUs \(--gpus all\)",
                     found.stderr), printed
    assert re.search(rf"- storage_path {tmp_path / 'shared'} is on this node's disk \(\w+\) and tracking.uri "
                     r"sqlite:///\S+ is a file on this node, but this Ray cluster spans several nodes .*: pass "
                     r"--storage-path s3://BUCKET/PREFIX .* --tracking-uri http://127.0.0.1:5000", found.stderr), printed
    assert "a client with a wrong token is refused: ok" in found.stdout

    # S3 and the tracking server, and the opt-out for logical GPUs where the driver starts: the same cluster passes,
    # every node (the workers with their own credentials) wrote and read its probe, and none is left in the bucket
    shared = space_file(tmp_path, "doctor-s3", seaweedfs.uri(RUNS_PREFIX), mlflow_server.uri)
    passed = subprocess.run(command + [str(shared)], cwd=tmp_path, env=dict(local_cluster.env, GKD_TUNE_LOGICAL_GPUS="1"),
                            capture_output=True, text=True, timeout=500)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "logical GPUs: GKD_TUNE_LOGICAL_GPUS=1" in passed.stdout and "no problem found" in passed.stdout
    assert all(row.endswith("read+write  token  ok") for row in passed.stdout.splitlines()
               if re.match(r"[0-9a-f]{8} \(", row)), passed.stdout
    assert seaweedfs.keys(f"{RUNS_PREFIX}/doctor-s3") == []


@pytest.mark.slow
@pytest.mark.realstack
def test_a_sweep_joined_to_the_cluster_with_storage_on_this_nodes_disk_is_refused_at_once(local_cluster, tmp_path):
    space = space_file(tmp_path, "refused", str(tmp_path / "shared"), f"sqlite:///{tmp_path / 'mlflow.db'}")
    started = time.monotonic()
    refused = subprocess.run([sys.executable, "-m", "gkd_tune.search", "--space", str(space), "--address",
                              local_cluster.address], cwd=tmp_path, env=local_cluster.env, capture_output=True,
                             text=True, timeout=120)
    took = time.monotonic() - started
    assert refused.returncode == 2, refused.stdout + refused.stderr
    last = refused.stderr.splitlines()[-1]  # after Ray's "Connected to Ray cluster"
    assert re.fullmatch(r"error: storage_path \S+ is on this node's disk \(\w+\) and tracking.uri \S+ is a file on "
                        r"this node, but this Ray cluster spans several nodes \(or its autoscaler adds them\): pass "
                        r"--storage-path s3://BUCKET/PREFIX .* --tracking-uri http://127.0.0.1:5000 .*", last), last
    assert took < 30, f"refused after {took:.1f} s"  # (the plan and a connection; a teacher would take minutes)
    assert "teacher" not in refused.stdout.split("tracking ")[-1]  # nothing trained: the plan, then the refusal
    assert not (tmp_path / "shared" / "refused").exists() or not any((tmp_path / "shared" / "refused").iterdir())
    print(f"refused in {took:.1f} s")


SPANS_NODES = "import ray, sys; ray.init(address=sys.argv[1]); from gkd_tune.cluster.preflight import " \
              "cluster_spans_nodes; print('spans nodes:', cluster_spans_nodes(wait_s=0))"


@pytest.mark.slow
def test_under_autoscaler_v2_a_launched_head_refuses_node_local_storage_and_a_plain_head_does_not(tmp_path):
    """`ray up` starts the head with autoscaler v2 and its node type's name (RAY_NODE_TYPE_NAME), and v2 writes none
    of the v1 status the guard once read: with the head alone up, a sweep onto its disk is refused all the same. A
    plain `ray start --head` under v2 names no node type: one machine, whose own disk is fine."""
    env = token_env(tmp_path)
    v2 = {"RAY_enable_autoscaler_v2": "1", "RAY_CLOUD_INSTANCE_ID": "head-instance"}
    port = free_port()
    with ray_head(port, env, tmp_path / "launched.log", "--num-cpus=1",
                  extra_env=dict(v2, RAY_NODE_TYPE_NAME="ray.head.default")):
        address = f"127.0.0.1:{port}"
        said = subprocess.run([sys.executable, "-c", SPANS_NODES, address], env=env, capture_output=True, text=True,
                              timeout=120)
        assert "spans nodes: True" in said.stdout, said.stdout + said.stderr
        space = space_file(tmp_path, "refused-v2", str(tmp_path / "shared"), f"sqlite:///{tmp_path / 'mlflow.db'}")
        refused = subprocess.run([sys.executable, "-m", "gkd_tune.search", "--space", str(space), "--address",
                                  address], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "but this Ray cluster spans several nodes (or its autoscaler adds them)" in refused.stderr
    port = free_port()
    with ray_head(port, env, tmp_path / "plain.log", "--num-cpus=1", extra_env=v2):
        said = subprocess.run([sys.executable, "-c", SPANS_NODES, f"127.0.0.1:{port}"], env=env, capture_output=True,
                              text=True, timeout=120)
        assert "spans nodes: False" in said.stdout, said.stdout + said.stderr


@pytest.mark.slow
@pytest.mark.realstack
def test_budget_halving_on_the_local_cluster_over_s3_and_a_tracking_server(local_cluster, seaweedfs, mlflow_server,
                                                                           tmp_path):
    """budget_halving runs where ASHA does: its runs spread over the worker nodes, their results and checkpoints in
    S3, MLflow on the tracking server groups each configuration's runs, and a full-budget run wins; then the
    confirmation runs the winner beside KD at two new seeds, in the sweep's S3 folder, tested once each."""
    name = "cluster-halving"
    # 4 configurations at 2 epochs (compressed), the best 2 again at the full 4; the best 1 and KD at seeds 1, 2
    space = space_file(tmp_path, name, seaweedfs.uri(RUNS_PREFIX), mlflow_server.uri,
                       {"scheduler": "budget_halving", "grace_period": 2, "reduction_factor": 2},
                       confirm={"top_k": 1, "seeds": 2, "baselines": ["kd"]},
                       data={"source": "digits", "image_size": 16})  # (their detail at a quarter of 32 x 32's work)
    done = subprocess.run([sys.executable, "-m", "gkd_tune.search", "--space", str(space), "--address",
                           local_cluster.address], cwd=tmp_path, env=dict(local_cluster.env, GKD_TUNE_LOGICAL_GPUS="1"),
                          capture_output=True, text=True, timeout=600)
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-5000:]
    assert "4 run(s) x    2 epochs" in done.stdout and "2 run(s) x    4 epochs" in done.stdout, done.stdout
    assert "6 trials: 6 completed" in done.stdout, done.stdout[-3000:]

    # every run's results in S3, each run to its own budget, on more than one worker node; the confirmation's four
    # runs in the sweep's confirm/ folder, at the full budget
    results = s3_results(seaweedfs, name)
    assert sorted([row["epoch"] for row in rows] for rows in results.values()) == [[1, 2]] * 4 + [[1, 2, 3, 4]] * 6
    assert len({row["node_id"] for rows in results.values() for row in rows}) >= 2, results
    keys = seaweedfs.keys(f"{RUNS_PREFIX}/{name}")
    assert len([key for key in keys if re.fullmatch(rf"{RUNS_PREFIX}/{name}/trial-\w+/checkpoint_\d+/student.pt",
                                                       key)]) == 6, keys
    assert len([key for key in keys if re.fullmatch(
        rf"{RUNS_PREFIX}/{name}/confirm/trial-(c\d+|kd)\.s[12]/checkpoint_\d+/student.pt", key)]) == 4, keys

    # MLflow on the tracking server: a configuration's runs share its tag, the promoted ones are the first budget's
    # best two, and the winner is a full-budget run, the only one tested
    _, [parent], children = sweep_runs(mlflow_server.uri, name)
    assert len(children) == 10 and all(r.info.status == "FINISHED" for r in [parent, *children])
    confirming = [r for r in children if "gkd_tune.confirm" in r.data.tags]
    children = [r for r in children if r not in confirming]
    confirmed = parent.data.tags["gkd_tune.confirmed"]
    assert sorted(r.info.run_name for r in confirming) == sorted(f"{label}.s{seed}" for label in (confirmed, "kd")
                                                                 for seed in (1, 2))
    assert all("test_acc" in r.data.metrics for r in confirming) and "confirm.minus_kd.test_acc_mean" in \
        parent.data.metrics
    assert_budget_halving_promoted_the_best(children, 2, 4, configurations=4, promoted=2)
    [winner] = [r for r in children if "test_acc" in r.data.metrics]  # the search's, once; then its confirmation's
    assert winner.data.params["max_epochs"] == "4"
    assert parent.data.tags["gkd_tune.confirmed"] == winner.data.tags["gkd_tune.config"]
    [champion] = [r for r in confirming if r.data.tags["gkd_tune.trial_id"] == parent.data.tags["best_trial"]]
    assert champion.info.run_name.startswith(f"{confirmed}.s")  # (of 2 seeds, the median is the lower val)
    assert re.search(r"best student: s3://\S+", printed), printed[-3000:]


@pytest.mark.slow
@pytest.mark.realstack
def test_sweep_on_the_local_cluster_over_s3_and_a_tracking_server_survives_losing_a_node(
        local_cluster, seaweedfs, mlflow_server, tmp_path):
    env = dict(local_cluster.env, GKD_TUNE_LOGICAL_GPUS="1")  # the fake nodes' GPUs are logical
    # token auth is really on: the cluster answered the right token (the fixture), it refuses a wrong one
    wrong = ray_status(local_cluster.address, dict(env, RAY_AUTH_TOKEN="not-the-token"))
    assert wrong.returncode != 0 and "InvalidAuthToken" in wrong.stdout + wrong.stderr

    name = "cluster-test"
    # 24 x 24: epochs short, yet long enough (seconds, 4 trials on 2 cores) for the loss to land mid-epoch
    space = space_file(tmp_path, name, seaweedfs.uri(RUNS_PREFIX), mlflow_server.uri,
                       data={"source": "digits", "image_size": 24})
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "gkd_tune.search", "--space", str(space), "--address",
                               local_cluster.address], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)

    # Once trials report from two nodes, one node dies: the one whose trial (the target) reported its first epoch
    # last, mid-epoch 3 of the target (1-1.5 s after this loop saw its epoch 2), with epoch 4 to come. Not sooner
    # after a report: Tune registers a result's checkpoint only after its callbacks have run, and a node lost in
    # between restarts the trial from its previous checkpoint (Ray runs an epoch at least once).
    seen, target, lost = {}, None, None  # seen: (trial, epoch) -> (when this loop saw it, node)
    deadline = time.time() + 420
    while time.time() < deadline and driver.poll() is None:
        now = time.time()
        for trial, rows in staged_results(local_cluster, name).items():
            for row in rows:
                seen.setdefault((trial, row["epoch"]), (now, row["node_id"]))
        firsts = {trial: seen_at for (trial, epoch), seen_at in seen.items() if epoch == 1}
        if target is None and len({node for _, node in firsts.values()}) >= 2:
            target = max(firsts, key=lambda trial: firsts[trial][0])
            lost = firsts[target][1]
        if target is not None and (target, 2) in seen:
            assert (target, MAX_EPOCHS) not in seen, f"trial {target} finished before its node could be lost"
            epoch_s = seen[target, 2][0] - seen[target, 1][0]
            if now - seen[target, 2][0] >= max(1.0, min(1.5, epoch_s / 2)):  # mid-epoch 3 however fast they are
                break
        time.sleep(0.2)
    assert target is not None, \
        f"trials never spread over two nodes: {seen}\n" + (tmp_path / "driver.log").read_text()[-3000:]
    lose_node(lost)

    assert driver.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-5000:]
    printed = (tmp_path / "driver.log").read_text()

    # every trial accounted for, in S3, every epoch run (another trial of the lost node may have run one twice);
    # the target went on elsewhere from its S3 checkpoint: no epoch repeated, none skipped
    results = s3_results(seaweedfs, name)
    assert len(results) == 4, sorted(results)
    for trial, rows in results.items():
        epochs = [row["epoch"] for row in rows]
        assert set(epochs) == set(range(1, MAX_EPOCHS + 1)) and epochs[-1] == MAX_EPOCHS, f"{trial}: epochs {epochs}"
    epochs, nodes = [row["epoch"] for row in results[target]], [row["node_id"] for row in results[target]]
    assert epochs == list(range(1, MAX_EPOCHS + 1)), f"{target}: epochs {epochs}"
    assert nodes[:2] == [lost, lost] and lost not in nodes[2:], {t: [r["node_id"][-5:] for r in rows]
                                                                  for t, rows in results.items()}

    # the teacher, the checkpoints and the students went through S3: the teacher published by the driver, the
    # workers' scratch folder gone, and nothing the workers may not write (their credentials would have refused it)
    keys = seaweedfs.keys(f"{RUNS_PREFIX}/{name}")
    assert f"{RUNS_PREFIX}/{name}/teacher.pt" in keys and f"{RUNS_PREFIX}/{name}/tuner.pkl" in keys
    assert not [key for key in keys if "/teacher-progress/" in key], keys
    students = [key for key in keys if re.fullmatch(rf"{RUNS_PREFIX}/{name}/trial-\w+/checkpoint_\d+/student.pt", key)]
    assert len(students) == 4, keys

    # all runs in the tracking server (PostgreSQL), each epoch once; students and the report in S3 through it
    client, parent, children = sweep_runs(mlflow_server.uri, name)
    experiment = client.get_experiment_by_name(name)
    assert len(parent) == 1 and len(children) == 4
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["gkd_tune.outcome"] == "completed"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == list(range(1, MAX_EPOCHS + 1))
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied by the server
    artifacts = seaweedfs.keys(f"{ARTIFACTS_PREFIX}/{experiment.experiment_id}")
    assert sum(key.endswith("/artifacts/checkpoint/student.pt") for key in artifacts) == 4, artifacts
    assert any(key.endswith("/artifacts/report/summary.md") for key in artifacts), artifacts

    # the best student, printed as an S3 URI with its endpoint, loads from there
    best = re.search(r"best student: (s3://\S+)", printed)[1]
    assert f"?endpoint_override={seaweedfs.endpoint}" in best
    import pyarrow.fs
    from gkd_tune.core.models import load_model

    _, path = pyarrow.fs.FileSystem.from_uri(best)  # pyarrow reads the URI as printed (with the head's keys here)
    pyarrow.fs.copy_files(path, str(tmp_path / "best.pt"), source_filesystem=seaweedfs.filesystem())
    _, metadata = load_model(tmp_path / "best.pt", "resnet8", 10)
    assert metadata["epoch"] == MAX_EPOCHS
    assert "4 trials: 4 completed" in printed
    assert re.search(rf"\n1 +\w+ +[0-9.]+ +0\.[0-9]{{4}} +{MAX_EPOCHS} ", printed)  # tested


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
    # (what these commands do when run is test_gpu_yaml_boots_its_head's: here, what is written in the file)
    assert "http://127.0.0.1:5000/health" in start and "--workers 1" in start
    assert config["initialization_commands"] == ["mkdir -p ~/gkd-tune-mlflow"]  # the -v source, as the SSH user
    for node_type in types.values():  # Ray's containers run --net=host: one hop is the host's
        assert node_type["node_config"]["MetadataOptions"]["HttpPutResponseHopLimit"] == 1


def test_the_head_may_launch_only_the_clusters_workers_and_retag_and_end_only_its_own_instances():
    """cluster/README.md's head policy against gpu.yaml: RunInstances only for the worker types and market gpu.yaml
    launches, tagged as this cluster at launch; CreateTags only at launch or on this cluster's instances;
    TerminateInstances only on this cluster's; nothing of EC2 on every resource but Describe*."""
    from realstack import readme_policy

    config = prepared_gpu_config()
    workers = [t["node_config"] for name, t in config["available_node_types"].items()
               if name != config["head_node_type"]]
    statements = readme_policy("gkd-tune-head", "bucket")["Statement"]

    def allowing(action):
        return [s for s in statements if action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]

    launch_instance = [s for s in allowing("ec2:RunInstances") if str(s["Resource"]).endswith(":instance/*")]
    assert len(launch_instance) == 1
    conditions = launch_instance[0]["Condition"]["StringEquals"]
    assert sorted(conditions["ec2:InstanceType"]) == sorted({w["InstanceType"] for w in workers})
    assert conditions["aws:RequestTag/ray-cluster-name"] == config["cluster_name"]
    spot = {w.get("InstanceMarketOptions", {}).get("MarketType", "on-demand") for w in workers}
    assert [conditions["ec2:InstanceMarketType"]] == list(spot)
    for statement in allowing("ec2:CreateTags"):
        tests = statement["Condition"]["StringEquals"]
        assert tests.get("ec2:CreateAction") == "RunInstances" or \
            tests.get("aws:ResourceTag/ray-cluster-name") == config["cluster_name"], statement
    for statement in allowing("ec2:TerminateInstances"):
        assert statement["Condition"]["StringEquals"]["ec2:ResourceTag/ray-cluster-name"] == config["cluster_name"]
    unconditioned = [s for s in statements if s["Resource"] == "*" and "Condition" not in s]
    assert [s["Action"] for s in unconditioned] == ["ec2:Describe*"], unconditioned
    # a spot launch also creates a spot-instances-request, which RunInstances must be allowed on
    if spot == {"spot"}:
        assert any(r.endswith(":spot-instances-request/*") for s in allowing("ec2:RunInstances")
                   for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]))


def test_the_doctor_dry_runs_each_worker_launch_and_names_a_refused_permission(monkeypatch, tmp_path):
    """gpu.yaml's worker launched as Ray's AWS provider launches it, DryRun=True, against EC2's answers (botocore's
    Stubber): DryRunOperation is a pass; UnauthorizedOperation names the action and resource; a missing spot
    service-linked role names the README step that makes it."""
    import boto3
    from botocore.stub import Stubber

    from gkd_tune.cluster.aws import launch_problems, launch_request
    from gkd_tune.cluster.doctor import launch_checks

    config = prepared_gpu_config()
    [worker] = [name for name in config["available_node_types"] if name != config["head_node_type"]]
    request = launch_request(config, worker)
    assert request["DryRun"] is True and request["MinCount"] == request["MaxCount"] == 1
    assert request["InstanceMarketOptions"]["MarketType"] == "spot" and "SubnetIds" not in request
    assert request["TagSpecifications"][0]["Tags"] == [{"Key": "ray-cluster-name", "Value": config["cluster_name"]}]
    ec2 = boto3.client("ec2", region_name="us-west-2", aws_access_key_id="x", aws_secret_access_key="x")
    refused = ("You are not authorized to perform this operation. User: arn:aws:sts::123456789012:assumed-role/"
               "gkd-tune-head/i-0 is not authorized to perform: ec2:RunInstances on resource: arn:aws:ec2:us-west-2:"
               "123456789012:spot-instances-request/* because no identity-based policy allows the ec2:RunInstances "
               "action. Encoded authorization failure message: AbC")
    with Stubber(ec2) as stub:
        stub.add_client_error("run_instances", "DryRunOperation", "Request would have succeeded", 412,
                              expected_params=request)
        stub.add_client_error("run_instances", "UnauthorizedOperation", refused, 403, expected_params=request)
        stub.add_client_error("run_instances", "AuthFailure.ServiceLinkedRoleCreationNotPermitted", "no role", 403,
                              expected_params=request)
        assert launch_problems(config, ec2) == []
        assert launch_problems(config, ec2) == [
            f"the head may not launch a {worker} worker (spot {request['InstanceType']}): UnauthorizedOperation: "
            f"the head's role lacks ec2:RunInstances on arn:aws:ec2:us-west-2:123456789012:spot-instances-request/* "
            f"(the head policy in cluster/README.md, step 6)"]
        [problem] = launch_problems(config, ec2)
        assert "aws iam create-service-linked-role --aws-service-name spot.amazonaws.com" in problem
    # on the head, without credentials: one line, no traceback; elsewhere than AWS: not checked
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    [(what, _, problem)] = launch_checks({**config, "provider": {**config["provider"], "region": "nowhere-1"}})
    assert what == "launch" and problem.startswith("launch: not checked: ")
    assert launch_checks({**config, "provider": {"type": "fake_multinode"}}) == []


HEAD_BOOTSTRAP = ROOT / "tests" / "head_bootstrap.py"


def boot_head(gpu_yaml: Path, scratch: Path) -> tuple[dict, dict, str]:
    """gpu.yaml's head commands run as `ray up` runs them (tests/head_bootstrap.py): (the report of the steps up to
    the start commands, the report of the start commands run twice, the log)."""
    from realstack import missing

    tools = ("unshare", "setpriv", "prlimit", "mount", "ip")
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in tools):
        missing(f"booting gpu.yaml's head needs root (it plays docker: a root-owned volume folder, a container user "
                f"of uid 1000) and {', '.join(tools)}")
    for name in ("host-home", "container-home"):
        (scratch / name).mkdir()
        os.chown(scratch / name, 1000, 1000)
    (scratch / "container-tmp").mkdir()
    (scratch / "container-tmp").chmod(0o1777)
    (scratch / "auth_token").write_text("gkd-tune-bootstrap-" + os.urandom(8).hex())
    command = [sys.executable, str(HEAD_BOOTSTRAP), str(gpu_yaml), str(scratch)]
    prepared = subprocess.run(["unshare", "--mount", *command, "prepare"], capture_output=True, text=True,
                              timeout=900)
    started = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", *command, "start"],
                             capture_output=True, text=True, timeout=600)
    log = "".join((scratch / f"{phase}.log").read_text(errors="replace") for phase in ("prepare", "start")
                  if (scratch / f"{phase}.log").exists())
    for done in (prepared, started):
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + log[-3000:]
    return json.loads(prepared.stdout.splitlines()[-1]), json.loads(started.stdout.splitlines()[-1]), log


@pytest.mark.slow
@pytest.mark.realstack
def test_gpu_yaml_boots_its_head(tmp_path):
    """`ray up`'s head commands, read from gpu.yaml and executed: as uid 1000, with a volume folder docker would
    make as root, without curl, with the MLflow server really started, answering and writing; then once more, as the
    next `ray up` runs them on the same container."""
    prepared, started, log = boot_head(GPU_YAML, tmp_path)
    failed = [step for step in prepared["steps"] + [s for run in started["runs"] for s in run["steps"]]
              if step.get("exit", 0) != 0]
    assert not failed, f"{failed}\n{log[-4000:]}"
    # the volume folder was made by initialization_commands as the SSH user, not by dockerd as root
    assert not [step for step in prepared["steps"] if step["step"] == "docker"], prepared["steps"]
    assert started["state_folder_uid"] == 1000
    first, second = started["runs"]
    assert first["error"] is None and first["experiment"] is not None, first
    assert {first["state_files"][name] for name in ("tracking.sqlite", "server.log")} == {1000}, first
    assert len(first["mlflow_servers"]) == 1
    # the second start: the old server gone, one new one, the runs kept in the store on the host's disk
    assert second["error"] is None and second["experiment"] == first["experiment"], second
    assert len(second["mlflow_servers"]) == 1 and second["mlflow_servers"] != first["mlflow_servers"], started
    assert started["pid_file"] == str(second["mlflow_servers"][0])


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
    from gkd_tune.sweep.space import parse_space
    from gkd_tune.sweep.trainable import check_gpu_visible

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
