"""Write the CIFAR-10 sample shipped in the package: 1,000 val images, 100 per class.

    SKIPNET_DATA=/path/to/cifar10 python scripts/make_sample.py

Reads the real ``val`` split (:func:`skipenv.data.load_cifar10`), keeps per class the 100
images with the smallest keys of a fixed hash of their position (the same hash as the val
carve-out, another seed), and writes ``skipenv/data/sample/cifar10-val-sample.npz``
(``images`` M x 3 x 32 x 32 uint8, ``labels``, ``indices`` among the 50,000 training images,
``note``), then reads it back with :func:`skipenv.data.splits.load_sample` and checks it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from skipenv.data.splits import SAMPLE_FILE, _index_keys, load_cifar10, load_sample
from skipenv.utils import atomic_write

SAMPLE_SEED = 20180712  # not VAL_SEED: another hash picks the sample within val


@dataclass
class Args:
    data_dir: str | None = None
    """CIFAR-10 data root holding the training images (default: $SKIPNET_DATA)"""
    per_class: int = 100
    """images of each class (10 classes)"""
    out: Path = Path(__file__).resolve().parents[1] / "skipenv" / "data" / "sample" / SAMPLE_FILE
    """the file to write"""


def main(args: Args) -> Path:
    val = load_cifar10("val", args.data_dir)
    labels = val.labels.numpy()  # M int64
    keys = _index_keys(len(labels), SAMPLE_SEED)  # M uint64
    chosen = []
    for c in range(len(val.classes)):
        members = np.flatnonzero(labels == c)
        if len(members) < args.per_class:
            raise ValueError(f"class {c} has {len(members)} val images < --per-class")
        chosen.append(members[np.argsort(keys[members])[: args.per_class]])
    order = np.sort(np.concatenate(chosen))  # positions within val
    pick = torch.from_numpy(order)
    note = (
        f"{len(order)} CIFAR-10 images of skipnet-gym's val split ({args.per_class} per class), "
        f"decoded from the {val.source} source "
        f"{val.path.parent.name + '/' + val.path.name if val.path else ''}"
    )
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        images=val.images.index_select(0, pick).numpy(),  # M x 3 x 32 x 32 uint8
        labels=val.labels.index_select(0, pick).numpy(),  # M int64
        indices=val.indices.index_select(0, pick).numpy(),  # M int64
        note=np.array(note),
    )
    atomic_write(args.out, lambda f: f.write(buffer.getvalue()))
    sample = load_sample() if args.out.name == SAMPLE_FILE else None
    if sample is not None:  # read back with its own reader
        assert sample.class_counts() == [args.per_class] * len(val.classes)
        assert torch.equal(sample.images, val.images.index_select(0, pick))
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.2f} MiB): {note}")
    return args.out


if __name__ == "__main__":
    main(tyro.cli(Args))
