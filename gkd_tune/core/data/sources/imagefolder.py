"""imagefolder:DIR, torchvision's ImageFolder layout: DIR/train/<class>/*, optional DIR/test/<class>/*."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import IMAGE_SIZE, DataSourceError, DecodedSource, FilesKind, ImageArrays, to_nchw_uint8


class ImageFolderTree(FilesKind):
    usage = "imagefolder:DIR"

    def check(self, source: str, location: str) -> tuple[np.ndarray | None, list[str]]:
        from torchvision.datasets import ImageFolder
        from torchvision.datasets.folder import default_loader

        root = Path(location)
        if not (root / "train").is_dir():
            raise DataSourceError(source, f"expected class folders under {root / 'train'} (DIR/train/<class>/*.png)")
        try:
            folder = ImageFolder(str(root / "train"))
        except (FileNotFoundError, OSError) as error:
            raise DataSourceError(source, f"{root / 'train'}: {error}") from None
        to_nchw_uint8(source, [lambda: default_loader(folder.samples[0][0])], str(root / "train"))  # it decodes
        return np.asarray(folder.targets, dtype=np.int64), []

    def decode(self, source: str, location: str, root: Path, size: int = IMAGE_SIZE) -> DecodedSource:
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
                raise DataSourceError(source, f"{split_dir} classes {folder.classes} differ from train's "
                                              f"{expected_classes}")
            pictures = [(lambda p=p: default_loader(p)) for p, _ in folder.samples]
            labels = np.asarray(folder.targets, dtype=np.int64)
            return ImageArrays(to_nchw_uint8(source, pictures, str(split_dir), size), labels), folder.classes

        train, classes = read(root / "train")
        test = read(root / "test", classes)[0] if (root / "test").is_dir() else None
        return DecodedSource(train, test, tuple(classes))
