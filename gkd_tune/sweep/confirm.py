"""The confirmation stage (a space file's `confirm: {top_k, seeds, baselines}`): is the search's answer real?

A search ranks configurations by one run each, on one seed, on a validation split whose noise is often larger than
the differences it ranks (report.resolution_lines says by how much). After it, the top K configurations run again
at the full budget with N new seeds (the student's weights, the batch order, the augmentation), beside the
baseline methods at the same seeds:

    the answer        the configuration with the best mean validation metric over the seeds (every seed completed;
                      one that diverged or failed on a seed never wins); the test split is measured once per run,
                      after this choice
    the champion      the answer's median-validation seed, not its luckiest
    tuning's worth    the answer minus each baseline, paired by seed, on test (and validation), with its 95%
                      t-interval and n: one line says whether tuning bought anything

Runs are entries of one Ray Tune grid (CONFIRM_KEY in their config: label, seed, values), in the sweep folder's
CONFIRM_DIR: the engine runs and resumes them like any trials.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.stats import Difference
from .report import TrialSummary
from .space import REPEAT_INDEX, SweepSpec
from .storage import CONFIRM_KEY
from .strategy import BUDGET_KEY, COMPLETED, CONFIG_KEY

def configuration_label(trial: TrialSummary) -> str:
    """What a search configuration is called: budget halving's configuration name, else its trial's name."""
    return str(trial.config.get(CONFIG_KEY, trial.name))


def confirmation_seeds(spec: SweepSpec) -> list[int]:
    """New seeds: after the search's (its seed, and with search.repeat seed + 1, ...)."""
    first = spec.fixed().get("seed", 0) + spec.search.repeat
    return [first + i for i in range(spec.confirm.seeds)]


def entries(spec: SweepSpec, search_winners: list[TrialSummary]) -> list[dict]:
    """The confirmation's runs, seed by seed (the first seed's runs first: an interrupted confirmation has whole
    pairs): each top configuration's sampled values at the full budget, and each baseline method with the space's
    fixed values."""
    tuned = [(configuration_label(t), False, {k: v for k, v in t.config.items()
                                              if k not in (CONFIG_KEY, BUDGET_KEY, REPEAT_INDEX)})
             for t in search_winners[: spec.confirm.top_k]]
    baselines = [(method, True, {"method": method}) for method in spec.confirm.baselines]
    return [{"label": label, "seed": seed, "baseline": baseline, "values": {**values, "seed": seed}}
            for seed in confirmation_seeds(spec) for label, baseline, values in tuned + baselines]


@dataclass
class Confirmed:
    """One configuration (or baseline) over the confirmation's seeds."""

    label: str
    baseline: bool
    runs: dict[int, TrialSummary] = field(default_factory=dict)  # seed -> its run
    method: str = ""

    def completed(self) -> dict[int, TrialSummary]:
        return {seed: run for seed, run in self.runs.items() if run.outcome == COMPLETED}

    def values(self, metric: str) -> dict[int, float]:
        """seed -> the metric (a test_* one from the run's test split), over the completed runs that have it."""
        found = {}
        for seed, run in self.completed().items():
            source = run.test if metric.startswith("test_") else run.metrics
            if source and metric in source:
                found[seed] = float(source[metric])
        return found

    def mean(self, metric: str) -> Difference | None:
        return Difference.of(list(self.values(metric).values()))

    def median_run(self, metric: str, mode: str) -> TrialSummary:
        """The run at the median of the metric over seeds (of an even count, the lower-ranked of the middle two):
        the configuration as it typically turns out."""
        ordered = sorted(self.completed().values(), key=lambda run: float(run.metrics[metric]),
                         reverse=mode == "max")
        return ordered[len(ordered) // 2]


@dataclass
class Confirmation:
    spec: SweepSpec
    configurations: list[Confirmed]  # the tuned ones in the search's order, then the baselines
    seeds: list[int]

    @classmethod
    def of(cls, spec: SweepSpec, runs: list[TrialSummary]) -> "Confirmation":
        by_label: dict[str, Confirmed] = {}
        for run in runs:
            entry = run.config[CONFIRM_KEY]
            confirmed = by_label.setdefault(entry["label"], Confirmed(entry["label"], entry["baseline"]))
            confirmed.runs[int(entry["seed"])] = run
            confirmed.method = run.plan.distill.method if run.plan else entry["values"].get("method", "")
        ordered = [c for c in by_label.values() if not c.baseline] + [c for c in by_label.values() if c.baseline]
        return cls(spec, ordered, confirmation_seeds(spec))

    @property
    def tuned(self) -> list[Confirmed]:
        return [c for c in self.configurations if not c.baseline]

    @property
    def baselines(self) -> list[Confirmed]:
        return [c for c in self.configurations if c.baseline]

    def answer(self) -> Confirmed | None:
        """The tuned configuration with the best mean validation metric, among those completed on every seed."""
        metric, sign = self.spec.search.metric, (-1 if self.spec.mode == "max" else 1)
        whole = [c for c in self.tuned if len(c.values(metric)) == len(self.seeds)]
        return min(whole, key=lambda c: sign * c.mean(metric).mean) if whole else None

    def champion(self) -> TrialSummary:
        """The answer's median-validation run: what is shipped (models:/<name>@champion)."""
        return self.answer().median_run(self.spec.search.metric, self.spec.mode)

    def runs_to_test(self) -> list[TrialSummary]:
        """Every completed confirmation run: tested once, after the answer was chosen."""
        return [run for c in self.configurations for run in c.completed().values()]

    def paired(self, baseline: Confirmed, metric: str) -> Difference | None:
        """answer - baseline, paired by seed, over the seeds both have."""
        answer = self.answer()
        mine, theirs = answer.values(metric), baseline.values(metric)
        return Difference.of([mine[seed] - theirs[seed] for seed in sorted(set(mine) & set(theirs))])

    def worth(self) -> str:
        """Whether tuning bought anything, in one line, from the paired test differences (validation where the
        source has no test split)."""
        answer = self.answer()
        if answer is None:
            return "Tuning's worth: unknown: no configuration completed every seed."
        metric = self.compared_metric()
        sign = 1 if metric.endswith("acc") else -1  # accuracy: higher is better; a loss: lower
        differences = {b.label: self.paired(b, metric) for b in self.baselines}
        if not differences:
            return "Tuning's worth: no baselines were run (confirm.baselines)."
        if any(d is None or d.n < 2 for d in differences.values()):
            return "Tuning's worth: unknown: fewer than 2 seeds paired with a baseline."
        better = [label for label, d in differences.items() if (d.above_zero if sign > 0 else d.below_zero)]
        worse = [label for label, d in differences.items() if (d.below_zero if sign > 0 else d.above_zero)]
        where = f"{metric}, paired by seed, 95% t-intervals, n={min(d.n for d in differences.values())}"
        if len(better) == len(differences):
            return f"Tuning bought something: {answer.label} beats {', '.join(differences)} ({where})."
        if worse:
            return (f"Tuning bought nothing: {answer.label} is below {', '.join(worse)}" +
                    (f" (above {', '.join(better)})" if better else "") + f" ({where}).")
        unresolved = [label for label in differences if label not in better]
        return (f"Tuning bought nothing resolvable: {answer.label} cannot be told from {', '.join(unresolved)}" +
                (f" (it beats {', '.join(better)})" if better else "") + f" ({where}).")

    def compared_metric(self) -> str:
        tested = any(run.test for c in self.configurations for run in c.runs.values())
        return "test_acc" if tested else self.spec.search.metric

    def lines(self) -> list[str]:
        """The confirmation as the console and summary.md say it."""
        metric, mode = self.spec.search.metric, self.spec.mode
        answer = self.answer()
        lines = [f"Confirmation: {len(self.tuned)} configuration(s) and {len(self.baselines)} baseline(s) at "
                 f"{self.spec.training.max_epochs} epochs, seeds {', '.join(map(str, self.seeds))} (new; paired by "
                 f"seed); mean and 95% t-interval over the completed seeds:",
                 f"  {'config':<9}{'method':<10}{'completed':>10}  {metric:<32}test_acc"]
        for c in self.configurations:
            val, test = c.mean(metric), c.mean("test_acc")
            lines.append(f"  {c.label:<9}{c.method:<10}{len(c.completed()):>6}/{len(self.seeds):<3}  "
                         f"{val.value_text() if val else '-':<32}{test.value_text() if test else '-'}")
        failed = [f"{run.name} {run.outcome}" for c in self.configurations for run in c.runs.values()
                  if run.outcome != COMPLETED]
        if failed:
            lines.append(f"  not completed (never chosen): {', '.join(failed)}")
        if answer is None:
            lines.append("No configuration completed every seed: no confirmed answer.")
            return lines
        champion = self.champion()
        lines.append(f"The answer: {answer.label} (the best mean {metric} over {len(self.seeds)} seeds); its "
                     f"median-{metric} run {champion.name} is the champion.")
        compared = self.compared_metric()
        for baseline in self.baselines:
            on_test, on_val = self.paired(baseline, compared), self.paired(baseline, metric)
            lines.append(f"  {answer.label} - {baseline.label}: {compared} {on_test.text() if on_test else '-'}"
                         + (f"; {metric} {on_val.text() if on_val else '-'}" if compared != metric else ""))
        lines.append(self.worth())
        return lines

    def logged(self) -> tuple[dict[str, float], dict[str, str]]:
        """(metrics, tags) for the sweep's MLflow run: per configuration the mean and interval of val and test,
        per baseline the paired difference."""
        metrics, tags = {}, {}
        for c in self.configurations:
            for metric in (self.spec.search.metric, "test_acc"):
                mean = c.mean(metric)
                if mean is not None:
                    metrics.update({f"confirm.{c.label}.{metric}_{key}": value for key, value in
                                    (("mean", mean.mean), ("low", mean.low), ("high", mean.high), ("n", mean.n))
                                    if value == value})
        answer = self.answer()
        if answer is not None:
            tags["gkd_tune.confirmed"] = answer.label
            tags["gkd_tune.champion_run"] = self.champion().name
            tags["gkd_tune.tuning_worth"] = self.worth()
            compared = self.compared_metric()
            for baseline in self.baselines:
                difference = self.paired(baseline, compared)
                if difference is not None:
                    metrics.update({f"confirm.minus_{baseline.label}.{compared}_{key}": value for key, value in
                                    (("mean", difference.mean), ("low", difference.low),
                                     ("high", difference.high), ("n", difference.n)) if value == value})
        return metrics, tags
