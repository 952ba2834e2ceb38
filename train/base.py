"""Train a plain CIFAR ResNet (every block runs): SkipNet's baseline and its initialisation.

    python train/base.py --depth 38 --out runs/base38            # train on 45k, evaluate on val
    python train/base.py --depth 38 --out runs/base38 --resume   # continue a killed run

Recipe. The authors train their CIFAR networks with SGD (momentum 0.9, weight decay 1e-4,
lr 0.1 divided by 10 at fixed points, batch 128, 64k iterations = 182 epochs). That is days
of CPU here, so the default is a CPU-budget recipe: 30 epochs of a one-cycle schedule
(peak lr 0.1, Nesterov momentum 0.9, weight decay 5e-4), batch 128, random crop with
4-pixel padding and horizontal flip, channels_last. Every field below can be changed.

Files in ``--out``: ``last.pt`` (written every ``checkpoint_minutes`` and at each epoch's
end, atomically), ``final.pt`` (the finished model), ``metrics.jsonl`` (one line per
evaluation). A run killed at any moment resumes from ``last.pt`` with ``--resume`` and
continues with the same batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import tyro
from torch.nn.parallel import DistributedDataParallel

from skipenv.models.resnet import build_resnet
from skipenv.training import distributed
from skipenv.training.devices import autocast, prepare_device
from skipenv.training.evaluation import evaluate_gated
from skipenv.training.loop import StepOutput, train
from skipenv.training.runs import RunArgs, RunDir, cifar_loaders, config_dict
from skipenv.training.tensorboard import example_callback


@dataclass
class Args(RunArgs):
    out: Path = Path("runs/base")
    """folder for checkpoints (last.pt, final.pt) and metrics.jsonl"""
    depth: int = 38
    """CIFAR ResNet depth, 6n + 2 (20, 32, 38, 44, 56, 74, 110, 152; 8 and 14 for tests)"""
    epochs: int = 30
    """passes over the training split (the authors' GPU recipe is about 182)"""
    lr: float = 0.1
    """peak learning rate of the one-cycle schedule"""
    warmup_fraction: float = 0.15
    """fraction of the steps spent raising the learning rate to its peak"""
    momentum: float = 0.9
    """SGD momentum (Nesterov)"""
    weight_decay: float = 5e-4
    """L2 weight decay (the authors use 1e-4 with their 6x longer schedule)"""
    drop_max: float = 0.0
    """random block dropping for a skip-tolerant backbone (LayerDrop, Fan et al. 2019: no
    test-time rescaling): each training image draws a drop rate r uniformly in
    [0, drop_max] and skips each block after the first with probability r, really skipped
    (``forward_skip``), so training sees the routes a gate produces; 0 trains the plain net"""


def random_routes(
    batch: int, num_decisions: int, drop_max: float, device: torch.device
) -> torch.Tensor:
    """B x K bool decisions: image b executes each block with probability 1 - r_b,
    r_b ~ U[0, drop_max] (per-image rates, so full and heavily skipped routes both occur)."""
    rate = torch.rand(batch, 1, device=device) * drop_max  # B x 1
    return torch.rand(batch, num_decisions, device=device) >= rate  # B x K


def main(args: Args) -> dict[str, float]:
    if not 0.0 <= args.drop_max < 1.0:
        raise ValueError(f"--drop-max must be in [0, 1), got {args.drop_max}")
    dist = distributed.setup(args.device)
    if dist.enabled and args.drop_max > 0:
        raise ValueError(
            "--drop-max runs forward_skip, which DistributedDataParallel does not "
            "wrap; train with random block dropping in a single process"
        )
    device = dist.device
    autocast(device, args.amp)  # reject a bad --amp before any work
    prepare_device(device, args.threads)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(args.seed)
    run = RunDir(args.out, args.resume, writer=dist.is_main)

    # data: every rank iterates the same global batches and keeps its rows
    train_loader, eval_loader = cifar_loaders(args, device, dist.is_main)

    # model, optimiser, schedule
    model = build_resnet(args.depth).to(device, memory_format=fmt)
    net = DistributedDataParallel(model) if dist.enabled else model
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=args.lr,
        momentum=args.momentum,
        nesterov=True,
        weight_decay=args.weight_decay,
    )
    total_steps = args.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=total_steps, pct_start=args.warmup_fraction
    )
    arch = {
        "name": "cifar_resnet",
        "dataset": "cifar10",
        "depth": args.depth,
        "num_classes": 10,
        "widths": list(model.widths),
    }

    # one step
    def step(x: torch.Tensor, y: torch.Tensor, _: int) -> StepOutput:
        with autocast(device, args.amp):
            if args.drop_max > 0:
                execute = random_routes(x.shape[0], model.num_decisions, args.drop_max, device)
                logits = model.forward_skip(x, execute)  # B x 10
            else:
                logits = net(x)  # B x 10
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return StepOutput(logits, loss.item(), show={"lr": f"{scheduler.get_last_lr()[0]:.4f}"})

    # checkpoint entries of this entry point
    def state() -> dict:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }

    def restore(ckpt: dict) -> None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])

    return train(
        args,
        run=run,
        dist=dist,
        kind="base",
        arch=arch,
        config=config_dict(args),
        train_loader=train_loader,
        total_steps=total_steps,
        step=step,
        evaluate=lambda: evaluate_gated(
            model,
            None,
            eval_loader,
            routing=False,  # a plain network has one route
            progress=args.progress,
            desc=f"evaluating {args.eval_split}",
        ),
        state=state,
        restore=restore,
        train_mode=net.train,
        what=f"train/base.py: plain ResNet-{args.depth}"
        + (f" with random block dropping up to {args.drop_max:g}" if args.drop_max else "")
        + f", {args.epochs} epochs one-cycle (peak lr {args.lr:g}), batch {args.batch_size}",
        eval_size=eval_loader.num_samples,
        examples=example_callback(model, None, eval_loader),
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
