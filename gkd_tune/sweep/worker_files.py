"""What the driver reads of the files worker nodes may write: nothing it would unpickle.

A worker node writes its trial's folder in the sweep's storage (storage.py: results, checkpoints). Ray Tune keeps a
failed trial's exception there twice, as error.txt and as error.pkl, and unpickles error.pkl
(`Trial.get_pickled_error`) whenever it builds a ResultGrid: at the end of `Tuner.fit` on the head, and in every
command that opens the sweep (report, simulate, reproduce) on a user's laptop. A worker that may write its folder
could put code there for all of them to run. So no trial of a gkd-tune sweep names its error.pkl: Tune falls back to
error.txt, which is read as text (`error_text_line` gives its one line). Checkpoints are read with
`torch.load(weights_only=True)` (core/files.py), the rest of what workers write is JSON or CSV.
"""

from __future__ import annotations

from ray import tune


def forget_pickled_errors(trials) -> None:
    """Make Ray Tune read these trials' errors from error.txt, never from the error.pkl beside it."""
    for trial in trials:
        if trial.run_metadata.pickled_error_filename is not None:
            trial.run_metadata.pickled_error_filename = None
            trial.run_metadata.invalidate_cache()  # the experiment state saved next says so too


class TextErrorsOnly(tune.Callback):
    """In every sweep's Tuner: a trial's error is forgotten as a pickle as soon as Tune recorded it (so the
    experiment state never names one), and again for all trials before Tune builds the ResultGrid."""

    def on_trial_error(self, iteration, trials, trial, **info):
        forget_pickled_errors([trial])

    def on_experiment_end(self, trials, **info):
        forget_pickled_errors(trials)
