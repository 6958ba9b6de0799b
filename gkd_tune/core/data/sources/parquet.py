"""parquet:PATH, Hugging Face-style parquet: a file, or a directory whose files have train/test in their names; images
as encoded bytes in 'img' or 'image', integer labels in 'label' or 'fine_label'."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .base import DataSourceError, DecodedSource, FilesKind, ImageArrays, class_names_for, to_nchw_uint8


class ParquetFiles(FilesKind):
    usage = "parquet:PATH"

    def decode(self, source: str, location: str, root: Path) -> DecodedSource:
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
            parts = [read_parquet_file(source, f) for f in files]
            arrays = ImageArrays(
                np.concatenate([p[0].images for p in parts]), np.concatenate([p[0].labels for p in parts])
            )
            return arrays, parts[0][1]

        train, names = read_all(train_files)
        test = read_all(test_files)[0] if test_files else None
        return DecodedSource(train, test, class_names_for(source, names, train, test))


def read_parquet_file(source: str, path: Path) -> tuple[ImageArrays, list[str] | None]:
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
    return ImageArrays(to_nchw_uint8(source, pictures, str(path)), labels), _parquet_class_names(table, label_column)


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
