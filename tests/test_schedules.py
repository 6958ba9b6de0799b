import math

import numpy as np
import pytest

from gkd_tune.core.schedules import BetaSchedule, gompertz_beta

GRID = np.linspace(0, 1, 1001)


def test_gompertz_starts_near_beta_min_and_rises_monotonically_within_bounds():
    schedule = BetaSchedule("gompertz", beta_min=0.1, beta_max=1.0, b=3.0, c=6.0)
    values = np.array([schedule(t) for t in GRID])
    assert values[0] == pytest.approx(0.1, abs=1e-6)
    assert np.all(np.diff(values) > 0)
    assert values.min() >= 0.1 and values.max() <= 1.0
    assert schedule(1.0) == pytest.approx(0.1 + 0.9 * math.exp(-math.exp(-3.0)))


@pytest.mark.parametrize("b, c", [(3.0, 6.0), (2.0, 8.0), (4.0, 5.0)])
def test_inflection_is_at_b_over_c(b, c):
    values = np.array([gompertz_beta(t, 0.1, 1.0, b, c) for t in GRID])
    steepest = GRID[np.argmax(np.diff(values))]
    assert steepest == pytest.approx(b / c, abs=2e-3)


def test_decay_is_the_mirror_image():
    rise, fall = BetaSchedule("gompertz", 0.2, 0.8), BetaSchedule("gompertz_decay", 0.2, 0.8)
    falling = np.array([fall(t) for t in GRID])
    assert np.all(np.diff(falling) < 0)
    for t in GRID[::50]:
        assert rise(t) + fall(t) == pytest.approx(1.0)


@pytest.mark.parametrize("kind, start, middle, end", [
    ("constant", 1.0, 1.0, 1.0), ("linear", 0.1, 0.55, 1.0), ("cosine", 0.1, 0.55, 1.0)])
def test_baselines(kind, start, middle, end):
    schedule = BetaSchedule(kind, 0.1, 1.0)
    assert (schedule(0.0), schedule(0.5), schedule(1.0)) == pytest.approx((start, middle, end))


def test_progress_is_clamped_to_the_unit_interval():
    schedule = BetaSchedule()
    assert schedule(-1.0) == schedule(0.0) and schedule(2.0) == schedule(1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta_min=1.0, beta_max=1.0), "beta_min must be below beta_max"),
    (dict(beta_min=0.9, beta_max=0.1), "beta_min must be below beta_max"),
    (dict(beta_min=-0.1, beta_max=1.0), r"beta_min must be \[0, 100\], got -0.1"),
    (dict(kind="step"), "schedule must be one of gompertz, gompertz_decay, constant, linear, cosine, got 'step'"),
    (dict(c=0.0), r"c must be \(0, 500\], got 0.0"),
])
def test_invalid_schedules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BetaSchedule(**kwargs)
