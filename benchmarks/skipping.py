"""Does skipping blocks save wall-clock time? Masked formulation vs real per-image skipping.

For each depth, random execute/skip decisions are drawn at the rate that gives an expected
executed-FLOPs fraction of about 1.0, 0.75, 0.5 and 0.25, and batched inference (eval mode,
no grad) is timed for

- ``masked``: every block computed, output mixed as ``g * block(x) + (1 - g) * shortcut(x)``
  (what the authors' code does), and
- ``skip``: each block run only on the images that execute it.

Every round runs each case once, in a shuffled order; a case's time ratio is the median over
rounds of its time over the full network's time in the same round, so slow drift of the
machine affects all modes alike. Each timed call follows an untimed call of the same case:
without it, a case timed right after one with other tensor sizes paid for the memory
allocator's adjustments (seen as the full network running 8% slower than the identical
all-execute skip path).

``--amp bf16`` (or ``fp16`` on CUDA) runs every case, the full network included, under
autocast; ``--fold-bn`` runs every case with each conv + batch norm as one folded
convolution (``SkipResNet.fold_batch_norm``; eval mode, so the outputs are the same
up to float rounding). ``--clock cpu`` times this process's CPU time instead of wall time
(CPU only): on a machine shared with other jobs it leaves out the waits for a core.

    python benchmarks/skipping.py                       # ResNet-38 and -110, batch 256
    python benchmarks/skipping.py --json results/skipping.json
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from skipenv.models.flops import MacsTable
from skipenv.models.resnet import build_resnet
from skipenv.training.devices import AMP_CHOICES, autocast, resolve_device, tune_cpu_allocator
from skipenv.utils import write_json


def rate_for_fraction(table: MacsTable, fraction: float) -> float:
    """Execute probability per decided block giving an expected FLOPs fraction ``fraction``."""
    fixed = table.stem + table.head + table.block_execute[0] + sum(table.block_skip[1:])
    span = sum(table.block_execute[1:]) - sum(table.block_skip[1:])
    return min(1.0, max(0.0, (fraction * table.full - fixed) / span))


def timed(fn: Callable[[], object], device: torch.device, clock: str = "wall") -> float:
    """Seconds one call of ``fn`` takes (synchronising CUDA): wall time, or with ``clock="cpu"``
    this process's CPU time."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = now()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return now() - start


def bench_depth(
    depth: int,
    fractions: list[float],
    batch_size: int,
    repeats: int,
    device: torch.device,
    channels_last: bool,
    seed: int,
    fold_bn: bool = False,
    clock: str = "wall",
    amp: str = "none",
) -> list[dict]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_resnet(depth).to(device, memory_format=fmt).eval()
    model.fold_batch_norm(fold_bn)  # every case alike, the full network included
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, 32, 32, generator=gen).to(device, memory_format=fmt)
    table = model.macs_table()
    cases: dict[tuple[str, float], Callable[[], object]] = {("full", 1.0): lambda: model(x)}
    measured: dict[float, float] = {}
    for fraction in fractions:
        rate = rate_for_fraction(table, fraction)
        execute = torch.rand(batch_size, model.num_decisions, generator=gen) < rate  # B x K
        executed = torch.cat([torch.ones(batch_size, 1, dtype=torch.bool), execute], dim=1)
        measured[fraction] = float(table.flops_fraction(executed).mean())
        execute = execute.to(device)
        gates = execute.float()  # B x K
        cases[("masked", fraction)] = lambda g=gates: model.forward_masked(x, g)
        cases[("skip", fraction)] = lambda e=execute: model.forward_skip(x, e)
    times: dict[tuple[str, float], list[float]] = {key: [] for key in cases}
    order = list(cases)
    shuffler = random.Random(seed)
    with torch.inference_mode(), autocast(device, amp):
        for fn in cases.values():  # warm-up
            fn()
        for _ in range(repeats):
            shuffler.shuffle(order)  # no case always runs first
            for key in order:
                cases[key]()  # untimed: the allocator and caches settle into this case's sizes
                times[key].append(timed(cases[key], device, clock))
    full_times = times[("full", 1.0)]
    full = statistics.median(full_times)
    rows = []
    for (mode, fraction), ts in times.items():
        if mode == "full":
            continue
        rows.append(
            {
                "depth": depth,
                "mode": mode,
                "target_fraction": fraction,
                "flops_fraction": round(measured[fraction], 4),
                # median over rounds of the ratio to the full network in the same round
                "time_ratio": round(
                    statistics.median(t / f for t, f in zip(ts, full_times, strict=True)), 4
                ),
                "median_s": round(statistics.median(ts), 5),
                "full_median_s": round(full, 5),
                "batch_size": batch_size,
                "repeats": repeats,
                "device": str(device),
                "fold_bn": fold_bn,
                "amp": amp,
                "clock": clock,
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    header = f"{'depth':>5} {'mode':>6} {'flops':>6} {'time':>6} {'time-flops':>10} {'ms':>8}"
    print(header)
    print("-" * len(header))
    for r in sorted(rows, key=lambda r: (r["depth"], r["mode"], -r["flops_fraction"])):
        gap = r["time_ratio"] - r["flops_fraction"]
        print(
            f"{r['depth']:>5} {r['mode']:>6} {r['flops_fraction']:>6.3f} {r['time_ratio']:>6.3f} "
            f"{gap:>+10.3f} {1000 * r['median_s']:>8.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--depths", type=int, nargs="+", default=[38, 110],
                        help="CIFAR ResNet depths (6n + 2), random weights")  # fmt: skip
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25],
                        help="target FLOPs fractions of the random routes timed")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--repeats", type=int, default=11, help="timed rounds")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--no-channels-last", action="store_true", help="use NCHW instead of channels_last"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's default allocator settings "
        "(see skipenv.training.devices.tune_cpu_allocator)",
    )
    parser.add_argument("--amp", choices=AMP_CHOICES, default="none", help="autocast of every case")
    parser.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold each batch norm into its conv in every case (SkipResNet.fold_batch_norm)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this process's CPU time (CPU only; steadier on a shared machine)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, images and routes")
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="allowed time_ratio - flops_fraction of the skipping cases (default: issue 13's "
        "target for the device: 0.05 on CPU, 0.10 on CUDA)",
    )
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error(f"--clock cpu times CPU work only; use --clock wall on {device}")
    tuned = device.type == "cpu" and not args.default_malloc and tune_cpu_allocator()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(
        f"device {device}, batch {args.batch_size}, median of {args.repeats}, "
        f"threads {torch.get_num_threads()}, channels_last {not args.no_channels_last}, "
        f"tuned allocator {tuned}, folded batch norm {args.fold_bn}, amp {args.amp}, "
        f"{args.clock} clock"
    )
    rows: list[dict] = []
    for depth in args.depths:
        rows += bench_depth(
            depth,
            args.fractions,
            args.batch_size,
            args.repeats,
            device,
            not args.no_channels_last,
            args.seed,
            args.fold_bn,
            args.clock,
            args.amp,
        )
    print_table(rows)
    target = args.target if args.target is not None else (0.10 if device.type == "cuda" else 0.05)
    skip_ok = all(
        r["time_ratio"] <= r["flops_fraction"] + target for r in rows if r["mode"] == "skip"
    )
    mask_ok = all(r["time_ratio"] >= 1.0 for r in rows if r["mode"] == "masked")
    print(f"\nskip: time_ratio <= flops_fraction + {target:.2f} everywhere: {skip_ok}")
    print(f"masked: time_ratio >= 1.0 everywhere: {mask_ok}")
    if args.json:
        write_json(args.json, rows)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
