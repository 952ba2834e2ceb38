"""The tensor cache: a decoded source split saved once, checked and reused on later loads.

A source split decoded by :func:`skipenv.data.sources.read_source` is saved with
``torch.save`` (atomically, :func:`skipenv.utils.atomic_write`) under
:func:`default_cache_dir`; :func:`load_source_split` reads it back after checking its format
version, a fingerprint of the source files and a checksum of the tensor bytes. Anything
suspicious triggers a :class:`DataCacheWarning` and a rebuild; a cache that cannot be written
only warns (the data is in memory and the next load tries again).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import platformdirs
import torch

from skipenv.data.sources import APP_NAME, CIFAR10_CLASSES, IMAGE_SIZE, Located, read_source
from skipenv.utils import atomic_write, check_payload

logger = logging.getLogger(__name__)

ENV_CACHE_DIR = "SKIPNET_CACHE"
CACHE_FORMAT_VERSION = 1


class DataCacheWarning(UserWarning):
    """A cached tensor file was unusable (corrupt, stale, other version) and is being rebuilt."""


def default_cache_dir() -> Path:
    """Where decoded tensors are cached: ``$SKIPNET_CACHE`` if set, else
    ``platformdirs.user_cache_dir("skipnet-gym")/tensors``."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "tensors"


def _checksum(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(images.contiguous().numpy().reshape(-1))
    h.update(labels.contiguous().numpy().reshape(-1))
    return h.hexdigest()


def cache_file(cache_dir: Path, located: Located) -> Path:
    """``cifar10-<kind>-<split>-<hash of the resolved source path>.pt``: different roots do
    not collide."""
    key = hashlib.blake2b(str(located.path.resolve()).encode(), digest_size=8).hexdigest()
    return cache_dir / f"cifar10-{located.kind}-{located.source_split}-{key}.pt"


def _read_cache(path: Path, located: Located) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached tensors, or None (with a :class:`DataCacheWarning` naming the reason) when
    the file is absent, unreadable, stale or corrupt."""
    if not path.is_file():
        return None
    reason = None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        obj = None
        reason = f"unreadable ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    if reason is None:
        reason = _cache_problem(obj, located)
    if reason is not None:
        warnings.warn(
            f"Ignoring CIFAR-10 cache {path}: {reason}; rebuilding it from {located.path}.",
            DataCacheWarning,
            stacklevel=4,
        )
        return None
    assert isinstance(obj, dict)
    return obj["images"], obj["labels"]


def _cache_problem(obj: Any, located: Located) -> str | None:
    """Why a loaded cache object cannot be used, or None when it is good."""
    if not isinstance(obj, dict):
        return f"unexpected content ({type(obj).__name__})"
    if obj.get("format_version") != CACHE_FORMAT_VERSION:
        return f"format version {obj.get('format_version')!r}, expected {CACHE_FORMAT_VERSION}"
    if obj.get("fingerprint") != located.fingerprint:
        return "the source files changed since it was written (fingerprint differs)"
    images, labels = obj.get("images"), obj.get("labels")
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return "images/labels missing"
    n = labels.shape[0] if labels.ndim == 1 else -1
    if images.dtype != torch.uint8 or tuple(images.shape) != (n, 3, IMAGE_SIZE, IMAGE_SIZE):
        return f"images are {tuple(images.shape)} {images.dtype}, expected M x 3 x 32 x 32 uint8"
    if labels.dtype != torch.int64 or labels.ndim != 1:
        return f"labels are {tuple(labels.shape)} {labels.dtype}, expected M int64"
    if obj.get("checksum") != _checksum(images, labels):
        return "checksum mismatch (the file is corrupted)"
    return None


def _write_cache(path: Path, located: Located, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Save atomically (:func:`skipenv.utils.atomic_write`), checked first
    (:func:`skipenv.utils.check_payload`) and read back before it replaces an old cache. A
    failure to write only warns: the data is in memory and the next load tries again."""
    payload = {
        "format_version": CACHE_FORMAT_VERSION,
        "source": located.kind,
        "source_split": located.source_split,
        "source_path": str(located.path.resolve()),
        "fingerprint": located.fingerprint,
        "checksum": _checksum(images, labels),
        "classes": list(CIFAR10_CLASSES),
        "images": images,  # M x 3 x 32 x 32 uint8
        "labels": labels,  # M int64
    }
    check_payload(payload, "torch", f"the CIFAR-10 cache {path}")  # a bug if it ever raises

    def verify(tmp: Path) -> None:  # read back as load_source_split will read it
        try:
            problem = _cache_problem(
                torch.load(tmp, map_location="cpu", weights_only=True), located
            )
        except Exception as err:
            problem = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        if problem is not None:
            raise OSError(f"the written cache does not read back ({problem})")

    try:
        atomic_write(path, lambda f: torch.save(payload, f), verify)
    except OSError as err:
        warnings.warn(
            f"Could not write the CIFAR-10 cache {path} ({err}); continuing without it.",
            DataCacheWarning,
            stacklevel=4,
        )


def load_source_split(
    located: Located, cache_dir: Path, progress: bool, rebuild: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    cache_path = cache_file(cache_dir, located)
    if not rebuild:
        start = time.perf_counter()
        cached = _read_cache(cache_path, located)
        if cached is not None:
            logger.info(
                "loaded %d images from cache %s in %.2f s",
                len(cached[1]),
                cache_path,
                time.perf_counter() - start,
            )
            return cached
    start = time.perf_counter()
    images, labels = read_source(located, progress)
    build_s = time.perf_counter() - start
    _write_cache(cache_path, located, images, labels)
    logger.info(
        "decoded %d images from %s in %.2f s; cached to %s",
        len(labels),
        located.path,
        build_s,
        cache_path,
    )
    return images, labels
