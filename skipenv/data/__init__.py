"""CIFAR-10 as cached uint8 tensors, its splits, and batched augmentation on the device."""

from skipenv.data.loader import BatchLoader, augment, normalize
from skipenv.data.sources import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    SOURCES,
    SPLITS,
    VAL_SEED,
    CifarSplit,
    DataCacheWarning,
    DataError,
    default_cache_dir,
    load_cifar10,
    resolve_data_root,
    split_indices,
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
    "val_indices",
]
