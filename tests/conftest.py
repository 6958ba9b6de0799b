import os
import shutil
from pathlib import Path

import pytest

# Under pytest-xdist (.ci/run: -n 2), each worker's torch takes its share of the cores: two workers whose OpenMP
# threads each spin on every core slow each other down more than running one after the other would
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
# the modules that take minutes (--durations), handed out first to the workers of --dist loadfile (each module's
# tests in one worker: its module fixtures run once), so that the two end together, the quick modules last
LONGEST_FIRST = ("test_cluster", "test_quickstart", "test_search", "test_train", "test_reproduce", "test_slurm")


def pytest_collection_modifyitems(items):
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))  # stable: each module keeps its order


# the MLflow servers the tests start (`mlflow server`, `mlflow ui`, the SLURM job's) without MLflow's job runner: a
# job runner and 7 huey consumers per server that gkd-tune never submits to (86 core-s of the suite)
os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"

# ../shared/data beside the checkout; GKD_TUNE_SHARED_DATA points elsewhere (a GPU machine without ../shared)
SHARED_DATA = Path(os.environ.get("GKD_TUNE_SHARED_DATA",
                                  Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
CIFAR10_10K = SHARED_DATA / "cifar10" / "train-10k.parquet"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test run decodes into (and trains teachers into) its own cache, never the user's."""
    root = tmp_path_factory.mktemp("gkd-cache")
    previous = os.environ.get("GKD_TUNE_CACHE")
    os.environ["GKD_TUNE_CACHE"] = str(root)
    yield root
    if previous is None:
        del os.environ["GKD_TUNE_CACHE"]
    else:
        os.environ["GKD_TUNE_CACHE"] = previous


def new_tracking_store(path: Path) -> str:
    """`sqlite:///{path}`, the MLflow store there (a --resume's) or else a new one: a copy of an empty store migrated
    once in this session (in its cache folder), as MLflow migrates each new store for about 2 s. Sweeps that create
    their own store: the quickstart's, the command-line tests'."""
    if path.exists():
        return f"sqlite:///{path}"
    template = Path(os.environ["GKD_TUNE_CACHE"]) / "empty-mlflow.db"
    if not template.exists():
        from mlflow.tracking import MlflowClient

        migrating = template.with_name("migrating-mlflow.db")
        MlflowClient(f"sqlite:///{migrating}").search_experiments()
        migrating.rename(template)
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def shared_cifar10():
    if not CIFAR10_10K.exists():
        pytest.skip(f"shared CIFAR-10 sample not found at {CIFAR10_10K}")
    return CIFAR10_10K


def make_splits(n_train=64, n_val=32, classes=3, seed=0, name="tiny"):
    """Random-pixel splits: enough to drive the loop, nothing to learn from."""
    import numpy as np

    from gkd_tune.core.data import ImageArrays, Splits

    rng = np.random.default_rng(seed)

    def arrays(n):
        return ImageArrays(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % classes)

    return Splits(name, arrays(n_train), arrays(n_val), arrays(n_val), tuple(map(str, range(classes))),
                  Path(f"/nonexistent/{name}.npz"))


@pytest.fixture
def tiny_splits():
    return make_splits()


def sweep_runs(tracking_uri: str, experiment: str):
    """A sweep's (or a reproduction's) MLflow runs: the client, the parent run(s) and the trials' child runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parent, children


def assert_budget_halving_promoted_the_best(children, first_budget: int, full_budget: int, configurations: int,
                                            promoted: int):
    """Budget halving ran `configurations` configurations at the first budget and the best `promoted` of them, by
    val_acc, again at the full budget (runs told apart by their `gkd_tune.config` tag and `max_epochs` param)."""
    first = {r.data.tags["gkd_tune.config"]: r.data.metrics["val_acc"] for r in children
             if r.data.params["max_epochs"] == str(first_budget)}
    again = {r.data.tags["gkd_tune.config"] for r in children if r.data.params["max_epochs"] == str(full_budget)}
    assert len(first) == configurations and len(again) == promoted and again <= set(first), (first, again)
    assert min(first[c] for c in again) >= sorted(first.values())[-promoted], (first, again)  # (ties either way)


# the real servers of the `realstack` tests (S3, PostgreSQL, an MLflow server on both), one each per session
from realstack import mlflow_server, postgres, seaweedfs  # noqa: E402,F401
