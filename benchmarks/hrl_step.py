"""How much does an HRL training step cost next to a full-network training step?

An HRL step samples every gate decision and really skips the blocks not executed, so its
forward and backward touch only the executed blocks; a full-network step (train/base.py)
runs every block. Both are timed at the same batch on the same backbone weights, with the
gates of a trained SkipNet checkpoint (so the skip rate is the one that training reached),
plus the SP step (masked: every block computed, gate on top) for reference. The HRL step is
the one train/hybrid.py takes: exploration mixed into the sampling and, with the greedy
baseline, one extra no-gradient forward of the greedy routes.

Each round runs the three steps in a shuffled order, each once untimed and then timed; a
step's ratio is the median over rounds of its time over the full step's time in that round.
The learning rate is 0, so the weights and hence the skip rate stay fixed while timing.

    python benchmarks/hrl_step.py --checkpoint runs/hrl38/final.pt --json results/hrl_step.json
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from agents.reinforce import hrl_step_loss
from agents.skipnet import freeze_batch_norm, load_skipnet
from skipenv.data.loader import BatchLoader
from skipenv.data.splits import load_cifar10
from skipenv.models.checkpoint import CheckpointError
from skipenv.models.pretrained import resolve_checkpoint
from skipenv.training.devices import autocast, resolve_device, tune_cpu_allocator
from skipenv.utils import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", required=True, help="an sp or hrl checkpoint: a path or a shipped name"
    )
    parser.add_argument("--alpha", type=float, default=3.0, help="HRL compute reward")
    parser.add_argument("--explore", type=float, default=0.2, help="as train/hybrid.py")
    parser.add_argument(
        "--baseline", default="greedy", help="as train/hybrid.py (greedy adds a no-grad forward)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=11, help="timed rounds")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--amp", default="none", help="none or bf16 (as in training)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 root (train split images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
    except CheckpointError as err:
        parser.error(str(err))

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    fmt = torch.channels_last
    skipnet = load_skipnet(checkpoint, map_location=device).to(memory_format=fmt)
    plain = copy.deepcopy(skipnet.backbone)  # same weights, every block run
    masked = copy.deepcopy(skipnet)
    loader = BatchLoader(
        load_cifar10("train", args.data_dir),
        batch_size=args.batch_size,
        shuffle=True,
        augment=True,
        device=device,
        seed=args.seed,
        channels_last=True,
    )
    x, y = next(iter(loader))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    opts = {
        name: torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9)
        for name, m in [("full", plain), ("hrl", skipnet), ("sp", masked)]
    }
    plain.train()
    masked.train()
    skipnet.train()
    freeze_batch_norm(skipnet)  # as train/hybrid.py does by default
    sampled: list[tuple[float, float]] = []  # (block fraction, FLOPs fraction) per HRL step
    table = skipnet.backbone.macs_table()  # flops_fraction: backbone MACs, gate left out

    def full_step() -> None:
        with autocast(device, args.amp):
            logits = plain(x)  # B x 10
        loss = F.cross_entropy(logits.float(), y)
        opts["full"].zero_grad(set_to_none=True)
        loss.backward()
        opts["full"].step()

    def hrl_step() -> None:
        loss, _, out = hrl_step_loss(  # the same forward passes and loss as train/hybrid.py
            skipnet,
            x,
            y,
            generator=generator,
            alpha=args.alpha,
            baseline=args.baseline,
            explore=args.explore,
            amp=args.amp,
        )
        opts["hrl"].zero_grad(set_to_none=True)
        loss.backward()
        opts["hrl"].step()
        sampled.append(
            (float(out.executed.float().mean()), float(table.flops_fraction(out.executed).mean()))
        )

    def sp_step() -> None:
        with autocast(device, args.amp):
            out = masked(x, mode="hard", routing="masked")
        loss = F.cross_entropy(out.logits.float(), y)
        opts["sp"].zero_grad(set_to_none=True)
        loss.backward()
        opts["sp"].step()

    cases: dict[str, Callable[[], None]] = {"full": full_step, "hrl": hrl_step, "sp": sp_step}
    rng = random.Random(args.seed)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        order = list(cases)
        rng.shuffle(order)
        for name in order:
            cases[name]()  # untimed: warms the allocator for this case's sizes
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            cases[name]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    ratios = {
        name: statistics.median(t / f for t, f in zip(times[name], times["full"], strict=True))
        for name in ("hrl", "sp")
    }
    blocks = statistics.mean(b for b, _ in sampled)
    flops = statistics.mean(f for _, f in sampled)
    result = {
        "checkpoint": str(args.checkpoint),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "amp": args.amp,
        "explore": args.explore,
        "baseline": args.baseline,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "full_step_s": statistics.median(times["full"]),
        "hrl_step_s": statistics.median(times["hrl"]),
        "sp_step_s": statistics.median(times["sp"]),
        "hrl_over_full": ratios["hrl"],
        "sp_over_full": ratios["sp"],
        "hrl_sampled_block_fraction": blocks,
        "hrl_sampled_flops_fraction": flops,
    }
    print(
        f"device {device}, batch {args.batch_size}, threads {torch.get_num_threads()}, "
        f"amp {args.amp}, median of {args.repeats} rounds"
    )
    print(f"full-network step  {1000 * result['full_step_s']:8.1f} ms   1.000")
    print(
        f"HRL step           {1000 * result['hrl_step_s']:8.1f} ms   {ratios['hrl']:.3f}   "
        f"(sampled: {100 * blocks:.1f}% of blocks, {100 * flops:.1f}% of FLOPs)"
    )
    print(f"SP step (masked)   {1000 * result['sp_step_s']:8.1f} ms   {ratios['sp']:.3f}")
    if args.json is not None:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
