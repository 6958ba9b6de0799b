"""Distillation methods: one file per method (mdistiller's shape), registered in METHODS by one line.

The training loop backpropagates a step's ``total`` and logs its ``terms`` (unweighted) and ``beta``. A method's
class says what it needs (base.Distiller: a teacher, the beta(t) schedule, a Config of its own); nothing outside
its file asks for a method by name. DistillConfig holds what methods share (the method, tau, the schedule) and each
registered method's own Config under the method's name, all flat by public name in space files, flags and MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models import SplitNet
from ..params import check, setting
from ..schedules import BetaSchedule
from .base import Distiller, StepOutput
from .dkd import DecoupledKD, DKDConfig
from .gompertz import GompertzConfig, GompertzKD, LossWeights
from .kd import KDConfig, VanillaKD
from .student import StudentOnly

# The registry: name -> method. A new method is its file, its line here and (with settings) its Config's line below.
METHODS: dict[str, type[Distiller]] = {"student": StudentOnly, "kd": VanillaKD, "dkd": DecoupledKD,
                                        "gompertz": GompertzKD}


@dataclass(frozen=True)
class DistillConfig:
    method: str = setting("gompertz", "; ".join(f"{name}: {m.summary}" for name, m in METHODS.items()),
                          choices=tuple(METHODS), searchable=True)
    tau: float = setting(4.0, "KD temperature", low=0, above_low=True, high=100, searchable=True)
    schedule: BetaSchedule = field(default_factory=BetaSchedule)  # of the methods whose uses_schedule is True
    kd: KDConfig = field(default_factory=KDConfig)
    dkd: DKDConfig = field(default_factory=DKDConfig)
    gompertz: GompertzConfig = field(default_factory=GompertzConfig)

    def __post_init__(self):
        check(self)


def distillation_method(name: str) -> type[Distiller]:
    return METHODS[name]


def read_by_method(values: dict) -> dict:
    """`values` (by public name, with a `method`) without the settings of other methods: a gompertz trial's dkd_beta.
    Kept: what the method reads (the shared settings, the schedule's where it uses one, its own Config's) and
    everything that is not a distillation setting (lr, seed, ...)."""
    from ..params import settings

    method = METHODS[values["method"]]
    read = {s.name for s in settings(DistillConfig) if len(s.path) == 1}
    read |= {s.name for s in settings(BetaSchedule)} if method.uses_schedule else set()
    read |= {s.name for s in settings(method.Config)} if method.Config else set()
    distill = {s.name for s in settings(DistillConfig)}
    return {k: v for k, v in values.items() if k in read or k not in distill}


def build_distiller(config: DistillConfig, student: SplitNet, teacher: SplitNet | None) -> Distiller:
    method = METHODS[config.method]
    if method.needs_teacher and teacher is None:
        raise ValueError(f"method {config.method!r} needs a teacher")
    return method(student, teacher, config)


__all__ = ["METHODS", "DKDConfig", "DecoupledKD", "DistillConfig", "Distiller", "GompertzConfig", "GompertzKD",
           "KDConfig", "LossWeights", "StepOutput", "StudentOnly", "VanillaKD", "build_distiller",
           "distillation_method", "read_by_method"]
