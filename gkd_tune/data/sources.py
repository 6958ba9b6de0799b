"""Data sources: one string names a source, one decoder per kind turns it into uint8 arrays.

    cifar10, cifar100      torchvision's download into ``<cache>/torchvision`` (CIFAR-100: fine labels)
    parquet:PATH           Hugging Face-style parquet: a file, or a directory whose files have train/test in names
    imagefolder:DIR        torchvision ImageFolder layout: DIR/train/<class>/*, optional DIR/test/<class>/*
    digits                 scikit-learn's bundled 8x8 handwritten digits, resized to 32x32 RGB (offline default)

Every decoder returns N x 3 x 32 x 32 uint8 images and int64 labels; errors are DataSourceError naming the source.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SOURCE_KINDS = ("cifar10", "cifar100", "parquet:PATH", "imagefolder:DIR", "digits")
IMAGE_SIZE = 32
# digits has no official test split: a fixed stratified 20% is held out as its test split (seed independent
# of the user's validation seed, so the test set never moves).
DIGITS_TEST_FRACTION = 0.2


class DataSourceError(ValueError):
    """A data source that cannot be read; the message names the source and what is wrong."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"data source {source!r}: {problem}")
        self.source, self.problem = source, problem

    def __reduce__(self):  # raised inside Ray tasks and trials: must survive pickling back to the driver
        return type(self), (self.source, self.problem)


@dataclass(frozen=True)
class ImageArrays:
    images: np.ndarray  # N x 3 x 32 x 32, uint8
    labels: np.ndarray  # N, int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "ImageArrays":
        return ImageArrays(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class DecodedSource:
    train: ImageArrays
    test: ImageArrays | None
    class_names: tuple[str, ...]


def parse_source(source: str) -> tuple[str, str]:
    kind, _, location = source.partition(":")
    if kind in ("cifar10", "cifar100", "digits") and not location:
        return kind, ""
    if kind in ("parquet", "imagefolder") and location:
        return kind, location
    if kind in ("parquet", "imagefolder"):
        raise DataSourceError(source, f"'{kind}:' needs a path, e.g. {kind}:/data/cifar10")
    raise DataSourceError(source, f"unknown source kind; known: {', '.join(SOURCE_KINDS)}")


def absolute_source(source: str) -> str:
    """The same source with its path made absolute: trials run in other working directories (and on other nodes)."""
    kind, location = parse_source(source)
    return f"{kind}:{Path(location).expanduser().resolve()}" if location else source


def decode(source: str, root: Path) -> DecodedSource:
    """The arrays of `source`, decoded now (slow: cache.load_source is what callers want). `root`: the cache root,
    where torchvision keeps its CIFAR download."""
    kind, location = parse_source(source)
    if kind == "parquet":
        return decode_parquet(source, location)
    if kind == "imagefolder":
        return decode_imagefolder(source, location)
    if kind == "digits":
        return decode_digits()
    return decode_torchvision_cifar(source, kind, root / "torchvision")


def _to_nchw_uint8(source: str, pictures: list, what: str) -> np.ndarray:
    """PIL images -> N x 3 x 32 x 32 uint8 (resized when not 32x32)."""
    from PIL import Image

    out = np.empty((len(pictures), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, picture in enumerate(pictures):
        try:
            image = picture() if callable(picture) else picture
            image = image.convert("RGB")
        except Exception as error:  # PIL raises several types for bad bytes
            raise DataSourceError(source, f"cannot decode image {i} of {what}: {error}") from None
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        out[i] = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    return out


def _read_parquet_file(source: str, path: Path) -> tuple[ImageArrays, list[str] | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    try:
        table = pq.read_table(path)
    except Exception as error:
        raise DataSourceError(source, f"cannot read parquet file {path}: {error}") from None
    columns = table.column_names
    image_column = next((c for c in ("img", "image") if c in columns), None)
    label_column = next((c for c in ("fine_label", "label") if c in columns), None)
    if image_column is None:
        raise DataSourceError(source, f"{path} has no image column ('img' or 'image'); columns: {columns}")
    if label_column is None:
        raise DataSourceError(source, f"{path} has no label column ('label' or 'fine_label'); columns: {columns}")
    images = table.column(image_column).combine_chunks()
    try:
        encoded = images.field("bytes").to_pylist()
    except (KeyError, AttributeError, TypeError):
        raise DataSourceError(source, f"{path}: column {image_column!r} is not a struct with encoded 'bytes'") from None
    if table.num_rows == 0:
        raise DataSourceError(source, f"{path} has no rows")
    pictures = [(lambda b=b: Image.open(io.BytesIO(b))) for b in encoded]
    column = table.column(label_column)
    if not (pa.types.is_integer(column.type) and column.null_count == 0):
        raise DataSourceError(source, f"{path}: labels ({label_column!r}) must be integers, got {column.type}" +
                                      (" with nulls" if column.null_count else ""))
    labels = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)
    return ImageArrays(_to_nchw_uint8(source, pictures, str(path)), labels), _parquet_class_names(table, label_column)


def _parquet_class_names(table, label_column: str) -> list[str] | None:
    metadata = table.schema.metadata or {}
    if b"label_names" in metadata:
        return metadata[b"label_names"].decode().split(",")
    if b"huggingface" in metadata:  # datasets' own schema record: {"info": {"features": {label: {"names": ...}}}}
        try:
            features = json.loads(metadata[b"huggingface"])["info"]["features"]
            return list(features[label_column]["names"])
        except (KeyError, TypeError, ValueError):
            return None
    return None


def decode_parquet(source: str, location: str) -> DecodedSource:
    path = Path(location)
    if path.is_file():
        train_files, test_files = [path], []
    elif path.is_dir():
        files = sorted(path.glob("*.parquet"))
        train_files = [f for f in files if "train" in f.name]
        test_files = [f for f in files if "test" in f.name]
        if not train_files:
            raise DataSourceError(source, f"no *.parquet file with 'train' in its name in {path}")
    else:
        raise DataSourceError(source, f"no such file or directory: {path}")

    def read_all(files):
        parts = [_read_parquet_file(source, f) for f in files]
        arrays = ImageArrays(
            np.concatenate([p[0].images for p in parts]), np.concatenate([p[0].labels for p in parts])
        )
        return arrays, parts[0][1]

    train, names = read_all(train_files)
    test = read_all(test_files)[0] if test_files else None
    return DecodedSource(train, test, _class_names(source, names, train, test))


def _class_names(source: str, names, train: ImageArrays, test: ImageArrays | None) -> tuple[str, ...]:
    highest = int(max(train.labels.max(), test.labels.max() if test is not None else 0))
    if train.labels.min() < 0:
        raise DataSourceError(source, "labels must be non-negative integers")
    if highest < 1:
        raise DataSourceError(source, "needs at least 2 classes (labels 0..K-1), found only label 0")
    if names is None:
        return tuple(str(i) for i in range(highest + 1))
    if highest >= len(names):
        raise DataSourceError(source, f"label {highest} but only {len(names)} class names")
    return tuple(names)


def decode_imagefolder(source: str, location: str) -> DecodedSource:
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import default_loader

    root = Path(location)
    if not (root / "train").is_dir():
        raise DataSourceError(source, f"expected class folders under {root / 'train'} (DIR/train/<class>/*.png)")

    def read(split_dir: Path, expected_classes=None) -> tuple[ImageArrays, list[str]]:
        try:
            folder = ImageFolder(str(split_dir))
        except (FileNotFoundError, OSError) as error:
            raise DataSourceError(source, f"{split_dir}: {error}") from None
        if expected_classes is not None and folder.classes != expected_classes:
            raise DataSourceError(source, f"{split_dir} classes {folder.classes} differ from train's {expected_classes}")
        pictures = [(lambda p=p: default_loader(p)) for p, _ in folder.samples]
        labels = np.asarray(folder.targets, dtype=np.int64)
        return ImageArrays(_to_nchw_uint8(source, pictures, str(split_dir)), labels), folder.classes

    train, classes = read(root / "train")
    test = read(root / "test", classes)[0] if (root / "test").is_dir() else None
    return DecodedSource(train, test, tuple(classes))


def decode_torchvision_cifar(source: str, kind: str, root: Path) -> DecodedSource:
    from torchvision import datasets

    dataset_class = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    try:
        # download=True only fetches when the files under root are missing or fail their checksum
        parts = [dataset_class(str(root), train=train, download=True) for train in (True, False)]
    except Exception as error:
        raise DataSourceError(
            source,
            f"could not download or read {kind} under {root} ({type(error).__name__}: {error}). Offline? Put the "
            f"torchvision archive there, or use another source: {', '.join(SOURCE_KINDS)}",
        ) from None
    train, test = (
        ImageArrays(np.ascontiguousarray(p.data.transpose(0, 3, 1, 2)), np.asarray(p.targets, dtype=np.int64))
        for p in parts
    )
    return DecodedSource(train, test, tuple(parts[0].classes))


def decode_digits() -> DecodedSource:
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # N x 1 x 8 x 8 in [0, 1]
    large = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = (large.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).numpy()
    everything = ImageArrays(images, digits.target.astype(np.int64))
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(np.arange(len(everything)), test_size=DIGITS_TEST_FRACTION,
                                           stratify=everything.labels, random_state=0)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    names = tuple(str(int(n)) for n in digits.target_names)
    return DecodedSource(everything.subset(train_idx), everything.subset(test_idx), names)
