"""Splits of a source: train, a stratified validation share of train, and the source's own test split (kept apart)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..params import check, setting
from .cache import load_source
from .sources import IMAGE_SIZE, SOURCES, DataSourceError, ImageArrays, check_two_labels, parse_source


@dataclass(frozen=True)
class DataSpec:
    """Which data a run trains on: a source and the share of its training set held out for validation."""

    source: str = setting("digits", "data source: cifar10, cifar100, parquet:PATH, imagefolder:DIR or digits",
                          aliases=("dataset",))
    val_fraction: float = setting(0.1, "stratified validation share of the training set", low=0, high=0.9,
                                  above_low=True)
    image_size: int = setting(IMAGE_SIZE, "images are resized to image_size x image_size when decoded (the zoo's "
                              "CIFAR nets are built for 32; a timm or torchvision net may want more)", low=8, high=1024)

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class Splits:
    """Train / validation (stratified, from the training set) / test (kept apart; may be absent)."""

    source: str
    train: ImageArrays
    val: ImageArrays
    test: ImageArrays | None
    class_names: tuple[str, ...]
    cache_path: Path

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def channel_stats(self, chunk: int = 2048) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images on the [0, 1] scale, for normalisation.

        Float64 sums over chunks of the uint8 images: about 25 MB at a time instead of a float copy of the whole
        split (553 MB for CIFAR's 45,000 training images).
        """
        images = self.train.images
        total, squares = np.zeros(images.shape[1]), np.zeros(images.shape[1])
        for start in range(0, len(images), chunk):
            pixels = images[start : start + chunk].astype(np.float32)
            total += pixels.sum(axis=(0, 2, 3), dtype=np.float64)
            squares += np.square(pixels).sum(axis=(0, 2, 3), dtype=np.float64)
        count = images.shape[0] * images.shape[2] * images.shape[3]
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0)) / 255.0
        return tuple(float(m) for m in mean / 255.0), tuple(float(s) for s in std.clip(min=1e-3))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out): held_out has `fraction` of every class, chosen with a fixed seed."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    kept, held_out = train_test_split(indices, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(kept), np.sort(held_out)


def check_source(source: str, val_fraction: float) -> list[str]:
    """What a run would find out only when it loads the data, found in seconds before anything starts (in a
    sweep's --dry-run too): the source can be read, its first images decode, its training split has at least 2
    labels and enough images of each for a stratified `val_fraction`. Returns warnings (files it will not use);
    raises DataSourceError."""
    kind, location = parse_source(source)
    labels, warnings = SOURCES[kind].check(source, location)
    if labels is not None:
        check_two_labels(source, labels)
        try:
            stratified_split(labels, val_fraction, 0)
        except ValueError as error:
            raise DataSourceError(source, f"cannot build a stratified {val_fraction:.0%} validation split: "
                                          f"{error}") from None
    return warnings


def validation_size(source: str, val_fraction: float) -> int | None:
    """How many images the stratified validation split of `source` holds, from its labels alone (no image decoded);
    None where the source cannot say before it is loaded (or cannot be read: check_source says why)."""
    kind, location = parse_source(source)
    try:
        labels, _ = SOURCES[kind].check(source, location)
        if labels is not None:
            return len(stratified_split(labels, val_fraction, 0)[1])
    except (DataSourceError, ValueError):
        return None
    known = SOURCES[kind].train_images  # sklearn's stratified split holds out ceil(fraction x n)
    return math.ceil(val_fraction * known) if known else None


def load_splits(source: str, val_fraction: float = 0.1, seed: int = 0, root: Path | None = None,
                image_size: int = IMAGE_SIZE) -> Splits:
    if not 0.0 < val_fraction < 1.0:
        raise DataSourceError(source, f"validation fraction must be in (0, 1), got {val_fraction}")
    decoded, path = load_source(source, root, image_size)
    try:
        train_idx, val_idx = stratified_split(decoded.train.labels, val_fraction, seed)
    except ValueError as error:  # e.g. a class with a single image cannot be stratified
        raise DataSourceError(source, f"cannot build a stratified {val_fraction:.0%} validation split: "
                                      f"{error}") from None
    return Splits(
        source, decoded.train.subset(train_idx), decoded.train.subset(val_idx), decoded.test, decoded.class_names, path
    )
