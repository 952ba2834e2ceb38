"""SkipNet+SP: train gates and network together by cross-entropy (supervised pre-training).

    python train/supervised.py --init runs/base38/final.pt --out runs/sp38   # from a plain net
    python train/supervised.py --depth 38 --epochs 30 --out runs/sp38        # from scratch
    python train/supervised.py --out runs/sp38 --resume                      # continue a run
    torchrun --nproc_per_node=2 train/supervised.py ...                      # data parallel

Every block is computed and mixed as ``g * block(x) + (1 - g) * shortcut(x)`` (the masked
formulation), with ``g`` from the gate in ``hard`` mode (forward: execute iff p > 0.5;
backward: the gradient of p, straight-through) or ``soft`` mode (g = p). Evaluation uses
greedy gates and really skips.

Recipe. The authors train SP from scratch for 64k iterations (SGD, lr 0.1 stepped, wd 1e-4,
batch 128). On this project's 2-core CPU the default starts from a plain ResNet trained by
train/base.py (``--init``) and fine-tunes for a few epochs on a one-cycle schedule, the
backbone at a low rate and the fresh gate at a higher one; without ``--init`` raise
``--epochs`` (and ``--lr``) to train from scratch.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import tyro
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from agents.gates import GATE_TYPES, build_gate
from agents.skipnet import SkipNet
from skipenv import distributed
from skipenv.checkpoint import CheckpointError, checkpoint_arch, load_backbone
from skipenv.devices import autocast, tune_cpu_allocator
from skipenv.evaluation import evaluate_gated
from skipenv.resnet import build_resnet
from skipenv.routing import metrics_lines
from skipenv.runs import RunArgs, RunDir, cifar_loaders, config_dict, rng_state, set_rng_state


@dataclass
class Args(RunArgs):
    out: Path = Path("runs/sp")
    """folder for checkpoints (last.pt, final.pt) and metrics.jsonl"""
    init: Path | None = None
    """plain-network checkpoint (train/base.py) to start the backbone from; None: from scratch"""
    depth: int = 38
    """CIFAR ResNet depth, 6n + 2 (must match --init when given)"""
    gate: str = "rnn"
    """gate type: rnn (the paper's recurrent gate), ffgate1 or ffgate2"""
    gate_mode: str = "hard"
    """hard (straight-through 0/1 gates) or soft (block output scaled by p)"""
    epochs: int = 4
    """passes over the training split (the authors' from-scratch recipe is about 182)"""
    lr: float = 0.02
    """peak learning rate of the backbone (one-cycle schedule); use 0.1 from scratch"""
    gate_lr: float = 0.1
    """peak learning rate of the gate, which starts untrained"""
    warmup_fraction: float = 0.15
    """fraction of the steps spent raising the learning rates to their peaks"""
    momentum: float = 0.9
    """SGD momentum (Nesterov)"""
    weight_decay: float = 5e-4
    """L2 weight decay of the backbone and the gate"""


def main(args: Args) -> dict:
    if args.gate not in GATE_TYPES:
        raise ValueError(f"unknown --gate {args.gate!r}; choose one of {GATE_TYPES}")
    if args.gate_mode not in ("hard", "soft"):
        raise ValueError(f"--gate-mode must be hard or soft, got {args.gate_mode!r}")
    dist = distributed.setup(args.device)
    device = dist.device
    autocast(device, args.amp)  # reject a bad --amp before any work
    if device.type == "cpu":
        tune_cpu_allocator()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(args.seed)
    run = RunDir(args.out, args.resume, writer=dist.is_main)

    # data: every rank iterates the same global batches and keeps its rows
    train_loader, eval_loader = cifar_loaders(args, device, dist.is_main)

    # model: a backbone (plain checkpoint or fresh) and a fresh gate
    if args.init is not None and not args.resume:
        backbone = load_backbone(args.init, depth=args.depth)
    else:
        backbone = build_resnet(args.depth)
    model = SkipNet(backbone, build_gate({"type": args.gate}, backbone.block_channels))
    model = model.to(device, memory_format=fmt)
    arch = model.arch()
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
    full_macs = model.backbone.flops_table().full  # per image, plain network
    steps_per_epoch = len(train_loader)
    total_steps = args.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[args.lr, args.gate_lr],
        total_steps=total_steps,
        pct_start=args.warmup_fraction,
    )
    config = config_dict(args)

    # resume
    step, wall_before = 0, 0.0
    if args.resume:
        ckpt = run.load_last(("sp",), map_location=device)
        if checkpoint_arch(ckpt) != arch:
            raise CheckpointError(f"{run.last} holds {ckpt['arch']}, but this run is {arch}")
        model.backbone.load_state_dict(ckpt["model"])
        model.gate.load_state_dict(ckpt["gate"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        step, wall_before = ckpt["step"], ckpt["wall_s"]

    def checkpoint(metrics: dict, final: bool = False) -> None:
        run.save(
            {
                "kind": "sp",
                "config": config,
                "arch": arch,
                "model": model.backbone.state_dict(),
                "gate": model.gate.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "step": step,
                "epoch": step / steps_per_epoch,
                "metrics": metrics,
                "wall_s": wall_before + time.monotonic() - started,
            },
            final=final,
        )

    # train
    net.train()
    started, metrics = time.monotonic(), {}
    end = total_steps if args.max_steps is None else min(total_steps, args.max_steps)
    bar = tqdm(total=end, initial=step, disable=not (args.progress and dist.is_main), unit="step")
    while step < end:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        train_loader.set_epoch(epoch)
        batches = itertools.islice(iter(train_loader), done_in_epoch, None)  # resume mid-epoch
        correct = seen = 0
        executed = 0.0
        for x, y in distributed.shard(batches, dist):
            with autocast(device, args.amp):
                out = net(x, mode=args.gate_mode, routing="masked")
            loss = F.cross_entropy(out.logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            correct += int((out.logits.argmax(dim=1) == y).sum())
            seen += y.numel()
            executed += float(out.executed.float().mean()) * y.numel()
            bar.update()
            bar.set_postfix(
                epoch=epoch,
                loss=f"{loss.item():.3f}",
                acc=f"{correct / seen:.3f}",
                blocks=f"{executed / seen:.3f}",
                flops=f"{float(out.macs.double().mean()) / full_macs:.3f}",
            )
            if step >= end:
                break
            if run.due(args.checkpoint_minutes):
                checkpoint(metrics)
        if step % steps_per_epoch == 0 or step == end:
            metrics = {"step": step, "epoch": step / steps_per_epoch}
            if dist.is_main:
                val = evaluate_gated(model.backbone, model.gate, eval_loader)
                metrics |= {f"{args.eval_split}_{k}": v for k, v in val.items()}
            metrics |= {
                "train_accuracy": correct / max(seen, 1),
                "train_block_fraction": executed / max(seen, 1),
                "wall_s": wall_before + time.monotonic() - started,
            }
            distributed.barrier(dist)
            run.log(metrics)
            if dist.is_main:
                bar.write(metrics_lines(metrics, args.eval_split))  # routing: issue 12
            checkpoint(metrics)
    bar.close()
    if step == total_steps:
        checkpoint(metrics, final=True)
    distributed.teardown(dist)
    return metrics


if __name__ == "__main__":
    main(tyro.cli(Args))
