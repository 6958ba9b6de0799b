"""Data sources: a string names a source ('cifar10', 'parquet:PATH'); its kind, registered in SOURCES, fingerprints
and decodes it into uint8 arrays. One file per kind:

    cifar.py        cifar10, cifar100      torchvision's download into ``<cache>/torchvision``
    parquet.py      parquet:PATH           Hugging Face-style parquet files
    imagefolder.py  imagefolder:DIR        torchvision's ImageFolder layout
    digits.py       digits                 scikit-learn's bundled digits (the offline default)

Every decoder returns N x 3 x 32 x 32 uint8 images and int64 labels; errors are DataSourceError naming the source.
"""

from __future__ import annotations

from pathlib import Path

from .base import (IMAGE_SIZE, DataSourceError, DecodedSource, ImageArrays, SourceKind, TransientDataError,
                   check_two_labels)
from .cifar import TorchvisionCifar
from .digits import Digits
from .imagefolder import ImageFolderTree
from .parquet import ParquetFiles

# The registry: a new kind is its file and one line here.
SOURCES: dict[str, SourceKind] = {
    "cifar10": TorchvisionCifar("cifar10"),
    "cifar100": TorchvisionCifar("cifar100"),
    "parquet": ParquetFiles(),
    "imagefolder": ImageFolderTree(),
    "digits": Digits(),
}
SOURCE_KINDS = tuple(kind.usage for kind in SOURCES.values())


def parse_source(source: str) -> tuple[str, str]:
    """(kind, location) of a source string; DataSourceError for an unknown kind or a path where none belongs."""
    kind, _, location = source.partition(":")
    if kind not in SOURCES:
        raise DataSourceError(source, f"unknown source kind; known: {', '.join(SOURCE_KINDS)}")
    if SOURCES[kind].takes_path and not location:
        raise DataSourceError(source, f"'{kind}:' needs a path, e.g. {kind}:/data/cifar10")
    if location and not SOURCES[kind].takes_path:
        raise DataSourceError(source, f"{kind} takes no path; sources with one: "
                                      f"{', '.join(k.usage for k in SOURCES.values() if k.takes_path)}")
    return kind, str(Path(location).expanduser()) if location else location


def absolute_source(source: str) -> str:
    """The same source with its path made absolute: trials run in other working directories (and on other nodes)."""
    kind, location = parse_source(source)
    return f"{kind}:{Path(location).expanduser().resolve()}" if location else source


def fingerprint_parts(source: str, root: Path) -> list[str]:
    """What changes whenever the source's content may have; `root` is the cache root."""
    kind, location = parse_source(source)
    return [kind, *SOURCES[kind].fingerprint(source, location, root)]


def decode(source: str, root: Path, size: int = IMAGE_SIZE) -> DecodedSource:
    """The arrays of `source` at size x size, decoded now (slow: cache.load_source is what callers want). `root`:
    the cache root, where torchvision keeps its CIFAR download."""
    kind, location = parse_source(source)
    return SOURCES[kind].decode(source, location, root, size)


__all__ = ["IMAGE_SIZE", "SOURCES", "SOURCE_KINDS", "DataSourceError", "DecodedSource", "ImageArrays", "SourceKind",
           "TransientDataError", "absolute_source", "check_two_labels", "decode", "fingerprint_parts", "parse_source"]
