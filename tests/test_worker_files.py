"""A worker node may write its trial's folder; what it puts there is never unpickled by the driver or by a command
that opens the sweep: Ray Tune's error.pkl of a failed trial is read as error.txt's text instead."""

import pickle
from pathlib import Path

import pytest
from test_search import run_fake_sweep

from gkd_tune.core.errors import error_line


class Payload:
    """Unpickled, it creates the file `marker`: proof that it ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_an_error_text_gives_its_last_failures_exception_line():
    text = ("Failure # 1 (occurred at 2026-12-03_12-00-00)\nray::ImplicitFunc.train() (pid=7, ip=127.0.0.1)\n"
            "  File \"x.py\", line 3, in train\n    raise OSError('first')\nOSError: first\n"
            "Failure # 2 (occurred at 2026-12-03_12-00-09)\nray::ImplicitFunc.train() (pid=8, ip=127.0.0.1)\n"
            "  File \"x.py\", line 3, in train\n    raise ValueError('second')\nValueError: second\n")
    assert error_line(text) == "ValueError: second"
    assert error_line("Failure # 1 (occurred at now)\nsomething odd happened\n") == "something odd happened"


def failing_trainable():
    """t02 fails, the others complete."""

    def trainable(config, spec, storage):
        import os
        import tempfile

        from ray import tune

        if tune.get_context().get_trial_name() == "t02":
            raise ValueError("t02 went wrong")
        with tempfile.TemporaryDirectory() as directory:
            open(os.path.join(directory, "student.pt"), "w").write("not a model")
            tune.report({"epoch": 1, "val_acc": 0.5 + 0.1 * config["b"], "loss_total": 1.0, "outcome": "completed"},
                        checkpoint=tune.Checkpoint.from_directory(directory))

    return trainable


@pytest.mark.slow
def test_a_pickle_a_worker_planted_as_its_trials_error_runs_neither_on_the_driver_nor_in_report(
        tmp_path, monkeypatch, capsys):
    marker = tmp_path / "payload-ran"
    payload = pickle.dumps(Payload(str(marker)))
    space = {"params": {"b": {"grid": [1.0, 2.0, 3.0]}}, "training": {"max_epochs": 1},
             "search": {"num_samples": 1, "max_failures": 0, "max_concurrent_trials": 1}}
    from ray.tune.experiment import Trial

    from gkd_tune.sweep import progress

    class PlantingAtTheWorstMoment(progress.ConsoleProgress):
        """As a worker that may write its trial's folder could: the payload as the failed trial's error.pkl in the
        sweep's storage, after Tune's last sync of it and just before Tune builds the results."""

        def on_experiment_end(self, trials, **info):
            for trial in trials:
                if trial.status == Trial.ERROR:
                    Path(trial.storage.trial_fs_path, "error.pkl").write_bytes(payload)

    monkeypatch.setattr(progress, "ConsoleProgress", PlantingAtTheWorstMoment)
    rc, _ = run_fake_sweep(tmp_path, monkeypatch, space, failing_trainable())
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    planted = tmp_path / "runs" / "fake" / "trial-t02" / "error.pkl"
    assert planted.read_bytes() == payload
    assert not marker.exists()
    assert "failed: t02  (ValueError: t02 went wrong)" in out, out[-3000:]
    # the Tuner a --resume restores (written by the driver) keeps its error callback and its loggers of a
    # restarted trial's rows (trial_history.py)
    import ray.cloudpickle

    from gkd_tune.sweep.trial_history import TrialProgressCsv, TrialResultsJson
    from gkd_tune.sweep.worker_files import TextErrorsOnly

    tuner_state = ray.cloudpickle.loads((tmp_path / "runs" / "fake" / "tuner.pkl").read_bytes())
    kinds = {type(callback) for callback in tuner_state["_run_config"].callbacks}
    assert {TextErrorsOnly, TrialResultsJson, TrialProgressCsv} <= kinds, kinds

    # a report of the sweep, as on a laptop, from the same storage: the error is still read as text
    from gkd_tune import report

    planted.write_bytes(payload)
    assert report.main(["--space", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "report")]) == 0
    assert not marker.exists()
    assert "t02: failed (ValueError: t02 went wrong)" in Path(tmp_path / "report" / "summary.md").read_text()
