import os
from pathlib import Path

import pytest

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


# the real servers of the `realstack` tests (S3, PostgreSQL, an MLflow server on both), one each per session
from realstack import mlflow_server, postgres, seaweedfs  # noqa: E402,F401
