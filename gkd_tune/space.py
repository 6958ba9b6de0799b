"""Search-space files: one YAML describes a whole sweep; parsed once into validated dataclasses.

Every error names the file, the field path and what is allowed; unknown keys are errors ("did you mean").
See README.md ("Search-space files") for the format and search_spaces/*.yaml for examples.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .data import DataSourceError, absolute_source
from .distill import METHODS, DistillConfig, LossWeights
from .loop import COMPILE_MODES, LR_SCHEDULES, TrainConfig
from .losses import FEATURE_MODES, SINKHORN_SOLVERS
from .models import MODELS
from .schedules import SCHEDULE_KINDS, BetaSchedule
from .teacher import TeacherRecipe

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
METRICS = ("val_acc", "val_loss")


class SpaceError(ValueError):
    def __init__(self, file: Path | str, path: str, problem: str):
        super().__init__(f"{file}: {path}: {problem}")


@dataclass(frozen=True)
class Distribution:
    kind: str  # one of DISTRIBUTIONS
    values: tuple  # (low, high) or the choices

    def bounds(self) -> tuple[float, float]:
        return (min(self.values), max(self.values))


# Hyperparameters of a trial: name -> (default, allowed type, allowed values or None). Each can be fixed (a plain
# value) or searched (a distribution).
PARAMS: dict[str, tuple[Any, type, tuple | None]] = {
    "method": ("gompertz", str, METHODS),
    "b": (BetaSchedule.b, float, None),
    "c": (BetaSchedule.c, float, None),
    "beta_min": (BetaSchedule.beta_min, float, None),
    "beta_max": (BetaSchedule.beta_max, float, None),
    "schedule": (BetaSchedule.kind, str, SCHEDULE_KINDS),
    "r": (DistillConfig.r, float, None),
    "tau": (DistillConfig.tau, float, None),
    "alpha": (DistillConfig.alpha, float, None),
    "feature_mode": (DistillConfig.feature_mode, str, FEATURE_MODES),
    "sinkhorn_solver": (DistillConfig.sinkhorn_solver, str, SINKHORN_SOLVERS),
    "w_wasserstein": (LossWeights.wasserstein, float, None),
    "w_grad": (LossWeights.grad, float, None),
    "w_kd": (LossWeights.kd, float, None),
    "lr": (TrainConfig.lr, float, None),
    "weight_decay": (TrainConfig.weight_decay, float, None),
}


@dataclass(frozen=True)
class DataSpec:
    source: str = "digits"
    val_fraction: float = 0.1


@dataclass(frozen=True)
class TeacherSpec:
    arch: str = "resnet20"
    checkpoint: str | None = None
    epochs: int = TeacherRecipe.epochs
    batch_size: int = TeacherRecipe.batch_size
    lr: float = TeacherRecipe.lr
    weight_decay: float = TeacherRecipe.weight_decay
    lr_schedule: str = TeacherRecipe.lr_schedule
    seed: int = TeacherRecipe.seed

    def recipe(self) -> TeacherRecipe:
        return TeacherRecipe(self.epochs, self.batch_size, self.lr, self.weight_decay, self.lr_schedule, self.seed)


@dataclass(frozen=True)
class TrainingSpec:
    max_epochs: int = 10  # the planned budget: ASHA's max_t and the Gompertz time scale
    batch_size: int = TrainConfig.batch_size
    lr_schedule: str = TrainConfig.lr_schedule
    seed: int = 0
    compile: str = TrainConfig.compile  # see loop.COMPILE_MODES


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 8
    max_concurrent_trials: int = 2
    seed: int = 0
    grace_period: int = 1
    reduction_factor: int = 2
    metric: str = "val_acc"
    max_failures: int = 2


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class TrackingSpec:
    uri: str = "sqlite:///mlflow.db"  # MLflow's own default: `mlflow ui` in the same folder shows the sweep
    experiment: str | None = None  # default: the sweep's name


@dataclass(frozen=True)
class SweepSpec:
    name: str
    file: str
    data: DataSpec = field(default_factory=DataSpec)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    student: str = "resnet8"
    training: TrainingSpec = field(default_factory=TrainingSpec)
    params: dict[str, Any] = field(default_factory=dict)  # name -> fixed value or Distribution
    search: SearchSettings = field(default_factory=SearchSettings)
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
        return {k: v for k, v in self.params.items() if isinstance(v, Distribution)}

    def fixed(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if not isinstance(v, Distribution)}

    def with_overrides(self, **changes) -> "SweepSpec":
        """The spec with the command line's overrides (None means: keep the file's value)."""
        search = replace(self.search, **{k: v for k, v in changes.items() if k in ("num_samples", "seed") and v is not None})
        tracking = replace(self.tracking, uri=changes["tracking_uri"]) if changes.get("tracking_uri") else self.tracking
        storage = changes.get("storage_path") or self.storage_path
        return replace(self, search=search, tracking=tracking, storage_path=storage)


def trial_configs(spec: SweepSpec, values: dict[str, Any]) -> tuple[DistillConfig, TrainConfig]:
    """The typed configs of one trial from the sampled values (plus the fixed ones and defaults)."""
    p = {name: default for name, (default, _, _) in PARAMS.items()}
    p.update(spec.fixed())
    p.update(values)
    distill = DistillConfig(
        method=p["method"], tau=p["tau"], alpha=p["alpha"], r=p["r"], feature_mode=p["feature_mode"],
        sinkhorn_solver=p["sinkhorn_solver"], weights=LossWeights(p["w_wasserstein"], p["w_grad"], p["w_kd"]),
        schedule=BetaSchedule(p["schedule"], p["beta_min"], p["beta_max"], p["b"], p["c"]),
    )
    train = TrainConfig(epochs=spec.training.max_epochs, batch_size=spec.training.batch_size, lr=p["lr"],
                        weight_decay=p["weight_decay"], lr_schedule=spec.training.lr_schedule,
                        seed=spec.training.seed, compile=spec.training.compile)
    return distill, train


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

    def scalar(self, value, path: str, kind: type, choices=None, low=None, high=None, open_low=False):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is str and value is None:
            self.fail(path, "must not be empty")
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            self.fail(path, f"must be {'a number' if kind is float else 'an integer' if kind is int else 'a string'}, "
                            f"got {value!r}")
        if choices is not None and value not in choices:
            self.fail(path, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        if low is not None and (value <= low if open_low else value < low):
            self.fail(path, f"must be {'>' if open_low else '>='} {low}, got {value}")
        if high is not None and value > high:
            self.fail(path, f"must be <= {high}, got {value}")
        return value

    def dataclass(self, cls, value, path: str, checks: dict | None = None):
        names = [f.name for f in fields(cls)]
        value = self.mapping(value, path, names)
        checks = checks or {}
        out = {}
        for f in fields(cls):
            if f.name in value:
                kind = {"float": float, "int": int, "str": str, "str | None": str, "float | None": float}[str(f.type)]
                out[f.name] = self.scalar(value[f.name], f"{path}.{f.name}", kind, **checks.get(f.name, {}))
        return cls(**out)

    def param(self, name: str, value, path: str):
        _, kind, choices = PARAMS[name]
        if not isinstance(value, dict):
            return self.scalar(value, path, kind, choices)
        self.mapping(value, path, list(DISTRIBUTIONS))
        if len(value) != 1:
            self.fail(path, f"give exactly one distribution: {', '.join(DISTRIBUTIONS)}")
        (dist, args), = value.items()
        if not isinstance(args, list) or not args:
            self.fail(f"{path}.{dist}", "must be a list: [low, high] or the choices")
        if dist == "choice":
            return Distribution("choice", tuple(self.scalar(a, f"{path}.choice[{i}]", kind, choices)
                                                for i, a in enumerate(args)))
        if kind is str:
            self.fail(f"{path}.{dist}", f"{name} is categorical: use choice")
        if len(args) != 2:
            self.fail(f"{path}.{dist}", f"must be [low, high], got {args}")
        number = int if dist == "int" else float
        low, high = (self.scalar(a, f"{path}.{dist}", number) for a in args)
        if low >= high:
            self.fail(f"{path}.{dist}", f"low must be below high, got [{low}, {high}]")
        if dist == "loguniform" and low <= 0:
            self.fail(f"{path}.{dist}", f"loguniform needs low > 0, got {low}")
        return Distribution(dist, (low, high))


def parse_space(raw: Any, file: Path | str = "<space>") -> SweepSpec:
    reader = _Reader(file)
    top = ["name", "data", "teacher", "student", "training", "params", "search", "resources", "tracking",
           "storage_path"]
    raw = reader.mapping(raw, "", top)
    if "name" not in raw:
        reader.fail("name", "is required (the sweep's name: Ray experiment and MLflow experiment)")
    name = reader.scalar(raw["name"], "name", str)
    models = tuple(MODELS)
    data = reader.dataclass(DataSpec, raw.get("data"), "data", {"val_fraction": dict(low=0.0, high=0.9, open_low=True)})
    try:
        data = replace(data, source=absolute_source(data.source))
    except DataSourceError as error:
        reader.fail("data.source", str(error))
    teacher = reader.dataclass(TeacherSpec, raw.get("teacher"), "teacher", {
        "arch": dict(choices=models), "epochs": dict(low=1), "batch_size": dict(low=1), "lr": dict(low=0, open_low=True),
        "lr_schedule": dict(choices=LR_SCHEDULES)})
    if teacher.checkpoint and not Path(teacher.checkpoint).expanduser().exists():
        reader.fail("teacher.checkpoint", f"file {teacher.checkpoint} does not exist")
    student = reader.scalar(raw.get("student", "resnet8"), "student", str, models)
    training = reader.dataclass(TrainingSpec, raw.get("training"), "training", {
        "max_epochs": dict(low=1), "batch_size": dict(low=1), "lr_schedule": dict(choices=LR_SCHEDULES),
        "compile": dict(choices=COMPILE_MODES)})
    search = reader.dataclass(SearchSettings, raw.get("search"), "search", {
        "num_samples": dict(low=1), "max_concurrent_trials": dict(low=1), "grace_period": dict(low=1),
        "reduction_factor": dict(low=2), "metric": dict(choices=METRICS), "max_failures": dict(low=0)})
    if search.grace_period > training.max_epochs:
        reader.fail("search.grace_period", f"must be <= training.max_epochs ({training.max_epochs})")
    resources = reader.dataclass(Resources, raw.get("resources"), "resources",
                                 {"cpu": dict(low=0, open_low=True), "gpu": dict(low=0)})
    tracking = reader.dataclass(TrackingSpec, raw.get("tracking"), "tracking")
    params_raw = reader.mapping(raw.get("params"), "params", list(PARAMS))
    params = {k: reader.param(k, v, f"params.{k}") for k, v in params_raw.items()}
    _check_params(reader, params)
    storage = reader.scalar(raw.get("storage_path", SweepSpec.storage_path), "storage_path", str)
    return SweepSpec(name, str(file), data, teacher, student, training, params, search, resources, tracking, storage)


def _check_params(reader: _Reader, params: dict) -> None:
    """Every value a trial can sample must make a valid trial: checked on the ranges, nothing swapped later."""
    def bounds(name):
        value = params.get(name, PARAMS[name][0])
        return value.bounds() if isinstance(value, Distribution) else (value, value)

    for name, low_limit, high_limit in (("r", 0, 1), ("alpha", 0, 1), ("beta_min", 0, None), ("beta_max", 0, None),
                                        ("tau", 0, None), ("c", 0, None), ("lr", 0, None),
                                        ("w_wasserstein", 0, None), ("w_grad", 0, None), ("w_kd", 0, None)):
        low, high = bounds(name)
        strict = name in ("tau", "c", "lr")
        if low < low_limit or (strict and low <= low_limit) or (high_limit is not None and high > high_limit):
            allowed = f"[{low_limit}, {high_limit}]" if high_limit is not None else f"{'>' if strict else '>='} {low_limit}"
            reader.fail(f"params.{name}", f"values must be {allowed}, got range [{low}, {high}]")
    (_, min_high), (max_low, _) = bounds("beta_min"), bounds("beta_max")
    if min_high >= max_low:
        reader.fail("params.beta_min", f"every beta_min must be below every beta_max: the highest beta_min "
                                       f"({min_high}) must be below the lowest beta_max ({max_low})")


def load_space(path: Path | str) -> SweepSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpaceError(path, "file", "does not exist") from None
    except yaml.YAMLError as error:
        raise SpaceError(path, "file", f"is not valid YAML: {error}".replace("\n", " ")) from None
    return parse_space(raw, path)


def tune_space(spec: SweepSpec) -> dict:
    """Ray Tune's param_space: the searched distributions (fixed values are applied in the trial)."""
    from ray import tune

    build = {"uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
             "int": lambda v: tune.randint(v[0], v[1] + 1), "choice": lambda v: tune.choice(list(v))}
    return {name: build[d.kind](d.values) for name, d in spec.searched().items()}
