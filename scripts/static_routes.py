"""Greedy static routes (no fine-tuning) at the FLOPs of the shipped SkipNet points.

    python scripts/static_routes.py --json results/routing/static_greedy.json

For every shipped HRL model M (``--models``, default all of kind hrl), the budget is M's val
``flops_fraction`` (registry): backbone MACs run over the full network's, M's gate left out,
so a static route and M are compared at equal backbone MACs (M's gate adds its
``flops_fraction_with_gate`` - ``flops_fraction`` on top). Routes are chosen greedily
(:func:`agents.static.greedy_static_route`) on ``--select-limit`` val images (a stratified
subset, forward passes in ``--amp``), on two backbones:

- ``--reference`` (default ``resnet38``), once down to the lowest budget: the drop sequence
  gives the route of every budget;
- M's own backbone (its gate dropped), at M's budget.

Each chosen route is then evaluated on all of ``--split`` in float32
(``evaluate_gated`` with a :class:`agents.static.RouteGate`), beside M's own accuracy and its
static control (M's most common route for every image, same weights).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

from agents.skipnet import load_backbone_and_gate
from agents.static import RouteGate, greedy_static_route, selection_batches
from skipenv.data.loader import BatchLoader
from skipenv.data.splits import load_cifar10
from skipenv.models.checkpoint import CheckpointError
from skipenv.models.pretrained import list_pretrained, pretrained_info
from skipenv.training.devices import autocast, prepare_device
from skipenv.training.evaluation import evaluate_gated
from skipenv.training.summary import images, print_summary
from skipenv.utils import write_json


@dataclass
class Args:
    models: list[str] = field(default_factory=list)
    """shipped HRL models whose FLOPs are the budgets (default: every shipped hrl model)"""
    reference: str = "resnet38"
    """the plain backbone also pruned at every budget"""
    split: str = "val"
    """split the routes are chosen on and evaluated on"""
    select_limit: int = 1000
    """images (stratified subset of --split) the greedy search measures"""
    seed: int = 0
    """seeds the subset"""
    amp: str = "bf16"
    """mixed precision of the greedy search's forward passes (the final evaluation is fp32)"""
    data_dir: str | None = None
    """CIFAR-10 data root (default: $SKIPNET_DATA, else the per-user cache folder)"""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda"""
    threads: int | None = None
    """torch CPU threads (default: all cores; lower it when another job shares the machine)"""
    json: Path | None = None
    """write the results here"""
    progress: bool = True
    """show progress bars"""


def main(args: Args) -> dict:
    device = prepare_device(args.device, args.threads)
    models = args.models or [m for m in list_pretrained() if pretrained_info(m)["kind"] == "hrl"]
    budgets = {m: float(pretrained_info(m)["flops_fraction"]) for m in models}
    data = load_cifar10(args.split, args.data_dir, progress=args.progress)
    fmt = torch.channels_last
    select = selection_batches(data, args.select_limit, args.seed, device=device, memory_format=fmt)
    loader = BatchLoader(data, batch_size=500, device=device, channels_last=True)
    print_summary(
        f"scripts/static_routes.py: greedy static routes at the flops_fraction of {len(models)} "
        f"HRL models, on their backbones and on {args.reference}",
        device=device,
        data=images(len(data), args.split) + f", routes chosen on {args.select_limit} of them",
        budgets=", ".join(f"{m} {b:.4f}" for m, b in budgets.items()),
        out=args.json if args.json is not None else "stdout only (--json PATH to keep it)",
    )

    def amp_ctx():
        return autocast(device, args.amp)

    def prepare(name: str):
        _, backbone, gate = load_backbone_and_gate(name, map_location=device)
        return backbone.to(memory_format=fmt).eval(), gate

    def evaluate_route(backbone, route: str) -> dict:
        r = evaluate_gated(backbone, RouteGate(route).to(device), loader, routing=False)
        return {"accuracy": r["accuracy"], "flops_fraction": r["flops_fraction"]}

    started = time.monotonic()
    rows, searches = [], {}
    ref, _ = prepare(args.reference)
    ref_search = greedy_static_route(
        ref, select, min(budgets.values()), autocast=amp_ctx, progress=args.progress
    )
    searches[args.reference] = ref_search.to_dict()
    for m in models:
        own, gate = prepare(m)
        hrl = evaluate_gated(own, gate, loader)
        search = greedy_static_route(own, select, budgets[m], autocast=amp_ctx, progress=False)
        searches[m] = search.to_dict()
        ref_route = ref_search.at(budgets[m]).route
        row = {
            "model": m,
            "budget": budgets[m],
            "hrl_accuracy": hrl["accuracy"],
            "hrl_flops_fraction": hrl["flops_fraction"],
            "hrl_flops_fraction_with_gate": hrl["flops_fraction_with_gate"],
            "hrl_static_control": hrl["routing"]["static_accuracy"],
            "hrl_top_route": hrl["routing"]["top_route"],
            "hrl_top_route_share": hrl["routing"]["top_route_share"],
            "greedy_own_route": search.route,
            "greedy_own": evaluate_route(own, search.route),
            "greedy_reference_route": ref_route,
            "greedy_reference": evaluate_route(ref, ref_route),
        }
        rows.append(row)
        print(
            f"{m}: HRL {row['hrl_accuracy']:.4f} at {100 * row['hrl_flops_fraction']:.1f}% "
            f"(static control {row['hrl_static_control']:.4f}); greedy static on its backbone "
            f"{row['greedy_own']['accuracy']:.4f} at "
            f"{100 * row['greedy_own']['flops_fraction']:.1f}%"
            f"; on {args.reference} {row['greedy_reference']['accuracy']:.4f} at "
            f"{100 * row['greedy_reference']['flops_fraction']:.1f}%",
            flush=True,
        )
    results = {
        "split": args.split,
        "reference": args.reference,
        "select_limit": args.select_limit,
        "seed": args.seed,
        "amp_search": args.amp,
        "rows": rows,
        "searches": searches,
        "wall_s": time.monotonic() - started,
    }
    if args.json is not None:
        write_json(args.json, results)  # atomic, read back before it replaces the file
    return results


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except CheckpointError as err:
        raise SystemExit(f"static_routes.py: error: {err}") from None
