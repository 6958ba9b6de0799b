"""Ray Tune's own record of each trial (result.json, progress.csv), kept whole when a trial restarts.

Tune's loggers run on the driver: they append every result to the trial's files in the driver's staging folder,
which Tune syncs to the sweep's storage in the background, at most once per experiment snapshot. When a trial
restarts from its checkpoint (its node was lost, it failed and is retried), the stock loggers first copy the trial's
files back from storage over the driver's own, so every row reported since the last finished sync is lost: a trial
restored mid-sweep may keep only its epochs after the restart, in the files and in the ResultGrid's
metrics_dataframe. The driver's copy, where it has one, holds everything storage has and more; storage's is
copied only where the driver has none (a restored sweep's driver has downloaded them all before it starts).
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback


class _DriverCopyFirst:
    def _restore_from_remote(self, file_name: str, trial) -> None:
        if not Path(trial.local_path, file_name).exists():
            super()._restore_from_remote(file_name, trial)


class TrialResultsJson(_DriverCopyFirst, JsonLoggerCallback):
    """Tune's JsonLoggerCallback (result.json), keeping the driver's rows when a trial restarts."""


class TrialProgressCsv(_DriverCopyFirst, CSVLoggerCallback):
    """Tune's CSVLoggerCallback (progress.csv), keeping the driver's rows when a trial restarts."""


def trial_history_loggers() -> list:
    """In every sweep's Tuner: Tune adds its stock loggers only where no logger of their kind is given."""
    return [TrialResultsJson(), TrialProgressCsv()]
