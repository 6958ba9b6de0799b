"""Early-stopping designs replayed on curves a sweep or a fidelity study has already paid for: which trials a design
would have stopped, what it would have spent and which configuration it would have chosen, offline, with no GPU.

A configuration's curves are its validation metric per epoch, one curve per budget it ran at (a run at budget B is
the configuration with max_epochs = B: the Gompertz time scale and the learning-rate schedule compressed to B). The
prefix designs (ASHA, asynchronous Hyperband, median stopping) read the full-budget curve epoch by epoch and decide
with Ray Tune's own schedulers, fed by an event loop of `workers` trials running at once, one epoch a time unit, the
trials started in a given order; budget halving reads the complete runs at each budget. What a replay cannot show
is which configurations TPE would have proposed next: the configurations are the ones that ran.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from .strategy import ASHAWithFullBudgetTrials, RankFidelity, spearman

DESIGNS = ("full", "asha", "hyperband", "median", "budget_halving")
DESIGN_OPTIONS = {  # each design's options; None: set from the study (its budgets)
    "full": {},
    "asha": {"grace": None, "eta": 3, "full": 0},
    "hyperband": {"grace": None, "eta": 3, "brackets": 3},
    "median": {"grace": None, "min_samples": 3},
    "budget_halving": {"eta": 3},
}
TOP = 3  # P(top-3): the chosen configuration is among the TOP best by the full-budget metric


@dataclass
class Configuration:
    """One configuration's runs: budget -> the metric per epoch, as run (a diverged run ends with a non-finite
    value), and budget -> the test metric of the run's final student (NaN: not tested)."""

    name: str
    curves: dict[int, list[float]]
    test: dict[int, float] = field(default_factory=dict)

    def final(self, budget: int) -> float:
        curve = self.curves.get(budget, [])
        return curve[-1] if len(curve) == budget else math.nan  # a diverged or unfinished run has no final value


@dataclass(frozen=True)
class Design:
    kind: str
    options: dict

    @property
    def label(self) -> str:
        return self.kind + ("(" + ", ".join(f"{k}={v}" for k, v in self.options.items()) + ")" if self.options else "")


def parse_design(text: str, budgets: list[int]) -> Design:
    """'asha:grace=13,eta=3' -> Design; options left out take their defaults (a grace: the smallest budget below the
    full one). ValueError naming the design, the option and what is allowed."""
    kind, _, rest = text.partition(":")
    if kind not in DESIGNS:
        raise ValueError(f"--design {text}: unknown design {kind!r}; one of {', '.join(DESIGNS)}")
    options = dict(DESIGN_OPTIONS[kind])
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in options:
            raise ValueError(f"--design {text}: {kind} has no option {key!r}; its options: "
                             f"{', '.join(options) or '(none)'}")
        try:
            options[key] = int(value)
        except ValueError:
            raise ValueError(f"--design {text}: {key} must be a whole number, got {value!r}") from None
    full = budgets[-1]
    if "grace" in options and options["grace"] is None:
        options["grace"] = budgets[0] if len(budgets) > 1 else max(1, full // 9)
    low = {"grace": 1, "eta": 2, "brackets": 1, "min_samples": 1, "full": 0}
    for key, value in options.items():
        if value < low[key] or (key == "grace" and value >= full):
            allowed = f"1 to {full - 1} (below the full budget, {full})" if key == "grace" else f">= {low[key]}"
            raise ValueError(f"--design {text}: {key} must be {allowed}, got {value}")
    if kind == "budget_halving" and len(budgets) < 2:
        raise ValueError(f"--design {text}: budget halving needs runs at two budgets or more; these curves were run "
                         f"at {full} epochs only (benchmarks/fidelity_study.py runs them at several)")
    return Design(kind, options)


def default_designs(budgets: list[int], reference_grace: int, workers: int, configurations: int) -> list[str]:
    """The designs `simulate` compares when none is given: no stopping; the reference ASHA (one rung at
    `reference_grace`, eta 3, 1 trial in 8 exempt: the CIFAR spaces' before budget halving); ASHA, Hyperband and median
    stopping from the lowest budget; budget halving where the study ran several budgets."""
    full = budgets[-1]
    low = budgets[0] if len(budgets) > 1 else max(1, full // 9)
    designs = ["full", f"asha:grace={reference_grace},eta=3,full={max(1, round(configurations / 8))}",
               f"asha:grace={reference_grace},eta=3", f"asha:grace={low},eta=3",
               f"hyperband:grace={low},eta=3,brackets=3",
               f"median:grace={low}"]
    return designs + (["budget_halving:eta=3"] if len(budgets) > 1 else [])


@dataclass
class Outcome:
    """What one replay of a design spent and chose."""
    epochs: int
    chosen: str | None  # the configuration it would have chosen; None: nothing reached the full budget


class _Trial:
    """What Ray's schedulers read of a trial."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id
        self.status = "RUNNING"

    def __repr__(self):
        return self.trial_id


class _NoController:
    """The TuneController the schedulers may ask about other trials: none wait here (the replay starts the next
    trial as soon as a worker is free)."""

    def get_live_trials(self):
        return []


def _scheduler(design: Design, metric: str, mode: str, full: int):
    from ray.tune.schedulers import MedianStoppingRule

    o = design.options
    if design.kind == "median":
        return MedianStoppingRule(time_attr="epoch", metric=metric, mode=mode, grace_period=o["grace"],
                                  min_samples_required=o["min_samples"], hard_stop=True)
    return ASHAWithFullBudgetTrials(full_budget_trials=o.get("full", 0), time_attr="epoch", metric=metric, mode=mode,
                                    max_t=full, grace_period=o["grace"], reduction_factor=o["eta"],
                                    brackets=o.get("brackets", 1))


def replay_prefix(design: Design, configurations: list[Configuration], order: list[int], full: int, workers: int,
                  metric: str, mode: str, seed: int) -> Outcome:
    """Run the configurations' full-budget curves, `workers` at a time in `order`, through the design's scheduler."""
    from ray.tune.schedulers import TrialScheduler

    np.random.seed(seed)  # ASHA draws each trial's bracket from numpy's global generator
    scheduler = _scheduler(design, metric, mode, full) if design.kind != "full" else None
    controller, pending, events, spent, finished = _NoController(), list(order), [], 0, []
    trials = {i: _Trial(configurations[i].name) for i in order}

    def start(now: float):
        if pending:
            i = pending.pop(0)
            if scheduler is not None:
                scheduler.on_trial_add(controller, trials[i])
            heapq.heappush(events, (now + 1, i, 1))

    for _ in range(workers):
        start(0)
    while events:
        now, i, epoch = heapq.heappop(events)
        spent += 1
        curve = configurations[i].curves[full]
        value = curve[epoch - 1]
        ended = epoch == len(curve) or not math.isfinite(value)
        if not ended and scheduler is not None:
            result = {"epoch": epoch, metric: value}
            ended = scheduler.on_trial_result(controller, trials[i], result) == TrialScheduler.STOP
        if ended:
            if epoch == full and math.isfinite(value):
                finished.append(i)
                if scheduler is not None:
                    scheduler.on_trial_complete(controller, trials[i], {"epoch": epoch, metric: value})
            start(now)
        else:
            heapq.heappush(events, (now + 1, i, epoch + 1))
    return Outcome(spent, _best(configurations, finished, full, mode))


def replay_halving(design: Design, configurations: list[Configuration], budgets: list[int], mode: str) -> Outcome:
    """Every configuration run to the end at the lowest budget; the best ceil(n / eta) of each budget run again at
    the next one; the best at the full budget chosen. The same for any order."""
    alive, spent = list(range(len(configurations))), 0
    for index, budget in enumerate(budgets):
        spent += sum(len(configurations[i].curves.get(budget, [])) for i in alive)
        ranked = _ranked(configurations, alive, budget, mode)
        if index == len(budgets) - 1:
            return Outcome(spent, configurations[ranked[0]].name if ranked else None)
        alive = ranked[:math.ceil(len(alive) / design.options["eta"])]
    raise AssertionError("unreachable")


def _ranked(configurations: list[Configuration], indices: list[int], budget: int, mode: str) -> list[int]:
    """The indices whose run at `budget` ended with a finite value, best first."""
    sign = -1 if mode == "max" else 1
    finite = [i for i in indices if math.isfinite(configurations[i].final(budget))]
    return sorted(finite, key=lambda i: sign * configurations[i].final(budget))


def _best(configurations: list[Configuration], indices: list[int], budget: int, mode: str) -> str | None:
    ranked = _ranked(configurations, indices, budget, mode)
    return configurations[ranked[0]].name if ranked else None


@dataclass
class DesignResult:
    design: Design
    epochs: float  # mean over the replayed orders
    share: float  # of the full sweep's epochs (every configuration to the full budget)
    chosen_val: float  # mean, over orders, of the chosen configuration's full-budget metric
    chosen_test: float
    regret: float  # mean (best full-budget value - the chosen one's), in the judged metric's units
    regret_high: float  # its 90th percentile over orders
    top: float  # P(the chosen configuration is among the TOP best)
    fidelity: RankFidelity  # at the design's first cut, against the full budget
    first_cut: str
    none_chosen: int  # orders in which no trial reached the full budget


def first_cut(design: Design, budgets: list[int]) -> tuple[str, int, bool]:
    """(its description, its epoch or budget, whether it is a compressed budget) of the design's first decision."""
    full = budgets[-1]
    if design.kind == "budget_halving":
        return f"budget {budgets[0]} (compressed)", budgets[0], True
    if design.kind == "full":
        return f"epoch {full}", full, False
    return f"epoch {design.options['grace']} of {full}", design.options["grace"], False


def judged(configuration: Configuration, full: int, judge: str) -> float:
    """The full-budget result a design's choice is judged by: the validation metric it chose on, or ("test") the
    test metric of the run's final student (a larger, untouched sample where the study measured it)."""
    return configuration.test.get(full, math.nan) if judge == "test" else configuration.final(full)


def fidelity(configurations: list[Configuration], at: int, compressed: bool, full: int,
             judge: str = "val") -> RankFidelity:
    """Spearman's rho, over the configurations with both values finite, between the metric at `at` (the last epoch
    of the run at budget `at` if compressed, else epoch `at` of the full-budget run) and the full-budget result
    (`judged`)."""
    pairs = []
    for c in configurations:
        final = judged(c, full, judge)
        curve = c.curves.get(at if compressed else full, [])
        early = (c.final(at) if compressed else (curve[at - 1] if len(curve) >= at else math.nan))
        if math.isfinite(final) and math.isfinite(early):
            pairs.append((early, final))
    return RankFidelity(spearman(pairs), len(pairs))


def simulate(configurations: list[Configuration], designs: list[Design], *, workers: int, orders: int, metric: str,
             mode: str, seed: int = 0, judge: str = "val") -> list[DesignResult]:
    """Each design replayed over `orders` random trial orders (the first: as the configurations are listed); its
    choice judged (regret, top-3, fidelity) by the full-budget validation metric, or with `judge="test"` by the
    test accuracy (then higher is better)."""
    budgets = sorted({b for c in configurations for b in c.curves})
    full = budgets[-1]
    replayable = [c for c in configurations if len(c.curves.get(full, [])) == full or
                  (c.curves.get(full) and not math.isfinite(c.curves[full][-1]))]
    sign = 1 if mode == "max" or judge == "test" else -1
    finals = {c.name: judged(c, full, judge) for c in replayable}
    ranked = sorted((n for n, v in finals.items() if math.isfinite(v)), key=lambda n: -sign * finals[n])
    best = finals[ranked[0]]
    rng = np.random.default_rng(seed)
    permutations = [list(range(len(replayable)))] + [list(rng.permutation(len(replayable))) for _ in range(orders - 1)]
    results = []
    for design in designs:
        outcomes = [replay_halving(design, replayable, budgets, mode) if design.kind == "budget_halving" else
                    replay_prefix(design, replayable, order, full, workers, metric, mode, seed + k)
                    for k, order in enumerate(permutations)]
        chosen = [o.chosen for o in outcomes if o.chosen is not None]
        regrets = [sign * (best - finals[name]) for name in chosen]
        vals = [next(c for c in replayable if c.name == name).final(full) for name in chosen]
        tests = [next(c for c in replayable if c.name == name).test.get(full, math.nan) for name in chosen]
        description, at, compressed = first_cut(design, budgets)
        epochs = float(np.mean([o.epochs for o in outcomes]))
        results.append(DesignResult(
            design, epochs, epochs / (full * len(replayable)),
            float(np.mean(vals)) if chosen else math.nan,
            float(np.nanmean(tests)) if any(math.isfinite(t) for t in tests) else math.nan,
            float(np.mean(regrets)) if regrets else math.nan,
            float(np.percentile(regrets, 90)) if regrets else math.nan,
            float(np.mean([n in ranked[:TOP] for n in chosen])) if chosen else 0.0,
            fidelity(replayable, at, compressed, full, judge), description, len(outcomes) - len(chosen)))
    return results


def configurations_from_rows(rows: list[dict], metric: str) -> list[Configuration]:
    """The configurations in a trials.parquet's rows (one per trial and epoch): grouped by `config` where the table
    has it (a fidelity study, a budget-halving sweep), else one per trial; a run's budget is its `budget` column,
    else its param.max_epochs, else its last epoch."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        if row.get("epoch") is None:
            continue
        budget = row.get("budget") or row.get("param.max_epochs")
        key = (str(row.get("config") or row["trial"]), int(float(budget)) if budget is not None else -1, row["trial"])
        runs.setdefault(key, []).append(row)
    configurations: dict[str, Configuration] = {}
    for (name, budget, _), run in runs.items():
        run = sorted(run, key=lambda r: r["epoch"])
        budget = budget if budget > 0 else int(run[-1]["epoch"])
        values = [float(r[metric]) if r.get(metric) is not None else math.nan for r in run]
        c = configurations.setdefault(name, Configuration(name, {}))
        c.curves[budget] = values
        test = run[-1].get("test_acc")
        c.test[budget] = float(test) if test is not None else math.nan
    return list(configurations.values())
