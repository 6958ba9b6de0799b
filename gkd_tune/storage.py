"""A sweep's shared folder: ``<storage_path>/<name>``, a local folder or a URI (``s3://bucket/prefix``, ``gs://``).

Ray Tune keeps trial checkpoints and the experiment state there; gkd-tune adds the teacher, which every trial
reads from there on whatever node it runs. Files move with pyarrow.fs, the filesystem layer Ray Tune itself uses
for ``storage_path``, so a path that works for Tune works here (credentials come from the environment, e.g. an
instance profile on AWS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs


def is_uri(location: str) -> bool:
    return "://" in location


@dataclass(frozen=True)
class SweepStorage:
    location: str  # the sweep's folder: an absolute local path or a URI

    @classmethod
    def for_sweep(cls, storage_path: str, name: str) -> "SweepStorage":
        root = storage_path.rstrip("/") if is_uri(storage_path) else str(Path(storage_path).expanduser().resolve())
        return cls(f"{root}/{name}")

    @property
    def parent(self) -> str:
        """What Ray Tune takes as ``storage_path`` (the sweep's name is the experiment folder below it)."""
        return self.location.rsplit("/", 1)[0]

    def _resolve(self, relative: str = "") -> tuple[pyarrow.fs.FileSystem, str]:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(self.location)
        return filesystem, f"{path.rstrip('/')}/{relative}" if relative else path

    def exists(self, relative: str) -> bool:
        filesystem, path = self._resolve(relative)
        return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound

    def has_experiment(self) -> bool:
        """Whether a Ray Tune experiment already lives here (its experiment_state file)."""
        filesystem, path = self._resolve()
        listing = filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        return any(info.base_name.startswith("experiment_state") for info in listing)

    def put(self, local_file: Path, relative: str) -> None:
        filesystem, path = self._resolve(relative)
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pyarrow.fs.copy_files(str(local_file), path, destination_filesystem=filesystem)

    def get(self, relative: str, local_file: Path) -> Path:
        filesystem, path = self._resolve(relative)
        if filesystem.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
            raise FileNotFoundError(f"{self.location}/{relative} does not exist")
        local_file.parent.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(path, str(local_file), source_filesystem=filesystem)
        return local_file

    def remove(self, relative: str) -> None:
        """Delete a file or a folder (with what it holds); nothing if it does not exist."""
        filesystem, path = self._resolve(relative)
        kind = filesystem.get_file_info(path).type
        if kind == pyarrow.fs.FileType.Directory:
            filesystem.delete_dir(path)
        elif kind != pyarrow.fs.FileType.NotFound:
            filesystem.delete_file(path)
