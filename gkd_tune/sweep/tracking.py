"""MLflow tracking of a sweep. Only the driver writes to MLflow (a Tune callback), never the trials: one writer
means no "database is locked" with a sqlite store however many trials run at once, and trials need no access to
the tracking server.

One experiment per sweep name; a parent run for the sweep (space file, teacher accuracy, best-trial tag) and one
child run per trial (its hyperparameters, per-epoch metrics, its beta(t) curve, the final student file). Runs
are found again by tags, not by an in-memory map, so ``--resume`` continues the same runs; per-epoch logging
skips epochs already logged, so a trial re-running an epoch after a restore leaves no duplicate steps.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from ..core.distillers import distillation_method
from ..core.files import STUDENT_FILE
from .space import PLAN_KEY, SweepSpec, TrialPlan, sweep_params
from .storage import CONFIRM_KEY, trial_name
from .strategy import CONFIG_KEY, DIVERGED, FAILED, SETUP_ERROR, trial_outcome

SWEEP_TAG = "gkd_tune.sweep_dir"
SWEEP_KEY_TAG = "gkd_tune.sweep_key"
TRIAL_TAG = "gkd_tune.trial_id"
OUTCOME_TAG = "gkd_tune.outcome"  # strategy.trial_outcome
CONFIG_TAG = "gkd_tune.config"  # budget halving: a configuration's name, the same on its run at every budget
CONFIRM_TAG = "gkd_tune.confirm"  # a confirmation run's: what it confirms ('t03', or a baseline's method)
SEED_TAG = "gkd_tune.seed"  # a confirmation run's seed
# The saved view's groups: a search run's outcome (with budget halving: its configuration, its runs at every budget
# together), a confirmation run's 'confirm t03' (its seeds together)
GROUP_TAG = "gkd_tune.group"
TESTED_TAG = "gkd_tune.tested"
ERROR_TAG = "gkd_tune.error"  # a failed trial's error, one line
# set once a trial run holds its plan (params and beta curve): a driver killed in between leaves a run without it,
# and the trial's next start announces its plan again
SET_UP_TAG = "gkd_tune.set_up"
LOGGED_METRICS = ("beta", "lr", "train_acc", "val_acc", "val_loss", "test_acc", "test_loss", "epoch_time_s",
                  "images_per_s")


# The experiment's saved view ("Views" in MLflow's runs page), which the printed link opens: trials grouped by
# outcome, best val_acc first, the searched parameters and the accuracies as columns, one chart line per trial.
# MLflow 3.17's UI keeps saved views as experiment tags holding this envelope; child runs otherwise sit collapsed
# under the sweep's run with every metric column hidden.
VIEW_KEY = "gkd-tune"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def saved_view(spec: SweepSpec) -> str:
    halving = spec.search.scheduler == "budget_halving"
    columns = ([f"metrics.`{m}`" for m in (spec.search.metric, "test_acc", "epoch_time_s")]
               + (["params.`max_epochs`"] if halving else [])
               + [f"params.`{name}`" for name in [*spec.searched(), *spec.grid()]] + ["tags.`epochs_run`"])
    state = {
        "searchFilter": "", "orderByKey": f"metrics.`{spec.search.metric}`", "orderByAsc": spec.mode == "min",
        "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL", "useGroupedValuesInCharts": False,
        # a group's row shows its best value (the best val_acc among the completed, the one tested test_acc), not
        # an average over trials stopped at other epochs
        # with budget halving, one group per configuration: its runs at every budget together
        "groupBy": {"aggregateFunction": spec.mode,
                    "groupByKeys": [{"mode": "tag", "groupByData": GROUP_TAG}]},
    }
    now = int(time.time() * 1000)
    name = "runs by configuration" if halving else "trials by outcome"
    return json.dumps({"name": f"gkd-tune: {name}" + (", confirmation runs by configuration" if spec.confirm else ""),
                       "createdAt": now, "updatedAt": now,
                       "state": json.dumps(state)})


class SweepTracker:
    """The sweep's experiment and parent run (created, or found again on --resume)."""

    def __init__(self, spec: SweepSpec, sweep_location: str, reopen: bool = True):
        """reopen=False (a report): find the sweep's run without marking it RUNNING, and never create one."""
        self.spec = spec
        self.client = MlflowClient(tracking_uri=spec.tracking.uri)
        experiment = self.client.get_experiment_by_name(spec.experiment)
        self.experiment_id = (experiment.experiment_id if experiment is not None
                              else self.client.create_experiment(spec.experiment))
        # found again by a hash of the location: a path may hold quotes that an MLflow filter string cannot
        key = hashlib.sha256(sweep_location.encode()).hexdigest()[:16]
        found = self.client.search_runs([self.experiment_id], f"tags.`{SWEEP_KEY_TAG}` = '{key}'", max_results=1)
        # a finished sweep's run stays FINISHED: a --resume of it that fails leaves its records as they were
        self.finished_before = bool(found) and found[0].info.status == "FINISHED"
        if found:
            self.parent_id = found[0].info.run_id
            if reopen:
                self.client.update_run(self.parent_id, status="RUNNING")
        elif not reopen:
            raise ValueError(f"tracking.uri: {spec.tracking.uri} has no MLflow run of the sweep at {sweep_location}")
        else:
            self.parent_id = self.client.create_run(self.experiment_id, run_name=spec.name,
                                                    tags={SWEEP_TAG: sweep_location, SWEEP_KEY_TAG: key}).info.run_id
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, saved_view(spec))

    def log_start(self, teacher_metadata: dict) -> None:
        self.client.log_artifact(self.parent_id, self.spec.file, "space")
        if "val_acc" in teacher_metadata:
            self.client.log_metric(self.parent_id, "teacher_val_acc", teacher_metadata["val_acc"])
        self.client.log_batch(self.parent_id, params=[Param(k, str(v)) for k, v in sweep_params(self.spec).items()])

    def trial_run_id(self, trial_id: str) -> str | None:
        found = self.client.search_runs(
            [self.experiment_id], f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_id}'",
            max_results=1)
        return found[0].info.run_id if found else None

    @property
    def tested(self) -> bool:
        """Whether the test step already ran for this sweep (it runs once, also across --resume)."""
        return self.client.get_run(self.parent_id).data.tags.get(TESTED_TAG) == "true"

    def test_metrics(self, trial_id: str) -> dict | None:
        run_id = self.trial_run_id(trial_id)
        logged = self.client.get_run(run_id).data.metrics if run_id else {}
        return {k: logged[k] for k in ("test_loss", "test_acc") if k in logged} or None

    def log_test(self, trial_id: str, metrics: dict) -> None:
        run_id = self.trial_run_id(trial_id)
        if run_id is not None:
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), int(time.time() * 1000), 0)
                                                   for k, v in metrics.items()])

    def log_sweep_metrics(self, metrics: dict[str, float], tags: dict[str, str] | None = None) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                              tags=[RunTag(k, v) for k, v in (tags or {}).items()])

    def describe(self, markdown: str) -> None:
        """The sweep run's description (the run page's "Description" box)."""
        self.client.set_tag(self.parent_id, "mlflow.note.content", markdown)

    def finish(self, status: str, best_trial: str | None = None, best_value: float | None = None) -> None:
        """End the parent run. Trial runs still RUNNING become KILLED: those of an interrupted or failed sweep, and
        any a killed driver left open (its trials, restored by --resume, reopen their runs and close them)."""
        running = self.client.search_runs(
            [self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_id}' and attributes.status = 'RUNNING'")
        for run in running:
            self.client.set_terminated(run.info.run_id, "KILLED")
        if best_trial is not None:
            self.client.set_tag(self.parent_id, "best_trial", best_trial)
            self.client.log_metric(self.parent_id, f"best_{self.spec.search.metric}", best_value)
        self.client.set_terminated(self.parent_id, "FINISHED" if self.finished_before else status)


class MlflowTrialLogger(tune.Callback):
    """A child run per trial, written from the driver as Tune's results arrive.

    Tune pickles its callbacks into the experiment state; only the spec and the sweep's location travel, and a
    restored logger finds its parent and trial runs again by their tags.
    """

    def __init__(self, spec: SweepSpec, sweep_location: str):
        self.spec, self.sweep_location = spec, sweep_location
        self._tracker: SweepTracker | None = None
        self.runs: dict[str, tuple[str, int]] = {}  # trial id -> (run id, last epoch logged)

    def __getstate__(self):
        return {"spec": self.spec, "sweep_location": self.sweep_location}

    def __setstate__(self, state):
        self.__init__(state["spec"], state["sweep_location"])

    @property
    def tracker(self) -> SweepTracker:
        if self._tracker is None:
            self._tracker = SweepTracker(self.spec, self.sweep_location)
        return self._tracker

    @property
    def client(self) -> MlflowClient:
        return self.tracker.client

    def run_for(self, trial) -> tuple[str, int]:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        run_id = self.tracker.trial_run_id(trial.trial_id)
        if run_id is not None:
            history = self.client.get_metric_history(run_id, "val_acc")
            last = max((m.step for m in history), default=0)
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self.client.create_run(
                self.tracker.experiment_id, run_name=self.run_name(trial),
                tags={"mlflow.parentRunId": self.tracker.parent_id, TRIAL_TAG: trial.trial_id, **run_tags(trial.config)}
            ).info.run_id
            last = 0
        self.runs[trial.trial_id] = (run_id, last)
        return run_id, last

    def log_plan(self, run_id: str, plan_json: str) -> None:
        """A trial's plan, as it announced it: its params, and the beta curve of a method that uses the schedule."""
        if SET_UP_TAG in self.client.get_run(run_id).data.tags:
            return
        plan = TrialPlan.from_json(plan_json)
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in plan.params.items()])
        if distillation_method(plan.distill.method).uses_schedule:
            self.client.log_figure(run_id, beta_curve(plan.distill.schedule, plan.train.epochs), "beta_curve.png")
        self.client.set_tag(run_id, SET_UP_TAG, "true")

    def run_name(self, trial) -> str:
        """'t07': the trial's one name (storage.trial_name; its values are the run's params, its id a tag)."""
        return trial_name(trial)

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        # A trial's beta curve is drawn when its plan arrives, inside the driver's handling of that result (before
        # Tune registers its checkpoint): matplotlib's first import, seconds long, belongs before the trials start.
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_for(trial)  # the run opens when the trial does: its duration in MLflow is the trial's

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id, last = self.run_for(trial)
        if PLAN_KEY in result:
            self.log_plan(run_id, result[PLAN_KEY])
        epoch = int(result["epoch"])
        if epoch <= last:  # already logged before a restore re-ran it
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in result.items()
                   if (k.startswith("loss_") or k in LOGGED_METRICS) and isinstance(v, (int, float))]
        self.client.log_batch(run_id, metrics=metrics)
        self.runs[trial.trial_id] = (run_id, epoch)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id, last = self.run_for(trial)
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as directory:
                self.client.log_artifact(run_id, str(Path(directory) / STUDENT_FILE), "checkpoint")
        outcome = trial_outcome(trial.last_result, errored=False)
        tags = [RunTag(OUTCOME_TAG, outcome), RunTag("epochs_run", str(last))]
        if GROUP_TAG not in run_tags(trial.config):
            tags.append(RunTag(GROUP_TAG, outcome))
        if trial.last_result.get(SETUP_ERROR):
            tags.append(RunTag(ERROR_TAG, trial.last_result[SETUP_ERROR]))
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, "FAILED" if outcome in (DIVERGED, FAILED) else "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id, _ = self.run_for(trial)
        self.client.set_tag(run_id, OUTCOME_TAG, FAILED)
        if GROUP_TAG not in run_tags(trial.config):
            self.client.set_tag(run_id, GROUP_TAG, FAILED)
        self.client.set_tag(run_id, ERROR_TAG, trial_error(trial))
        self.client.set_terminated(run_id, "FAILED")


def run_tags(config: dict) -> dict[str, str]:
    """A run's tags known from its config: budget halving's configuration; a confirmation run's configuration and
    seed. GROUP_TAG where its group is known before it ends."""
    if CONFIRM_KEY in config:
        entry = config[CONFIRM_KEY]
        return {CONFIRM_TAG: entry["label"], SEED_TAG: str(entry["seed"]), GROUP_TAG: f"confirm {entry['label']}"}
    if CONFIG_KEY in config:
        return {CONFIG_TAG: str(config[CONFIG_KEY]), GROUP_TAG: str(config[CONFIG_KEY])}
    return {}


def trial_error(trial) -> str:
    """The last line of the error Tune keeps as text for a failed trial ('' when it kept none)."""
    if trial.error_file and Path(trial.error_file).exists():
        lines = [line for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
        return lines[-1][:500] if lines else ""
    return ""


def beta_curve(schedule, epochs: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [i / 200 for i in range(201)]
    figure, axes = plt.subplots(figsize=(5, 3))
    axes.plot([t * epochs for t in steps], [schedule(t) for t in steps])
    axes.axvline(schedule.b / schedule.c * epochs, linestyle=":", color="grey")
    axes.set(xlabel="epoch", ylabel="beta", title=f"{schedule.kind}: b={schedule.b:.2f}, c={schedule.c:.2f}")
    figure.tight_layout()
    plt.close(figure)
    return figure


def short(value, digits: int) -> str:
    """A parameter value as tables and run names show it: floats to `digits` significant digits."""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)
