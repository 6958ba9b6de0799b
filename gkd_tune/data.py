"""Dataset sources -> cached uint8 arrays -> stratified splits -> an augmenting loader on the compute device.

A source is named by one string:

    cifar10, cifar100      torchvision's download into ``<cache>/torchvision`` (CIFAR-100: fine labels)
    parquet:PATH           Hugging Face-style parquet: a file, or a directory whose files have train/test in names
    imagefolder:DIR        torchvision ImageFolder layout: DIR/train/<class>/*, optional DIR/test/<class>/*
    digits                 scikit-learn's bundled 8x8 handwritten digits, resized to 32x32 RGB (offline default)

Each source is decoded once into uint8 arrays (N x 3 x 32 x 32) and cached under ``<cache>/arrays`` keyed by a
fingerprint of the source, so trials never decode again. ``<cache>`` is ``$GKD_TUNE_CACHE`` or
``~/.cache/gkd-tune``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock

SOURCE_KINDS = ("cifar10", "cifar100", "parquet:PATH", "imagefolder:DIR", "digits")
IMAGE_SIZE = 32
# Bump when the decoded layout changes, so old caches are not read.
CACHE_FORMAT = 1
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


def cache_root() -> Path:
    return Path(os.environ.get("GKD_TUNE_CACHE", Path.home() / ".cache" / "gkd-tune"))


# ----------------------------------------------------------------------------------------------- decoding


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
    pictures = [(lambda b=b: Image.open(io.BytesIO(b))) for b in encoded]
    labels = np.asarray(table.column(label_column).to_numpy(zero_copy_only=False), dtype=np.int64)
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


def _decode_parquet(source: str, location: str) -> DecodedSource:
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
    if names is None:
        return tuple(str(i) for i in range(highest + 1))
    if highest >= len(names):
        raise DataSourceError(source, f"label {highest} but only {len(names)} class names")
    return tuple(names)


def _decode_imagefolder(source: str, location: str) -> DecodedSource:
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


def _decode_torchvision_cifar(source: str, kind: str, root: Path) -> DecodedSource:
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


def _decode_digits() -> DecodedSource:
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # N x 1 x 8 x 8 in [0, 1]
    large = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = (large.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).numpy()
    everything = ImageArrays(images, digits.target.astype(np.int64))
    train_idx, test_idx = stratified_split(everything.labels, DIGITS_TEST_FRACTION, seed=0)
    names = tuple(str(int(n)) for n in digits.target_names)
    return DecodedSource(everything.subset(train_idx), everything.subset(test_idx), names)


# ------------------------------------------------------------------------------------------- cache + splits


def _parse(source: str) -> tuple[str, str]:
    kind, _, location = source.partition(":")
    if kind in ("cifar10", "cifar100", "digits") and not location:
        return kind, ""
    if kind in ("parquet", "imagefolder") and location:
        return kind, location
    if kind in ("parquet", "imagefolder"):
        raise DataSourceError(source, f"'{kind}:' needs a path, e.g. {kind}:/data/cifar10")
    raise DataSourceError(source, f"unknown source kind; known: {', '.join(SOURCE_KINDS)}")


def _fingerprint(source: str, kind: str, location: str, root: Path) -> str:
    """Changes whenever the source's content may have changed (paths, sizes, modification times)."""
    parts = [f"format={CACHE_FORMAT}", kind]
    if kind in ("parquet", "imagefolder"):
        path = Path(location).resolve()
        if not path.exists():
            raise DataSourceError(source, f"no such file or directory: {path}")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        parts += [f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    elif kind in ("cifar10", "cifar100"):
        parts.append(str((root / "torchvision").resolve()))
    else:
        import sklearn

        parts.append(sklearn.__version__)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_path_for(source: str, root: Path | None = None) -> Path:
    root = root or cache_root()
    kind, location = _parse(source)
    stem = Path(location).stem if location else kind
    return root / "arrays" / f"{kind}-{stem}-{_fingerprint(source, kind, location, root)}.npz"


def absolute_source(source: str) -> str:
    """The same source with its path made absolute: trials run in other working directories (and on other nodes)."""
    kind, location = _parse(source)
    return f"{kind}:{Path(location).expanduser().resolve()}" if location else source


def load_source(source: str, root: Path | None = None) -> tuple[DecodedSource, Path]:
    """Decoded arrays of a source, from the cache when present (decoding and caching them otherwise)."""
    root = root or cache_root()
    kind, location = _parse(source)
    path = cache_path_for(source, root)
    if path.exists():
        return _read_cache(path), path
    path.parent.mkdir(parents=True, exist_ok=True)
    # one decoder per cache: trials starting together on a fresh node would otherwise all download CIFAR into the
    # same files at once
    with FileLock(f"{path}.lock"):
        if path.exists():  # decoded by another process while this one waited
            return _read_cache(path), path
        if kind == "parquet":
            decoded = _decode_parquet(source, location)
        elif kind == "imagefolder":
            decoded = _decode_imagefolder(source, location)
        elif kind == "digits":
            decoded = _decode_digits()
        else:
            decoded = _decode_torchvision_cifar(source, kind, root / "torchvision")
        _write_cache(decoded, path)
    return decoded, path


def _read_cache(path: Path) -> DecodedSource:
    with np.load(path, allow_pickle=False) as cached:
        test = ImageArrays(cached["test_images"], cached["test_labels"]) if "test_images" in cached else None
        return DecodedSource(ImageArrays(cached["train_images"], cached["train_labels"]), test,
                             tuple(cached["class_names"]))


def _write_cache(decoded: DecodedSource, path: Path) -> None:
    arrays = {
        "train_images": decoded.train.images,
        "train_labels": decoded.train.labels,
        "class_names": np.asarray(decoded.class_names),
    }
    if decoded.test is not None:
        arrays.update(test_images=decoded.test.images, test_labels=decoded.test.labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    # write-then-rename: a reader never sees a half-written file
    partial = path.with_suffix(f".{os.getpid()}.partial.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out): held_out has `fraction` of every class, chosen with a fixed seed."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    kept, held_out = train_test_split(indices, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(kept), np.sort(held_out)


def load_splits(source: str, val_fraction: float = 0.1, seed: int = 0, root: Path | None = None) -> Splits:
    if not 0.0 < val_fraction < 1.0:
        raise DataSourceError(source, f"validation fraction must be in (0, 1), got {val_fraction}")
    decoded, path = load_source(source, root)
    try:
        train_idx, val_idx = stratified_split(decoded.train.labels, val_fraction, seed)
    except ValueError as error:  # e.g. a class with a single image cannot be stratified
        raise DataSourceError(source, f"cannot build a stratified {val_fraction:.0%} validation split: {error}") from None
    return Splits(
        source, decoded.train.subset(train_idx), decoded.train.subset(val_idx), decoded.test, decoded.class_names, path
    )


# ----------------------------------------------------------------------------------------------- loader


def random_crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop of each image from its reflect-padded version, then a random horizontal flip.

    images: B x C x H x W float. One gather does both: the flip just reverses the column indices.
    Returns B x C x H x W in channels_last memory layout (a view of the B x H x W x C gather).
    """
    batch, _, height, width = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (batch, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (batch, 1), generator=generator, device=device)
    rows = dy + torch.arange(height, device=device)
    cols = dx + torch.arange(width, device=device)
    flip = torch.rand(batch, 1, generator=generator, device=device) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)
    b = torch.arange(batch, device=device)[:, None, None]
    return padded[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class DeviceLoader:
    """Holds a whole split on `device` as uint8 and yields normalised float batches (images, labels).

    With `train=True` batches are shuffled, randomly cropped (pad 4, reflect) and flipped, and the last
    incomplete batch is dropped; otherwise the split is walked in order. No per-image Python anywhere.
    """

    def __init__(
        self,
        arrays: ImageArrays,
        batch_size: int,
        *,
        train: bool,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device | str = "cpu",
        seed: int = 0,
        pad: int = 4,
    ):
        self.device = torch.device(device)
        self.images = torch.from_numpy(arrays.images).to(self.device)
        self.labels = torch.from_numpy(arrays.labels).to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.pad = pad
        # x / 255 then (x - mean) / std, folded into one multiply-add
        std_t = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, device=self.device).view(1, -1, 1, 1) / std_t
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        if self.train and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        if self.train:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            images = self.images[index].float()
            if self.train:
                images = random_crop_flip(images, self.pad, self.generator)
            yield images * self.scale + self.shift, self.labels[index]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())


# ------------------------------------------------------------------------------------------------- CLI


def describe(source: str, val_fraction: float, seed: int) -> str:
    splits = load_splits(source, val_fraction, seed)
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}

    def counts(arrays):
        if arrays is None:
            return ["-"] * splits.num_classes
        return [str(c) for c in np.bincount(arrays.labels, minlength=splits.num_classes)]

    columns = {name: counts(arrays) for name, arrays in parts.items()}
    sizes = "  ".join(f"{name} {len(a) if a is not None else '-'}" for name, a in parts.items())
    width = max(len(n) for n in splits.class_names + ("class",))
    lines = [
        f"source     {source}",
        f"cache      {splits.cache_path}",
        f"classes    {splits.num_classes}",
        f"images     {sizes}  (validation: stratified {val_fraction:.0%} of train, seed {seed})",
        "",
        f"{'class':<{width}}  {'train':>6}  {'val':>6}  {'test':>6}",
    ]
    for i, name in enumerate(splits.class_names):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{columns[p][i]:>6}" for p in parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    describe_parser = commands.add_parser(
        "describe", help="print split sizes, class counts and the cache location of a source"
    )
    describe_parser.add_argument("source", help=f"one of: {', '.join(SOURCE_KINDS)}")
    describe_parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share (default 0.1)")
    describe_parser.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    args = parser.parse_args(argv)
    try:
        print(describe(args.source, args.val_fraction, args.seed))
    except DataSourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
