"""parquet:PATH, Hugging Face-style parquet: a file, or a directory whose files have train/test in their names; images
as encoded bytes in 'img' or 'image', integer labels in 'label' or 'fine_label'."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ...errors import error_line
from .base import (IMAGE_SIZE, DataSourceError, DecodedSource, FilesKind, ImageArrays, class_names_for,
                   to_nchw_uint8)


class ParquetFiles(FilesKind):
    usage = "parquet:PATH"

    def decode(self, source: str, location: str, root: Path, size: int = IMAGE_SIZE) -> DecodedSource:
        train_files, test_files, _ = split_files(source, location)

        def read_all(files):
            parts = [read_parquet_file(source, f, size) for f in files]
            arrays = ImageArrays(
                np.concatenate([p[0].images for p in parts]), np.concatenate([p[0].labels for p in parts])
            )
            return arrays, parts[0][1]

        train, names = read_all(train_files)
        test = read_all(test_files)[0] if test_files else None
        return DecodedSource(train, test, class_names_for(source, names, train, test))

    def check(self, source: str, location: str) -> tuple[np.ndarray | None, list[str]]:
        import pyarrow.parquet as pq

        train_files, test_files, unused = split_files(source, location)
        labels = []
        for path in train_files + test_files:
            try:
                table = pq.ParquetFile(path).read_row_group(0)
            except Exception as error:
                raise DataSourceError(source, f"cannot read parquet file {path}: {error_line(error)}") from None
            image_column, label_column = columns_of(source, path, table.column_names)
            first = table.slice(0, 4)
            read_images_and_labels(source, path, first, image_column, label_column)  # they decode
            if path in train_files:
                column = pq.read_table(path, columns=[label_column]).column(label_column)
                check_labels(source, path, column, label_column)
                labels.append(np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64))
        warnings = [f"data source {source!r}: {f.name} is not used (neither 'train' nor 'test' in its name; "
                    f"gkd-tune holds out data.val_fraction of the training split for validation)" for f in unused]
        return np.concatenate(labels), warnings


def split_files(source: str, location: str) -> tuple[list[Path], list[Path], list[Path]]:
    """(train files, test files, files in neither) of a parquet source: the file itself, or a folder's *.parquet by
    'train' / 'test' in their names. A name with both is an error: no image may be in two splits."""
    path = Path(location)
    if path.is_file():
        return [path], [], []
    if not path.is_dir():
        raise DataSourceError(source, f"no such file or directory: {path}")
    files = sorted(path.glob("*.parquet"))
    both = [f.name for f in files if "train" in f.name and "test" in f.name]
    if both:
        raise DataSourceError(source, f"{', '.join(both)}: 'train' and 'test' both in the name; a file belongs to one "
                                      f"split (rename it)")
    train_files = [f for f in files if "train" in f.name]
    if not train_files:
        raise DataSourceError(source, f"no *.parquet file with 'train' in its name in {path}")
    test_files = [f for f in files if "test" in f.name]
    return train_files, test_files, [f for f in files if f not in train_files and f not in test_files]


def columns_of(source: str, path: Path, columns: list[str]) -> tuple[str, str]:
    image_column = next((c for c in ("img", "image") if c in columns), None)
    label_column = next((c for c in ("fine_label", "label") if c in columns), None)
    if image_column is None:
        raise DataSourceError(source, f"{path} has no image column ('img' or 'image'); columns: {columns}")
    if label_column is None:
        raise DataSourceError(source, f"{path} has no label column ('label' or 'fine_label'); columns: {columns}")
    return image_column, label_column


def check_labels(source: str, path: Path, column, label_column: str) -> None:
    import pyarrow as pa

    if not (pa.types.is_integer(column.type) and column.null_count == 0):
        raise DataSourceError(source, f"{path}: labels ({label_column!r}) must be integers, got {column.type}" +
                                      (" with nulls" if column.null_count else ""))


def read_images_and_labels(source: str, path: Path, table, image_column: str, label_column: str,
                           size: int = IMAGE_SIZE) -> tuple[ImageArrays, list[str] | None]:
    from PIL import Image

    images = table.column(image_column).combine_chunks()
    try:
        encoded = images.field("bytes").to_pylist()
    except (KeyError, AttributeError, TypeError):
        raise DataSourceError(source, f"{path}: column {image_column!r} is not a struct with encoded 'bytes'") from None
    if table.num_rows == 0:
        raise DataSourceError(source, f"{path} has no rows")
    pictures = [(lambda b=b: Image.open(io.BytesIO(b))) for b in encoded]
    column = table.column(label_column)
    check_labels(source, path, column, label_column)
    labels = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)
    return ImageArrays(to_nchw_uint8(source, pictures, str(path), size), labels), \
        _parquet_class_names(table, label_column)


def read_parquet_file(source: str, path: Path, size: int = IMAGE_SIZE) -> tuple[ImageArrays, list[str] | None]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:
        raise DataSourceError(source, f"cannot read parquet file {path}: {error}") from None
    return read_images_and_labels(source, path, table, *columns_of(source, path, table.column_names), size)


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
