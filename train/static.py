"""Static pruning at matched compute: fine-tune a backbone with one fixed route for every image.

    python train/static.py --checkpoint resnet38 --budget 0.66 --out runs/static38-f0.66
    python train/static.py --checkpoint skipnet38-hrl-a0.6 --budget 0.6606 --epochs 3 \\
        --amp bf16 --out runs/static38-hrl-a0.6
    python train/static.py --checkpoint runs/base38/final.pt --route 111011011101101110 ...
    python train/static.py --out runs/static38-f0.66 --resume

The paper's "static compression" baseline (issue 12): the route is either given
(``--route``, one 0/1 per block, block 0 first) or chosen greedily for a FLOPs budget
(``--budget``; :func:`agents.static.greedy_static_route`: drop the block whose removal costs
least accuracy on ``--select-limit`` images of ``--select-split`` until the backbone MACs run
are at most the budget). The backbone (``--checkpoint``: a shipped model's name or the path of
a base, sp, hrl or static checkpoint; a SkipNet's gate is dropped) is then trained with
cross-entropy on that route only (``forward_skip``: skipped blocks never run), SGD with a
cosine learning rate from ``--lr`` to 0, as ``train/hybrid.py --schedule cosine``. Batch norm
trains normally: every image takes the same route, so the statistics gathered in training are
those of evaluation.

Files in ``--out``: ``last.pt`` (every few minutes and at each evaluation), ``final.pt``,
``metrics.jsonl`` (val accuracy, FLOPs and the routing diagnostics of
``skipenv.routing`` at each evaluation). Checkpoints are of kind ``static``: the backbone in
``model`` and the route in ``route`` (N bools); ``train/evaluate.py`` evaluates them.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import tyro
from tqdm.auto import tqdm

from agents.static import RouteGate, backbone_flops_fraction, greedy_static_route, selection_batches
from skipenv.checkpoint import (
    BACKBONE_KINDS,
    CheckpointError,
    checkpoint_arch,
    load_backbone,
    load_checkpoint,
)
from skipenv.data import load_cifar10
from skipenv.devices import autocast, resolve_device, tune_cpu_allocator
from skipenv.evaluation import evaluate_gated
from skipenv.pretrained import resolve_checkpoint
from skipenv.routing import metrics_lines, parse_route, route_decisions, route_string
from skipenv.runs import RunArgs, RunDir, cifar_loaders, config_dict, rng_state, set_rng_state


@dataclass
class Args(RunArgs):
    out: Path = Path("runs/static")
    """folder for checkpoints (last.pt, final.pt) and metrics.jsonl"""
    checkpoint: str = "resnet38"
    """the backbone to start from: a shipped model's name or a base/sp/hrl/static checkpoint"""
    route: str | None = None
    """the fixed route, one 0/1 per block, block 0 first (e.g. 1110...); None: --budget"""
    budget: float | None = None
    """FLOPs fraction (backbone MACs run / full network's) for the greedy route"""
    select_split: str = "val"
    """split the greedy route is chosen on"""
    select_limit: int = 1000
    """images of --select-split (a seeded random subset) the greedy search measures"""
    epochs: float = 3.0
    """passes over the training split (match the HRL stage compared with)"""
    lr: float = 1e-3
    """initial learning rate (cosine to 0); train/hybrid.py's backbone default"""
    momentum: float = 0.9
    """SGD momentum"""
    weight_decay: float = 1e-4
    """L2 weight decay (the authors' value, as in HRL)"""
    eval_every: int = 0
    """evaluate (and log) every this many steps; 0: at each epoch's end"""


def choose_route(args: Args, backbone: torch.nn.Module, device: torch.device) -> tuple[str, dict]:
    """The route to train: ``--route``, or the greedy route for ``--budget`` (and its trace)."""
    if (args.route is None) == (args.budget is None):
        raise ValueError(
            f"give exactly one of --route and --budget (got route={args.route!r}, "
            f"budget={args.budget!r})"
        )
    if args.route is not None:
        return route_string(parse_route(args.route, backbone.num_blocks)), {}
    data = load_cifar10(args.select_split, args.data_dir, progress=args.progress)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    batches = selection_batches(
        data, args.select_limit, args.seed, device=device, memory_format=fmt
    )
    result = greedy_static_route(
        backbone,
        batches,
        args.budget,
        autocast=lambda: autocast(device, args.amp),
        progress=args.progress,
    )
    selection = result.to_dict() | {"split": args.select_split, "amp": args.amp}
    return result.route, selection


def main(args: Args) -> dict:
    device = resolve_device(args.device)
    autocast(device, args.amp)  # reject a bad --amp before any work
    if device.type == "cpu":
        tune_cpu_allocator()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(args.seed)
    run = RunDir(args.out, args.resume)

    if args.resume:
        ckpt = run.load_last(("static",), map_location=device)
        source, route, selection = ckpt, route_string(ckpt["route"]), ckpt.get("selection", {})
        if args.route is not None and route_string(parse_route(args.route)) != route:
            raise ValueError(f"--route {args.route} differs from the resumed run's {route}")
    else:
        source = load_checkpoint(resolve_checkpoint(args.checkpoint), BACKBONE_KINDS, device)
    model = load_backbone(source, map_location=device).to(memory_format=fmt)
    arch = {k: v for k, v in checkpoint_arch(source).items() if k != "gate"}
    if not args.resume:
        route, selection = choose_route(args, model, device)
    flags = parse_route(route, model.num_blocks)
    table = model.flops_table()
    flops = backbone_flops_fraction(table, flags)
    train_loader, eval_loader = cifar_loaders(args, device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    steps_per_epoch = len(train_loader)
    total_steps = max(1, round(args.epochs * steps_per_epoch))
    eval_every = args.eval_every or steps_per_epoch
    config = config_dict(args)
    step, wall_before = 0, 0.0
    if args.resume:
        if checkpoint_arch(ckpt) != arch:
            raise CheckpointError(f"{run.last} holds {ckpt['arch']}, but this run is {arch}")
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        step, wall_before = ckpt["step"], ckpt["wall_s"]
        config = ckpt["config"] | {"resumed_with": config}
    print(
        f"static route {route} ({sum(flags)} of {len(flags)} blocks, {100 * flops:.1f}% of the "
        f"FLOPs) from {args.checkpoint}: {args.epochs} epochs ({total_steps} steps), lr "
        f"{args.lr} cosine, {device}, amp {args.amp}, step {step}"
    )

    def checkpoint(metrics: dict, final: bool = False) -> None:
        run.save(
            {
                "kind": "static",
                "config": config,
                "arch": arch,
                "model": model.state_dict(),
                "route": flags,
                "selection": selection,
                "optimizer": optimizer.state_dict(),
                "rng": rng_state(),
                "step": step,
                "epoch": step / steps_per_epoch,
                "metrics": metrics,
                "wall_s": wall_before + time.monotonic() - started,
            },
            final=final,
        )

    gate = RouteGate(flags).to(device)
    model.train()
    started, metrics = time.monotonic(), {}
    end = total_steps if args.max_steps is None else min(total_steps, args.max_steps)
    bar = tqdm(total=end, initial=step, disable=not args.progress, unit="step")
    correct = seen = 0
    while step < end:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        train_loader.set_epoch(epoch)
        for x, y in itertools.islice(iter(train_loader), done_in_epoch, None):  # resume mid-epoch
            scale = 0.5 * (1.0 + math.cos(math.pi * step / total_steps))  # cosine: 1 -> 0
            for group in optimizer.param_groups:
                group["lr"] = args.lr * scale
            with autocast(device, args.amp):
                logits = model.forward_skip(x, route_decisions(flags, x.shape[0], device))
            loss = F.cross_entropy(logits.float(), y)  # B x 10 -> scalar
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += y.numel()
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", acc=f"{correct / seen:.3f}")
            if step % eval_every == 0 or step == end:
                val = evaluate_gated(model, gate, eval_loader)
                metrics = {"step": step, "epoch": step / steps_per_epoch}
                metrics |= {f"{args.eval_split}_{k}": v for k, v in val.items()}
                metrics |= {
                    "train_accuracy": correct / max(seen, 1),
                    "wall_s": wall_before + time.monotonic() - started,
                }
                correct = seen = 0
                run.log(metrics)
                bar.write(metrics_lines(metrics, args.eval_split))
                checkpoint(metrics)
                model.train()
            elif run.due(args.checkpoint_minutes):
                checkpoint(metrics)
            if step >= end:
                break
    bar.close()
    if step == total_steps:
        checkpoint(metrics, final=True)
    return metrics


if __name__ == "__main__":
    main(tyro.cli(Args))
