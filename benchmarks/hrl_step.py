"""How much does an HRL training step cost next to a full-network training step, and where?

An HRL step samples every gate decision and really skips the blocks not executed, so its
forward and backward touch only the executed blocks; a full-network step (train/base.py)
runs every block. Both are timed at the same batch on the same backbone weights, with the
gates of a trained SkipNet checkpoint (so the skip rate is the one that training reached),
plus the SP step (masked: every block computed, gate on top) for reference. The HRL step is
the one train/hybrid.py takes (``agents.reinforce.hrl_step_loss``): exploration mixed into
the sampling and, with the greedy baseline, one extra no-gradient forward of the greedy
routes; batch norm frozen as train/hybrid.py does by default.

Each round runs the cases in a shuffled order, each once untimed and then timed; a case's
ratio is the median over rounds of its time over the full step's time in that round. The
learning rate is 0, so the weights and hence the skip rate stay fixed while timing.

Breakdown: the same rounds also time each case phase by phase (greedy-route forward,
sampled forward with its gate calls, loss, backward, optimiser), plus the backbone alone on
the same routes (``skipenv.models.gating.FixedGate``, no gate), whose difference to the sampled
forward and backward is what the gate calls cost. ``--baseline-impl`` adds the HRL step as
it was before issue 13 (``benchmarks/legacy_routing.py``) to the same rounds. With the greedy
baseline, ``hrl`` shares the sampled pass with the greedy routes where they coincide
(``agents.reinforce.sample_with_greedy``) and ``hrl (two passes)`` runs them one after the
other (``share_greedy=False``), in the same rounds; the output says for what share of the
decisions an image's two routes coincided. ``hrl`` runs each conv + frozen batch norm as one
folded convolution (``fold_bn=True``, train/hybrid.py's default); ``hrl (BN not folded)`` is
the same step with the two layers (``--no-fold-bn``), in the same rounds. ``--clock cpu``
times this process's CPU time instead of wall time (CPU only; on a machine shared with other
jobs it leaves out the waits for a core).

    python benchmarks/hrl_step.py --amp bf16 --baseline-impl --json results/hrl_step.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from legacy_routing import legacy_routing

from agents.reinforce import greedy_routes, hrl_step_loss, hybrid_loss, sample_with_greedy
from agents.skipnet import freeze_batch_norm, load_skipnet
from skipenv.data.loader import BatchLoader
from skipenv.data.splits import load_cifar10
from skipenv.models.checkpoint import CheckpointError
from skipenv.models.gating import FixedGate
from skipenv.models.pretrained import resolve_checkpoint
from skipenv.models.resnet import batch_norm_folded
from skipenv.training.devices import autocast, resolve_device, tune_cpu_allocator
from skipenv.utils import write_json


class Phases:
    """Seconds per named phase of one call (synchronising CUDA at each mark), by ``clock``:
    ``wall`` (``time.perf_counter``) or ``cpu`` (``time.process_time``, the CPU time of this
    process: on a machine shared with other jobs it leaves out the time spent waiting for a
    core, which wall time counts; on an idle machine with 1 thread the two agree)."""

    def __init__(self, device: torch.device, clock: str = "wall") -> None:
        self.device, self.times = device, {}
        self.now = time.process_time if clock == "cpu" else time.perf_counter

    def start(self) -> None:
        self._sync()
        self.times, self._last = {}, self.now()

    def mark(self, name: str) -> None:
        self._sync()
        now = self.now()
        self.times[name] = self.times.get(name, 0.0) + now - self._last
        self._last = now

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        default="skipnet38-ld-hrl-a1",
        help="an sp or hrl checkpoint: a path or a shipped name (default: the fewest FLOPs)",
    )
    parser.add_argument("--alpha", type=float, default=1.0, help="HRL compute reward")
    parser.add_argument("--explore", type=float, default=0.2, help="as train/hybrid.py")
    parser.add_argument(
        "--baseline",
        default="greedy",
        help="as train/hybrid.py (greedy: self-critical; its route shares the sampled pass "
        "until they differ)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=11, help="timed rounds")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--amp", default="none", help="none, bf16 or fp16 (as in training)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 root (train split images)")
    parser.add_argument(
        "--synthetic", action="store_true", help="random images (speed does not depend on them)"
    )
    parser.add_argument(
        "--baseline-impl",
        action="store_true",
        help="also time the pre-issue-13 routing and gate pooling in the same rounds",
    )
    parser.add_argument("--no-sp", action="store_true", help="leave out the SP (masked) step")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this process's CPU time (CPU only; steadier on a shared machine)",
    )
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
    if args.clock == "cpu" and device.type != "cpu":
        parser.error(f"--clock cpu times CPU work only; use --clock wall on {device}")
    if device.type == "cpu":
        tune_cpu_allocator()
    fmt = torch.channels_last
    skipnet = load_skipnet(checkpoint, map_location=device).to(memory_format=fmt)
    plain = copy.deepcopy(skipnet.backbone)  # same weights, every block run
    masked = copy.deepcopy(skipnet)
    if args.synthetic:
        gen = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.batch_size, 3, 32, 32, generator=gen)
        x = x.to(device, memory_format=fmt)  # B x 3 x 32 x 32
        y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)  # B
    else:
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
    shared_prefix: list[float] = []  # share of decisions before an image's routes fork
    sampled: list[tuple[float, float]] = []  # (block fraction, FLOPs fraction) per HRL step
    table = skipnet.backbone.macs_table()  # flops_fraction: backbone MACs, gate left out
    phases = Phases(device, args.clock)

    def full_step() -> None:
        with autocast(device, args.amp):
            logits = plain(x)  # B x 10
        phases.mark("forward")
        loss = F.cross_entropy(logits.float(), y)
        phases.mark("loss")
        opts["full"].zero_grad(set_to_none=True)
        loss.backward()
        phases.mark("backward")
        opts["full"].step()
        phases.mark("optimiser")

    def hrl_step(share: bool = True, fold: bool = True) -> None:  # what train/hybrid.py runs
        loss, _, out = hrl_step_loss(
            skipnet,
            x,
            y,
            generator=generator,
            alpha=args.alpha,
            baseline=args.baseline,
            explore=args.explore,
            amp=args.amp,
            share_greedy=share,
            fold_bn=fold,
        )
        phases.mark("forwards+loss")
        opts["hrl"].zero_grad(set_to_none=True)
        loss.backward()
        phases.mark("backward")
        opts["hrl"].step()
        phases.mark("optimiser")
        sampled.append(
            (float(out.executed.float().mean()), float(table.flops_fraction(out.executed).mean()))
        )

    def hrl_phases(share: bool = True, fold: bool = True) -> None:
        # hrl_step_loss's pieces, then the backbone alone on the same routes
        with batch_norm_folded(skipnet.backbone, fold):
            greedy, out = hrl_forwards(share)
        loss, _ = hybrid_loss(
            out.logits,
            out.probs,
            out.executed,
            y,
            alpha=args.alpha,
            baseline=args.baseline,
            greedy=greedy,
        )
        phases.mark("loss")
        opts["hrl"].zero_grad(set_to_none=True)
        loss.backward()
        phases.mark("backward")
        opts["hrl"].step()
        phases.mark("optimiser")
        fixed = FixedGate(out.executed[:, 1:])
        with batch_norm_folded(skipnet.backbone, fold), autocast(device, args.amp):
            logits = skipnet.backbone.forward_gated(x, fixed, mode="greedy").logits
        phases.mark("same routes, no gate: forward")
        opts["hrl"].zero_grad(set_to_none=True)
        F.cross_entropy(logits.float(), y).backward()
        phases.mark("same routes, no gate: backward")

    def hrl_forwards(share: bool) -> tuple:
        greedy = None
        if args.baseline == "greedy" and share:
            with autocast(device, args.amp):
                out, greedy = sample_with_greedy(
                    skipnet, x, generator=generator, explore=args.explore
                )
            phases.mark("sampled + greedy forward, shared")
            differs = out.executed != greedy[1]  # B x N
            first = torch.where(differs.any(1), differs.float().argmax(1), differs.shape[1])
            shared_prefix.append(
                float((first - 1).clamp(min=0).float().mean()) / (differs.shape[1] - 1)
            )
        else:
            if args.baseline == "greedy":
                greedy = greedy_routes(skipnet, x, args.amp)
            phases.mark("greedy forward")
            with autocast(device, args.amp):
                out = skipnet(x, mode="sample", generator=generator, explore=args.explore)
            phases.mark("sampled forward")
        return greedy, out

    def sp_step() -> None:
        with autocast(device, args.amp):
            out = masked(x, mode="hard", routing="masked")
        phases.mark("forward")
        loss = F.cross_entropy(out.logits.float(), y)
        opts["sp"].zero_grad(set_to_none=True)
        loss.backward()
        phases.mark("backward")
        opts["sp"].step()
        phases.mark("optimiser")

    legacy: Callable[[], contextlib.AbstractContextManager] = legacy_routing
    cases: dict[str, tuple[Callable[[], None], Callable[[], contextlib.AbstractContextManager]]]
    cases = {
        "full": (full_step, contextlib.nullcontext),
        "hrl": (hrl_step, contextlib.nullcontext),
        "hrl phases": (hrl_phases, contextlib.nullcontext),
        "hrl (BN not folded)": (lambda: hrl_step(fold=False), contextlib.nullcontext),
        "hrl phases (BN not folded)": (lambda: hrl_phases(fold=False), contextlib.nullcontext),
    }
    if args.baseline == "greedy":  # the greedy baseline as a second pass (before round 2)
        cases["hrl (two passes)"] = (lambda: hrl_step(share=False), contextlib.nullcontext)
        cases["hrl phases (two passes)"] = (
            lambda: hrl_phases(share=False),
            contextlib.nullcontext,
        )
    if not args.no_sp:
        cases["sp"] = (sp_step, contextlib.nullcontext)
    if args.baseline_impl:
        cases["hrl (before)"] = (lambda: hrl_step(share=False, fold=False), legacy)
        cases["hrl phases (before)"] = (lambda: hrl_phases(share=False, fold=False), legacy)
    rng = random.Random(args.seed)
    times: dict[str, list[float]] = {name: [] for name in cases}
    parts: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _ in range(args.repeats):
        order = list(cases)
        rng.shuffle(order)
        for name in order:
            fn, context = cases[name]
            with context():
                phases.start()
                fn()  # untimed: warms the allocator for this case's sizes
                phases.start()
                fn()
            times[name].append(sum(phases.times.values()))
            for phase, seconds in phases.times.items():
                parts[name][phase].append(seconds)
    full_t = times["full"]

    def ratio(name: str) -> float:
        return statistics.median(t / f for t, f in zip(times[name], full_t, strict=True))

    timed = [n for n in cases if "phases" not in n]
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
        "data": "synthetic" if args.synthetic else "cifar10-train",
        "clock": args.clock,
        "hrl_sampled_block_fraction": blocks,
        "hrl_sampled_flops_fraction": flops,
        "greedy_shared_decision_fraction": (
            statistics.mean(shared_prefix) if shared_prefix else None
        ),
        "step_s": {n: statistics.median(times[n]) for n in timed},
        "over_full": {n: ratio(n) for n in timed},
        "phases_ms": {
            name: {p: 1000 * statistics.median(v) for p, v in parts[name].items()}
            for name in ("full", *[n for n in cases if "phases" in n])
        },
    }
    print(
        f"device {device}, batch {args.batch_size}, threads {torch.get_num_threads()}, "
        f"amp {args.amp}, baseline {args.baseline}, {args.clock} clock, "
        f"median of {args.repeats} rounds"
    )
    print(
        f"HRL sampled {100 * blocks:.1f}% of blocks, {100 * flops:.1f}% of FLOPs "
        f"(explore {args.explore})"
    )
    if shared_prefix:
        print(
            "greedy route shared with the sampled one for "
            f"{100 * statistics.mean(shared_prefix):.1f}% of the decisions (mean per image)"
        )
    print()
    print(f"{'step':22s} {'ms':>8s} {'/ full':>7s}")
    for name in timed:
        print(f"{name:22s} {1000 * result['step_s'][name]:8.1f} {result['over_full'][name]:7.3f}")
    print("\nbreakdown, ms (median per phase; the last two are the backbone alone on the HRL")
    print("step's routes, so sampled - no gate = the gate calls):")
    for name, ph in result["phases_ms"].items():
        print(f"  {name}")
        for phase, ms in ph.items():
            print(f"    {phase:32s} {ms:8.1f}")
    if args.json is not None:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
