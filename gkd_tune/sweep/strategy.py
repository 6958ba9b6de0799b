"""How a sweep picks and stops trials: Optuna's TPE told what really happened, ASHA with trials exempt from it, and
checks of the ASHA rungs against the Gompertz schedules they judge.

A trial's outcome is data: the trial says how it ended (the loop's OUTCOME in its last result: completed or
diverged; `failed` for a set-up failure), and `trial_outcome` adds what only the driver sees (stopped, raised). It
is read by Optuna (its trial state), MLflow (the `gkd_tune.outcome` tag) and the summary (only completed trials win):

    completed        reached max_epochs with finite losses and metrics    Optuna COMPLETE, with the last value
    stopped_by_asha  ended without an outcome of its own (ASHA stopped it)  Optuna PRUNED (ranked by its last report)
    diverged         a loss or a validation metric is NaN or infinite      Optuna FAIL
    failed           raised (after its retries), or could not be set up    Optuna FAIL
                     (it reports SETUP_ERROR and ends, not retried)
"""

from __future__ import annotations

import math
import pickle
import textwrap
import warnings
from dataclasses import dataclass

import numpy as np
import optuna
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch

from ..core.distillers import distillation_method
from ..core.loop import COMPLETED, DIVERGED, OUTCOME  # noqa: F401 (the four outcomes are imported from here)
from .space import Distribution, SweepSpec, halving_plan

STOPPED, FAILED = "stopped_by_asha", "failed"
# A trial whose set-up fails for a reason that a retry cannot change (its configuration, its data, the teacher file
# not fitting) reports this key with the error and ends, instead of raising: Tune would retry it max_failures times.
SETUP_ERROR = "setup_error"
# A schedule "has not risen" while beta is below this share of its rise: ASHA then judges plain CE training.
RISE_SHARE = 0.1
# Above this share of sampled schedules not risen at a rung (or never rising), the plan warns.
WARN_SHARE = 0.25
DIAGNOSTIC_SAMPLES = 10_000
SPEARMAN_WARNING = 0.5


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def trial_outcome(last_result: dict | None, errored: bool) -> str:
    """How a trial ended: failed if it raised, else its own word, else (no word: it did not end by itself) stopped."""
    return FAILED if errored else (last_result or {}).get(OUTCOME, STOPPED)


class ScheduleAwareOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, except that Optuna learns each trial's real outcome (see the module's table).

    Ray's own tells an ASHA-stopped trial COMPLETE with its early value, so TPE would learn from truncated results
    as if final; and it reports at Tune's training_iteration, which restarts differ from the epoch ASHA uses.
    """

    def on_trial_result(self, trial_id: str, result: dict):
        value = result.get(self.metric)
        if trial_id in self._completed_trials or not _finite(value) or "epoch" not in result:
            return
        with warnings.catch_warnings():  # an epoch re-run after a restore is reported again: Optuna keeps the first
            warnings.simplefilter("ignore", UserWarning)
            self._ot_trials[trial_id].report(float(value), int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result and not error:
            # the result that ended the trial (ASHA's stop, or max_t) reaches the searcher only here
            self.on_trial_result(trial_id, result)
        outcome = trial_outcome(result, error)
        trial = self._ot_trials[trial_id]
        if outcome == COMPLETED:
            self._ot_study.tell(trial, float(result[self.metric]), state=optuna.trial.TrialState.COMPLETE)
        elif outcome == STOPPED:
            self._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self._ot_study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self._completed_trials.add(trial_id)


# In a budget_halving trial's config: the configuration's name across its runs ('c07'), and its run's budget
CONFIG_KEY, BUDGET_KEY = "config", "max_epochs"


class BudgetHalvingSearch(ScheduleAwareOptunaSearch):
    """Budget halving as a Tune searcher: Optuna proposes every configuration, each run to the end at the first
    budget (max_epochs compressed: the Gompertz time scale and the lr schedule with it); when a budget's runs have
    all ended, the best ceil(n / eta) by the metric are suggested again at the next budget; FINISHED after the full
    budget's.

    Optuna is told the first budget's results only: TPE models one objective, and a 27-epoch and a 240-epoch
    accuracy are two objectives on different scales (its good/bad split would sort by budget, not by
    configuration); the first budget is the one every configuration has, the higher ones hold a third, a ninth.
    """

    def __init__(self, plan: list[tuple[int, int]], **kwargs):
        super().__init__(**kwargs)
        self.plan = plan  # (budget, planned runs)
        self.stage = 0
        self.configurations: dict[str, dict] = {}  # name -> the values Optuna proposed
        self.runs: dict[str, tuple[str, int]] = {}  # trial id -> (configuration, budget)
        self.results: dict[str, float | None] = {}  # trial id -> its final metric (None: not completed)
        self.queue: list[str] = []  # configurations still to suggest at the current stage

    def suggest(self, trial_id: str):
        from ray.tune.search import Searcher

        budget, planned = self.plan[self.stage]
        if self.stage == 0 and len(self.configurations) < planned:
            values = super().suggest(trial_id)
            if values is None:
                return None
            name = f"c{len(self.configurations) + 1:02d}"
            self.configurations[name] = values
            return self._run(trial_id, name, budget)
        if not self.queue and self._stage_ended() and self.stage + 1 < len(self.plan):
            self.stage += 1
            self.queue = self.promoted()
            budget = self.plan[self.stage][0]
        if self.queue:
            return self._run(trial_id, self.queue.pop(0), budget)
        if self._stage_ended() and self.stage + 1 == len(self.plan):
            return Searcher.FINISHED
        return None  # the budget's last runs are still going

    def _run(self, trial_id: str, name: str, budget: int) -> dict:
        self.runs[trial_id] = (name, budget)
        return {**self.configurations[name], CONFIG_KEY: name, BUDGET_KEY: budget}

    def _stage_ended(self) -> bool:
        budget = self.plan[self.stage][0]
        here = [t for t, (_, b) in self.runs.items() if b == budget]
        return not self.queue and all(t in self.results for t in here) and \
            (self.stage > 0 or len(here) >= self.plan[0][1])

    def promoted(self) -> list[str]:
        """The configurations the ended stage sends on: the best by the metric, up to the next budget's planned
        runs (fewer where fewer completed)."""
        budget, count = self.plan[self.stage - 1][0], self.plan[self.stage][1]
        sign = -1 if self._mode == "max" else 1
        ended = {self.runs[t][0]: value for t, value in self.results.items() if self.runs[t][1] == budget}
        return sorted((n for n, v in ended.items() if v is not None), key=lambda n: sign * ended[n])[:count]

    def on_trial_result(self, trial_id: str, result: dict):
        if trial_id in self._ot_trials:  # a first-budget run: Optuna's trial
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self.runs and trial_id not in self.results:
            completed = not error and trial_outcome(result, error) == COMPLETED
            self.results[trial_id] = float(result[self.metric]) if completed else None
        super().on_trial_complete(trial_id, result, error)


def expected_runs(plan: list[tuple[int, int]], completed: dict[int, int]) -> int:
    """How many runs budget halving makes when only `completed[budget]` runs of a budget completed (the others
    diverged or failed, and are not sent on): at most the plan's."""
    total, available = 0, None
    for budget, planned in plan:
        runs = planned if available is None else min(planned, available)
        total += runs
        available = completed.get(budget, 0)
    return total


class ASHAWithFullBudgetTrials(ASHAScheduler):
    """ASHA that lets the first `full_budget_trials` trials run to max_t whatever their rank. Their results still
    enter the rungs, so they also set the cutoffs the others are judged by."""

    def __init__(self, full_budget_trials: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.full_budget_trials = full_budget_trials
        self.exempt: list[str] = []  # trial ids, in the order the trials were created

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        if len(self.exempt) < self.full_budget_trials and trial.trial_id not in self.exempt:
            self.exempt.append(trial.trial_id)

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and trial.trial_id in self.exempt and result.get("epoch", 0) < self._max_t:
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action

    @property
    def rung_epochs(self) -> list[int]:
        """The epochs at which ASHA compares trials (before max_t, where every trial stops anyway)."""
        return sorted(int(milestone) for milestone, _ in self._brackets[0]._rungs if milestone < self._max_t)


class MeanOverSeeds(Repeater):
    """Ray Tune's Repeater (search.repeat): each configuration Optuna proposes runs `repeat` times, its index in the
    config (space.REPEAT_INDEX) picking its seed. Optuna is told the mean over the repeats, COMPLETE only when every
    repeat completed, else FAIL: Repeater's own mean (numpy's nanmean) would drop a diverged seed and let the rest
    stand for the configuration. Saved whole for --resume (Repeater saves only the searcher it wraps, not its
    groups)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False, **kwargs):
        group = self._trial_id_to_group.get(trial_id)
        if group is None:
            return
        completed = not error and trial_outcome(result, error) == COMPLETED
        group.report(trial_id, float(result[self.searcher.metric]) if completed else math.nan)
        if group.finished_reporting():
            scores = group.scores()
            told = {self.searcher.metric: float(np.mean(scores)), OUTCOME: COMPLETED} \
                if all(math.isfinite(score) for score in scores) else {OUTCOME: FAILED}
            self.searcher.on_trial_complete(group.primary_trial_id, result=told)

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))


def build_searcher(spec: SweepSpec):
    """Optuna TPE (multivariate, seeded, `search.tpe_startup_trials` random trials first), proposing budget
    halving's configurations where it is the scheduler; None when nothing is searched (a baseline: Tune runs the
    fixed values and grids as they are)."""
    if not spec.searched():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate TPE
        sampler = optuna.samplers.TPESampler(seed=spec.search.seed, multivariate=True,
                                             n_startup_trials=spec.search.tpe_startup_trials)
    if spec.search.scheduler == "budget_halving":
        return BudgetHalvingSearch(halving_plan(spec), sampler=sampler)
    if spec.search.repeat > 1:
        return MeanOverSeeds(ScheduleAwareOptunaSearch(sampler=sampler), repeat=spec.search.repeat)
    return ScheduleAwareOptunaSearch(sampler=sampler)


def build_scheduler(spec: SweepSpec) -> ASHAWithFullBudgetTrials | None:
    """ASHA on the epoch; None (every trial runs to its max_epochs) when nothing is searched, or with budget halving
    (its runs are complete ones)."""
    if not spec.searched() or spec.search.scheduler == "budget_halving":
        return None
    s = spec.search
    return ASHAWithFullBudgetTrials(full_budget_trials=s.full_budget_trials, time_attr="epoch",
                                    max_t=spec.training.max_epochs, grace_period=s.grace_period,
                                    reduction_factor=s.reduction_factor)


# ------------------------------------------------------------------------------------------ diagnostics


def schedule_diagnostics(spec: SweepSpec, samples: int = DIAGNOSTIC_SAMPLES, seed: int = 0) -> tuple[list[str], list[str]]:
    """(lines, warnings) on what ASHA's rungs will judge: for each rung, the share of sampled Gompertz schedules
    whose beta has reached less than RISE_SHARE of its rise; and the share whose inflection b/c lies past the
    budget (beta never rises)."""
    if spec.searched() and spec.search.scheduler == "budget_halving":
        return halving_lines(spec)
    scheduler = build_scheduler(spec)
    if scheduler is None:
        return ["no early stopping (nothing is searched): every trial runs all its epochs"], []
    rungs = scheduler.rung_epochs
    max_t = spec.training.max_epochs
    head = f"ASHA compares trials at epoch {', '.join(map(str, rungs)) or '(none)'} of {max_t}"
    fixed = spec.fixed()
    params = {**fixed, **spec.params}
    methods = params.get("method")
    methods = methods.values if isinstance(methods, Distribution) else (methods,)
    if not any(distillation_method(m).uses_schedule for m in methods) or not _may_be(params.get("schedule"), "gompertz"):
        return [head + "; no rising Gompertz schedule is searched"], []
    rng = np.random.default_rng(seed)

    def draw(name):
        value = params.get(name)
        return value.sample(rng, samples).astype(float) if isinstance(value, Distribution) else \
            np.full(samples, float(value))

    b = draw("b")
    c = b / draw("inflection") if "inflection" in params else draw("c")
    lines = [f"{head}; of {samples:,} sampled (b, c):"]
    warned = []
    for epoch in rungs:
        rise = np.exp(-np.exp(b - c * epoch / max_t))  # the share of beta_max - beta_min reached at this epoch
        share = float(np.mean(rise < RISE_SHARE))
        lines.append(f"  epoch {epoch:>4}: {share:6.1%} have reached < {RISE_SHARE:.0%} of their beta rise")
        if share > WARN_SHARE:
            warned.append(f"at ASHA's rung at epoch {epoch}, {share:.0%} of the sampled Gompertz schedules have not "
                          f"risen yet: ASHA would judge them on plain CE training")
    never = float(np.mean(b / c > 1))
    lines.append(f"  inflection b/c past the budget: {never:.1%}")
    if never > WARN_SHARE:
        warned.append(f"{never:.0%} of the sampled schedules have their inflection b/c past the budget: beta never "
                      f"rises")
    if warned:
        warned.append("choose a later search.grace_period, or b/c ranges (or params.inflection) inside the budget: "
                      "docs/guide.md, 'Early stopping and the Gompertz schedule'")
    return lines, warned


def halving_lines(spec: SweepSpec) -> tuple[list[str], list[str]]:
    """(lines, no warnings) of budget halving's plan: each budget's runs and epochs, against every configuration at
    the full budget and ASHA at this space's rung; the caveat that the first budget's ranking decides most."""
    plan, full, s = halving_plan(spec), spec.training.max_epochs, spec.search
    epochs = sum(budget * count for budget, count in plan)
    lines = [f"{count:>4} run(s) x {budget:>4} epochs = {budget * count:>6,} epochs" +
             ("  (every configuration)" if i == 0 else f"  (the best 1/{s.reduction_factor} of the last budget)")
             for i, (budget, count) in enumerate(plan)]
    lines.append(f"{sum(c for _, c in plan):>4} runs, {epochs:,} epochs: {epochs / (s.num_samples * full):.0%} of every "
                 f"configuration at {full}; each run complete, its Gompertz time scale and lr schedule compressed "
                 f"to its budget")
    lines += textwrap.wrap(f"caveat: budget halving keeps the best 1/{s.reduction_factor} of the {plan[0][0]}-epoch runs: a configuration "
              f"that ranks low at {plan[0][0]} epochs and high at {full} is lost. How well the compressed budgets "
              f"predict the full one is measured, with intervals, in docs/method.md ('Early stopping: the fidelity "
              f"study'); the summary prints it again for this sweep's configurations", width=100, subsequent_indent="  ")
    return lines, []


def _may_be(value, wanted) -> bool:
    return value == wanted if not isinstance(value, Distribution) else wanted in value.values


@dataclass(frozen=True)
class RankFidelity:
    """Spearman's rho between a rung's ranking and the final one over n trials, with its 95% interval: Fisher's z
    with Fieller, Hartley and Pearson's (1957) standard error for Spearman, 1.03 / sqrt(n - 3) (no interval below
    4 trials). At n = 8 a rho of 0.6 spans about [-0.2, 0.9]: one sweep's few trials rarely decide it."""

    rho: float
    n: int

    @property
    def interval(self) -> tuple[float, float]:
        if self.n < 4 or not math.isfinite(self.rho):
            return math.nan, math.nan
        z, half = math.atanh(max(min(self.rho, 0.999999), -0.999999)), 1.96 * 1.03 / math.sqrt(self.n - 3)
        return math.tanh(z - half), math.tanh(z + half)

    def text(self) -> str:
        low, high = self.interval
        if not math.isfinite(self.rho):
            return f"   - n={self.n} (no spread, or fewer than 3 trials)"
        return f"{self.rho:+.2f} " + (f"[{low:+.2f}, {high:+.2f}] n={self.n}" if math.isfinite(low) else
                                      f"n={self.n}, no interval below 4 trials")

    def judgement(self) -> str:
        """'' where the whole interval is at or above SPEARMAN_WARNING, else what a reader should take from it."""
        low, high = self.interval
        if math.isfinite(high) and high < SPEARMAN_WARNING:
            return "warning: ASHA's ranking at this rung is unreliable for this space"
        if math.isfinite(low) and low >= SPEARMAN_WARNING:
            return ""
        return f"undetermined: the interval reaches below {SPEARMAN_WARNING}" + (
            f"; {DECISIVE_TRIALS} or more full-budget trials can decide it" if self.n < DECISIVE_TRIALS else "")


# Full-budget trials that can decide a rung's fidelity: at 16, a rho of 0.85 has its whole interval above 0.5 (at 8,
# only one above 0.9 does).
DECISIVE_TRIALS = 16


def rank_correlations(histories: list[dict[int, float]], rungs: list[int], max_epochs: int) -> dict[int, RankFidelity]:
    """Spearman's rank correlation, per rung epoch, between the metric there and at max_epochs, over trials that
    ran the full budget (each history: epoch -> metric). rho NaN where fewer than 3 trials or no spread."""
    full = [h for h in histories if max_epochs in h]
    out = {}
    for epoch in rungs:
        pairs = [(h.get(epoch), h[max_epochs]) for h in full if epoch in h]
        out[epoch] = RankFidelity(spearman(pairs), len(pairs))
    return out


def spearman(pairs: list[tuple[float, float]]) -> float:
    """Spearman's rho of (early, final) pairs (ties share their mean rank); NaN below 3 pairs or without spread."""
    import pandas as pd

    ranks = pd.DataFrame(pairs, columns=["early", "final"]).rank()
    return float(ranks["early"].corr(ranks["final"])) if len(pairs) >= 3 else float("nan")
