"""CIFAR-10 for skipnet-gym: located and decoded (``sources``), cached (``cache``), split
(``splits``: :func:`load_cifar10`) and batched with augmentation on the device (``loader``).

``python -m skipenv.data --root ROOT --split train`` prints counts and timings.
"""

from skipenv.data.cache import DataCacheWarning, default_cache_dir
from skipenv.data.loader import BatchLoader, augment, normalize
from skipenv.data.sources import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    SOURCES,
    DataError,
    resolve_data_root,
)
from skipenv.data.splits import (
    SPLITS,
    VAL_SEED,
    CifarSplit,
    load_cifar10,
    split_indices,
    stratified_subset,
    val_indices,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "SOURCES",
    "SPLITS",
    "VAL_SEED",
    "BatchLoader",
    "CifarSplit",
    "DataCacheWarning",
    "DataError",
    "augment",
    "default_cache_dir",
    "load_cifar10",
    "normalize",
    "resolve_data_root",
    "split_indices",
    "stratified_subset",
    "val_indices",
]
