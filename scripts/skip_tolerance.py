"""How much room for per-image routing does a backbone leave? Accuracy under random routes.

    python scripts/skip_tolerance.py --checkpoint resnet38 --split val \\
        --json results/routing/skip_tolerance-resnet38.json
    python scripts/skip_tolerance.py --checkpoint skipnet38-hrl-a0.6 --routes 16 --seed 0

The backbone of ``--checkpoint`` (a shipped name or a base/sp/hrl/static checkpoint; a gate
or route is ignored) is run on every image of ``--split`` with real skipping
(``forward_skip``, eval mode):

- ``full_accuracy``: every block run;
- per fraction f (``--fractions``, default 0.5 and 0.75): each image its own random route
  that runs exactly m = floor(f * K + 0.5) of the K decidable blocks (block 0 always runs),
  drawn uniformly; ``--routes`` R independent draws (seeded by ``--seed``): the mean, standard
  deviation and per-draw accuracy, and the mean ``flops_fraction`` of the routes (backbone
  MACs run over the full network's);
- ``oracle_accuracy``: the share of images that at least one of the R routes at the first
  fraction (50%) classifies right: what a perfect per-image router choosing among R random
  half-routes could reach.

A backbone that keeps its accuracy under random skipping tolerates per-image routes; a high
oracle with a low mean says that which blocks an image needs differs between images.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
import tyro
from tqdm.auto import tqdm

from agents.skipnet import load_backbone_and_gate
from agents.static import selection_batches
from skipenv.data.splits import load_cifar10
from skipenv.models.checkpoint import CheckpointError
from skipenv.models.resnet import SkipResNet
from skipenv.training.devices import autocast, prepare_device
from skipenv.training.runs import MeasureArgs
from skipenv.training.summary import images, print_summary
from skipenv.utils import write_json


@dataclass
class Args(MeasureArgs):
    checkpoint: str
    """a shipped model's name or a base/sp/hrl/static checkpoint (its backbone is used)"""
    split: str = "val"
    """split to measure on (val: the 5,000 held out of train)"""
    routes: int = 16
    """R: random routes per image and fraction (independent draws)"""
    seed: int = 0
    """seeds the random routes"""
    fractions: list[float] = field(default_factory=lambda: [0.5, 0.75])
    """fractions of the K decidable blocks a random route runs; the oracle uses the first"""
    limit: int | None = None
    """use a stratified subset of this many images (every class in its share; default: all)"""


def random_decisions(
    batch: int, num_decisions: int, run: int, generator: torch.Generator
) -> torch.Tensor:
    """B x K bool: each row runs exactly ``run`` of the K blocks, chosen uniformly."""
    keys = torch.rand(batch, num_decisions, generator=generator)  # B x K
    ranks = keys.argsort(dim=1).argsort(dim=1)  # B x K, a random permutation per row
    return ranks < run


def correct_flags(
    backbone: SkipResNet,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    decisions: list[torch.Tensor] | None,
    amp_ctx,
) -> torch.Tensor:
    """Per image, whether the backbone with ``decisions`` (per batch B x K; None: every block)
    classifies it right."""
    out = []
    with torch.inference_mode():
        for i, (x, y) in enumerate(batches):
            with amp_ctx():
                if decisions is None:
                    logits = backbone(x)  # B x classes
                else:
                    logits = backbone.forward_skip(x, decisions[i].to(x.device))
            out.append((logits.argmax(dim=1) == y).cpu())
    return torch.cat(out)


def main(args: Args) -> dict:
    if args.routes < 1 or not args.fractions or not all(0 < f <= 1 for f in args.fractions):
        raise ValueError(
            f"need --routes >= 1 and --fractions in (0, 1], got {args.routes}, {args.fractions}"
        )
    device = prepare_device(args.device, args.threads)
    payload, backbone, _ = load_backbone_and_gate(args.checkpoint, map_location=device)
    backbone = backbone.to(memory_format=torch.channels_last).eval()
    data = load_cifar10(args.split, args.data_dir, progress=args.progress)
    batches = selection_batches(
        data,
        args.limit,
        args.seed,
        batch_size=args.batch_size,
        device=device,
        memory_format=torch.channels_last,
    )
    n = sum(len(y) for _, y in batches)
    k = backbone.num_decisions
    print_summary(
        f"scripts/skip_tolerance.py: {args.checkpoint} ({payload['kind']}, "
        f"ResNet-{backbone.depth}) under random routes, amp {args.amp}",
        device=device,
        data=images(n, args.split),
        steps=f"{1 + args.routes * len(args.fractions)} passes: the full route, then "
        f"{args.routes} random routes per image at each fraction {args.fractions}",
        out=args.json if args.json is not None else "stdout only (--json PATH to keep it)",
    )
    table = backbone.macs_table()
    amp_ctx = (lambda: autocast(device, args.amp)) if args.amp != "none" else contextlib.nullcontext
    started = time.monotonic()
    full = correct_flags(backbone, batches, None, amp_ctx)
    results: dict = {
        "checkpoint": args.checkpoint,
        "kind": payload["kind"],
        "depth": backbone.depth,
        "split": args.split,
        "num_images": n,
        "num_decisions": k,
        "routes": args.routes,
        "seed": args.seed,
        "amp": args.amp,
        "full_accuracy": int(full.sum()) / n,
        "random": {},
    }
    bar = tqdm(total=args.routes * len(args.fractions), disable=not args.progress, unit="route")
    oracle = None
    for fi, frac in enumerate(args.fractions):
        run = math.floor(frac * k + 0.5)
        accs, flops = [], []
        any_right = torch.zeros(n, dtype=torch.bool)
        for r in range(args.routes):
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + 1000 * fi + r)
            decisions = [random_decisions(len(y), k, run, g) for _, y in batches]  # B x K each
            right = correct_flags(backbone, batches, decisions, amp_ctx)
            any_right |= right
            accs.append(int(right.sum()) / n)
            decided = torch.cat(decisions)  # n x K
            executed = torch.cat([torch.ones(n, 1, dtype=torch.bool), decided], dim=1)  # n x N
            flops.append(float(table.flops_fraction(executed).mean()))
            bar.update()
            bar.set_postfix(fraction=frac, acc=f"{accs[-1]:.4f}")
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
        results["random"][str(frac)] = {
            "blocks_run": run + 1,
            "decidable_blocks_run": run,
            "accuracy_mean": mean,
            "accuracy_std": std,
            "accuracy_per_route": accs,
            "flops_fraction_mean": sum(flops) / len(flops),
        }
        if fi == 0:
            oracle = int(any_right.sum()) / n
            results["oracle_fraction"] = frac
    bar.close()
    results["oracle_accuracy"] = oracle
    results["wall_s"] = time.monotonic() - started
    print(
        f"{args.checkpoint} on {args.split} ({n} images, amp {args.amp}): full route "
        f"{results['full_accuracy']:.4f}; "
        + "; ".join(
            f"random {100 * float(f):.0f}% routes ({v['decidable_blocks_run']}/{k} blocks) "
            f"{v['accuracy_mean']:.4f} +- {v['accuracy_std']:.4f}"
            for f, v in results["random"].items()
        )
        + f"; oracle over {args.routes} random {100 * args.fractions[0]:.0f}% routes {oracle:.4f}"
    )
    if args.json is not None:
        write_json(args.json, results)  # atomic, read back before it replaces the file
    return results


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except CheckpointError as err:
        raise SystemExit(f"skip_tolerance.py: error: {err}") from None
