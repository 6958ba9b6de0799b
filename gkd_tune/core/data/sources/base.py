"""What every data source kind shares: the arrays it decodes into, its error, and the SourceKind it implements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SIZE = 32


class DataSourceError(ValueError):
    """A data source that cannot be read; the message names the source and what is wrong."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"data source {source!r}: {problem}")
        self.source, self.problem = source, problem

    def __reduce__(self):  # raised inside Ray tasks and trials: must survive pickling back to the driver
        return type(self), (self.source, self.problem)


class TransientDataError(RuntimeError):
    """A source that could not be fetched just now (a network error, a timeout): not bad input, so not a
    DataSourceError. A trial or teacher task that meets it raises it and is retried (on another node, perhaps)."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"data source {source!r}: {problem}")
        self.source, self.problem = source, problem

    def __reduce__(self):
        return type(self), (self.source, self.problem)


def is_transient(error: BaseException) -> bool:
    """A network failure or timeout anywhere in the error's chain; an HTTP error only when the server says try
    again (429, 5xx)."""
    import http.client
    import urllib.error

    while error is not None:
        if isinstance(error, urllib.error.HTTPError):
            return error.code == 429 or error.code >= 500
        if isinstance(error, (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)):
            return True
        error = error.__cause__ or error.__context__
    return False


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


class SourceKind:
    """A kind of data source, the `kind` of 'kind' or 'kind:PATH': how its content is fingerprinted (for the
    decoded-array cache) and decoded. One file per kind, registered by one line in sources.SOURCES."""

    usage = ""  # how a source of this kind is written, e.g. 'parquet:PATH'
    takes_path = False  # written as 'kind:PATH'
    train_images: int | None = None  # the training split's size, where it is fixed and `check` has no labels

    def fingerprint(self, source: str, location: str, root: Path) -> list[str]:
        """What changes whenever the content may have (`root`: the cache root)."""
        raise NotImplementedError

    def decode(self, source: str, location: str, root: Path, size: int = IMAGE_SIZE) -> DecodedSource:
        """N x 3 x size x size uint8 images and int64 labels; DataSourceError naming the source for anything
        wrong."""
        raise NotImplementedError

    def check(self, source: str, location: str) -> tuple[np.ndarray | None, list[str]]:
        """In seconds, before anything starts: that the source can be read and its first images decode. Returns
        (the training split's labels, warnings); DataSourceError for what decode would reject. No labels: not known
        without a download (CIFAR) or a decode (digits), which are checked when they happen."""
        return None, []


class FilesKind(SourceKind):
    """A kind read from files under a path: its fingerprint is every file's path, size and modification time."""

    takes_path = True

    def fingerprint(self, source: str, location: str, root: Path) -> list[str]:
        path = Path(location).resolve()
        if not path.exists():
            raise DataSourceError(source, f"no such file or directory: {path}")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        return [f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]


def to_nchw_uint8(source: str, pictures: list, what: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """PIL images -> N x 3 x size x size uint8 (resized from any other size)."""
    from PIL import Image

    out = np.empty((len(pictures), 3, size, size), dtype=np.uint8)
    for i, picture in enumerate(pictures):
        try:
            image = picture() if callable(picture) else picture
            image = image.convert("RGB")
        except Exception as error:  # PIL raises several types for bad bytes
            raise DataSourceError(source, f"cannot decode image {i} of {what}: {error}") from None
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    return out


def resized(images: np.ndarray, size: int) -> np.ndarray:
    """N x 3 x H x W uint8 at size x size (bilinear), in chunks; as they are when already that size."""
    import torch
    import torch.nn.functional as F

    if images.shape[-2:] == (size, size):
        return images
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    for start in range(0, len(images), 1024):
        chunk = torch.from_numpy(images[start:start + 1024]).float()
        out[start:start + 1024] = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False) \
            .round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def check_two_labels(source: str, labels: np.ndarray) -> None:
    distinct = np.unique(labels)
    if len(distinct) < 2:
        raise DataSourceError(source, f"needs at least 2 distinct labels in its training split, found only "
                                      f"{', '.join(map(str, distinct)) or 'none'}")


def class_names_for(source: str, names, train: ImageArrays, test: ImageArrays | None) -> tuple[str, ...]:
    highest = int(max(train.labels.max(), test.labels.max() if test is not None else 0))
    if train.labels.min() < 0:
        raise DataSourceError(source, "labels must be non-negative integers")
    check_two_labels(source, train.labels)
    if names is None:
        return tuple(str(i) for i in range(highest + 1))
    if highest >= len(names):
        raise DataSourceError(source, f"label {highest} but only {len(names)} class names")
    return tuple(names)
