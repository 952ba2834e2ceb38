"""Is the data pipeline fast enough? Augmented batches per second vs ResNet-38 training steps.

Measured on the cached CIFAR-10 training split (real data, root from ``--data-dir`` or
``$SKIPNET_DATA``):

- ``load_cifar10``: the first call (a decode when no cache exists yet) and a cached call;
- ``loader``: :class:`skipenv.data.loader.BatchLoader` batches (shuffle, random crop + flip,
  normalisation) of 128, on the chosen device;
- ``resnet38_train_step``: one SGD step (momentum 0.9, forward + backward + step, train mode)
  of ResNet-38 on a batch of 128.

The ratio is loader batches per second over training steps per second: well above 1 means
the loader is not the bottleneck. Rates are medians over repeats, after a warm-up. Run by
hand, never in CI:

    python benchmarks/data.py --data-dir ~/.cache/skipnet-data
    python benchmarks/data.py --device cuda --channels-last --json results/data.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from skipenv.data.loader import BatchLoader
from skipenv.data.splits import load_cifar10
from skipenv.training.devices import prepare_device
from skipenv.utils import write_json


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(
    run: Callable[[], None], count: int, repeats: int, device: torch.device
) -> tuple[float, list[float]]:
    """Median over ``repeats`` of ``count`` calls of ``run`` per second (CUDA synchronised)."""
    rates = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(count):
            run()
        sync(device)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates), rates


def endless(loader: BatchLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches from epoch after epoch."""
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="data root (default: $SKIPNET_DATA)")
    parser.add_argument("--cache-dir", default=None, help="tensor cache (default: per user)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case")
    parser.add_argument("--loader-batches", type=int, default=50, help="batches per repeat")
    parser.add_argument(
        "--train-steps", type=int, default=None, help="steps per repeat (default: 3 CPU, 20 GPU)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (2 CPU, 10 GPU)")
    parser.add_argument(
        "--channels-last", action="store_true", help="channels_last batches and model"
    )
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: all cores; lower it when another job shares the machine)",
    )
    args = parser.parse_args(argv)

    device = prepare_device(args.device, args.threads)
    on_gpu = device.type == "cuda"
    train_steps = args.train_steps or (20 if on_gpu else 3)
    warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 2)
    print(
        f"device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if on_gpu else "")
        + f", torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"batch {args.batch_size}, channels_last={args.channels_last}"
    )

    start = time.perf_counter()
    load_cifar10("train", args.data_dir, cache_dir=args.cache_dir)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    train = load_cifar10("train", args.data_dir, cache_dir=args.cache_dir)
    cached_s = time.perf_counter() - start
    print(
        f"load_cifar10('train'): first call {first_s:.2f} s (a decode if no cache existed), "
        f"cached {cached_s:.2f} s, {len(train)} images from {train.path}"
    )

    loader = BatchLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        augment=True,
        drop_last=True,
        device=device,
        seed=0,
        channels_last=args.channels_last,
    )
    batches = endless(loader)
    last: list[tuple[torch.Tensor, torch.Tensor]] = []

    def next_batch() -> None:
        last[:] = [next(batches)]

    for _ in range(max(warmup, 3)):
        next_batch()
    loader_rate, loader_rates = median_rate(next_batch, args.loader_batches, args.repeats, device)

    from skipenv.models.resnet import build_resnet

    model = build_resnet(38).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = last[0]

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        train_step()
    step_rate, step_rates = median_rate(train_step, train_steps, args.repeats, device)

    ratio = loader_rate / step_rate
    common = {
        "batch_size": args.batch_size,
        "device": str(device),
        "channels_last": args.channels_last,
    }
    rows = [
        {
            "name": "load_cifar10_train",
            "images": len(train),
            "first_call_s": first_s,
            "cached_s": cached_s,
        },
        {
            "name": "loader",
            **common,
            "batches_per_s": loader_rate,
            "images_per_s": loader_rate * args.batch_size,
            "repeats": loader_rates,
        },
        {
            "name": "resnet38_train_step",
            **common,
            "steps_per_s": step_rate,
            "images_per_s": step_rate * args.batch_size,
            "repeats": step_rates,
        },
        {"name": "ratio", "loader_batches_per_train_step": ratio},
    ]

    print(f"\n{'name':<22} {'per second':>12} {'images/s':>10} {'ratio':>8}")
    print(
        f"{'loader':<22} {loader_rate:>12.1f} {loader_rate * args.batch_size:>10.0f} {ratio:>7.1f}x"
    )
    print(
        f"{'resnet38_train_step':<22} {step_rate:>12.2f} {step_rate * args.batch_size:>10.0f} "
        f"{1.0:>7.1f}x"
    )
    verdict = "not the bottleneck" if ratio > 3 else "a possible bottleneck"
    print(f"\nthe loader makes {ratio:.1f} batches per training step: {verdict}")

    if args.json:
        write_json(args.json, rows)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
