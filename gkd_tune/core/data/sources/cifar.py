"""cifar10, cifar100: torchvision's download into ``<cache>/torchvision`` (CIFAR-100: fine labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import (IMAGE_SIZE, DataSourceError, DecodedSource, ImageArrays, SourceKind, TransientDataError,
                   is_transient, resized)


class TorchvisionCifar(SourceKind):
    train_images = 50_000

    def __init__(self, kind: str):
        self.usage = kind

    def fingerprint(self, source: str, location: str, root: Path) -> list[str]:
        return [str((root / "torchvision").resolve())]

    def decode(self, source: str, location: str, root: Path, size: int = IMAGE_SIZE) -> DecodedSource:
        from torchvision import datasets

        dataset_class = datasets.CIFAR10 if self.usage == "cifar10" else datasets.CIFAR100
        try:
            # download=True only fetches when the files under root are missing or fail their checksum
            parts = [dataset_class(str(root / "torchvision"), train=train, download=True) for train in (True, False)]
        except Exception as error:
            if is_transient(error):
                raise TransientDataError(source, f"could not download {self.usage} just now ({type(error).__name__}: "
                                                 f"{error}); retried as the trial's or the teacher's failure") from None
            raise DataSourceError(
                source, f"could not download or read {self.usage} under {root / 'torchvision'} "
                        f"({type(error).__name__}: {error}). Offline? Put the torchvision archive there, or use "
                        f"another source (parquet:PATH, imagefolder:DIR, digits)") from None
        train, test = (
            ImageArrays(resized(np.ascontiguousarray(p.data.transpose(0, 3, 1, 2)), size),
                        np.asarray(p.targets, dtype=np.int64))
            for p in parts
        )
        return DecodedSource(train, test, tuple(parts[0].classes))
