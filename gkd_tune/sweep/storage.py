"""A sweep's shared folder: ``<storage_path>/<name>``, a local folder or a URI (``s3://bucket/prefix``, ``gs://``).

Ray Tune keeps trial checkpoints and the experiment state there; gkd-tune adds the teacher, which every trial
reads from there on whatever node it runs. Files move with pyarrow.fs, the filesystem layer Ray Tune itself uses
for ``storage_path``, so a path that works for Tune works here (credentials come from the environment, e.g. an
instance profile on AWS). A URI's query string configures its filesystem
(``s3://bucket/runs?endpoint_override=10.0.0.5:8333&scheme=http`` for an S3-compatible store): it stays at the end
of every location derived from it.

Who writes where, on a cluster: worker nodes write only below a trial's folder (Ray Tune's checkpoints) and below
``teacher-progress/`` (a teacher in training, the doctor's probes); everything else, ``tuner.pkl`` and the
experiment state that ``--resume`` unpickles among it, is written by the driver alone. cluster/README.md's worker
policy grants exactly these prefixes. In its trial's folder a worker could still put a pickle where Ray Tune looks
for one (a failed trial's error.pkl): worker_files.py has Tune read that error as text instead.
"""

from __future__ import annotations

import re

from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs

from ..core.files import STUDENT_FILE

# In a sweep's folder: where worker nodes may write besides their trials' folders (a teacher's state after every
# epoch and its finished file, which the driver then publishes as teacher.pt; the doctor's probe files).
WORKER_SCRATCH_DIR = "teacher-progress"
# Ray Tune's folder of one trial, in a sweep's folder (tune.TuneConfig's trial_dirname_creator): short, and the
# prefix the worker policy grants.
TRIAL_DIR_PREFIX = "trial-"
# A confirmation run's config (sweep/confirm.py) holds its entry under this key: {"label": "t03", "seed": 1, ...}.
# Its Tune experiment is the sweep folder's CONFIRM_DIR, whose trial folders the worker policy grants like the
# search's (trial-*).
CONFIRM_KEY = CONFIRM_DIR = "confirm"


def trial_name(trial) -> str:
    """'t07': the trial's number in its sweep (Tune's counter, which a restore continues); a confirmation run's
    'kd.s2', 't03.s1' (its configuration and seed). Its one name everywhere: Ray's table, its folder (trial-t07),
    the console, the report and its MLflow run."""
    entry = (trial.config or {}).get(CONFIRM_KEY)
    if entry:
        return f"{entry['label']}.s{entry['seed']}"
    return f"t{str(trial.experiment_tag).split('_', 1)[0].zfill(2)}"


def trial_dirname(trial) -> str:
    return f"{TRIAL_DIR_PREFIX}{trial_name(trial)}"


def name_from_folder(path: str, fallback: str) -> str:
    """A trial's name from its folder ('.../trial-t07' -> 't07'); `fallback` for a folder named otherwise (a sweep
    from before trials had names)."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    name = base.removeprefix(TRIAL_DIR_PREFIX)
    return name if base.startswith(TRIAL_DIR_PREFIX) and re.fullmatch(r"t\d+|[\w-]+\.s\d+", name) else fallback


def copy_student(checkpoint, folder: Path) -> Path:
    """The student file of a Tune checkpoint (local or remote), copied into `folder`."""
    local = Path(folder) / STUDENT_FILE
    with checkpoint.as_directory() as directory:
        local.write_bytes((Path(directory) / STUDENT_FILE).read_bytes())
    return local


def is_uri(location: str) -> bool:
    return "://" in location


def split_query(location: str) -> tuple[str, str]:
    """('s3://bucket/runs', '?endpoint_override=...') of a location; ('/a/b', '') without a query."""
    base, mark, query = location.partition("?")
    return base, mark + query


@dataclass(frozen=True)
class SweepStorage:
    location: str  # the sweep's folder: an absolute local path or a URI (with its query string, if any)

    @classmethod
    def for_sweep(cls, storage_path: str, name: str) -> "SweepStorage":
        if not is_uri(storage_path):
            return cls(f"{Path(storage_path).expanduser().resolve()}/{name}")
        base, query = split_query(storage_path)
        return cls(f"{base.rstrip('/')}/{name}{query}")

    @property
    def name(self) -> str:
        return split_query(self.location)[0].rsplit("/", 1)[-1]

    def child(self, name: str) -> "SweepStorage":
        """A folder inside this one, as a storage of its own (a reproduction's teacher per architecture)."""
        base, query = split_query(self.location)
        return SweepStorage(f"{base}/{name}{query}")

    def describe(self, relative: str) -> str:
        """A file in this storage as messages name it: 's3://bucket/runs/sweep/teacher.pt?endpoint_override=...'."""
        base, query = split_query(self.location)
        return f"{base}/{relative}{query}"

    def _resolve(self, relative: str = "") -> tuple[pyarrow.fs.FileSystem, str]:
        filesystem, path = filesystem_of(self.location)
        return filesystem, f"{path.rstrip('/')}/{relative}" if relative else path

    @property
    def tune_filesystem(self) -> pyarrow.fs.FileSystem | None:
        """The filesystem Ray Tune is given with a URI (storage_filesystem), so that its trials write no folder
        markers above their own folder (filesystem_of); None for a local folder, which Tune opens itself."""
        return filesystem_of(self.location)[0] if is_uri(self.location) else None

    @property
    def tune_path(self) -> str:
        """The sweep's folder as Ray Tune names it with tune_filesystem: a URI's path without scheme and query."""
        return filesystem_of(self.location)[1] if is_uri(self.location) else self.location

    def exists(self, relative: str) -> bool:
        filesystem, path = self._resolve(relative)
        return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound

    def has_experiment(self) -> bool:
        """Whether a Ray Tune experiment already lives here (its experiment_state file)."""
        filesystem, path = self._resolve()
        listing = filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        return any(info.base_name.startswith("experiment_state") for info in listing)

    def names(self, relative: str = "") -> list[str]:
        """The names in a folder of this storage ([] where it does not exist)."""
        filesystem, path = self._resolve(relative)
        return [info.base_name for info in
                filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))]

    def put(self, local_file: Path, relative: str) -> None:
        filesystem, path = self._resolve(relative)
        make_parent(filesystem, path)
        pyarrow.fs.copy_files(str(local_file), path, destination_filesystem=filesystem)

    def get(self, relative: str, local_file: Path) -> Path:
        filesystem, path = self._resolve(relative)
        if filesystem.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
            raise FileNotFoundError(f"{self.describe(relative)} does not exist")
        local_file.parent.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(path, str(local_file), source_filesystem=filesystem)
        return local_file

    def copy(self, relative: str, to_relative: str) -> None:
        """A file copied within the storage (server-side where the filesystem can)."""
        filesystem, source = self._resolve(relative)
        _, destination = self._resolve(to_relative)
        make_parent(filesystem, destination)
        filesystem.copy_file(source, destination)

    def remove(self, relative: str) -> None:
        """Delete a file or a folder (with what it holds); nothing if it does not exist."""
        filesystem, path = self._resolve(relative)
        kind = filesystem.get_file_info(path).type
        if kind == pyarrow.fs.FileType.Directory:
            filesystem.delete_dir(path)
        elif kind != pyarrow.fs.FileType.NotFound:
            filesystem.delete_file(path)


def filesystem_of(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path) of a location, as pyarrow resolves it (a URI's query configures the filesystem); an S3
    filesystem checks that a folder exists before it creates one. pyarrow's default writes an empty marker object
    for every level above a new folder (gkd-tune/, gkd-tune/runs/, ...), which Ray Tune's checkpoint upload asks
    for on the worker, and the worker policy allows writes below the trial's folder only."""
    filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
    if isinstance(filesystem, pyarrow.fs.S3FileSystem):
        reconstruct, (options,) = filesystem.__reduce__()  # every option from_uri set, resolved region included
        filesystem = reconstruct({**options, "check_directory_existence_before_creation": True})
    return filesystem, path


def make_parent(filesystem: pyarrow.fs.FileSystem, path: str) -> None:
    """The folder a file goes into, where folders exist: on a local disk. Object stores have none, and pyarrow
    would write an empty marker object for every missing level above it, which a worker may not write there."""
    if filesystem.type_name == "local":
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
