"""The console while trials run: one line per trial that ends (or fails), with where the whole run stands, and a
line of the latest epoch when nothing has been said for HEARTBEAT_S; instead of Ray Tune's status tables
(`--verbose` brings those back).

    t03 stopped by ASHA at epoch 2: val_acc 0.2500   [3/8 ended, 2 running, 3 pending; 1m40s so far, ~2m20s left]
"""

from __future__ import annotations

import time
from ray import tune

from .storage import trial_name
from .strategy import BUDGET_KEY, COMPLETED, CONFIG_KEY, DIVERGED, SETUP_ERROR, STOPPED, trial_outcome
from .tracking import trial_error

ENDED = ("TERMINATED", "ERROR")
HEARTBEAT_S = 600  # long trials (hours on CIFAR) still show progress; the quickstart's never need it


def run_label(trial) -> str:
    """'t07', or with budget halving 't07 (c03 at 27 epochs)': which configuration, at which budget."""
    config = trial.config or {}
    return trial_name(trial) + (f" ({config[CONFIG_KEY]} at {config[BUDGET_KEY]} epochs)" if CONFIG_KEY in config
                                else "")


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ConsoleProgress(tune.Callback):
    """A line per trial start, end and retry. Pickled into the run's state with the other callbacks (counts only):
    a --resume keeps it, and times from its own start."""

    def __init__(self, total: int, metric: str):
        self.total, self.metric = total, metric
        self.started = self.last_said = time.monotonic()
        self.ended_before = None  # trials already ended when this driver started (a --resume)

    def __getstate__(self):
        return {"total": self.total, "metric": self.metric}

    def __setstate__(self, state):
        self.__init__(state["total"], state["metric"])

    def standing(self, trials, ending=None) -> str:
        """Where the run stands; `ending`: a trial whose end is being announced (Tune sets its status after)."""
        ended = sum(t.status in ENDED or t is ending for t in trials)
        running = sum(t.status == "RUNNING" and t is not ending for t in trials)
        if self.ended_before is None:
            self.ended_before = ended
        elapsed = time.monotonic() - self.started
        line = (f"[{ended}/{self.total} ended, {running} running, {max(self.total - ended - running, 0)} pending; "
                f"{duration(elapsed)} so far")
        done_here = ended - self.ended_before
        if done_here and ended < self.total:  # the trials ended by this driver, at the pace they took
            line += f", ~{duration(elapsed / done_here * (self.total - ended))} left"
        return line + "]"

    def say(self, text: str, trials, ending=None) -> None:
        print(f"{text}   {self.standing(trials, ending)}", flush=True)
        self.last_said = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.standing(trials)  # counts what had ended before this driver's first trial

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if time.monotonic() - self.last_said > HEARTBEAT_S:
            self.say(f"{trial_name(trial)} at epoch {result.get('epoch')}: {self.metric} "
                     f"{result.get(self.metric, float('nan')):.4f}", trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        outcome = trial_outcome(result, errored=False)
        epoch, value = result.get("epoch", 0), result.get(self.metric, float("nan"))
        what = {COMPLETED: "completed", STOPPED: f"stopped by ASHA at epoch {epoch}",
                DIVERGED: f"diverged at epoch {epoch}"}.get(outcome)
        if what is None:  # a set-up failure, reported by the trial itself
            self.say(f"{trial_name(trial)} failed: {result.get(SETUP_ERROR, 'set-up failed')}", trials, trial)
        else:
            self.say(f"{run_label(trial)} {what}: {self.metric} {value:.4f}", trials, trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        print(f"{trial_name(trial)} failed and is retried from its last checkpoint "
              f"({trial_error(trial) or 'no message'})", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.say(f"{trial_name(trial)} failed: {trial_error(trial) or 'no message'}", trials, trial)


