"""Static pruning at matched compute: fine-tune a backbone with one fixed route for every image.

    python train/static.py --checkpoint resnet38 --budget 0.66 --out runs/static38-f0.66
    python train/static.py --checkpoint skipnet38-hrl-a0.6 --budget 0.6606 --epochs 3 \\
        --amp bf16 --out runs/static38-hrl-a0.6
    python train/static.py --checkpoint runs/base38/final.pt --route 111011011101101110 ...
    python train/static.py --out runs/static38-f0.66 --resume

The paper's "static compression" baseline (issue 12): the route is either given
(``--route``, one 0/1 per block, block 0 first) or chosen greedily for a FLOPs budget
(``--budget``; :func:`agents.static.greedy_static_route`: drop the block whose removal costs
least accuracy on ``--select-limit`` images of ``--select-split`` until the route's
``flops_fraction``, backbone MACs run over the full network's, is at most the budget). The
backbone (``--checkpoint``: a shipped model's name or the path of a base, sp, hrl or static
checkpoint; a SkipNet's gate is dropped) is then trained with cross-entropy on that route only
(``forward_skip``: skipped blocks never run), SGD with a cosine learning rate from ``--lr`` to
0, as ``train/hybrid.py --schedule cosine``. Batch norm trains normally: every image takes the
same route, so the statistics gathered in training are those of evaluation.

Training runs in the loop every entry point shares (:func:`skipenv.training.loop.train`):
resume, checkpoints and logging as in ``train/base.py``. Files in ``--out``: ``last.pt``
(every few minutes and at each evaluation), ``final.pt``, ``metrics.jsonl`` (val accuracy,
FLOPs and the routing diagnostics of ``skipenv.training.routing`` at each evaluation).
Checkpoints are of kind ``static``: the backbone in ``model``, the route in ``route`` (N
bools) and the greedy search in ``selection``; ``train/evaluate.py`` evaluates them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import tyro

from agents.static import RouteGate, greedy_static_route, route_flops_fraction, selection_batches
from skipenv.data.splits import load_cifar10
from skipenv.models.checkpoint import (
    BACKBONE_KINDS,
    CheckpointError,
    checkpoint_arch,
    load_backbone,
    load_checkpoint,
)
from skipenv.models.pretrained import resolve_checkpoint
from skipenv.models.resnet import SkipResNet
from skipenv.training import distributed
from skipenv.training.devices import autocast, prepare_device
from skipenv.training.evaluation import evaluate_gated
from skipenv.training.loop import StepOutput, train
from skipenv.training.routing import parse_route, route_decisions, route_string
from skipenv.training.runs import RunArgs, RunDir, cifar_loaders, config_dict
from skipenv.training.tensorboard import example_callback


@dataclass
class Args(RunArgs):
    out: Path = Path("runs/static")
    """folder for checkpoints (last.pt, final.pt) and metrics.jsonl"""
    checkpoint: str = "resnet38"
    """the backbone to start from: a shipped model's name or a base/sp/hrl/static checkpoint"""
    route: str | None = None
    """the fixed route, one 0/1 per block, block 0 first (e.g. 1110...); None: --budget"""
    budget: float | None = None
    """flops_fraction (backbone MACs run / full network's) of the greedy route"""
    select_split: str = "val"
    """split the greedy route is chosen on"""
    select_limit: int = 1000
    """images of --select-split (a stratified subset) the greedy search measures"""
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


def choose_route(args: Args, backbone: SkipResNet, device: torch.device) -> tuple[str, dict]:
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
    # a name or a path, resolved before anything is made (no run folder on a bad --checkpoint)
    start = resolve_checkpoint(args.checkpoint) if not args.resume else None
    dist = distributed.setup(args.device)
    if dist.enabled:
        raise ValueError(
            "train/static.py runs forward_skip, which DistributedDataParallel does not wrap; "
            "train a static route in a single process (python, not torchrun)"
        )
    device = dist.device
    autocast(device, args.amp)  # reject a bad --amp before any work
    prepare_device(device, args.threads)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(args.seed)
    run = RunDir(args.out, args.resume)

    # the backbone and its route: from --checkpoint and --route / --budget, or the run resumed
    config = config_dict(args)
    if args.resume:
        source = run.load_last(("static",), map_location=device)
        route, selection = route_string(source["route"]), source.get("selection", {})
        if args.route is not None and route_string(parse_route(args.route)) != route:
            raise ValueError(f"--route {args.route} differs from the resumed run's {route}")
        config = source["config"] | {"resumed_with": config}
    else:
        source = load_checkpoint(start, BACKBONE_KINDS, device)
    model = load_backbone(source, map_location=device).to(memory_format=fmt)
    arch = {k: v for k, v in checkpoint_arch(source).items() if k != "gate"}
    if not args.resume:
        route, selection = choose_route(args, model, device)
    flags = parse_route(route, model.num_blocks)
    gate = RouteGate(flags).to(device)
    flops = route_flops_fraction(model.macs_table(), flags)
    route_flops = torch.tensor([flops], dtype=torch.float64)  # 1: the same for every image

    # data, optimiser
    train_loader, eval_loader = cifar_loaders(args, device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    total_steps = max(1, round(args.epochs * len(train_loader)))

    # one step: cross-entropy with the route for every image, skipped blocks never run
    def step(x: torch.Tensor, y: torch.Tensor, index: int) -> StepOutput:
        scale = 0.5 * (1.0 + math.cos(math.pi * index / total_steps))  # cosine: 1 -> 0
        for group in optimizer.param_groups:
            group["lr"] = args.lr * scale
        execute = route_decisions(flags, x.shape[0], device)  # B x K
        with autocast(device, args.amp):
            logits = model.forward_skip(x, execute)  # B x 10
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        executed = torch.cat([execute.new_ones(x.shape[0], 1), execute], dim=1)  # B x N
        show = {"lr": f"{args.lr * scale:.2g}"}
        return StepOutput(logits, loss.item(), executed, show, flops=route_flops.expand(len(y)))

    # checkpoint entries of this entry point (the weights were loaded from run.last above)
    def state() -> dict:
        return {
            "model": model.state_dict(),
            "route": flags,
            "selection": selection,
            "optimizer": optimizer.state_dict(),
        }

    return train(
        args,
        run=run,
        dist=dist,
        kind="static",
        arch=arch,
        config=config,
        train_loader=train_loader,
        total_steps=total_steps,
        step=step,
        evaluate=lambda: evaluate_gated(
            model, gate, eval_loader, progress=args.progress, desc=f"evaluating {args.eval_split}"
        ),
        state=state,
        restore=lambda ckpt: optimizer.load_state_dict(ckpt["optimizer"]),
        train_mode=model.train,
        eval_every=args.eval_every or None,
        what=f"train/static.py: ResNet-{model.depth} on the static route {route} ({sum(flags)} "
        f"of {len(flags)} blocks, flops_fraction {flops:.4f}) from {args.checkpoint}, "
        f"{args.epochs:g} epochs (lr {args.lr:g} cosine), batch {args.batch_size}",
        eval_size=eval_loader.num_samples,
        examples=example_callback(model, gate, eval_loader),
    )


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except CheckpointError as err:
        raise SystemExit(f"static.py: error: {err}") from None
