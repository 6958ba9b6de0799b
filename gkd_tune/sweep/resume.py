"""What a sweep or a reproduction started with, kept in its storage, and a --resume held to it.

The record is the effective configuration: the file as it was, with the command line's overrides written in
(--num-samples, --seed, --tracking-uri, --storage-path; --epochs, --seeds). A restored Ray Tune run unpickles its
TuneConfig, RunConfig, callbacks and trials, so a difference would be applied in part or not at all (the old
epoch budget in the checkpoints' LR schedule, the old tracking store in the trials' logger): a --resume that
differs is shown the difference and refused before anything runs, except where the restored run really applies
the new value (`safe`, with --accept-changes). Every printed resume command is the whole command.
"""

from __future__ import annotations

import difflib
import json
import shlex
import sys
import tempfile
from pathlib import Path

import yaml

from .storage import SweepStorage, name_from_folder


def effective(file: Path | str, overrides: dict[str, object]) -> dict:
    """The configuration `file` describes, with `overrides` (dotted path -> value; None: not given) written in."""
    configuration = yaml.safe_load(Path(file).read_text()) or {}
    for path, value in overrides.items():
        if value is None:
            continue
        *sections, key = path.split(".")
        target = configuration
        for section in sections:
            if not isinstance(target.get(section), dict):
                target[section] = {}
            target = target[section]
        target[key] = value
    return configuration


def text(configuration: dict) -> str:
    return yaml.safe_dump(configuration, sort_keys=False, default_flow_style=False)


def record(storage: SweepStorage, name: str, configuration: dict) -> None:
    with tempfile.TemporaryDirectory() as directory:
        local = Path(directory) / name
        local.write_text(text(configuration))
        storage.put(local, name)


def recorded(storage: SweepStorage, name: str) -> dict | None:
    """The configuration the run started with; None for a run started before records were kept."""
    if not storage.exists(name):
        return None
    with tempfile.TemporaryDirectory() as directory:
        return yaml.safe_load(storage.get(name, Path(directory) / name).read_text()) or {}


# In a checkpoint that repair_lost_checkpoints put back: the last epoch Ray Tune's saved state knows of. The trial
# reports the epochs after it again, from its trainer's history, before it trains on (trainable.train_trial).
KNOWN_EPOCH_FILE = "known_epoch.json"


def repair_lost_checkpoints(storage: SweepStorage) -> list[str]:
    """Put back each checkpoint that a trial restores from but a killed driver had already deleted; the names of
    the trials repaired (t07).

    Ray Tune keeps one checkpoint per trial (CheckpointConfig(num_to_keep=1)): registering epoch n+1's deletes
    epoch n's at once, while the experiment state that names epoch n+1's reaches storage a moment later. A driver
    killed in between leaves a state whose trial restores from a checkpoint that is gone, and Tune fails the trial
    on every retry ("Could not recover from checkpoint as it does not exist on storage anymore"). The trial's next
    checkpoint, whose registration deleted it, is complete (a trial reports a checkpoint once it is written): its
    files go under the lost name, with the last epoch Tune knows."""
    from ray.tune import ExperimentAnalysis

    from ..core.files import STUDENT_FILE, TRAINER_FILE

    base = storage.tune_path.rstrip("/")
    repaired = []
    for trial in ExperimentAnalysis(base, storage_filesystem=storage.tune_filesystem).trials:
        checkpoint = trial.checkpoint
        if checkpoint is None or not checkpoint.path.startswith(base + "/"):
            continue
        lost = checkpoint.path[len(base) + 1:]  # trial-t07/checkpoint_<index>
        if storage.exists(lost):
            continue
        folder, name = lost.rsplit("/", 1)
        later = sorted(n for n in storage.names(folder) if n.startswith("checkpoint_") and n > name)
        if not later or not all(storage.exists(f"{folder}/{later[0]}/{f}") for f in (TRAINER_FILE, STUDENT_FILE)):
            continue  # nothing to continue from: Tune fails the trial, and says why
        for file in (TRAINER_FILE, STUDENT_FILE):
            storage.copy(f"{folder}/{later[0]}/{file}", f"{lost}/{file}")
        with tempfile.TemporaryDirectory() as directory:
            known = Path(directory) / KNOWN_EPOCH_FILE
            known.write_text(json.dumps({"epoch": int((trial.last_result or {}).get("epoch", 0))}))
            storage.put(known, f"{lost}/{KNOWN_EPOCH_FILE}")
        repaired.append(name_from_folder(folder, trial.trial_id))
    return repaired


def check_resume(storage: SweepStorage, name: str, now: dict, file: str, accept_changes: bool = False,
                 safe: frozenset[str] = frozenset()) -> bool:
    """Refuse (ValueError, with the difference printed) a --resume whose effective configuration differs from the
    recorded one, except in `safe` keys with --accept-changes. Returns whether an accepted change must be recorded."""
    started = recorded(storage, name)
    if started is None:
        return False
    changed = changed_keys(started, now)
    if not changed:
        return False
    if accept_changes and set(changed) <= safe:
        return True
    diff = "".join(difflib.unified_diff(text(started).splitlines(True), text(now).splitlines(True), "started with",
                                        f"{file} with this command line's options"))
    print(diff, file=sys.stderr)
    unsafe = [key for key in changed if key not in safe]
    hint = "resume with the original file and options"
    if safe and unsafe:
        hint += (f"; --accept-changes allows only {', '.join(sorted(safe))} (what a restored run applies), not "
                 f"{', '.join(unsafe)}")
    elif safe:
        hint += ", or pass --accept-changes (the restored run applies these)"
    raise ValueError(f"--resume: {file} with these options differs from what this run started with "
                     f"({', '.join(changed)}; the difference is above): {hint}")


def changed_keys(before, after, prefix: str = "") -> list[str]:
    """Dotted paths of the values that differ between two parsed YAML documents."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [path for key in sorted(set(before) | set(after), key=str)
                for path in changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [] if before == after else [prefix.rstrip(".")]


def resume_command(program: str, options: dict[str, object]) -> str:
    """`python -m PROGRAM --flag value ... --resume` with every option this run was given (None: not given)."""
    given = [f"{flag} {shlex.quote(str(value))}" for flag, value in options.items() if value is not None]
    return " ".join([f"python -m {program}", *given, "--resume"])
