"""CIFAR-10 as cached uint8 tensors.

Two on-disk sources are understood, both found under a data root:

* the official python batches, ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch}``
  (fetched by torchvision's downloader when ``download=True``);
* an image-folder tree ``ROOT/{train,test}/<class>/*.{jpg,jpeg,png}``, also accepted one
  level down as ``ROOT/cifar10-jpeg/{train,test}/...`` (the layout of the shared archive
  ``cifar10-jpeg-train.tar.gz``).

A source split (the 50,000 training images or the 10,000 test images) is decoded once into a
``N x 3 x 32 x 32`` uint8 tensor plus int64 labels and cached with ``torch.save``; later loads
read the cache (about a second or less for 50,000 images) after checking its format version,
a fingerprint of the source files and a checksum of the tensor bytes. Anything suspicious
triggers a warning and a rebuild.

Splits (:func:`load_cifar10`): ``"train"`` (45,000), ``"val"`` (a fixed stratified 5,000, 10% of
each class, carved from the training images and independent of any user seed),
``"train-full"`` (50,000) and ``"test"`` (10,000; held out in this project, readable when the
user has the official data).

Every bad input raises one :class:`DataError` whose message says what is wrong, where, and
how to fix it. ``python -m skipenv.data --root ROOT --split train`` prints counts and timings.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
import secrets
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import platformdirs
import torch
from tqdm.auto import tqdm

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "SOURCES",
    "SPLITS",
    "VAL_SEED",
    "CifarSplit",
    "DataCacheWarning",
    "DataError",
    "default_cache_dir",
    "load_cifar10",
    "resolve_data_root",
    "split_indices",
    "val_indices",
]

logger = logging.getLogger(__name__)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
"""Class names in label order."""

# Per-channel mean and standard deviation of the official training pixels, in 0..1 units
# (the std is over all pixels, not the often-quoted mean of per-image stds 0.2023, ...).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

SPLITS: tuple[str, ...] = ("train", "val", "train-full", "test")
SOURCES: tuple[str, ...] = ("auto", "batches", "folder")

Split = Literal["train", "val", "train-full", "test"]
Source = Literal["auto", "batches", "folder"]

ENV_DATA_ROOT = "SKIPNET_DATA"
ENV_CACHE_DIR = "SKIPNET_CACHE"
APP_NAME = "skipnet-gym"
BATCHES_DIR = "cifar-10-batches-py"
ARCHIVE_DIR = "cifar10-jpeg"
ARCHIVE_NAME = "cifar10-jpeg-train.tar.gz"
BATCH_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
IMAGE_SIZE = 32

VAL_SEED = 20180711
"""Fixed seed of the validation carve-out. Never derived from a user seed: changing it changes
which 5,000 training images are the validation set, so results stop being comparable."""

CACHE_FORMAT_VERSION = 1


class DataError(RuntimeError):
    """The CIFAR-10 data is missing or malformed. The message says where and how to fix it."""


class DataCacheWarning(UserWarning):
    """A cached tensor file was unusable (corrupt, stale, other version) and is being rebuilt."""


@dataclass(frozen=True, eq=False)
class CifarSplit:
    """One split of CIFAR-10 held in memory as uint8 tensors.

    Attributes:
        images: ``N x 3 x 32 x 32`` uint8 tensor, RGB, values 0..255.
        labels: ``N`` int64 tensor, values in ``0..len(classes)-1``.
        classes: class names in label order.
        split: the split name (``"train"``, ``"val"``, ``"train-full"`` or ``"test"``).
        indices: ``N`` int64 positions of these images in the source split (the 50,000
            training images for train/val/train-full, the 10,000 test images for test).
        source: ``"batches"`` or ``"folder"`` (empty when built by hand).
        path: the batch directory or image-folder split directory that was read.
    """

    images: torch.Tensor  # N x 3 x 32 x 32 uint8
    labels: torch.Tensor  # N int64
    classes: tuple[str, ...] = CIFAR10_CLASSES
    split: str = ""
    indices: torch.Tensor | None = field(default=None, repr=False)  # N int64
    source: str = ""
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                "images must be an N x C x H x W uint8 tensor, got "
                f"{tuple(self.images.shape)} {self.images.dtype}"
            )
        if self.labels.ndim != 1 or self.labels.dtype != torch.int64:
            raise ValueError(
                f"labels must be an N int64 tensor, got {tuple(self.labels.shape)} "
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


# ----------------------------------------------------------------------------- paths


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$SKIPNET_DATA``, else a per-user cache folder
    (``platformdirs.user_cache_dir("skipnet-gym")/data``). ``~`` is expanded."""
    if root is None or str(root) == "":
        root = os.environ.get(ENV_DATA_ROOT) or None
    if root is None:
        return Path(platformdirs.user_cache_dir(APP_NAME)) / "data"
    return Path(root).expanduser()


def default_cache_dir() -> Path:
    """Where decoded tensors are cached: ``$SKIPNET_CACHE`` if set, else
    ``platformdirs.user_cache_dir("skipnet-gym")/tensors``."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "tensors"


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
    labels_np = torch.as_tensor(labels).reshape(-1).to("cpu", torch.int64).numpy()  # N int64
    keys = _index_keys(len(labels_np), seed)  # N uint64
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


# ------------------------------------------------------------------- locating data


@dataclass
class _Located:
    """A source split found on disk, with what is needed to read and fingerprint it."""

    kind: str  # "batches" | "folder"
    source_split: str  # "train" | "test"
    path: Path  # batch directory or image-folder split directory
    files: list[tuple[str, int]]  # folder: (image path, label); batches: (batch path, -1)
    fingerprint: dict[str, Any]


def _how_to_get(root: Path, source_split: str) -> str:
    if source_split == "test":
        return (
            "The test split is held out in this project: the shared archive "
            f"{ARCHIVE_NAME} holds only the training images and test accuracy is measured "
            'independently (tune on split="val"). A user with the official CIFAR-10 data reads '
            f'it with load_cifar10("test", root="{root}", download=True), which fetches the '
            f"official python batches (test_batch included) into {root / BATCHES_DIR}, or by "
            f"putting an image-folder tree at {root / 'test'}/<class>/*.png."
        )
    return (
        "To get the data, either\n"
        "  - download the official python batches: load_cifar10(..., download=True), or\n"
        f"    python -m skipenv.data --root {root} --download; or\n"
        f"  - unpack the image-folder archive: mkdir -p {root} && tar xzf {ARCHIVE_NAME} "
        f"-C {root}\n"
        f"The root is the root= argument, else ${ENV_DATA_ROOT}, else "
        f"{Path(platformdirs.user_cache_dir(APP_NAME)) / 'data'}."
    )


def _locate(root: Path, source_split: str, source: str, download: bool) -> _Located:
    """Find the source split under ``root`` (downloading the official batches if asked)."""
    if not root.exists():
        if download and source != "folder":
            root.mkdir(parents=True, exist_ok=True)
        else:
            raise DataError(
                f"CIFAR-10 data root {root} does not exist.\n{_how_to_get(root, source_split)}"
            )
    if not root.is_dir():
        raise DataError(f"CIFAR-10 data root {root} is not a directory.")

    tried: list[str] = []
    batch_dir = root / BATCHES_DIR
    names = BATCH_FILES[source_split]
    if source in ("auto", "batches"):
        located = _locate_batches(batch_dir, source_split)
        if located is not None:
            return located
        listed = names[0] if len(names) == 1 else "{" + ",".join(names) + "}"
        tried.append(f"{batch_dir}/{listed} (official python batches)")
    if source in ("auto", "folder"):
        for candidate in (root / source_split, root / ARCHIVE_DIR / source_split):
            if candidate.is_dir():
                return _scan_folder(candidate, source_split)
            tried.append(f"{candidate}/<class>/*.jpg|*.jpeg|*.png (image folder)")
    if download and source in ("auto", "batches"):
        _download_batches(root, source_split)
        located = _locate_batches(batch_dir, source_split)
        if located is not None:
            return located
        raise DataError(
            f"torchvision's CIFAR-10 download finished but {batch_dir} still lacks "
            f"{', '.join(names)}."
        )
    looked = "\n".join(f"  - {t}" for t in tried)
    raise DataError(
        f"No CIFAR-10 {source_split} data (source={source!r}) under {root}. Looked for:\n"
        f"{looked}\n{_how_to_get(root, source_split)}"
    )


def _locate_batches(batch_dir: Path, source_split: str) -> _Located | None:
    """The official batch files of a split, or None when none of them exists."""
    names = BATCH_FILES[source_split]
    paths = [batch_dir / n for n in names]
    present = [p for p in paths if p.is_file()]
    if not present:
        return None
    if len(present) < len(paths):
        missing = [p.name for p in paths if not p.is_file()]
        raise DataError(
            f"The official CIFAR-10 batches in {batch_dir} are incomplete: missing "
            f"{', '.join(missing)}. Delete the folder and load with download=True to fetch "
            "them again."
        )
    files = []
    for p in paths:
        st = p.stat()
        files.append([p.name, st.st_size, st.st_mtime_ns])
    fingerprint = {"kind": "batches", "files": files}
    return _Located("batches", source_split, batch_dir, [(str(p), -1) for p in paths], fingerprint)


def _scan_folder(split_dir: Path, source_split: str) -> _Located:
    """List ``split_dir/<class>/*.{jpg,jpeg,png}`` sorted by class then file name, check the
    class folders, and fingerprint the tree (file count, bytes, newest mtime, names) in the
    same walk."""
    try:
        entries = list(os.scandir(split_dir))
    except OSError as err:
        raise DataError(f"Cannot list image folder {split_dir}: {err}") from err
    class_dirs = {e.name: Path(e.path) for e in entries if e.is_dir() and e.name[0] != "."}
    missing = [c for c in CIFAR10_CLASSES if c not in class_dirs]
    extra = sorted(set(class_dirs) - set(CIFAR10_CLASSES))
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing: {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected: {', '.join(extra)}")
        raise DataError(
            f"The class folders in {split_dir} must be exactly the 10 CIFAR-10 classes "
            f"({', '.join(CIFAR10_CLASSES)}); {'; '.join(problems)}."
        )

    files: list[tuple[str, int]] = []
    total_bytes = 0
    newest_mtime_ns = 0
    names: list[str] = []
    for label, cls in enumerate(CIFAR10_CLASSES):
        class_dir = class_dirs[cls]
        found: list[tuple[str, int, int]] = []
        try:
            with os.scandir(class_dir) as it:
                for e in it:
                    if e.name[0] == "." or os.path.splitext(e.name)[1].lower() not in (
                        IMAGE_EXTENSIONS
                    ):
                        continue
                    if not e.is_file():
                        continue
                    st = e.stat()
                    found.append((e.name, st.st_size, st.st_mtime_ns))
        except OSError as err:
            raise DataError(f"Cannot list class folder {class_dir}: {err}") from err
        if not found:
            raise DataError(f"Class folder {class_dir} contains no images (*.jpg, *.jpeg, *.png).")
        found.sort()
        class_path = str(class_dir)
        files.extend((os.path.join(class_path, name), label) for name, _, _ in found)
        names.extend(f"{cls}/{name}" for name, _, _ in found)
        total_bytes += sum(size for _, size, _ in found)
        newest_mtime_ns = max(newest_mtime_ns, *(mtime for _, _, mtime in found))
    fingerprint = {
        "kind": "folder",
        "files": len(files),
        "bytes": total_bytes,
        "newest_mtime_ns": newest_mtime_ns,
        "names": hashlib.blake2b("\n".join(names).encode(), digest_size=16).hexdigest(),
    }
    return _Located("folder", source_split, split_dir, files, fingerprint)


def _download_batches(root: Path, source_split: str) -> None:
    """Fetch the official python batches into ``root/cifar-10-batches-py`` via torchvision."""
    try:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=source_split == "train", download=True)
    except Exception as err:
        raise DataError(
            f"Downloading the official CIFAR-10 batches into {root} failed "
            f"({type(err).__name__}: {err}). Check the network connection, or unpack "
            f"{ARCHIVE_NAME} with: mkdir -p {root} && tar xzf {ARCHIVE_NAME} -C {root}"
        ) from err


# ------------------------------------------------------------------------- decoding


def _decode_image_file(path: str) -> np.ndarray:
    """Decode one image file to a ``32 x 32 x 3`` uint8 RGB array with PIL (grayscale,
    palette, CMYK and RGBA images are converted to RGB; alpha is dropped). Raises
    :class:`DataError` naming the file.

    PIL rather than ``torchvision.io.decode_image``: torchvision 0.29 deprecates its image
    decoders (a DeprecationWarning per call), and PIL is about as fast once torchvision's
    import time is counted.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
            if (width, height) == (IMAGE_SIZE, IMAGE_SIZE):
                rgb = im if im.mode == "RGB" else im.convert("RGB")
                array = np.asarray(rgb)  # 32 x 32 x 3 uint8 (decodes the pixels)
    except Exception as err:
        raise DataError(
            f"Corrupt or unreadable image {path} ({type(err).__name__}: {err}). Delete or "
            "replace the file."
        ) from err
    if (width, height) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"Image {path} is {width}x{height} (width x height); CIFAR-10 images must be "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}."
        )
    return array


def _decode_folder(located: _Located, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(located.files)
    pixels = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)  # N x 32 x 32 x 3
    bar = tqdm(
        located.files,
        desc=f"decoding {located.path}",
        unit="img",
        disable=not progress,
        mininterval=0.5,
    )
    for i, (path, _) in enumerate(bar):
        pixels[i] = _decode_image_file(path)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # N x 3 x 32 x 32 uint8
    labels = torch.tensor([label for _, label in located.files], dtype=torch.int64)  # N
    return images, labels


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch contains (numpy arrays, lists, bytes), so a
    malicious pickle cannot run code."""

    _ALLOWED = frozenset(
        {
            ("_codecs", "encode"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a batch file")
        return super().find_class(module, name)


def _read_batch_file(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one official CIFAR-10 python batch: ``(N x 3 x 32 x 32 uint8, N int64)``."""
    hint = "Delete the folder and load with download=True to fetch the batches again."
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as err:
        raise DataError(
            f"Corrupt CIFAR-10 batch file {path} ({type(err).__name__}: {err}). {hint}"
        ) from err
    try:
        if not isinstance(batch, dict):
            raise ValueError(f"expected a dict, found {type(batch).__name__}")
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        if data is None or labels is None:
            raise ValueError(f"no 'data'/'labels' entries (keys: {sorted(map(str, batch))})")
        data = np.asarray(data)
        labels_np = np.asarray(labels)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE**2:
            raise ValueError(f"'data' is {data.shape} {data.dtype}, expected N x 3072 uint8")
        if labels_np.shape != (data.shape[0],) or not np.issubdtype(labels_np.dtype, np.integer):
            raise ValueError(f"'labels' has shape {labels_np.shape}, expected ({data.shape[0]},)")
        if data.shape[0] and (labels_np.min() < 0 or labels_np.max() >= len(CIFAR10_CLASSES)):
            raise ValueError(f"labels outside 0..{len(CIFAR10_CLASSES) - 1}")
    except ValueError as err:
        raise DataError(f"Corrupt CIFAR-10 batch file {path}: {err}. {hint}") from err
    images = torch.from_numpy(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).copy())  # N x 3 x 32 x 32
    return images, torch.from_numpy(labels_np.astype(np.int64))  # N int64


def _read_batches(located: _Located) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read_batch_file(path) for path, _ in located.files]
    images = torch.cat([p[0] for p in parts])  # N x 3 x 32 x 32 uint8
    labels = torch.cat([p[1] for p in parts])  # N int64
    return images, labels


def _build(located: _Located, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if located.kind == "batches":
        return _read_batches(located)
    return _decode_folder(located, progress)


# ---------------------------------------------------------------------------- cache


def _checksum(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(images.contiguous().numpy().reshape(-1))
    h.update(labels.contiguous().numpy().reshape(-1))
    return h.hexdigest()


def _cache_file(cache_dir: Path, located: _Located) -> Path:
    """``cifar10-<kind>-<split>-<hash of the resolved source path>.pt``: different roots do
    not collide."""
    key = hashlib.blake2b(str(located.path.resolve()).encode(), digest_size=8).hexdigest()
    return cache_dir / f"cifar10-{located.kind}-{located.source_split}-{key}.pt"


def _read_cache(path: Path, located: _Located) -> tuple[torch.Tensor, torch.Tensor] | None:
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


def _cache_problem(obj: Any, located: _Located) -> str | None:
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
        return f"images are {tuple(images.shape)} {images.dtype}, expected N x 3 x 32 x 32 uint8"
    if labels.dtype != torch.int64 or labels.ndim != 1:
        return f"labels are {tuple(labels.shape)} {labels.dtype}, expected N int64"
    if obj.get("checksum") != _checksum(images, labels):
        return "checksum mismatch (the file is corrupted)"
    return None


def _write_cache(path: Path, located: _Located, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Save atomically: write a temporary file in the same folder, then ``os.replace``. A
    failure only warns: the data is in memory and the next load tries again."""
    payload = {
        "format_version": CACHE_FORMAT_VERSION,
        "source": located.kind,
        "source_split": located.source_split,
        "source_path": str(located.path.resolve()),
        "fingerprint": located.fingerprint,
        "checksum": _checksum(images, labels),
        "classes": list(CIFAR10_CLASSES),
        "images": images,  # N x 3 x 32 x 32 uint8
        "labels": labels,  # N int64
    }
    tmp_name: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A unique name in the same folder (so os.replace is atomic), created with the usual
        # umask-governed permissions (tempfile would make it private to the user).
        tmp_name = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as err:
        warnings.warn(
            f"Could not write the CIFAR-10 cache {path} ({err}); continuing without it.",
            DataCacheWarning,
            stacklevel=4,
        )
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def _load_source_split(
    located: _Located, cache_dir: Path, progress: bool, rebuild: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    cache_path = _cache_file(cache_dir, located)
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
    images, labels = _build(located, progress)
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
            union) or ``"test"`` (10,000; held out in this project).
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
    data_root = resolve_data_root(root)
    cache_path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    source_split = "test" if split == "test" else "train"

    located = _locate(data_root, source_split, source, download)
    images, labels = _load_source_split(located, cache_path, progress, rebuild)
    if split in ("train", "val"):
        train_idx, val_idx = split_indices(labels)
        indices = train_idx if split == "train" else val_idx  # M int64
        images = images.index_select(0, indices)  # M x 3 x 32 x 32 uint8
        labels = labels.index_select(0, indices)  # M int64
    else:
        indices = torch.arange(len(labels), dtype=torch.int64)  # N int64
    return CifarSplit(
        images=images,
        labels=labels,
        classes=CIFAR10_CLASSES,
        split=split,
        indices=indices,
        source=located.kind,
        path=located.path,
    )


# ------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m skipenv.data``: load a split and print counts and timings."""
    parser = argparse.ArgumentParser(
        prog="python -m skipenv.data",
        description="Load a CIFAR-10 split (decoding and caching it on first use) and print "
        "counts and timings.",
    )
    parser.add_argument(
        "--root",
        default=None,
        help=f"data root (default: ${ENV_DATA_ROOT} or the per-user cache folder)",
    )
    parser.add_argument("--split", default="train", choices=SPLITS)
    parser.add_argument("--source", default="auto", choices=SOURCES)
    parser.add_argument("--cache-dir", default=None, help="tensor cache folder")
    parser.add_argument(
        "--download",
        action="store_true",
        help="fetch the official batches with torchvision if absent",
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="ignore the cache and decode again (times a first decode)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    start = time.perf_counter()
    try:
        data = load_cifar10(
            args.split,
            args.root,
            download=args.download,
            source=args.source,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
            rebuild=args.rebuild,
        )
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    mib = data.images.numel() / 2**20
    print(
        f"split:   {data.split}: {len(data)} images, {tuple(data.images.shape)} uint8 "
        f"({mib:.1f} MiB)"
    )
    print(f"source:  {data.source} at {data.path}")
    counts = ", ".join(f"{c} {n}" for c, n in zip(data.classes, data.class_counts(), strict=True))
    print(f"classes: {counts}")
    mean = data.images.float().mean(dim=(0, 2, 3)) / 255
    print(f"mean:    {', '.join(f'{m:.4f}' for m in mean.tolist())}")
    how = "forced rebuild" if args.rebuild else "from cache, or a first decode"
    print(f"time:    {seconds:.2f} s for load_cifar10 ({how}; see the log line above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
