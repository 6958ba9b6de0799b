import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
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
