"""Search-space files: one YAML describes a whole sweep; parsed once into validated dataclasses.

Every error names the file, the field path and what is allowed; unknown keys are errors ("did you mean").
See docs/guide.md ("Search-space files") for the format and search_spaces/*.yaml for examples.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..core.data import DataSourceError, DataSpec, absolute_source
from ..core.distillers import DistillConfig
from ..core.loop import TrainConfig
from ..core.models import MODEL_NAMES
from ..core.params import SEED_RANGE, Param, Setting, build, check, flatten, setting, settings
from ..core.teacher import TeacherSpec
from .storage import TRIAL_DIR_PREFIX, WORKER_SCRATCH_DIR

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice", "grid")  # grid: every value, in every sample
METRICS = ("val_acc", "val_loss")
# asha: one run per trial, stopped at ASHA's rungs; budget_halving: complete runs at compressed budgets (strategy.py)
SCHEDULERS = ("asha", "budget_halving")
SWEEP_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


class SpaceError(ValueError):
    def __init__(self, file: Path | str, path: str, problem: str):
        super().__init__(f"{file}: {path}: {problem}")


@dataclass(frozen=True)
class Distribution:
    kind: str  # one of DISTRIBUTIONS
    values: tuple  # (low, high), the choices or the grid

    def bounds(self) -> tuple[float, float]:
        return (min(self.values), max(self.values))

    def sample(self, rng, size: int):
        """`size` draws, as the search would make them (a grid: its values, equally often)."""
        import numpy as np

        low, high = self.values[0], self.values[-1]
        if self.kind == "uniform":
            return rng.uniform(low, high, size)
        if self.kind == "loguniform":
            return np.exp(rng.uniform(np.log(low), np.log(high), size))
        if self.kind == "int":
            return rng.integers(low, high + 1, size)
        return rng.choice(np.array(self.values, dtype=object), size)


# A trial's hyperparameters (a space file's `params`): each can be fixed (a plain value) or searched (a distribution).
# Listed (in messages, the plan, MLflow) with the Gompertz curve's first, then in declaration order.
_CURVE_FIRST = ("method", "b", "c", "inflection", "beta_min", "beta_max")
# The Gompertz inflection t* = b / c: searched instead of c (c = b / inflection), every sampled curve rises at the
# share of the budget it names. Not a config field: trials (and MLflow) see b and c.
INFLECTION = Setting("inflection", (), float, None, Param(
    "the Gompertz inflection b/c as a share of the budget; searched instead of c", low=0, high=1, above_low=True,
    searchable=True))
TRIAL_PARAMS: dict[str, Setting] = {s.name: s for s in sorted(
    settings(DistillConfig) + settings(TrainConfig, searchable=True) + [INFLECTION],
    key=lambda s: _CURVE_FIRST.index(s.name) if s.name in _CURVE_FIRST else len(_CURVE_FIRST))}


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = setting(8, "number of trials (with a grid: repeats of the whole grid; with budget_halving: "
                               "configurations)", low=1)
    max_concurrent_trials: int = setting(2, "trials running at once", low=1)
    seed: int = setting(0, "Optuna sampler seed", **SEED_RANGE)
    scheduler: str = setting("asha", "asha: one run per trial, ASHA stops it at its rungs; budget_halving: complete "
                             "runs at budgets grace_period, x reduction_factor, ..., max_epochs (the Gompertz time "
                             "scale and the lr schedule compressed to each), the best 1/reduction_factor of each "
                             "budget run again at the next", choices=SCHEDULERS)
    grace_period: int = setting(1, "ASHA: epochs every trial runs before it can be stopped; budget_halving: the "
                                "first budget", low=1)
    reduction_factor: int = setting(2, "1 / the share of trials promoted at each rung (ASHA) or budget "
                                    "(budget_halving)", low=2, high=100)
    metric: str = setting("val_acc", "the last epoch's validation metric that ranks trials", choices=METRICS)
    max_failures: int = setting(2, "retries of a failed trial (from its last checkpoint)", low=0)
    startup_trials: int | None = setting(None, "random trials before TPE models the results (Optuna's "
                                         "n_startup_trials); default min(10, max(2, num_samples // 4))", low=1)
    full_budget_trials: int = setting(0, "the first K trials run to max_epochs whatever ASHA says: at the end, "
                                      "how well each rung's ranking predicts the final one (Spearman)", low=0)
    repeat: int = setting(1, "runs per configuration, each at its own seed (seed, seed + 1, ...); Optuna is told "
                          "their mean (Ray Tune's Repeater); needs grace_period = max_epochs (no early stopping)",
                          low=1, high=100)
    test_top_k: int = setting(1, "the best K completed trials (by the validation metric) are evaluated once on the "
                              "test split after the sweep", low=0)

    @property
    def tpe_startup_trials(self) -> int:
        return self.startup_trials or min(10, max(2, self.num_samples // 4))

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class ConfirmSettings:
    """After the search: the top configurations run again at the full budget with new seeds, beside the baselines
    at the same seeds (sweep/confirm.py)."""
    top_k: int = setting(3, "the best K configurations of the search (completed, at the full budget, by the "
                            "validation metric) to run again", low=1, high=100)
    seeds: int = setting(3, "new seeds per configuration and baseline (the student's weights, the batch order and "
                            "the augmentation) after the search's: seed + repeat, + 1, ...", low=2, high=100)
    baselines: tuple[str, ...] = ("student", "kd")  # methods run at the same seeds, with the space's fixed values

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class Resources:
    cpu: float = setting(1.0, "CPUs per trial", low=0, above_low=True, high=1024)
    gpu: float = setting(0.0, "GPUs per trial (a fraction shares one)", low=0, high=64)
    # an autoscaler starting a GPU worker (instance boot, a multi-GB image pull) takes minutes, not an hour
    wait_s: float = setting(1800.0, "seconds to wait for the Ray cluster to provide a trial's resources before "
                                    "giving up", low=0, above_low=True, high=7 * 24 * 3600)

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class TrackingSpec:
    # MLflow's own default: `mlflow ui` in the same folder shows the sweep
    uri: str = setting("sqlite:///mlflow.db", "MLflow tracking URI")
    experiment: str | None = setting(None, "MLflow experiment (default: the sweep's name)")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    file: str
    data: DataSpec = field(default_factory=DataSpec)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    student: str = "resnet8"
    student_weights: str | None = None  # a file the student starts from (its classifier fresh for other classes)
    # the `training` section: TrainConfig's settings that are not searched (a trial's lr and weight_decay come
    # from `params`)
    training: TrainConfig = field(default_factory=TrainConfig)
    params: dict[str, Any] = field(default_factory=dict)  # name -> fixed value or Distribution
    search: SearchSettings = field(default_factory=SearchSettings)
    confirm: ConfirmSettings | None = None  # None: the search's winner is the answer
    resources: Resources = field(default_factory=Resources)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    storage_path: str = "~/gkd-tune-results"

    @property
    def mode(self) -> str:
        return "max" if self.search.metric == "val_acc" else "min"

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def searched(self) -> dict[str, Distribution]:
        """What Optuna searches (empty: a baseline sweep, no search and no early stopping)."""
        return {k: v for k, v in self.params.items() if isinstance(v, Distribution) and v.kind != "grid"}

    def grid(self) -> dict[str, Distribution]:
        return {k: v for k, v in self.params.items() if isinstance(v, Distribution) and v.kind == "grid"}

    def fixed(self) -> dict[str, Any]:
        """Every trial parameter that is neither searched nor a grid: the file's value, else the default."""
        derived = {"c"} if "inflection" in self.params else set()  # c = b / inflection
        values = {name: s.default for name, s in TRIAL_PARAMS.items()
                  if name not in self.params and name not in derived and s.default is not None}
        values.update({k: v for k, v in self.params.items() if not isinstance(v, Distribution)})
        return {name: values[name] for name in TRIAL_PARAMS if name in values}

    @property
    def trial_count(self) -> int:
        """num_samples, times the size of every grid; with budget_halving, the runs at every budget."""
        if self.search.scheduler == "budget_halving":
            return sum(count for _, count in halving_plan(self))
        return self.search.num_samples * self.search.repeat * math.prod(len(d.values) for d in self.grid().values())

    def with_overrides(self, **changes) -> "SweepSpec":
        """The spec with the command line's overrides (None means: keep the file's value)."""
        search = replace(self.search, **{k: v for k, v in changes.items() if k in ("num_samples", "seed") and v is not None})
        tracking = replace(self.tracking, uri=changes["tracking_uri"]) if changes.get("tracking_uri") else self.tracking
        storage = changes.get("storage_path") or self.storage_path
        return replace(self, search=search, tracking=tracking, storage_path=storage)


def halving_plan(spec: SweepSpec) -> list[tuple[int, int]]:
    """budget_halving's (budget, configurations run at it), lowest budget first: budgets grace_period x
    reduction_factor^k below max_epochs, then max_epochs (27, 81, 240); every configuration at the first, then the
    best ceil(n / reduction_factor) of each."""
    s, full = spec.search, spec.training.max_epochs
    budgets, budget = [], s.grace_period
    while budget < full:
        budgets.append(budget)
        budget *= s.reduction_factor
    plan, count = [], s.num_samples
    for budget in budgets + [full]:
        plan.append((budget, count))
        count = math.ceil(count / s.reduction_factor)
    return plan


# Ray Tune's Repeater (search.repeat) numbers a configuration's runs 0, 1, ... under this config key
# (ray.tune.search.repeater.TRIAL_INDEX, named here so that reading a space needs no Ray): run i trains at seed + i.
REPEAT_INDEX = "__trial_index__"


def chosen_values(spec: SweepSpec, values: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters: the fixed ones, then its sampled ones, with `inflection` turned into c = b / inflection
    and a repeat's index into its seed."""
    chosen = {**spec.fixed(), **values}
    if REPEAT_INDEX in chosen:
        chosen["seed"] = chosen.get("seed", TRIAL_PARAMS["seed"].default) + int(chosen.pop(REPEAT_INDEX))
    if "inflection" in chosen:
        chosen["c"] = chosen["b"] / chosen.pop("inflection")
    return chosen


def _prefixed(prefix: str, config) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in flatten(config).items()}


def _unprefixed(prefix: str, params: dict[str, Any]) -> dict[str, Any]:
    return {k[len(prefix) + 1:]: v for k, v in params.items() if k.startswith(prefix + ".")}


# A trial's first result (after each start) carries its plan here, as TrialPlan.to_json().
PLAN_KEY = "plan"


@dataclass(frozen=True)
class TrialPlan:
    """One trial, resolved once, when it is set up: the typed configs it trains with, what it distils from and into,
    and (`params`) every value that shapes it. It travels with the trial's first result (PLAN_KEY) and its
    student file; tracking, the report and reproduce read it from there (`from_json`) instead of re-deriving it."""

    distill: DistillConfig
    train: TrainConfig
    student: str
    teacher: TeacherSpec
    data: DataSpec
    student_weights: str | None = None  # the given file (the trials read its copy in the sweep's storage)

    @classmethod
    def resolve(cls, spec: SweepSpec, values: dict[str, Any]) -> "TrialPlan":
        """From the trial's sampled values (plus the fixed ones and defaults); ValueError for an invalid mix."""
        chosen = chosen_values(spec, values)
        return cls(build(DistillConfig, chosen), build(TrainConfig, {**flatten(spec.training), **chosen}),
                   spec.student, spec.teacher, spec.data, spec.student_weights)

    @property
    def params(self) -> dict[str, Any]:
        """By public name: a trial run's MLflow params, the report's param.* columns, a student file's params. As
        JSON has them (a tuple is a list), so that every reader shows the same text."""
        params = {**flatten(self.distill), **flatten(self.train), "student": self.student,
                  **({"student_weights": self.student_weights} if self.student_weights else {}),
                  **_prefixed("teacher", self.teacher), **_prefixed("data", self.data)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}

    def to_json(self) -> str:
        return json.dumps(self.params)

    @classmethod
    def from_json(cls, text: str) -> "TrialPlan":
        params = json.loads(text)
        return cls(build(DistillConfig, params), build(TrainConfig, params), params["student"],
                   build(TeacherSpec, _unprefixed("teacher", params)), build(DataSpec, _unprefixed("data", params)),
                   params.get("student_weights"))


def sweep_params(spec: SweepSpec) -> dict[str, Any]:
    """The settings every trial shares, and the search's: the sweep's parent run's MLflow params."""
    return {"student": spec.student, **_prefixed("data", spec.data), **_prefixed("teacher", spec.teacher),
            **_prefixed("training", spec.training), **_prefixed("search", spec.search),
            **(_prefixed("confirm", spec.confirm) if spec.confirm else {}),
            **_prefixed("resources", spec.resources)}


# ------------------------------------------------------------------------------------------------ parsing


class _Reader:
    def __init__(self, file: Path | str):
        self.file = file

    def fail(self, path: str, problem: str):
        raise SpaceError(self.file, path, problem)

    def mapping(self, value, path: str, allowed: list[str]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping with keys from: {', '.join(allowed)}")
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(f"{path}.{key}" if path else str(key), f"unknown key{hint}; allowed: {', '.join(allowed)}")
        return value

    def value(self, declared: Setting, value, path: str):
        """A plain value of a declared setting, of its type and within its range."""
        if value is None and declared.kind is str and declared.default is not None:
            self.fail(path, "must not be empty")
        try:
            value = declared.coerce(value)
        except TypeError as error:
            self.fail(path, str(error))
        problem = None if value is None else declared.param.problem(value)
        if problem:
            self.fail(path, problem)
        return value

    def section(self, config_class: type, raw, path: str, searchable: bool | None = None):
        """A config from its section of the file; every key one of its declared settings."""
        declared = {s.name: s for s in settings(config_class, searchable=searchable)}
        raw = self.mapping(raw, path, list(declared))
        values = {name: self.value(declared[name], v, f"{path}.{name}") for name, v in raw.items()}
        try:
            return build(config_class, values)
        except ValueError as error:  # a rule across fields
            self.fail(path, str(error))

    def param(self, name: str, value, path: str):
        declared = TRIAL_PARAMS[name]
        if not isinstance(value, dict):
            return self.value(declared, value, path)
        self.mapping(value, path, list(DISTRIBUTIONS))
        if len(value) != 1:
            self.fail(path, f"give exactly one distribution: {', '.join(DISTRIBUTIONS)}")
        (dist, args), = value.items()
        if not isinstance(args, list) or not args:
            self.fail(f"{path}.{dist}", "must be a list: [low, high] or the choices")
        if dist in ("choice", "grid"):
            return Distribution(dist, tuple(self.value(declared, a, f"{path}.{dist}[{i}]") for i, a in enumerate(args)))
        if declared.kind is str:
            self.fail(f"{path}.{dist}", f"{name} is categorical: use choice")
        if len(args) != 2:
            self.fail(f"{path}.{dist}", f"must be [low, high], got {args}")
        number = Setting(name, (), int if dist == "int" else float, 0, Param(""))
        low, high = (self.value(number, a, f"{path}.{dist}") for a in args)
        if low >= high:
            self.fail(f"{path}.{dist}", f"low must be below high, got [{low}, {high}]")
        if dist == "loguniform" and low <= 0:
            self.fail(f"{path}.{dist}", f"loguniform needs low > 0, got {low}")
        if declared.param.problem(low) or declared.param.problem(high):
            self.fail(path, f"values must be {declared.param.range_text()}, got range [{low}, {high}]")
        return Distribution(dist, (low, high))


TOP_LEVEL = ["name", "data", "teacher", "student", "student_weights", "training", "params", "search", "confirm",
             "resources", "tracking", "storage_path"]


def parse_space(raw: Any, file: Path | str = "<space>") -> SweepSpec:
    reader = _Reader(file)
    raw = reader.mapping(raw, "", TOP_LEVEL)
    if "name" not in raw:
        reader.fail("name", "is required (the sweep's name: Ray experiment and MLflow experiment)")
    text = Setting("", (), str, "", Param(""))
    name = reader.value(text, raw["name"], "name")
    if not re.fullmatch(SWEEP_NAME, name):
        reader.fail("name", f"must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (it names "
                            f"folders, a Ray experiment and an MLflow experiment), got {name!r}")
    if name.startswith(TRIAL_DIR_PREFIX) or name == WORKER_SCRATCH_DIR:
        reader.fail("name", f"must not start with {TRIAL_DIR_PREFIX!r} nor be {WORKER_SCRATCH_DIR!r}: worker nodes may "
                            f"write in folders of those names (cluster/README.md), got {name!r}")
    data = reader.section(DataSpec, raw.get("data"), "data")
    try:
        data = replace(data, source=absolute_source(data.source))
    except DataSourceError as error:
        reader.fail("data.source", str(error))
    teacher = reader.section(TeacherSpec, raw.get("teacher"), "teacher")
    if teacher.checkpoint and not Path(teacher.checkpoint).expanduser().exists():
        reader.fail("teacher.checkpoint", f"file {teacher.checkpoint} does not exist")
    student = reader.value(Setting("student", (), str, "resnet8", Param("", choices=MODEL_NAMES)),
                           raw.get("student", "resnet8"), "student")
    student_weights = raw.get("student_weights")
    if student_weights is not None:
        student_weights = reader.value(text, student_weights, "student_weights")
        if not Path(student_weights).expanduser().is_file():
            reader.fail("student_weights", f"file {student_weights} does not exist")
        student_weights = str(Path(student_weights).expanduser().resolve())
    training = reader.section(TrainConfig, raw.get("training"), "training", searchable=False)
    search = reader.section(SearchSettings, raw.get("search"), "search")
    if search.grace_period > training.max_epochs:
        reader.fail("search.grace_period", f"must be <= training.max_epochs ({training.max_epochs})")
    if search.scheduler == "budget_halving" and search.grace_period >= training.max_epochs:
        reader.fail("search.grace_period", f"is budget_halving's first budget: must be below training.max_epochs "
                                           f"({training.max_epochs}), got {search.grace_period}")
    resources = reader.section(Resources, raw.get("resources"), "resources")
    tracking = reader.section(TrackingSpec, raw.get("tracking"), "tracking")
    params_raw = reader.mapping(raw.get("params"), "params", list(TRIAL_PARAMS))
    params = {k: reader.param(k, v, f"params.{k}") for k, v in params_raw.items()}
    _check_beta_bounds(reader, params)
    _check_search(reader, params, search)
    _check_repeat(reader, params, search, training)
    confirm = _confirm(reader, raw["confirm"], params, search, training) if "confirm" in raw else None
    storage = reader.value(text, raw.get("storage_path", SweepSpec.storage_path), "storage_path")
    return SweepSpec(name, str(file), data, teacher, student, student_weights, training, params, search, confirm,
                     resources, tracking, storage)


def _confirm(reader: _Reader, raw, params: dict, search: SearchSettings, training: TrainConfig) -> ConfirmSettings:
    raw = dict(reader.mapping(raw, "confirm", ["top_k", "seeds", "baselines"]))
    methods = TRIAL_PARAMS["method"].param.choices
    baselines = raw.pop("baselines", list(ConfirmSettings.baselines))
    if not isinstance(baselines, list) or len(set(map(str, baselines))) != len(baselines):
        reader.fail("confirm.baselines", f"must be a list of distinct methods from: {', '.join(methods)}")
    for i, method in enumerate(baselines):
        if method not in methods:
            reader.fail(f"confirm.baselines[{i}]", f"must be one of {', '.join(methods)}, got {method!r}")
    confirm = replace(reader.section(ConfirmSettings, raw, "confirm"), baselines=tuple(baselines))
    _check_seeds_of_its_own(reader, params, "confirm", "confirms")
    if confirm.top_k > search.num_samples:
        reader.fail("confirm.top_k", f"must be <= search.num_samples ({search.num_samples}), got {confirm.top_k}")
    if search.scheduler == "budget_halving":
        at_full = halving_plan(SweepSpec("", "", training=training, params=params, search=search))[-1][1]
        if confirm.top_k > at_full:
            reader.fail("confirm.top_k", f"budget halving runs {at_full} configuration(s) at the full budget "
                                         f"(search.num_samples {search.num_samples}, reduction_factor "
                                         f"{search.reduction_factor}): confirm at most those, got {confirm.top_k}")
    return confirm


def _check_beta_bounds(reader: _Reader, params: dict) -> None:
    """Every (beta_min, beta_max) a trial can sample must make a valid schedule: checked on the ranges."""
    def bounds(name):
        value = params.get(name, TRIAL_PARAMS[name].default)
        return value.bounds() if isinstance(value, Distribution) else (value, value)

    (_, min_high), (max_low, _) = bounds("beta_min"), bounds("beta_max")
    if min_high >= max_low:
        reader.fail("params.beta_min", f"every beta_min must be below every beta_max: the highest beta_min "
                                       f"({min_high}) must be below the lowest beta_max ({max_low})")


def _check_search(reader: _Reader, params: dict, search: SearchSettings) -> None:
    searched = [k for k, v in params.items() if isinstance(v, Distribution) and v.kind != "grid"]
    grids = [k for k, v in params.items() if isinstance(v, Distribution) and v.kind == "grid"]
    if searched and grids:
        reader.fail(f"params.{grids[0]}", f"a grid cannot be mixed with searched values ({', '.join(searched)}): "
                                          f"Optuna samples, it cannot walk a grid; fix the grid's values or search it")
    if "inflection" in params:
        if "c" in params:
            reader.fail("params.inflection", "give c or inflection (c = b / inflection), not both")
    if not searched and search.scheduler == "budget_halving":
        reader.fail("search.scheduler", "budget_halving chooses among searched configurations: this space searches "
                                        "nothing (a baseline runs every trial to max_epochs)")
    if search.scheduler == "budget_halving" and search.full_budget_trials:
        reader.fail("search.full_budget_trials", "is ASHA's: budget halving stops no run early (its fidelity across "
                                                 "budgets: benchmarks/fidelity_study.py, docs/method.md)")
    if not searched and search.full_budget_trials:
        reader.fail("search.full_budget_trials", "a sweep that searches nothing stops no trial early already")
    if 0 < search.full_budget_trials < 3:
        reader.fail("search.full_budget_trials", f"must be 0 or at least 3 (a rank correlation of fewer trials "
                                                 f"says nothing), got {search.full_budget_trials}")
    if search.full_budget_trials > search.num_samples:
        reader.fail("search.full_budget_trials", f"must be <= search.num_samples ({search.num_samples})")


def _check_seeds_of_its_own(reader: _Reader, params: dict, path: str, does: str) -> None:
    """`path` runs the search's configurations at seeds of its own: there must be a search, not of seed."""
    searched = [k for k, v in params.items() if isinstance(v, Distribution) and v.kind != "grid"]
    if not searched:
        reader.fail(path, f"{does} the configurations a search proposes: this space searches nothing (a baseline "
                          f"sweep gives its seeds as a grid)")
    if "seed" in searched:
        reader.fail(path, "runs configurations at seeds of its own: the search must not search seed")


def _check_repeat(reader: _Reader, params: dict, search: SearchSettings, training: TrainConfig) -> None:
    """search.repeat, refused where a mean over seeds cannot be what the search is told."""
    if search.repeat == 1:
        return
    _check_seeds_of_its_own(reader, params, "search.repeat", "repeats")
    if search.scheduler == "budget_halving":
        reader.fail("search.repeat", "budget halving promotes single runs by their own result at each budget; a mean "
                                     "over seeds needs every seed's end: use scheduler asha with grace_period = "
                                     "max_epochs, or a confirm stage")
    if search.grace_period < training.max_epochs:
        reader.fail("search.repeat", f"ASHA would stop a configuration's seeds one by one, and their mean would mix "
                                     f"budgets (Ray Tune's Repeater is not for early stopping): set search.grace_period "
                                     f"to training.max_epochs ({training.max_epochs}) so that ASHA stops nothing, or "
                                     f"use a confirm stage")
    if search.full_budget_trials:
        reader.fail("search.full_budget_trials", "with search.repeat no trial is stopped early already")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (not: the last one wins)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_space(path: Path | str) -> SweepSpec:
    return parse_space(read_yaml(path), path)


def read_yaml(path: Path | str) -> Any:
    """A YAML file's contents; any problem reading it is a SpaceError naming the file."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise SpaceError(path, "file", "does not exist") from None
    except IsADirectoryError:
        raise SpaceError(path, "file", "is a directory, not a YAML file") from None
    except UnicodeDecodeError as error:
        raise SpaceError(path, "file", f"is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise SpaceError(path, "file", f"cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise SpaceError(path, "file", f"is not valid YAML: {error}".replace("\n", " ")) from None
    return raw


def tune_space(spec: SweepSpec) -> dict:
    """Ray Tune's param_space: the searched distributions and the grids (fixed values are applied in the trial)."""
    from ray import tune

    build = {"uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
             "int": lambda v: tune.randint(v[0], v[1] + 1), "choice": lambda v: tune.choice(list(v)),
             "grid": lambda v: tune.grid_search(list(v))}
    return {name: build[d.kind](d.values) for name, d in {**spec.searched(), **spec.grid()}.items()}
