"""The decoded-array cache: each source is decoded once into uint8 arrays, stored under ``<cache>/arrays`` keyed by a
fingerprint of the source, and read back by every later run. ``<cache>`` is files.cache_root().
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
from filelock import FileLock

from ..files import cache_root, partial_path
from .sources import IMAGE_SIZE, DecodedSource, ImageArrays, decode, fingerprint_parts, parse_source

# Bump when the decoded layout changes, so old caches are not read.
CACHE_FORMAT = 1


def cache_path_for(source: str, root: Path | None = None, size: int = IMAGE_SIZE) -> Path:
    """Named after the source and a fingerprint that changes whenever its content may have (its kind says how), and
    the image size it was decoded at."""
    root = root or cache_root()
    kind, location = parse_source(source)
    stem = Path(location).stem if location else kind
    parts = [f"format={CACHE_FORMAT}", *fingerprint_parts(source, root)] + ([f"size={size}"] if size != IMAGE_SIZE
                                                                             else [])
    return root / "arrays" / f"{kind}-{stem}-{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()[:16]}.npz"


def load_source(source: str, root: Path | None = None, size: int = IMAGE_SIZE) -> tuple[DecodedSource, Path]:
    """Decoded arrays of a source at size x size, from the cache when present (decoding and caching them
    otherwise)."""
    root = root or cache_root()
    path = cache_path_for(source, root, size)
    cached = _read_cache(path)
    if cached is not None:
        return cached, path
    path.parent.mkdir(parents=True, exist_ok=True)
    # one decoder per cache: trials starting together on a fresh node would otherwise all download CIFAR into the
    # same files at once
    with FileLock(f"{path}.lock"):
        cached = _read_cache(path)  # decoded by another process while this one waited
        if cached is not None:
            return cached, path
        decoded = decode(source, root, size)
        _write_cache(decoded, path)
    return decoded, path


def _read_cache(path: Path) -> DecodedSource | None:
    """The cached arrays, or None when there are none; a damaged file (a disk that filled up, a copy cut short) is
    removed with a warning, to be decoded again, instead of failing every later run."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            test = ImageArrays(cached["test_images"], cached["test_labels"]) if "test_images" in cached else None
            return DecodedSource(ImageArrays(cached["train_images"], cached["train_labels"]), test,
                                 tuple(cached["class_names"]))
    except OSError as error:
        if error.errno is not None:  # the file could not be read (permissions, descriptors, I/O): not damaged
            raise
        warnings.warn(f"cached arrays {path} are damaged ({type(error).__name__}: {error}); decoding again")
        path.unlink(missing_ok=True)
        return None
    except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(f"cached arrays {path} are damaged ({type(error).__name__}: {error}); decoding again")
        path.unlink(missing_ok=True)
        return None


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
    partial = partial_path(path)
    try:
        with open(partial, "wb") as file:  # a file object: np.savez adds no ".npz" to the name
            np.savez(file, **arrays)
        os.replace(partial, path)
    except BaseException:  # a full disk, an interrupt: no half-written file stays behind
        partial.unlink(missing_ok=True)
        raise
