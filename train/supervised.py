"""SkipNet+SP: train gates and network together by cross-entropy (supervised pre-training).

    python train/supervised.py --init runs/base38/final.pt --out runs/sp38   # from a plain net
    python train/supervised.py --init resnet38 --out runs/sp38               # a shipped one
    python train/supervised.py --from-scratch --depth 38 --out runs/sp38     # from scratch
    python train/supervised.py --out runs/sp38 --resume                      # continue a run
    torchrun --nproc_per_node=2 train/supervised.py ...                      # data parallel

Every block is computed and mixed as ``g * block(x) + (1 - g) * shortcut(x)`` (the masked
formulation), with ``g`` from the gate in ``hard`` mode (forward: execute iff p > 0.5;
backward: the gradient of p, straight-through) or ``soft`` mode (g = p). Evaluation uses
greedy gates and really skips.

Per-image routing (issue 12), both off by default (the paper's SP): ``--gumbel-tau`` adds
Gumbel-sigmoid noise to the gate's relaxation (with ``hard`` gates: straight-through Gumbel,
each decision a Bernoulli(p) sample in training) and ``--target-rate`` adds a loss pulling each
gated block's batch execute rate towards a target, both from ConvNet-AIG (Veit & Belongie,
ECCV 2018, sec. 3; :class:`agents.gates.GumbelGate`, :func:`agents.gates.target_rate_loss`).
Without a target rate, cross-entropy alone never asks a gate to skip.

Recipe. The authors train SP from scratch for 64k iterations (SGD, lr 0.1 stepped, wd 1e-4,
batch 128). On this project's 2-core CPU the default starts from a plain ResNet trained by
train/base.py (``--init``) and fine-tunes for a few epochs on a one-cycle schedule, the
backbone at a low rate and the fresh gate at a higher one. Without ``--init`` it refuses to
start (that fine-tuning recipe on random weights only wastes the run) unless
``--from-scratch`` is given, which switches to a from-scratch recipe: backbone peak lr 0.1
and 30 epochs (``--lr`` / ``--epochs`` still override them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import tyro
from torch.nn.parallel import DistributedDataParallel

from agents.gates import GATE_TYPES, build_gate, target_rate_loss
from agents.skipnet import SkipNet
from skipenv.models.checkpoint import CheckpointError, load_backbone
from skipenv.models.pretrained import resolve_checkpoint
from skipenv.models.resnet import build_resnet
from skipenv.training import distributed
from skipenv.training.devices import autocast, prepare_device
from skipenv.training.evaluation import evaluate_gated
from skipenv.training.loop import StepOutput, train
from skipenv.training.runs import RunArgs, RunDir, cifar_loaders, config_dict
from skipenv.training.tensorboard import example_callback


@dataclass
class Args(RunArgs):
    out: Path = Path("runs/sp")
    """folder for checkpoints (last.pt, final.pt) and metrics.jsonl"""
    init: str | None = None
    """checkpoint to start the backbone from: a path (e.g. a train/base.py final.pt) or a
    shipped model's name (e.g. resnet38); required unless --from-scratch or --resume"""
    from_scratch: bool = False
    """train backbone and gate from random weights: the from-scratch recipe (lr 0.1, 30
    epochs unless --lr / --epochs say otherwise) instead of fine-tuning --init"""
    depth: int = 38
    """CIFAR ResNet depth, 6n + 2 (must match --init when given)"""
    gate: str = "rnn"
    """gate type: rnn (the paper's recurrent gate), ffgate1 or ffgate2"""
    gate_mode: str = "hard"
    """hard (straight-through 0/1 gates) or soft (block output scaled by p)"""
    epochs: int | None = None
    """passes over the training split (default: 4 fine-tuning --init, 30 --from-scratch; the
    authors' from-scratch recipe is about 182)"""
    lr: float | None = None
    """peak learning rate of the backbone, one-cycle schedule (default: 0.02 fine-tuning
    --init, 0.1 --from-scratch)"""
    gate_lr: float = 0.1
    """peak learning rate of the gate, which starts untrained"""
    warmup_fraction: float = 0.15
    """fraction of the steps spent raising the learning rates to their peaks"""
    momentum: float = 0.9
    """SGD momentum (Nesterov)"""
    weight_decay: float = 5e-4
    """L2 weight decay of the backbone and the gate"""
    gumbel_tau: float | None = None
    """temperature of Gumbel-sigmoid noise in the gate relaxation (ConvNet-AIG: 1); None: no
    noise (the paper's SP)"""
    target_rate: float | None = None
    """execute rate in [0, 1] that each gated block's batch mean is pulled to by a squared
    error (ConvNet-AIG's target-rate loss); None: cross-entropy only (the paper's SP)"""
    target_weight: float = 2.0
    """weight of the target-rate loss, a mean over the blocks (ConvNet-AIG's code: 2)"""
    eval_every: int = 0
    """evaluate (and log) every this many steps; 0: at each epoch's end"""


#: (epochs, backbone peak lr) of the two recipes
FINE_TUNE, FROM_SCRATCH = (4, 0.02), (30, 0.1)


def recipe(args: Args) -> Args:
    """``args`` with the recipe's epochs and lr filled in; refuses a run with neither
    ``--init`` nor ``--from-scratch`` (nor ``--resume``).

    Raises:
        ValueError: no starting point, or both ``--init`` and ``--from-scratch``.
    """
    if args.init is not None and args.from_scratch:
        raise ValueError(
            f"--init {args.init} and --from-scratch contradict each other: pass one of them"
        )
    if args.init is None and not args.from_scratch and not args.resume:
        raise ValueError(
            "train/supervised.py needs a starting point: --init PATH, the final.pt of a plain "
            "network from train/base.py (e.g. --init runs/base38/final.pt), which it fine-tunes "
            "for 4 epochs at lr 0.02; or --from-scratch, which trains backbone and gate from "
            "random weights for 30 epochs at lr 0.1 (fine-tuning's lr from random weights "
            "only wastes the run)"
        )
    epochs, lr = FROM_SCRATCH if args.from_scratch else FINE_TUNE
    return dataclasses.replace(
        args,
        epochs=args.epochs if args.epochs is not None else epochs,
        lr=args.lr if args.lr is not None else lr,
    )


def main(args: Args) -> dict:
    args = recipe(args)
    if args.gate not in GATE_TYPES:
        raise ValueError(f"unknown --gate {args.gate!r}; choose one of {GATE_TYPES}")
    if args.gate_mode not in ("hard", "soft"):
        raise ValueError(f"--gate-mode must be hard or soft, got {args.gate_mode!r}")
    if args.gumbel_tau is not None and not args.gumbel_tau > 0:
        raise ValueError(f"--gumbel-tau must be > 0 (ConvNet-AIG: 1), got {args.gumbel_tau!r}")
    if args.target_rate is not None and not 0.0 <= args.target_rate <= 1.0:
        raise ValueError(f"--target-rate must be in [0, 1] (e.g. 0.6), got {args.target_rate!r}")
    if args.target_weight < 0:
        raise ValueError(f"--target-weight must be >= 0, got {args.target_weight!r}")
    # a name or a path, resolved before anything is made (no run folder on a bad --init)
    init = resolve_checkpoint(args.init) if args.init is not None and not args.resume else None
    dist = distributed.setup(args.device)
    device = dist.device
    autocast(device, args.amp)  # reject a bad --amp before any work
    prepare_device(device, args.threads)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(args.seed)
    run = RunDir(args.out, args.resume, writer=dist.is_main)

    # data: every rank iterates the same global batches and keeps its rows
    train_loader, eval_loader = cifar_loaders(args, device, dist.is_main)

    # model: a backbone (plain checkpoint or fresh) and a fresh gate
    if init is not None:
        backbone = load_backbone(init, depth=args.depth)
    else:
        backbone = build_resnet(args.depth)
    model = SkipNet(backbone, build_gate({"type": args.gate}, backbone.block_channels))
    model = model.to(device, memory_format=fmt)
    net = DistributedDataParallel(model) if dist.enabled else model
    optimizer = torch.optim.SGD(
        [
            {"params": model.backbone.parameters(), "lr": args.lr},
            {"params": model.gate.parameters(), "lr": args.gate_lr},
        ],
        momentum=args.momentum,
        nesterov=True,
        weight_decay=args.weight_decay,
    )
    table = model.backbone.macs_table()
    total_steps = args.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[args.lr, args.gate_lr],
        total_steps=total_steps,
        pct_start=args.warmup_fraction,
    )

    # one step: the masked formulation, gradients through the gate values (noisy ones with
    # --gumbel-tau, drawn from torch's seeded global generator)
    def step(x: torch.Tensor, y: torch.Tensor, _: int) -> StepOutput:
        with autocast(device, args.amp):
            out = net(x, mode=args.gate_mode, routing="masked", gumbel_tau=args.gumbel_tau)
        loss = ce = F.cross_entropy(out.logits.float(), y)
        shown = {}
        if args.target_rate is not None:
            target = target_rate_loss(out.gates, args.target_rate)  # out.gates: B x K
            loss = ce + args.target_weight * target
            shown["tgt"] = f"{target.item():.4f}"
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        flops = table.flops_fraction(out.executed)  # B
        shown = {"flops": f"{float(flops.mean()):.3f}"} | shown
        return StepOutput(out.logits, ce.item(), out.executed, shown, out.probs, flops)

    # checkpoint entries of this entry point
    def state() -> dict:
        return {
            "model": model.backbone.state_dict(),
            "gate": model.gate.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }

    def restore(ckpt: dict) -> None:
        model.backbone.load_state_dict(ckpt["model"])
        model.gate.load_state_dict(ckpt["gate"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])

    return train(
        args,
        run=run,
        dist=dist,
        kind="sp",
        arch=model.arch(),
        config=config_dict(args),
        train_loader=train_loader,
        total_steps=total_steps,
        step=step,
        evaluate=lambda: evaluate_gated(
            model.backbone,
            model.gate,
            eval_loader,
            progress=args.progress,
            desc=f"evaluating {args.eval_split}",
        ),
        state=state,
        restore=restore,
        train_mode=net.train,
        eval_every=args.eval_every or None,
        what=f"train/supervised.py: SkipNet-{args.depth} SP, {args.gate} gate ({args.gate_mode}"
        + (f", Gumbel tau {args.gumbel_tau:g}" if args.gumbel_tau is not None else "")
        + (
            f", target rate {args.target_rate:g} x {args.target_weight:g}"
            if args.target_rate is not None
            else ""
        )
        + "), "
        + (
            f"from scratch, {args.epochs} epochs"
            if args.from_scratch
            else f"fine-tuning {args.init or 'the resumed run'}, {args.epochs} epochs"
        )
        + f" (peak lr {args.lr:g}, gate lr {args.gate_lr:g}), batch {args.batch_size}",
        eval_size=eval_loader.num_samples,
        examples=example_callback(model.backbone, model.gate, eval_loader),
    )


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except CheckpointError as err:
        raise SystemExit(f"supervised.py: error: {err}") from None
