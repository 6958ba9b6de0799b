"""The distillation weight beta(t) over training progress t in [0, 1].

t = (epoch + step / steps_per_epoch) / planned_epochs, updated every step. The planned number of epochs is the
full budget (ASHA's max_t), so b and c mean the same at any budget: the Gompertz inflection is at t* = b / c.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .params import check, setting

SCHEDULE_KINDS = ("gompertz", "gompertz_decay", "constant", "linear", "cosine")


def gompertz_beta(t: float, beta_min: float, beta_max: float, b: float, c: float) -> float:
    """Eq. 6: beta_min + (beta_max - beta_min) * exp(-exp(b - c t)): slow start, fast rise, saturation."""
    return beta_min + (beta_max - beta_min) * math.exp(-math.exp(b - c * t))


@dataclass(frozen=True)
class BetaSchedule:
    """beta(t) for one of SCHEDULE_KINDS.

    gompertz        eq. 6, rising from ~beta_min to ~beta_max with inflection at t = b / c
    gompertz_decay  its mirror image in value: falling from ~beta_max to ~beta_min, inflection at b / c
    constant        beta_max throughout
    linear          beta_min -> beta_max
    cosine          beta_min -> beta_max along half a cosine wave
    """

    kind: str = setting("gompertz", "beta(t) shape", choices=SCHEDULE_KINDS, searchable=True, name="schedule")
    beta_min: float = setting(0.1, "beta's lower bound", low=0, high=100, searchable=True)
    beta_max: float = setting(1.0, "beta's upper bound", low=0, high=100, searchable=True)
    # b > 0: at b <= 0 beta(0) is already most of the way up (b = -1: 72%), the curve has no rise to time
    b: float = setting(3.0, "Gompertz offset (inflection at t = b/c)", low=0, above_low=True, high=50,
                       searchable=True)
    c: float = setting(6.0, "Gompertz rate", low=0, above_low=True, high=500, searchable=True)

    def __post_init__(self):
        check(self)
        if self.beta_min >= self.beta_max:
            raise ValueError(f"beta_min must be below beta_max, got beta_min={self.beta_min} >= beta_max={self.beta_max}")

    def __call__(self, t: float) -> float:
        t = min(max(t, 0.0), 1.0)
        low, high = self.beta_min, self.beta_max
        if self.kind == "gompertz":
            return gompertz_beta(t, low, high, self.b, self.c)
        if self.kind == "gompertz_decay":
            return high + low - gompertz_beta(t, low, high, self.b, self.c)
        if self.kind == "constant":
            return high
        if self.kind == "linear":
            return low + (high - low) * t
        return low + (high - low) * (1 - math.cos(math.pi * t)) / 2
