"""digits: scikit-learn's bundled 8x8 handwritten digits, resized to 32x32 RGB (the offline default)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import IMAGE_SIZE, DecodedSource, ImageArrays, SourceKind

# digits has no official test split: a fixed stratified 20% is held out as its test split (seed independent
# of the user's validation seed, so the test set never moves).
DIGITS_TEST_FRACTION = 0.2


class Digits(SourceKind):
    usage = "digits"

    def fingerprint(self, source: str, location: str, root: Path) -> list[str]:
        import sklearn

        return [sklearn.__version__]

    def check(self, source: str, location: str) -> tuple[np.ndarray | None, list[str]]:
        from sklearn.datasets import load_digits

        labels = load_digits().target.astype(np.int64)
        return labels[self.split(labels)[0]], []

    @staticmethod
    def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.model_selection import train_test_split

        train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION,
                                               stratify=labels, random_state=0)
        return np.sort(train_idx), np.sort(test_idx)

    def decode(self, source: str, location: str, root: Path, size: int = IMAGE_SIZE) -> DecodedSource:
        from sklearn.datasets import load_digits

        digits = load_digits()
        small = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # N x 1 x 8 x 8 in [0, 1]
        large = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
        images = (large.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).numpy()
        everything = ImageArrays(images, digits.target.astype(np.int64))
        train_idx, test_idx = self.split(everything.labels)
        names = tuple(str(int(n)) for n in digits.target_names)
        return DecodedSource(everything.subset(train_idx), everything.subset(test_idx), names)
