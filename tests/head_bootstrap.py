"""Run cluster/gpu.yaml's own head commands the way `ray up` runs them on AWS, on this machine, for
tests/test_cluster.py::test_gpu_yaml_boots_its_head. Needs root (it plays docker) and util-linux.

    python tests/head_bootstrap.py GPU_YAML SCRATCH        # prints a JSON report on its last line

What `ray up` does on the head, and what stands in for it here:
  - initialization_commands run on the host as the SSH user `ubuntu` (uid 1000): here as uid 1000 with HOME at
    /home/ubuntu, a folder of SCRATCH mounted there;
  - `docker run` with head_run_options: a `-v` source that does not exist is created by dockerd, owned by root
    (Ray's command_runner.py says so), then bind-mounted into the container;
  - file_mounts are copied into the container, owned by its user `ray` (uid 1000);
  - ~/ray_bootstrap_config.yaml is the prepared cluster config (what the launcher writes);
  - head_setup_commands (setup_commands first: Ray's prepare_config merges them) and head_start_ray_commands run in
    the container as `ray`, one `bash -c` each,
    with run_options' --env and --ulimit, a private /tmp, and the image's Python: a virtual environment of its own
    that sees this test environment's packages (a .pth file) and installs into itself; the user may read the
    image's files (CAP_DAC_READ_SEARCH: this machine's Python lives below /root), not write them;
  - no `curl` on PATH: Ray's -cpu image has none.
The start commands run in a network and PID namespace of their own: Ray's and MLflow's fixed ports (6379, 8265,
5000) are the namespace's, and every process they start ends with it. They run twice, as a second `ray up` runs
them again on the same container.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

CONTAINER_UID = 1000
HOST_HOME, CONTAINER_HOME = Path("/home/ubuntu"), Path("/home/ray")  # gpu.yaml's SSH user's, the image's user's
AS_USER = ["setpriv", f"--reuid={CONTAINER_UID}", f"--regid={CONTAINER_UID}", "--clear-groups",
           "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
MISSING_IN_IMAGE = {"curl"}


def mount(*arguments: str) -> None:
    subprocess.run(["mount", *arguments], check=True)


def enter_machine(scratch: Path, keep: list[Path]) -> None:
    """This process's view of the files: /home/ubuntu and /home/ray from SCRATCH, a private /tmp, and the paths in
    `keep` (this repository, this Python's environment, SCRATCH) visible where they were, also below /tmp or /home
    (a CI clone may live there)."""
    mount("--make-rprivate", "/")
    mount("-t", "tmpfs", "tmpfs", "/mnt")
    saved = []
    for i, path in enumerate(keep):
        if path.is_relative_to("/tmp") or path.is_relative_to("/home"):
            Path(f"/mnt/keep{i}").mkdir()
            mount("--bind", str(path), f"/mnt/keep{i}")
            saved.append((Path(f"/mnt/keep{i}"), path))
    mount("-t", "tmpfs", "tmpfs", "/home")
    for home, name in ((HOST_HOME, "host-home"), (CONTAINER_HOME, "container-home")):
        home.mkdir()
        mount("--bind", str(scratch / name), str(home))
    mount("--bind", str(scratch / "container-tmp"), "/tmp")
    for source, path in saved:
        path.mkdir(parents=True, exist_ok=True)
        mount("--bind", str(source), str(path))
    tools = Path("/mnt/image-bin")  # PATH's system tools, less what the image lacks
    tools.mkdir()
    for folder in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for tool in Path(folder).iterdir() if Path(folder).is_dir() else []:
            if tool.name not in MISSING_IN_IMAGE and not (tools / tool.name).exists():
                (tools / tool.name).symlink_to(tool)


def run_options(config: dict) -> tuple[dict, list[str]]:
    """(--env variables, prlimit arguments for --ulimit) of the head container's docker run options."""
    options = " ".join(config["docker"].get("run_options", []) + config["docker"].get("head_run_options", []))
    words = shlex.split(options)
    env, limits = {}, []
    for flag, value in zip(words, words[1:]):
        if flag == "--env":
            key, _, val = value.partition("=")
            env[key] = val
        elif flag == "--ulimit":
            kind, _, bounds = value.partition("=")
            limits.append(f"--{kind}={':'.join(str(capped(kind, int(b))) for b in bounds.split(':'))}")
    return env, limits


def capped(kind: str, wanted: int) -> int:
    """A limit docker would set, within the hard limit this machine's root may set (a sandbox can forbid raising
    it: then the start command's own `ulimit -n` fails, and goes on, as its `;` lets it)."""
    import resource

    hard = resource.getrlimit(getattr(resource, f"RLIMIT_{kind.upper()}"))[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def volumes(config: dict) -> list[tuple[Path, Path]]:
    options = shlex.split(" ".join(config["docker"].get("head_run_options", [])))
    return [tuple(Path(part) for part in value.split(":")[:2]) for flag, value in zip(options, options[1:])
            if flag in ("-v", "--volume")]


def bind_volumes(config: dict) -> None:
    """docker run's -v: each source folder mounted at its place in the container."""
    for source, target in volumes(config):
        if source.exists():
            target.mkdir(parents=True, exist_ok=True)
            mount("--bind", str(source), str(target))


def container_env(config: dict) -> dict:
    """The container's environment: run_options' --env, the image's Python first on PATH (with the commands of this
    test environment's packages: `ray`, `mlflow`), then the system's tools less what the image lacks."""
    env, _ = run_options(config)
    return {"HOME": str(CONTAINER_HOME), "USER": "ray", "LOGNAME": "ray", "SHELL": "/bin/bash", "LANG": "C.UTF-8",
            "PATH": f"{CONTAINER_HOME}/image-python/bin:{Path(sys.executable).parent}:/mnt/image-bin", **env}


def run_as_user(command: str, env: dict, home: Path, limits: list[str], log) -> int:
    started = time.monotonic()
    done = subprocess.run(["prlimit", *limits, *AS_USER, "bash", "-c", command], env=env, cwd=home,
                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    print(f"--- exit {done.returncode} after {time.monotonic() - started:.1f} s: {command[:150]}", file=log,
          flush=True)
    return done.returncode


def prepare(config: dict, repository: Path, token: str, log) -> list[dict]:
    """Everything before the start commands: initialization, docker run, file mounts, setup."""
    steps = []
    for command in config.get("initialization_commands", []):  # on the host, as the SSH user
        env = {"HOME": str(HOST_HOME), "USER": "ubuntu", "PATH": "/usr/local/bin:/usr/bin:/bin"}
        steps.append({"step": "initialization", "command": command,
                      "exit": run_as_user(command, env, HOST_HOME, [], log)})
    for source, _ in volumes(config):  # dockerd makes a missing -v source, as root
        if not source.exists():
            source.mkdir(parents=True)
            steps.append({"step": "docker", "command": f"dockerd created {source} owned by root"})
    for remote, local in config["file_mounts"].items():
        target = CONTAINER_HOME / remote.removeprefix("~/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if local == ".":
            patterns = config.get("rsync_exclude", [])
            shutil.copytree(repository, target, symlinks=True, ignore=lambda folder, names: [
                name for name in names if any(fnmatch.fnmatch(name, p.removeprefix("**/")) for p in patterns)])
        else:
            target.write_text(token)
    (CONTAINER_HOME / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(config))
    subprocess.run(["chown", "-R", f"{CONTAINER_UID}:{CONTAINER_UID}", str(CONTAINER_HOME)], check=True)
    bind_volumes(config)  # after: the copies belong to the container's user, a volume keeps its owner
    # the image's Python: its own environment (the user installs into it) that also sees this one's packages
    env, limits = container_env(config), run_options(config)[1]
    python = CONTAINER_HOME / "image-python"
    run_as_user(f"{shlex.quote(sys.executable)} -m venv {python}", env, CONTAINER_HOME, limits, log)
    site = next(python.glob("lib/python3*/site-packages"))
    (site / "test-environment.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
    for command in config["head_setup_commands"]:  # prepare_config put setup_commands first, as `ray up` runs them
        steps.append({"step": "head_setup_commands", "command": command,
                      "exit": run_as_user(command, env, CONTAINER_HOME, limits, log)})
    return steps


def start(config: dict, log) -> list[dict]:
    env, limits = container_env(config), run_options(config)[1]
    return [{"step": "head_start_ray_commands", "command": command,
             "exit": run_as_user(command, env, CONTAINER_HOME, limits, log)}
            for command in config["head_start_ray_commands"]]


def reap() -> None:
    """PID 1 of the namespace adopts what the start commands leave behind: collect the ended ones."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                return
        except ChildProcessError:
            return


def mlflow_servers() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            state, _, group = stat.rsplit(")", 1)[1].split()[:3]
            if "mlflow server" in command and state != "Z" and int(group) == int(entry.name):  # the group leader
                found.append(int(entry.name))
    return found


def check_server(experiment: str) -> str | None:
    """Whether the MLflow server answers and can write: the id of `experiment`, created if missing."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient("http://127.0.0.1:5000")
    found = client.get_experiment_by_name(experiment)
    return found.experiment_id if found else client.create_experiment(experiment)


def files_in(folder: Path) -> dict:
    return {path.name: path.stat().st_uid for path in sorted(folder.iterdir())} if folder.is_dir() else {}


def main() -> int:
    config_file, scratch = Path(sys.argv[1]), Path(sys.argv[2])
    phase = sys.argv[3] if len(sys.argv) > 3 else "prepare"
    config = yaml.safe_load(config_file.read_text())
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(config)
    repository = Path(__file__).resolve().parents[1]
    keep = [repository, Path(sys.prefix), scratch] + [Path(p) for p in sys.path if p.endswith("site-packages")]
    enter_machine(scratch, keep)
    log = open(scratch / f"{phase}.log", "a")
    report = {"phase": phase}
    if phase == "prepare":
        report["steps"] = prepare(config, repository, (scratch / "auth_token").read_text(), log)
    else:  # start, twice, in this namespace
        bind_volumes(config)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        state = volumes(config)[0][0]
        report["runs"] = []
        for attempt in (1, 2):
            steps = start(config, log)
            reap()
            servers = mlflow_servers()
            try:
                experiment = check_server("bootstrap-check")
                error = None
            except Exception as problem:  # noqa: BLE001 (reported, the test names it)
                experiment, error = None, f"{type(problem).__name__}: {str(problem).splitlines()[0][:300]}"
            report["runs"].append({"steps": steps, "mlflow_servers": servers, "experiment": experiment,
                                   "error": error, "state_files": files_in(state)})
        pid_file = Path("/tmp/gkd-tune-mlflow.pid")
        report["pid_file"] = pid_file.read_text().strip() if pid_file.exists() else None
        report["state_folder_uid"] = state.stat().st_uid
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
