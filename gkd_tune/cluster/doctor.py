"""The cluster check behind `python -m gkd_tune.doctor` (see gkd_tune/doctor.py): every node probed by a Ray task
holding its GPUs, the checks of preflight.py from the driver, one table and a list of problems."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..core.errors import error_line
from ..sweep.space import SweepSpec, load_space
from ..sweep.storage import WORKER_SCRATCH_DIR, SweepStorage
from ..sweep.trainable import LOGICAL_GPUS_ENV
from .aws import BOOTSTRAP_CONFIG, launch_problems
from .preflight import (check_given_cluster, check_shared_with_cluster, check_tracking, cluster_spans_nodes,
                        node_local_storage, task_resources, wait_for_cluster_resources)

# A node whose probe has not answered by then is reported: its GPUs are busy (a running sweep), or it is going away
# (a cold compile of the trial step takes a minute or two).
PROBE_WAIT_S = 600
# In the sweep's storage: one file per node, written there and read back from the driver, then deleted. Below the
# folder worker nodes may write (storage.py): a node that may not write where a teacher task writes is found here.
PROBE_DIR = f"{WORKER_SCRATCH_DIR}/doctor"
# The trial step on a GPU: steps run (compiled with CUDA graphs, a step replays its graph from the third on), on
# random CIFAR-shaped data, with the larger CIFAR head (the data set itself is not downloaded for the check).
TRIAL_STEPS = 3
STEP_CLASSES = 100


# ------------------------------------------------------------------------------------------------ on each node


def probe_node(storage: SweepStorage | None, probe_file: str | None, spec: SweepSpec | None = None) -> dict:
    """What a trial on this node would meet (it runs holding all of the node's GPUs): the CUDA devices torch sees
    and can run a kernel on, the NVIDIA driver, this node's auth mode, with a space a few steps of its trial on
    every GPU, and `probe_file` written to the sweep's storage and read back from here."""
    import ray
    import torch

    seen = {"cuda": [], "cuda_error": None, "torch_cuda": torch.version.cuda, "driver": nvidia_driver(),
            "gpu_ids": [str(i) for i in ray.get_gpu_ids()], "logical_gpus": os.environ.get(LOGICAL_GPUS_ENV) == "1",
            "auth": auth_mode(), "storage_error": None, "steps": []}
    try:
        seen["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        for i in range(len(seen["cuda"])):
            torch.ones(1, device=f"cuda:{i}").add_(1).item()  # the driver runs this build's kernels
    except Exception as error:  # e.g. a driver too old for the CUDA torch was built with
        seen["cuda_error"] = error_line(error)
    if spec is not None and seen["cuda"] and not seen["cuda_error"]:
        seen["steps"] = [trial_step(spec, torch.device(f"cuda:{i}")) for i in range(len(seen["cuda"]))]
    if storage is not None:
        node_id = ray.get_runtime_context().get_node_id()
        try:
            with tempfile.TemporaryDirectory() as directory:
                written = Path(directory) / "written"
                written.write_text(node_id)
                storage.put(written, probe_file)
                if storage.get(probe_file, Path(directory) / "read").read_text() != node_id:
                    raise OSError("read back something else than was written")
        except Exception as error:  # pyarrow raises OSError, ArrowInvalid, PermissionError ... by filesystem
            seen["storage_error"] = error_line(error)
    return seen


def trial_step(spec: SweepSpec, device) -> dict:
    """A few training steps of one of the space's trials on `device`, as a trial takes them: its teacher and student
    (random weights), its method, batch size and compile mode (auto: CUDA graphs on a GPU), on random data. Finds
    what a one-element kernel does not: cuDNN and cuBLAS, inductor and Triton, CUDA graphs, and the memory of a
    batch. {'device', 'compile', 'ok', 'seconds', 'error'}."""
    import numpy as np
    import torch

    from ..core.data import ImageArrays, Splits
    from ..core.distillers import build_distiller, distillation_method
    from ..core.loop import Trainer
    from ..core.models import build_model
    from ..sweep.space import TrialPlan

    rng = np.random.default_rng(0)
    values = {name: d.sample(rng, 1)[0] for name, d in {**spec.searched(), **spec.grid()}.items()}
    plan = TrialPlan.resolve(spec, values)
    train_config = plan.train

    def arrays(n):
        return ImageArrays(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % STEP_CLASSES)

    step = {"device": str(device), "compile": train_config.compile, "ok": False, "error": None}
    started = time.perf_counter()
    try:
        splits = Splits("random", arrays(train_config.batch_size * TRIAL_STEPS), arrays(STEP_CLASSES), None,
                        tuple(map(str, range(STEP_CLASSES))), Path("random.npz"))
        teacher = build_model(plan.teacher.arch, STEP_CLASSES) \
            if distillation_method(plan.distill.method).needs_teacher else None
        distiller = build_distiller(plan.distill, build_model(plan.student, STEP_CLASSES), teacher)
        trainer = Trainer(distiller, splits, train_config, device=device)
        step["compile"] = trainer.compile_mode
        trainer.distiller.train()
        losses = [trainer.train_step(images, labels, i / TRIAL_STEPS).total.float().item()
                  for i, (images, labels) in enumerate(trainer.train_loader)]
        if not all(np.isfinite(losses)):
            raise FloatingPointError(f"non-finite losses {losses}")
        step["ok"] = True
    except Exception as error:  # an unsupported kernel, out of memory, a compiler failure: what the trial would meet
        step["error"] = error_line(error)
    finally:
        step["seconds"] = time.perf_counter() - started
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return step


def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None


def auth_mode() -> str:
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    return "token" if is_token_auth_enabled() else "off"


# ------------------------------------------------------------------------------------------------ on the driver


@dataclass
class NodeFindings:
    """One node: what Ray says it has, what its probe saw (None: no answer), what the driver found of its file."""
    node_id: str
    address: str
    is_head: bool
    cpus: float
    gpus: float
    seen: dict | None = None
    error: str | None = None  # the probe task failed, or did not answer
    file_visible: bool | None = None  # the file it wrote, read from the driver's node (None: not checked)
    # the storage path is on the driver's own disk and this is another node: not shared, whatever the file says
    # (the fake local cluster's nodes share one disk; a real cluster's machines do not)
    storage_on_driver_disk: bool = False
    problems: list[str] = field(default_factory=list)
    label: str = ""  # a short form of node_id, unique in the cluster

    @property
    def name(self) -> str:
        return f"{self.label or self.node_id[:8]} ({self.address}{', head' if self.is_head else ''})"

    @property
    def storage(self) -> str | None:
        """'read+write', 'cannot write' or 'not shared'; None where the storage was not checked."""
        if self.seen is None or self.file_visible is None and not self.seen["storage_error"]:
            return None
        if self.seen["storage_error"]:
            return "cannot write"
        return "read+write" if self.file_visible and not self.storage_on_driver_disk else "not shared"


def short_ids(ids: list[str]) -> list[str]:
    """Ray's node ids shortened as far as they stay distinct: their first 8 hex digits, or their last 8 (the fake
    cluster's ids differ only at the end), or whole."""
    for shorten in (lambda i: i[:8], lambda i: i[-8:], lambda i: i):
        if len({shorten(i) for i in ids}) == len(ids):
            return [shorten(i) for i in ids]


def judge(node: NodeFindings, storage: SweepStorage | None) -> list[str]:
    """The node's problems, each a sentence that names the node and what to do."""
    if node.error:
        return [f"node {node.name}: {node.error}"]
    seen, problems = node.seen, []
    wanted, cuda = int(node.gpus), len(seen["cuda"])
    logical = seen["logical_gpus"] and cuda == 0
    if wanted and cuda < wanted and not logical:
        reason = f" ({seen['cuda_error']})" if seen["cuda_error"] else ""
        problems.append(
            f"node {node.name} advertises GPU: {node.gpus:g}, torch sees {cuda} CUDA device"
            f"{'s' if cuda != 1 else ''}{reason}: its container needs the GPUs (--gpus all) and a driver that runs "
            f"CUDA {seen['torch_cuda'] or '(torch is a CPU build)'}; a trial there would fail (Ray's GPUs are "
            f"logical? set {LOGICAL_GPUS_ENV}=1 where the sweep starts)")
    elif cuda and seen["cuda_error"]:
        problems.append(
            f"node {node.name}: torch sees {cuda} CUDA device{'s' if cuda != 1 else ''} but a kernel fails there "
            f"({seen['cuda_error']}): check that its driver runs CUDA {seen['torch_cuda']} and the card itself "
            f"(nvidia-smi, Xid errors in dmesg); a trial there would fail")
    for step in seen["steps"]:
        if not step["ok"]:
            memory = " (lower training.batch_size, or use a larger GPU)" if "out of memory" in step["error"] else ""
            problems.append(f"node {node.name}: a step of the space's trial fails on {step['device']} (compile "
                            f"{step['compile']}): {step['error']}{memory}; its trials would fail the same way")
    if seen["auth"] != "token":
        problems.append(f"node {node.name} runs Ray without token authentication: anyone who reaches its ports can "
                        f"run code there (start it with RAY_AUTH_MODE=token, as gpu.yaml's run_options do)")
    if node.storage == "cannot write":
        problems.append(f"node {node.name} cannot write and read {storage.location}: {seen['storage_error']}")
    elif node.storage == "not shared" and not node.storage_on_driver_disk:  # that one is the driver's problem
        problems.append(f"{storage.location} is not shared: what node {node.name} wrote there is not visible from "
                        f"the driver's node; on a cluster, storage_path must be storage every node reads (s3://...)")
    return problems


def step_cell(node: NodeFindings) -> str:
    steps = node.seen["steps"] if node.seen else []
    if not steps:
        return "-"
    failed = [step for step in steps if not step["ok"]]
    if failed:
        return f"FAILED on {', '.join(step['device'] for step in failed)}"
    return f"ok ({steps[0]['compile']}, {max(step['seconds'] for step in steps):.0f} s)"


def gpu_cell(node: NodeFindings) -> str:
    if node.seen is None:
        return "-"
    seen = node.seen
    if seen["cuda_error"]:
        return f"CUDA error: {seen['cuda_error']}"
    if not seen["cuda"]:
        return "0 CUDA devices" + (f" (logical GPUs: {LOGICAL_GPUS_ENV}=1)" if node.gpus and seen["logical_gpus"] else "")
    names = sorted(set(seen["cuda"]))
    driver = f", driver {seen['driver']}" if seen["driver"] else ""
    return f"{len(seen['cuda'])} x {'/'.join(names)} (CUDA {seen['torch_cuda']}{driver})"


def table(nodes: list[NodeFindings]) -> str:
    rows = [("node", "Ray offers", "torch sees", "trial step", "storage", "auth", "")]
    for node in nodes:
        rows.append((node.name, f"{node.cpus:g} CPU, {node.gpus:g} GPU", gpu_cell(node), step_cell(node),
                     node.storage or "-", node.seen["auth"] if node.seen else "-",
                     "ok" if not node.problems else "PROBLEM"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def probe_cluster(storage: SweepStorage | None, spec: SweepSpec | None = None) -> list[NodeFindings]:
    """Every alive node's probe, each a task pinned to its node and holding all its GPUs (as trials would)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [NodeFindings(n["NodeID"], n["NodeManagerAddress"], "node:__internal_head__" in n["Resources"],
                          n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0))
             for n in ray.nodes() if n.get("Alive")]
    nodes.sort(key=lambda node: (not node.is_head, node.address, node.node_id))
    for node, label in zip(nodes, short_ids([node.node_id for node in nodes])):
        node.label = label
    run = uuid.uuid4().hex[:8]
    files = {node.node_id: f"{PROBE_DIR}/{run}-{node.node_id}" for node in nodes}
    print(f"Probing {len(nodes)} node{'s' if len(nodes) != 1 else ''} (a task on each, holding its GPUs) ...",
          flush=True)
    pending = {}
    for node in nodes:
        task = ray.remote(probe_node).options(
            num_cpus=0, num_gpus=int(node.gpus), max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False))
        pending[task.remote(storage, files[node.node_id] if storage else None, spec)] = node
    done, late = ray.wait(list(pending), num_returns=len(pending), timeout=PROBE_WAIT_S)
    for ref in done:
        try:
            pending[ref].seen = ray.get(ref)
        except Exception as error:
            pending[ref].error = f"the probe task failed: {error_line(error)}"
    for ref in late:
        ray.cancel(ref, force=True)
        pending[ref].error = (f"no answer within {PROBE_WAIT_S} s (its GPUs busy with a running sweep? the doctor "
                              f"holds each node's GPUs: run it between sweeps)")
    if storage is not None:
        with tempfile.TemporaryDirectory() as directory:
            for node in nodes:
                if node.seen and not node.seen["storage_error"]:
                    try:
                        local = storage.get(files[node.node_id], Path(directory) / node.node_id)
                        node.file_visible = local.read_text() == node.node_id
                    except FileNotFoundError:
                        node.file_visible = False
        storage.remove(PROBE_DIR)
        if node_local_storage(storage.location) and cluster_spans_nodes():
            driver_node = ray.get_runtime_context().get_node_id()
            for node in nodes:
                node.storage_on_driver_disk = node.node_id != driver_node
    for node in nodes:
        node.problems = judge(node, storage)
    return nodes


def check_wrong_token_refused() -> str | None:
    """A problem, or None when the cluster refuses a client with a wrong token (`ray status`, in a subprocess)."""
    import ray

    ray_cli = Path(sys.executable).parent / "ray"
    ray_cli = str(ray_cli) if ray_cli.exists() else shutil.which("ray")
    if not ray_cli:
        return "token auth: not checked: no `ray` command next to this Python"
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="gkd-tune-doctor-" + uuid.uuid4().hex)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    address = ray.get_runtime_context().gcs_address
    try:
        out = subprocess.run([ray_cli, "status", "--address", address], env=env, capture_output=True, text=True,
                             timeout=120)
    except subprocess.TimeoutExpired:
        return f"token auth: not checked: `ray status --address {address}` did not end within 120 s"
    printed = out.stdout + out.stderr
    if out.returncode == 0:
        return (f"the cluster at {address} answers a client with a wrong token: token authentication is off "
                f"(start every node with RAY_AUTH_MODE=token, as gpu.yaml's run_options do)")
    if "auth" not in printed.lower():
        last = printed.strip().splitlines()[-1] if printed.strip() else f"exit code {out.returncode}"
        return f"token auth: not checked: `ray status` with a wrong token failed for another reason: {last}"
    return None


def diagnose(args) -> int:
    """The whole check, from the command's arguments (gkd_tune/doctor.py); the exit code."""
    import ray

    from .runtime import connect_to_ray

    spec: SweepSpec | None = None
    if args.space:
        spec = load_space(args.space).with_overrides(tracking_uri=args.tracking_uri, storage_path=args.storage_path)
    elif args.storage_path or args.tracking_uri:
        raise ValueError("--storage-path and --tracking-uri need --space (the sweep they belong to)")
    storage = SweepStorage.for_sweep(spec.storage_path, spec.name) if spec else None
    checks = []  # (what, what was checked, its problem or None)
    if spec:
        checks.append(("tracking", f"{spec.tracking.uri} usable from the driver", problem_of(check_tracking,
                                                                                        spec.tracking.uri)))
    check_given_cluster(args.address)
    connect_to_ray(args.address, own_ray=False)  # never a Ray it was not given: that would check no cluster
    try:
        if spec:
            checks.append(("shared", "storage and tracking that every node of the cluster can use",
                           problem_of(check_shared_with_cluster, spec)))
            checks.append(("resources", f"{task_resources(spec)} on one node (the teacher task's; a trial fits in "
                           f"it)", problem_of(wait_for_cluster_resources, spec)))
        nodes = probe_cluster(storage, spec)
        checks.append(("auth", "a client with a wrong token is refused", check_wrong_token_refused()))
        if BOOTSTRAP_CONFIG.exists():  # on the head of a `ray up` cluster
            checks += launch_checks(yaml.safe_load(BOOTSTRAP_CONFIG.read_text()))
    finally:
        ray.shutdown()

    return conclude(nodes, checks, storage, spec)


def conclude(nodes: list[NodeFindings], checks: list[tuple[str, str, str | None]], storage: SweepStorage | None,
             spec: SweepSpec | None) -> int:
    """The table, a line per check, then every problem: exit code 1 wherever a line says PROBLEM, else 0."""
    print("\n" + table(nodes) + "\n")
    for what, checked, problem in checks:
        print(f"{what:<10} {checked}: {'ok' if problem is None else 'PROBLEM'}")
    problems = [problem for _, _, problem in checks if problem] + [p for node in nodes for p in node.problems]
    if storage:  # its problems are the nodes', or the driver's where the path is on the driver's disk
        unshared = [node for node in nodes if node.storage in ("cannot write", "not shared")]
        print(f"{'storage':<10} {storage.location} written from every node and read back from the driver's: "
              f"{'PROBLEM' if unshared else 'ok'}")
        covered = any(node.problems for node in unshared) or any(p for what, _, p in checks if what == "shared")
        if unshared and not covered:  # on the driver's disk, and the cluster spanned no nodes at the shared check
            problems.append(f"{storage.location} is not shared: what node {unshared[0].name} wrote there is not "
                            f"visible from the driver's node; on a cluster, storage_path must be storage every node "
                            f"reads (s3://...)")
    if not spec:
        print("(storage, tracking and a trial's resources are not checked without --space)")
    if not any(node.gpus for node in nodes):
        print("note: no node offers a GPU now" + ("" if spec else ": GPU workers start on demand; give --space to "
                                                                  "start one and check it"))
    if problems:
        print(f"\n{len(problems)} problem{'s' if len(problems) != 1 else ''}:", file=sys.stderr)
        for problem in problems:
            print(f"- {problem}", file=sys.stderr)
        return 1
    print("\nno problem found")
    return 0


def launch_checks(config: dict) -> list[tuple[str, str, str | None]]:
    """On AWS: whether the head may launch each worker node type (a dry run; aws.py)."""
    if config.get("provider", {}).get("type") != "aws":
        return []
    try:
        problems = launch_problems(config)
    except Exception as error:  # no credentials, no boto3, no network: said, not a traceback
        problems = [f"launch: not checked: {error_line(error)}"]
    return [("launch", "each worker node type launched as a dry run (RunInstances, DryRun=True)",
             "; ".join(problems) or None)]


def problem_of(check, *args) -> str | None:
    """A preflight check's ValueError as a problem to list, not the end of the diagnosis."""
    try:
        check(*args)
    except ValueError as error:
        return str(error)
    return None
