"""Evaluate a plain, SP, HRL or static checkpoint: accuracy, FLOPs, blocks, routing, speed.

    python train/evaluate.py --checkpoint runs/hrl38/final.pt --split val
    python train/evaluate.py --checkpoint runs/base38/final.pt --split val --json base.json
    python train/evaluate.py --checkpoint NAME --split val  # NAME: a shipped model

``--checkpoint`` takes a path or the name of a shipped pretrained model
(``python -m skipenv.models.pretrained list``).

Gates are greedy (execute iff p > 0.5) and skipped blocks are really skipped. Reported:
``accuracy`` (top-1), ``flops_fraction`` (MACs the backbone runs, projection shortcuts of
skipped blocks included, over the full plain network's), ``flops_fraction_with_gate`` (the
same with the gate's MACs), ``block_fraction`` (the paper's computation percentage: executed
blocks over all blocks), per-block ``skip_rates``, ``images_per_s`` (forward passes only), and
``routing`` (skipenv/training/routing.py, issue 12): blocks run per image (mean, std,
histogram), distinct routes, the most common route and its share, dynamic blocks, and the
static control (the same weights with the most common route for every image). A ``static``
checkpoint (train/static.py) is evaluated with its one route.

For a shipped model on ``val`` the four numbers are also checked against its registry entry
(the model card's numbers), to 4 decimals: ``card_match`` in the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from agents.skipnet import load_backbone_and_gate
from skipenv.data.loader import BatchLoader
from skipenv.data.splits import load_cifar10
from skipenv.models import pretrained
from skipenv.models.checkpoint import CheckpointError
from skipenv.models.pretrained import list_pretrained, pretrained_info
from skipenv.training.devices import prepare_device
from skipenv.training.evaluation import evaluate_gated
from skipenv.training.routing import RoutingStats
from skipenv.training.summary import images, print_summary
from skipenv.utils import write_json


@dataclass
class Args:
    checkpoint: str
    """a checkpoint written by train/base.py, supervised.py, hybrid.py or static.py, or the name
    of a shipped pretrained model (python -m skipenv.models.pretrained list)"""
    split: str = "val"
    """split to evaluate: val (the 5,000 held out of train), test, train, train-full or sample
    (1,000 val images shipped in the package)"""
    data_dir: str | None = None
    """CIFAR-10 data root (default: $SKIPNET_DATA, else the per-user cache folder)"""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda"""
    batch_size: int = 500
    """images per forward pass"""
    channels_last: bool = True
    """NHWC memory format (faster convs on CPUs)"""
    json: Path | None = None
    """also write the results to this JSON file"""
    threads: int | None = None
    """torch CPU threads (default: all cores; lower it when another job shares the machine)"""
    progress: bool = True
    """show a progress bar over the batches"""


#: results key -> registry (model card) key
CARD_METRICS = {
    "accuracy": "val_accuracy",
    "flops_fraction": "flops_fraction",
    "flops_fraction_with_gate": "flops_fraction_with_gate",
    "block_fraction": "block_fraction",
}


def card_match(checkpoint: str, split: str, results: dict) -> bool | None:
    """Whether a shipped model's val results equal its registry entry to 4 decimals (None for
    a path, another split or an entry without numbers)."""
    if split != "val" or checkpoint not in list_pretrained():
        return None
    card = pretrained_info(checkpoint)
    if any(card[key] is None for key in CARD_METRICS.values()):
        return None
    return all(round(results[k], 4) == round(card[c], 4) for k, c in CARD_METRICS.items())


def main(args: Args) -> dict:
    device = prepare_device(args.device, args.threads)
    payload, backbone, gate = load_backbone_and_gate(args.checkpoint, map_location=device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    backbone = backbone.to(memory_format=fmt)
    data = load_cifar10(args.split, args.data_dir, progress=args.progress)
    loader = BatchLoader(
        data, batch_size=args.batch_size, device=device, channels_last=args.channels_last
    )
    print_summary(
        f"train/evaluate.py: {args.checkpoint} ({payload['kind']}, ResNet-{backbone.depth}), "
        "greedy gates, real skipping",
        device=device,
        data=images(len(data), args.split),
        steps=f"{len(loader)} batches of <= {args.batch_size}",
        out=args.json if args.json is not None else "stdout only (--json PATH to keep it)",
    )
    results = {
        "checkpoint": str(args.checkpoint),
        "kind": payload["kind"],
        "depth": backbone.depth,
        "split": args.split,
        **evaluate_gated(
            backbone, gate, loader, progress=args.progress, desc=f"evaluating {args.split}"
        ),
    }
    print(
        f"{args.checkpoint} ({payload['kind']}, ResNet-{backbone.depth}) on {args.split} "
        f"({results['num_images']} images): accuracy {100 * results['accuracy']:.2f}%, "
        f"FLOPs {100 * results['flops_fraction']:.1f}% "
        f"({100 * results['flops_fraction_with_gate']:.1f}% with the gate), "
        f"blocks {100 * results['block_fraction']:.1f}%, "
        f"{results['images_per_s']:.0f} images/s"
    )
    print("skip rate per block:", " ".join(f"{r:.2f}" for r in results["skip_rates"]))
    routing = results["routing"]  # issue 12: per-image routing diagnostics
    print(f"routing: {RoutingStats.from_dict(routing).summary()}; top {routing['top_route']}")
    results["card_match"] = card_match(str(args.checkpoint), args.split, results)
    if results["card_match"] is not None:
        verdict = "reproduced" if results["card_match"] else "NOT reproduced"
        print(f"model card ({pretrained.weights_dir() / pretrained.REGISTRY}) numbers: {verdict}")
    if args.json is not None:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except CheckpointError as err:
        raise SystemExit(f"evaluate.py: error: {err}") from None
