"""``python -m skipenv.data``: load a split (decoding and caching it on first use) and print
counts and timings."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from skipenv.data.sources import ENV_DATA_ROOT, SOURCES, DataError
from skipenv.data.splits import SPLITS, load_cifar10


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
