"""The splits of CIFAR-10 and :func:`load_cifar10`, the one entry point to the data.

Splits: ``"train"`` (45,000), ``"val"`` (a fixed stratified 5,000, 10% of each class, carved
from the training images and independent of any user seed), ``"train-full"`` (50,000) and
``"test"`` (10,000; held out in this project, readable when the user has the official data).
``"val-agent"`` and ``"val-eval"`` split ``val`` in two disjoint parts for routing agents
(:func:`val_parts`): ``val-eval`` is the stratified 2,000 that agents are compared on (the
leaderboard's ``--split val --limit 2000 --seed 0``), ``val-agent`` the other 3,000, images
that no shipped backbone was trained on, for training agents on.
``"sample"`` is no part of those: 1,000 val images (100 per class) shipped inside the package
(``skipenv/data/sample/``), for demos, tutorials and a first run with no download; it is
read only when asked for by name, never in place of a missing split.
A split is held in memory as a :class:`CifarSplit` of uint8 tensors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from skipenv.data.cache import default_cache_dir, load_source_split
from skipenv.data.sources import (
    CIFAR10_CLASSES,
    SOURCES,
    DataError,
    Source,
    locate,
    resolve_data_root,
)

SPLITS: tuple[str, ...] = ("train", "val", "train-full", "test", "sample", "val-agent", "val-eval")
Split = Literal["train", "val", "train-full", "test", "sample", "val-agent", "val-eval"]

SAMPLE_FILE = "cifar10-val-sample.npz"
"""The shipped sample (``skipenv/data/sample/``): ``images`` M x 3 x 32 x 32 uint8, ``labels`` M
int64, ``indices`` M int64 (positions among the 50,000 training images; all in ``val``) and
``note`` (where the pixels came from). Written by ``scripts/make_sample.py``."""

VAL_SEED = 20180711
"""Fixed seed of the validation carve-out. Never derived from a user seed: changing it changes
which 5,000 training images are the validation set, so results stop being comparable."""


@dataclass(frozen=True, eq=False)
class CifarSplit:
    """One split of CIFAR-10 held in memory as uint8 tensors.

    Attributes:
        images: ``M x 3 x 32 x 32`` uint8 tensor, RGB, values 0..255.
        labels: ``M`` int64 tensor, values in ``0..len(classes)-1``.
        classes: class names in label order.
        split: the split name (one of :data:`SPLITS`).
        indices: ``M`` int64 positions of these images in the source split (the 50,000
            training images for train/val/train-full/sample, the 10,000 test images for test).
        source: ``"batches"``, ``"folder"`` or ``"sample"`` (empty when built by hand).
        path: the batch directory or image-folder split directory that was read.
    """

    images: torch.Tensor  # M x 3 x 32 x 32 uint8
    labels: torch.Tensor  # M int64
    classes: tuple[str, ...] = CIFAR10_CLASSES
    split: str = ""
    indices: torch.Tensor | None = field(default=None, repr=False)  # M int64
    source: str = ""
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                "images must be an M x C x H x W uint8 tensor, got "
                f"{tuple(self.images.shape)} {self.images.dtype}"
            )
        if self.labels.ndim != 1 or self.labels.dtype != torch.int64:
            raise ValueError(
                f"labels must be an M int64 tensor, got {tuple(self.labels.shape)} "
                f"{self.labels.dtype}"
            )
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> list[int]:
        """Number of images of each class, in label order."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    def __repr__(self) -> str:
        return (
            f"CifarSplit(split={self.split!r}, n={len(self)}, source={self.source!r}, "
            f"path={str(self.path) if self.path else None!r})"
        )


# ------------------------------------------------------------------ validation split


def _val_count(n: int) -> int:
    """10% of ``n``, rounded half up, in exact integer arithmetic (5000 -> 500, 20 -> 2)."""
    return (n + 5) // 10


_U64 = np.uint64


def _index_keys(n: int, seed: int) -> np.ndarray:
    """A fixed pseudo-random uint64 key per index 0..n-1 (splitmix64 of ``seed`` and the
    index). Pure integer arithmetic, so the keys depend neither on library versions nor on any
    global random state."""
    z = np.arange(n, dtype=_U64) + _U64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def val_indices(labels: torch.Tensor | Sequence[int], seed: int = VAL_SEED) -> torch.Tensor:
    """Sorted positions of the validation images within the full training split.

    Stratified: for every class, 10% of its images (rounded half up; 500 of 5,000 on the real
    data), the ones with the smallest keys of a fixed hash of (``seed``, position). The result
    depends only on ``labels`` and ``seed``; leave ``seed`` at :data:`VAL_SEED`.
    """
    labels_np = torch.as_tensor(labels).reshape(-1).to("cpu", torch.int64).numpy()  # M int64
    keys = _index_keys(len(labels_np), seed)  # M uint64
    order = np.lexsort((keys, labels_np))  # by class, then key (keys are distinct)
    sorted_labels = labels_np[order]
    chosen = []
    for c in np.unique(labels_np):
        start, stop = np.searchsorted(sorted_labels, [c, c + 1])
        chosen.append(order[start : start + _val_count(int(stop - start))])
    val = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(val.astype(np.int64))


def split_indices(labels: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` sorted positions within the full training split: disjoint, and their
    union is every position. ``val`` is :func:`val_indices`."""
    labels_t = torch.as_tensor(labels).reshape(-1)
    val = val_indices(labels_t)
    is_val = torch.zeros(len(labels_t), dtype=torch.bool)
    is_val[val] = True
    train = torch.nonzero(~is_val).reshape(-1)
    return train, val


VAL_EVAL_SEED = 0
"""Seed of :func:`stratified_subset` that picks ``val-eval`` within ``val`` (the leaderboard's
``--seed 0``). Fixed, like :data:`VAL_SEED`: changing it changes which images agents train
and are scored on."""


def val_eval_count(m: int) -> int:
    """Images of ``val-eval`` among ``m`` val images: 40%, rounded half up (5,000 -> 2,000)."""
    return (2 * m + 2) // 5


def val_parts(val_labels: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(agent, eval)``: sorted positions within ``val`` of ``val-agent`` and ``val-eval``.

    ``eval`` is ``stratified_subset(val_labels, val_eval_count(M), seed=VAL_EVAL_SEED)``, the
    2,000 val images (200 per class) that ``scripts/compare_agents.py --limit 2000`` and
    ``evaluate_on(..., limit=2000, seed=0)`` route; ``agent`` is every other val position
    (3,000; 300 per class). Disjoint, their union is every position of ``val``.

    Args:
        val_labels: the M labels of ``val``, in its order.

    Raises:
        ValueError: fewer than 2 val images (no room for two parts).
    """
    labels_t = torch.as_tensor(val_labels).reshape(-1)
    m = len(labels_t)
    if m < 2:
        raise ValueError(f"val-agent and val-eval need at least 2 val images, got {m}")
    evaluation = stratified_subset(labels_t, val_eval_count(m), seed=VAL_EVAL_SEED)
    is_eval = torch.zeros(m, dtype=torch.bool)
    is_eval[evaluation] = True
    return torch.nonzero(~is_eval).reshape(-1), evaluation


# ---------------------------------------------------------------------- subsets


def stratified_subset(labels: torch.Tensor | Sequence[int], n: int, seed: int = 0) -> torch.Tensor:
    """Sorted positions of ``n`` images drawn from every class in proportion to its share:
    the one way to evaluate on part of a split.

    The first ``n`` images of a split are not a sample of it (the splits are ordered by class
    in image folders: the first 1,000 val images are airplanes and automobiles). Here each
    class gets ``n * count / M`` images, rounded by largest remainder (ties to the lower
    class), chosen within the class by a fixed hash of (``seed``, position), so the subset
    depends only on ``labels``, ``n`` and ``seed``. ``n >= M`` gives every position.

    Args:
        labels: M class labels.
        n: images wanted, >= 1.
        seed: picks which images of each class.

    Returns:
        ``min(n, M)`` int64 positions, sorted.

    Raises:
        ValueError: ``n`` < 1 or not an int.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    labels_np = torch.as_tensor(labels).reshape(-1).to("cpu", torch.int64).numpy()  # M int64
    m = len(labels_np)
    if n >= m:
        return torch.arange(m, dtype=torch.int64)
    classes, counts = np.unique(labels_np, return_counts=True)
    quota = n * counts // m  # floors, exact integers
    remainder = n * counts - quota * m
    extra = n - int(quota.sum())
    for k in np.lexsort((np.arange(len(classes)), -remainder))[:extra]:
        quota[k] += 1
    keys = _index_keys(m, seed)  # M uint64
    order = np.lexsort((keys, labels_np))  # by class, then key
    sorted_labels = labels_np[order]
    chosen = []
    for c, q in zip(classes, quota, strict=True):
        start = np.searchsorted(sorted_labels, c)
        chosen.append(order[start : start + int(q)])
    return torch.from_numpy(np.sort(np.concatenate(chosen)).astype(np.int64))


def per_class(labels: torch.Tensor | Sequence[int], num_classes: int) -> list[int]:
    """Images of each class 0..num_classes-1 among ``labels`` (to report what a subset holds)."""
    return torch.bincount(torch.as_tensor(labels).reshape(-1), minlength=num_classes).tolist()


# ---------------------------------------------------------------------- shipped sample


def sample_path() -> Path:
    """The shipped sample file (:data:`SAMPLE_FILE`) in the installed package."""
    import importlib.resources

    folder = importlib.resources.files("skipenv.data") / "sample"
    return Path(os.fspath(folder)) / SAMPLE_FILE  # type: ignore[arg-type]


def load_sample() -> CifarSplit:
    """The shipped 1,000-image sample of ``val`` (100 per class), with no data root needed.

    Raises:
        DataError: the file is missing or malformed (an incomplete install).
    """
    path = sample_path()
    try:
        with np.load(path, allow_pickle=False) as f:
            images = torch.from_numpy(np.ascontiguousarray(f["images"]))  # M x 3 x 32 x 32
            labels = torch.from_numpy(f["labels"].astype(np.int64))  # M
            indices = torch.from_numpy(f["indices"].astype(np.int64))  # M
    except (OSError, KeyError, ValueError) as err:
        raise DataError(
            f"The shipped CIFAR-10 sample {path} is missing or unreadable ({err}); the install "
            "of skipnet-gym is incomplete: reinstall it (the sample is package data)."
        ) from err
    try:
        return CifarSplit(images, labels, CIFAR10_CLASSES, "sample", indices, "sample", path)
    except ValueError as err:
        raise DataError(f"The shipped CIFAR-10 sample {path} is malformed: {err}") from err


# ---------------------------------------------------------------------- public entry


def load_cifar10(
    split: Split | str,
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    source: Source | str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    rebuild: bool = False,
) -> CifarSplit:
    """Load a CIFAR-10 split as uint8 tensors, decoding once and caching.

    Args:
        split: ``"train"`` (45,000 images), ``"val"`` (the fixed stratified 5,000 carved from
            the training images, see :func:`val_indices`), ``"train-full"`` (50,000, their
            union), ``"val-agent"`` / ``"val-eval"`` (3,000 / the stratified 2,000 of val,
            see :func:`val_parts`), ``"test"`` (10,000; held out in this project) or
            ``"sample"`` (1,000 val
            images shipped in the package, :func:`load_sample`; ``root`` and the other
            arguments are not used).
        root: data root (see :func:`resolve_data_root`): ``root``, else ``$SKIPNET_DATA``,
            else the per-user cache folder.
        download: fetch the official python batches with torchvision when neither source is
            present (needs internet).
        source: ``"batches"`` (official python batches), ``"folder"`` (image folders) or
            ``"auto"`` (batches when present, else folders).
        cache_dir: where decoded tensors are cached; default :func:`default_cache_dir`.
        progress: show a progress bar while decoding image files.
        rebuild: ignore an existing cache and decode again (the cache is rewritten).

    Raises:
        ValueError: unknown ``split`` or ``source``.
        DataError: missing or malformed data; the message says where and how to fix it.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown CIFAR-10 split {split!r}; valid splits: {', '.join(SPLITS)}.")
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; valid sources: {', '.join(SOURCES)}.")
    if download and source == "folder":
        raise ValueError(
            "download=True fetches the official python batches; it cannot be combined with "
            'source="folder".'
        )
    if split == "sample":
        return load_sample()
    data_root = resolve_data_root(root)
    cache_path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    source_split = "test" if split == "test" else "train"

    located = locate(data_root, source_split, source, download)
    images, labels = load_source_split(located, cache_path, progress, rebuild)
    if split in ("train", "val", "val-agent", "val-eval"):
        train_idx, val_idx = split_indices(labels)
        indices = train_idx if split == "train" else val_idx  # M int64
        if split in ("val-agent", "val-eval"):
            agent, evaluation = val_parts(labels.index_select(0, val_idx))
            indices = val_idx.index_select(0, agent if split == "val-agent" else evaluation)
        images = images.index_select(0, indices)  # M x 3 x 32 x 32 uint8
        labels = labels.index_select(0, indices)  # M int64
    else:
        indices = torch.arange(len(labels), dtype=torch.int64)  # M int64
    return CifarSplit(
        images=images,
        labels=labels,
        classes=CIFAR10_CLASSES,
        split=split,
        indices=indices,
        source=located.kind,
        path=located.path,
    )
