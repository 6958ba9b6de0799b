"""What the commands share: the options --address, --storage-path, --tracking-uri and --debug, defined once with one
meaning everywhere (each of the first three overrides the space's or configuration's setting of its name), and how
a command ends on Ctrl-C or an error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .core.errors import exit_with_one_line

EXIT_INTERRUPTED = 130  # a shell's code for Ctrl-C


OWN_RAY = "else a new local Ray of its own"


def shared_options(*, without_address: str | None = OWN_RAY, sweep: bool = True,
                   trials: bool = False) -> argparse.ArgumentParser:
    """A parent parser (argparse `parents=`) with the shared options a command takes: --address where it runs on
    Ray (`without_address`: what it does when neither --address nor RAY_ADDRESS is given; None: no --address),
    --storage-path and --tracking-uri where it has a sweep's storage and runs (`sweep`), --verbose where it runs
    trials (`trials`), --debug always."""
    parent = argparse.ArgumentParser(add_help=False)
    if sweep:
        parent.add_argument("--storage-path", type=storage_location,
                            help="where the trials' checkpoints and the teacher go (overrides "
                            "storage_path): a folder, or a URI such as s3://bucket/prefix (an S3-compatible store: "
                            "s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http); on a cluster of several "
                            "nodes, storage every node can read")
        parent.add_argument("--tracking-uri", help="MLflow tracking URI (overrides tracking.uri; default "
                            "sqlite:///mlflow.db in the working directory); on a cluster of several nodes, a tracking "
                            "server such as http://127.0.0.1:5000 (cluster/gpu.yaml's, on the head)")
    if trials:
        parent.add_argument("--verbose", action="store_true", help="show Ray Tune's status tables and Ray's, MLflow's "
                            "and Optuna's log lines, instead of one line per trial event")
    if without_address:
        parent.add_argument("--address", help="an existing Ray cluster: HEAD_IP:6379, or auto for the one this "
                            f"machine belongs to (default: the cluster in RAY_ADDRESS, as under `ray job submit`; "
                            f"{without_address})")
    parent.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    return parent


def storage_location(text: str) -> str:
    """--storage-path as the sweep records it: a local folder made absolute (a --resume from another folder, or
    given the same folder another way, names the same place), a URI as it is."""
    return text if "://" in text else str(Path(text).expanduser().resolve())


def check_output_folder(folder: Path, what: str) -> Path:
    """`folder` as a command will write it, checked before anything opens (Ray, MLflow, a teacher): a folder, or
    one that can be made. ValueError naming `what` (the flag, or the default it stands for) otherwise."""
    import os

    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder}: is a file, not a folder")
    existing = next(parent for parent in (folder, *folder.absolute().parents) if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {folder}: cannot be written ({existing} is not a writable folder)")
    return folder


def run_command(body: Callable[[], int], debug: bool, interrupted: Callable[[], str] = lambda: "interrupted") -> int:
    """A command's exit code: its body's, or on Ctrl-C `interrupted()` on a line and EXIT_INTERRUPTED, or on an error
    one line (core.errors.exit_with_one_line: bad input exits 2, anything else 1 or its traceback with --debug)."""
    try:
        return body()
    except KeyboardInterrupt:
        print("\n" + interrupted(), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        return exit_with_one_line(error, debug)
