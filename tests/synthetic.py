"""Synthetic CIFAR-10-shaped data written to disk for tests: never the real data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from skipenv.data.sources import CIFAR10_CLASSES

PER_CLASS = 20  # synthetic training images per class


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_folder(
    split_dir: Path, per_class: int = PER_CLASS, seed: int = 0, ext: str = ".png"
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``split_dir/<class>/NNNN<ext>`` random 32x32 RGB images; return the expected
    ``N x 3 x 32 x 32`` uint8 images and ``N`` labels in load order (class, then name)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, cls in enumerate(CIFAR10_CLASSES):
        for i in range(per_class):
            array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # H x W x 3
            write_image(split_dir / cls / f"{i:04d}{ext}", array)
            images.append(array.transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64)
