"""Data, in the order it flows: sources -> cached uint8 arrays -> stratified splits -> a loader on the device.

    sources/     a source string (cifar10, cifar100, parquet:PATH, imagefolder:DIR, digits); one file per kind, which
                 fingerprints and decodes it, registered in sources.SOURCES
    cache.py     each source decoded once into uint8 arrays (N x 3 x 32 x 32), cached by its fingerprint
    splits.py    train / stratified validation / test
    loader.py    the whole split on the compute device, crop + flip as tensor ops

``python -m gkd_tune.data describe SOURCE`` (gkd_tune/data.py) shows what a source holds.
"""

from .cache import cache_path_for, load_source
from .loader import DeviceLoader, check_fits, random_crop_flip
from .sources import (SOURCE_KINDS, DataSourceError, DecodedSource, ImageArrays, TransientDataError, absolute_source,
                      parse_source)
from .splits import DataSpec, Splits, check_source, load_splits, stratified_split, validation_size

__all__ = ["SOURCE_KINDS", "DataSourceError", "DataSpec", "DecodedSource", "DeviceLoader", "ImageArrays", "Splits",
           "TransientDataError", "absolute_source", "cache_path_for", "check_fits", "check_source", "load_source",
           "load_splits", "parse_source", "random_crop_flip", "stratified_split", "validation_size"]
