"""How far a measured accuracy can be trusted: the binomial noise of a split, the paired comparison of two runs on
the same images (McNemar's exact test), and a t-interval over seeds. Plain numbers in, plain numbers out.

A run's per-image correctness travels as text (`pack_correct`): a result, an MLflow tag and a parquet cell hold it,
one bit per image (5,000 validation images take 836 characters).
"""

from __future__ import annotations

import base64
import math
import statistics
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
SIGNIFICANCE = 0.05


def binomial_se(accuracy: float, n: int) -> float:
    """The standard error of an accuracy measured on n images."""
    return math.sqrt(accuracy * (1 - accuracy) / n)


def resolvable_difference(accuracy: float, n: int) -> float:
    """The smallest difference between two independent runs' accuracies near `accuracy`, each on n images, that a
    95% test tells from noise: 1.96 x the standard error of the difference."""
    return Z95 * math.sqrt(2) * binomial_se(accuracy, n)


def pack_correct(correct) -> str:
    """Per-image correctness (bools, in the split's order) as base64 text; `unpack_correct` reverses it."""
    flags = np.asarray(correct, dtype=bool)
    return f"{len(flags)}:" + base64.b64encode(np.packbits(flags).tobytes()).decode()


def unpack_correct(text: str) -> np.ndarray:
    count, _, packed = text.partition(":")
    bits = np.unpackbits(np.frombuffer(base64.b64decode(packed), dtype=np.uint8))
    return bits[: int(count)].astype(bool)


@dataclass(frozen=True)
class PairedComparison:
    """Run A against run B on the same n images: A right where B is wrong (a_only), the reverse (b_only), the
    difference of accuracies with its 95% interval, and McNemar's exact two-sided p-value (the binomial test of
    a_only among the discordant images)."""

    n: int
    a_only: int
    b_only: int

    @classmethod
    def of(cls, a_correct: np.ndarray, b_correct: np.ndarray) -> "PairedComparison":
        if len(a_correct) != len(b_correct):
            raise ValueError(f"the runs were measured on different images ({len(a_correct)} and {len(b_correct)})")
        return cls(len(a_correct), int(np.sum(a_correct & ~b_correct)), int(np.sum(~a_correct & b_correct)))

    @property
    def difference(self) -> float:
        return (self.a_only - self.b_only) / self.n

    @property
    def interval(self) -> tuple[float, float]:
        """The Wald interval of a paired difference of proportions: its variance is ((a+b) - (a-b)^2 / n) / n^2."""
        discordant, net = self.a_only + self.b_only, self.a_only - self.b_only
        half = Z95 * math.sqrt(max(discordant - net * net / self.n, 0.0)) / self.n
        return self.difference - half, self.difference + half

    @property
    def p_value(self) -> float:
        discordant = self.a_only + self.b_only
        if discordant == 0:
            return 1.0
        from scipy.stats import binomtest

        return float(binomtest(self.a_only, discordant, 0.5).pvalue)

    @property
    def distinguishable(self) -> bool:
        return self.p_value < SIGNIFICANCE

    def text(self) -> str:
        low, high = self.interval
        verdict = "distinguishable" if self.distinguishable else "not distinguishable"
        return (f"{self.difference:+.4f} [{low:+.4f}, {high:+.4f}] on {self.n} images; they disagree on "
                f"{self.a_only + self.b_only} ({self.a_only} vs {self.b_only}), McNemar p = {self.p_value:.2g}: "
                f"{verdict}")


@dataclass(frozen=True)
class Difference:
    """A mean over seeds (of a value, or of a paired difference) with its 95% t-interval (NaN bounds for one)."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Difference | None":
        if not values:
            return None
        mean = statistics.fmean(values)
        if len(values) < 2:
            return cls(mean, math.nan, math.nan, 1)
        from scipy.stats import t

        half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
        return cls(mean, mean - half, mean + half, len(values))

    def text(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.4f} (n=1, no interval)"
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}] n={self.n}"

    def value_text(self) -> str:
        """As a level, not a difference: no sign."""
        if self.n < 2:
            return f"{self.mean:.4f} (n=1, no interval)"
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}] n={self.n}"

    @property
    def above_zero(self) -> bool:
        return self.n >= 2 and self.low > 0

    @property
    def below_zero(self) -> bool:
        return self.n >= 2 and self.high < 0
