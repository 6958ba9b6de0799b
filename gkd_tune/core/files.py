"""Where gkd-tune's files live and how they are written: the cache root, the file names a sweep shares between
its driver and its trials, and the atomic save every writer uses. The bottom of the stack: imports nothing of
gkd-tune, and torch only when a file is saved.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

# In a sweep's storage folder (storage.SweepStorage): the teacher every trial reads.
TEACHER_FILE = "teacher.pt"
# In each Ray Tune checkpoint of a trial: the full trainer state (to continue) and the student alone (to use).
TRAINER_FILE = "trainer.pt"
STUDENT_FILE = "student.pt"
STUDENT_WEIGHTS_FILE = "student-weights.pt"  # in a sweep's storage: the given student_weights, for every trial
# In a sweep's storage folder: the space file it started with, overrides written in (what --resume compares, what
# a report reads); in a reproduction's, its configuration likewise (resume.py).
SPACE_FILE = "space.yaml"
REPRODUCTION_FILE = "reproduction.yaml"
# A failed save with less free space than this on its device is reported as a full disk.
DISK_FULL_BYTES = 1 << 20


def cache_root() -> Path:
    """Decoded data sets and trained teachers: ``$GKD_TUNE_CACHE``, default ``~/.cache/gkd-tune``."""
    return Path(os.environ.get("GKD_TUNE_CACHE", Path.home() / ".cache" / "gkd-tune"))


def partial_path(path: Path) -> Path:
    """A sibling to write first and rename over `path`; per process, so concurrent writers never share one."""
    return path.with_name(f"{path.name}.{os.getpid()}.partial")


def load_checked(path: Path, map_location=None):
    """torch.load of a file gkd-tune wrote, with weights_only=True: a file holding other Python objects (another
    tool's pickle, or a planted one) is refused as not a gkd-tune file, never loaded with weights_only=False."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} is not a gkd-tune checkpoint or model file: it holds Python objects beyond tensors "
                         f"and plain data, which gkd-tune does not load") from None


def save_atomically(obj, path: Path) -> None:
    """torch.save through a temporary file: a crash mid-write never leaves a broken file behind."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        torch.save(obj, partial)
        os.replace(partial, path)
    except (OSError, RuntimeError) as error:  # torch reports a full disk as an "unexpected pos" RuntimeError
        partial.unlink(missing_ok=True)
        if shutil.disk_usage(path.parent).free < DISK_FULL_BYTES:
            raise OSError(errno.ENOSPC, f"no space left on the device of {path.parent} (writing {path.name})") from error
        raise
