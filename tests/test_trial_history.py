"""Ray Tune's record of a trial (result.json, progress.csv) keeps every row when the trial restarts: the stock loggers
copy the trial's files back from the sweep's storage over the driver's, and storage's copy lags behind."""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from gkd_tune.sweep.trial_history import TrialProgressCsv, TrialResultsJson, trial_history_loggers


class Trial:
    """What Tune's loggers read of a trial."""

    def __init__(self, local_path: Path, remote_path: Path, checkpoint):
        self.local_path, self.checkpoint, self.config, self.trial_id = str(local_path), checkpoint, {"b": 2.0}, "t01"
        self.storage = SimpleNamespace(trial_fs_path=str(remote_path), storage_filesystem=pyarrow.fs.LocalFileSystem())

    def init_local_path(self):
        Path(self.local_path).mkdir(parents=True, exist_ok=True)


def restarting_trial(tmp_path: Path, synced_epochs: int, driver_epochs: int | None, logger):
    """A trial with a checkpoint, whose driver-side files hold `driver_epochs` results (None: no files, a restored
    sweep's driver that has not downloaded them) and whose files in storage hold the first `synced_epochs`."""
    local, remote = tmp_path / "driver" / "trial-t01", tmp_path / "storage" / "trial-t01"
    local.mkdir(parents=True)
    remote.mkdir(parents=True)
    trial = Trial(local, remote, checkpoint="checkpoint_000001")
    for folder, epochs in ((remote, synced_epochs), (local, driver_epochs)):
        if epochs is None:
            continue
        writer = type(logger)()  # a logger of its own writes each copy
        writer_trial = Trial(folder, remote, checkpoint=None)
        writer.log_trial_start(writer_trial)
        for epoch in range(1, epochs + 1):
            writer.log_trial_result(epoch, writer_trial, result(epoch))
        writer.log_trial_end(writer_trial)
    return trial


def result(epoch: int) -> dict:
    return {"trial_id": "t01", "epoch": epoch, "val_acc": 0.1 * epoch}


def restart_and_report_epoch_3(trial, logger) -> None:
    """The trial restarts from its checkpoint (its last finished epoch, 2) and reports its next."""
    logger.log_trial_start(trial)
    logger.log_trial_result(3, trial, result(3))
    logger.log_trial_end(trial)


def epochs_in(trial, logger) -> list[int]:
    folder = Path(trial.local_path)
    if isinstance(logger, JsonLoggerCallback):
        return [json.loads(line)["epoch"] for line in (folder / "result.json").read_text().splitlines()]
    with open(folder / "progress.csv", newline="") as file:
        return [int(row["epoch"]) for row in csv.DictReader(file)]


@pytest.mark.parametrize("logger", [TrialResultsJson(), TrialProgressCsv()], ids=["result.json", "progress.csv"])
def test_a_restarted_trial_keeps_the_rows_storage_had_not_received(logger, tmp_path):
    trial = restarting_trial(tmp_path, synced_epochs=1, driver_epochs=2, logger=logger)
    restart_and_report_epoch_3(trial, logger)
    assert epochs_in(trial, logger) == [1, 2, 3]


@pytest.mark.parametrize("logger", [JsonLoggerCallback(), CSVLoggerCallback()], ids=["result.json", "progress.csv"])
def test_the_stock_loggers_lose_them(logger, tmp_path):
    # why trial_history exists: if this fails, Ray Tune keeps the driver's rows itself and the module can go
    trial = restarting_trial(tmp_path, synced_epochs=1, driver_epochs=2, logger=logger)
    restart_and_report_epoch_3(trial, logger)
    assert epochs_in(trial, logger) == [1, 3]


@pytest.mark.parametrize("logger", [TrialResultsJson(), TrialProgressCsv()], ids=["result.json", "progress.csv"])
def test_a_driver_without_the_files_takes_them_from_storage(logger, tmp_path):
    trial = restarting_trial(tmp_path, synced_epochs=2, driver_epochs=None, logger=logger)
    restart_and_report_epoch_3(trial, logger)
    assert epochs_in(trial, logger) == [1, 2, 3]


def test_every_tuner_gets_both_and_tune_adds_no_stock_logger_of_their_kind():
    from ray.tune.utils.callback import _create_default_callbacks

    loggers = trial_history_loggers()
    callbacks = _create_default_callbacks(list(loggers), air_verbosity=None)
    assert [c for c in callbacks if isinstance(c, (JsonLoggerCallback, CSVLoggerCallback))] == loggers
