"""Finding CIFAR-10 on disk and decoding it: the official python batches or an image folder.

Two on-disk sources are understood, both found under a data root
(:func:`resolve_data_root`: ``root=``, else ``$SKIPNET_DATA``, else a per-user cache folder):

* the official python batches, ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch}``
  (fetched by torchvision's downloader when ``download=True``);
* an image-folder tree ``ROOT/{train,test}/<class>/*.{jpg,jpeg,png}``, also accepted one
  level down as ``ROOT/cifar10-jpeg/{train,test}/...`` (the layout of the shared archive
  ``cifar10-jpeg-train.tar.gz``).

:func:`locate` finds a source split (the 50,000 training or the 10,000 test images) and
fingerprints its files; :func:`read_source` decodes it into an ``M x 3 x 32 x 32`` uint8
tensor and ``M`` int64 labels. Every bad input raises one :class:`DataError` whose message says
what is wrong, where, and how to fix it. The class names and normalisation constants of
CIFAR-10 live here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import platformdirs
import torch
from tqdm.auto import tqdm

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

SOURCES: tuple[str, ...] = ("auto", "batches", "folder")
Source = Literal["auto", "batches", "folder"]

ENV_DATA_ROOT = "SKIPNET_DATA"
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


class DataError(RuntimeError):
    """The CIFAR-10 data is missing or malformed. The message says where and how to fix it."""


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$SKIPNET_DATA``, else a per-user cache folder
    (``platformdirs.user_cache_dir("skipnet-gym")/data``). ``~`` is expanded."""
    if root is None or str(root) == "":
        root = os.environ.get(ENV_DATA_ROOT) or None
    if root is None:
        return Path(platformdirs.user_cache_dir(APP_NAME)) / "data"
    return Path(root).expanduser()


# ------------------------------------------------------------------- locating data


@dataclass
class Located:
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


def locate(root: Path, source_split: str, source: str, download: bool) -> Located:
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


def _locate_batches(batch_dir: Path, source_split: str) -> Located | None:
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
        files.append([p.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    fingerprint = {"kind": "batches", "files": files}
    return Located("batches", source_split, batch_dir, [(str(p), -1) for p in paths], fingerprint)


def _scan_folder(split_dir: Path, source_split: str) -> Located:
    """List ``split_dir/<class>/*.{jpg,jpeg,png}`` sorted by class then file name, check the
    class folders, and fingerprint the tree in the same walk: file count, bytes, and a digest
    of every file's name, size, modification time, status-change time (ctime) and inode.

    Any change to a file's content changes its ctime (which, unlike the mtime, cannot be set
    back), and a file replaced by another has a new inode, so a cache built from the old
    files is never served for new ones.
    """
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
    digest = hashlib.blake2b(digest_size=16)
    for label, cls in enumerate(CIFAR10_CLASSES):
        class_dir = class_dirs[cls]
        found: list[tuple[str, int, int, int, int]] = []
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
                    found.append((e.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        except OSError as err:
            raise DataError(f"Cannot list class folder {class_dir}: {err}") from err
        if not found:
            raise DataError(f"Class folder {class_dir} contains no images (*.jpg, *.jpeg, *.png).")
        found.sort()
        class_path = str(class_dir)
        files.extend((os.path.join(class_path, entry[0]), label) for entry in found)
        total_bytes += sum(entry[1] for entry in found)
        for name, *stats in found:
            digest.update(f"{cls}/{name}\0{stats}\n".encode())
    fingerprint = {
        "kind": "folder",
        "files": len(files),
        "bytes": total_bytes,
        "stat_digest": digest.hexdigest(),
    }
    return Located("folder", source_split, split_dir, files, fingerprint)


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


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC
_JPEG_END = b"\xff\xd9"  # the EOI marker


@contextlib.contextmanager
def _strict_pil() -> Iterator[None]:
    """PIL with its defaults for damaged files, whatever the user has set: a truncated image
    or a broken PNG stream is an error, not grey padding (``ImageFile.LOAD_TRUNCATED_IMAGES``
    is False inside)."""
    from PIL import ImageFile

    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _decode_image_file(path: str) -> np.ndarray:
    """Decode one image file to a ``32 x 32 x 3`` uint8 RGB array with PIL (grayscale,
    palette, CMYK and RGBA images are converted to RGB; alpha is dropped). Raises
    :class:`DataError` naming the file.

    Only a whole file is accepted, under any PIL settings a user may have made: the bytes are
    read once, must end where the format ends (a PNG with its ``IEND`` chunk, a JPEG with its
    ``EOI`` marker, nothing after), and are decoded with truncated-image loading off (so a
    short or broken stream is an error, never padded pixels).

    PIL rather than ``torchvision.io.decode_image``: torchvision 0.29 deprecates its image
    decoders (a DeprecationWarning per call), and PIL is about as fast once torchvision's
    import time is counted.
    """
    from PIL import Image

    width = height = -1
    try:
        with open(path, "rb") as f:
            data = f.read()
        with _strict_pil(), Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as im:
            width, height = im.size
            ending = {"PNG": _PNG_END, "JPEG": _JPEG_END}[im.format]
            if not data.endswith(ending):
                raise ValueError(
                    f"the {im.format} data does not end with its end marker: the file is "
                    "truncated or has bytes appended"
                )
            if (width, height) == (IMAGE_SIZE, IMAGE_SIZE):
                im.load()  # decodes every pixel, or raises
                rgb = im if im.mode == "RGB" else im.convert("RGB")
                array = np.array(rgb, dtype=np.uint8)  # 32 x 32 x 3
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
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise DataError(f"Image {path} decoded to shape {array.shape}, not 32 x 32 x 3.")
    return array


def _decode_folder(located: Located, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(located.files)
    pixels = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)  # M x 32 x 32 x 3
    bar = tqdm(
        located.files,
        desc=f"decoding {located.path}",
        unit="img",
        disable=not progress,
        mininterval=0.5,
    )
    for i, (path, _) in enumerate(bar):
        pixels[i] = _decode_image_file(path)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # M x 3 x 32 x 32 uint8
    labels = torch.tensor([label for _, label in located.files], dtype=torch.int64)  # M
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
    """Read one official CIFAR-10 python batch: ``(M x 3 x 32 x 32 uint8, M int64)``."""
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
            raise ValueError(f"'data' is {data.shape} {data.dtype}, expected M x 3072 uint8")
        if labels_np.shape != (data.shape[0],) or not np.issubdtype(labels_np.dtype, np.integer):
            raise ValueError(f"'labels' has shape {labels_np.shape}, expected ({data.shape[0]},)")
        if data.shape[0] and (labels_np.min() < 0 or labels_np.max() >= len(CIFAR10_CLASSES)):
            raise ValueError(f"labels outside 0..{len(CIFAR10_CLASSES) - 1}")
    except ValueError as err:
        raise DataError(f"Corrupt CIFAR-10 batch file {path}: {err}. {hint}") from err
    images = torch.from_numpy(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).copy())  # M x 3 x 32 x 32
    return images, torch.from_numpy(labels_np.astype(np.int64))  # M int64


def _read_batches(located: Located) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read_batch_file(path) for path, _ in located.files]
    images = torch.cat([p[0] for p in parts])  # M x 3 x 32 x 32 uint8
    labels = torch.cat([p[1] for p in parts])  # M int64
    return images, labels


def read_source(located: Located, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if located.kind == "batches":
        return _read_batches(located)
    return _decode_folder(located, progress)
