"""Write a sweep's report, finished or not, to a folder and to its MLflow run: trials.parquet (one row per trial and
epoch), summary.md (top trials, hyperparameter importances), curves.png, betas.png, params.png.

    python -m gkd_tune.report --space search_spaces/quickstart.yaml [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .cli import check_output_folder, run_command, shared_options
from .core.files import SPACE_FILE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.report", description=__doc__.split("\n\n")[0],
                                     parents=[shared_options(without_address=None)])
    parser.add_argument("--space", type=Path, required=True, help="the sweep's space file")
    parser.add_argument("--out", type=Path, help="folder for the report (default reports/<name>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def report() -> int:
        from .cluster.preflight import check_tracking, read_storage
        from .sweep.space import load_space
        from .sweep.storage import CONFIRM_DIR, SweepStorage

        spec = load_space(args.space).with_overrides(storage_path=args.storage_path, tracking_uri=args.tracking_uri)
        out = check_output_folder(args.out or Path("reports") / spec.name, "--out" if args.out else "the report folder")
        storage = SweepStorage.for_sweep(spec.storage_path, spec.name)
        if not read_storage(storage, storage.has_experiment):
            raise ValueError(f"no sweep at {storage.location}: give the space file it ran (and its --storage-path)")
        with tempfile.TemporaryDirectory() as directory:  # the space the sweep ran with, whatever the file says now
            ran = read_storage(storage, lambda: storage.exists(SPACE_FILE) and storage.get(SPACE_FILE,
                                                                                           Path(directory) / SPACE_FILE))
            if ran:
                spec = load_space(ran).with_overrides(storage_path=spec.storage_path, tracking_uri=spec.tracking.uri)
        check_tracking(spec.tracking.uri)
        from .sweep.report import load_trials, write_report  # (MLflow, Ray Tune, matplotlib: after the checks)
        from .sweep.tracking import SweepTracker

        tracker = SweepTracker(spec, storage.location, reopen=False)
        trials = load_trials(spec, tracker, storage.location)
        confirmation = None
        confirming = storage.child(CONFIRM_DIR)
        if spec.confirm and read_storage(confirming, confirming.has_experiment):  # so far, tested or not
            from .sweep.confirm import Confirmation

            confirmation = Confirmation.of(spec, load_trials(spec, tracker, confirming.location))
        summary = write_report(trials, spec, tracker, out, confirmation)
        print(summary + f"\nwritten: {out}/ trials.parquet, summary.md, curves.png, betas.png, params.png; logged "
                        f"to the sweep's MLflow run")
        return 0

    return run_command(report, args.debug)


if __name__ == "__main__":
    sys.exit(main())
