"""SkipNet+HRL: hybrid REINFORCE + supervised training of gates and network, after SP.

    python train/hybrid.py --sp runs/sp38/final.pt --alpha 0.1 --out runs/hrl38-a0.1
    python train/hybrid.py --out runs/hrl38 --pretrain.init runs/base38/final.pt  # SP first
    python train/hybrid.py --out runs/hrl38-a0.1 --resume
    torchrun --nproc_per_node=2 train/hybrid.py ...

Each gate samples execute/skip from Bernoulli(p) and skipped blocks are really skipped (a
step costs less than a full-network step). Per image, decision k earns ``alpha / K`` for a
skip, and the last decision also earns minus the cross-entropy of the prediction; returns-to-
go (discount ``gamma``) weight the log-probabilities of the sampled decisions (REINFORCE,
scaled by ``rl_weight``), and the cross-entropy of the output is minimised jointly. At
evaluation the gates are greedy (p > 0.5).

Batch norm. Sampled routes change which images each block sees from step to step, and in
train mode a block's batch norm would normalise over that shifting subset and fold it into
its running statistics: the statistics used at evaluation drift away from what greedy routes
produce, which is how accuracy collapses in the RL stage of the authors' code. Here batch norm
is frozen during HRL by default (``--freeze-bn``): the running statistics from SP are used in
training and evaluation alike and are not updated; the affine weights still learn.

Recipe. The authors run HRL for about 10k iterations at lr 1e-4 (SGD, momentum 0.9, wd 1e-4,
batch 128, rl weight 0.01, gamma 1, no baseline). On this project's CPU the default is two
epochs (702 steps) from an SP network fine-tuned from a plain one: backbone lr 1e-3, gate lr
0.02 with rl weight 1, exploration 0.2 and a self-critical baseline (see ``--explore`` and
``--baseline``). Alpha picks the trade-off (larger alpha, more skipping; what each alpha did
on ResNet-38 with this recipe: results/skipnet38-cpu/README.md). The shipped models
(skipenv/models/weights/MODEL_CARD.md) continue from the alpha 3 network for 4 epochs at a lower
alpha with ``--schedule cosine``: blocks that pay for themselves come back and most of the
accuracy returns (scripts/train_pretrained38.sh).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro
from torch.nn.parallel import DistributedDataParallel

from agents.gates import build_gate
from agents.reinforce import BASELINES, REWARDS, hrl_step_loss
from agents.skipnet import SkipNet, freeze_batch_norm, load_skipnet
from skipenv.models.checkpoint import (
    BACKBONE_KINDS,
    CheckpointError,
    load_backbone,
    load_checkpoint,
)
from skipenv.models.pretrained import resolve_checkpoint
from skipenv.training import distributed
from skipenv.training.devices import autocast, prepare_device
from skipenv.training.evaluation import evaluate_gated
from skipenv.training.loop import StepOutput, train
from skipenv.training.runs import RunArgs, RunDir, cifar_loaders, config_dict
from skipenv.training.tensorboard import example_callback
from skipenv.utils import import_script

# train/supervised.py, the SP stage run first when --sp is not given (the entry points are
# scripts, not a package: imported by path)
supervised = import_script(Path(__file__).with_name("supervised.py"))


@dataclass
class Args(RunArgs):
    out: Path = Path("runs/hrl")
    """folder for checkpoints (last.pt, final.pt) and metrics.jsonl (and sp/ when SP runs first)"""
    sp: str | None = None
    """SP checkpoint to start from: a path or a shipped model's name (e.g. skipnet38-ld-sp); None
    runs SP first (with --pretrain.*) into OUT/sp"""
    alpha: float = 3.0
    """compute reward: alpha / K per skipped block; larger skips more (the paper's 0.1, 0.01,
    0.001 go with its 10k-step recipe; for this one see results/skipnet38-cpu/README.md)"""
    gamma: float = 1.0
    """discount of the returns-to-go (1 in the authors' code)"""
    rl_weight: float = 1.0
    """scale of the REINFORCE term against the cross-entropy (authors: 0.01 over 10k steps)"""
    baseline: str = "greedy"
    """REINFORCE baseline: greedy (the returns of the image's greedy route, self-critical),
    mean (batch mean return per decision) or none (the authors')"""
    explore: float = 0.2
    """sample from explore/2 + (1 - explore) * p, so every block is skipped and run at least
    explore/2 of the time while training (0: the authors' plain sampling)"""
    epochs: float = 2.0
    """passes over the training split (the authors' recipe is about 28)"""
    lr: float = 1e-3
    """learning rate of the backbone (the authors use 1e-4 over 10k steps)"""
    gate_lr: float = 0.02
    """learning rate of the gate"""
    schedule: str = "constant"
    """learning-rate schedule of both groups: constant, or cosine (from lr down to 0 at the
    last step; for the last stage of an alpha curriculum)"""
    momentum: float = 0.9
    """SGD momentum"""
    weight_decay: float = 1e-4
    """L2 weight decay (the authors' value)"""
    freeze_bn: bool = True
    """keep batch-norm statistics from SP fixed during HRL (see the module docstring)"""
    fold_bn: bool = True
    """with --freeze-bn, run each conv + frozen batch norm as one convolution with folded
    weights (same gradients up to float rounding, fewer passes; agents.reinforce.hrl_step_loss);
    --no-fold-bn runs them as two layers"""
    eval_every: int = 0
    """evaluate (and log) every this many steps; 0: at each epoch's end"""
    reward: str = "paper"
    """reward form: paper (alpha / K per skip, minus the final cross-entropy) or accuracy (+1
    if correct, minus --price times each executed block's share of the full MACs; the env's
    reward="accuracy")"""
    price: float = 0.5
    """compute price of the accuracy reward (running every block costs about this much)"""
    entropy: float = 0.0
    """weight of a Bernoulli-entropy bonus on the gate's decisions (0: the paper's loss)"""
    freeze_backbone: bool = False
    """train the gate alone by REINFORCE on a frozen backbone (no backbone update, no
    cross-entropy term): the paper's gate as a pure RL agent"""
    fresh_gate: bool = False
    """start from a newly initialised recurrent gate (executes every block) instead of the
    checkpoint's; then --sp may be any backbone checkpoint (base, sp, hrl, static)"""
    pretrain: supervised.Args = field(default_factory=supervised.Args)
    """the SP stage run first when --sp is not given (its out, data, device, seed and resume
    are taken from this run)"""


def run_pretraining(args: Args) -> Path:
    """Run (or finish) the SP stage into OUT/sp and return its final checkpoint."""
    sp_out = args.out / "sp"
    if not finished(sp_out / "final.pt"):
        supervised.main(
            dataclasses.replace(
                args.pretrain,
                out=sp_out,
                resume=(sp_out / "last.pt").exists(),
                data_dir=args.data_dir,
                device=args.device,
                seed=args.seed,
                progress=args.progress,
                threads=args.threads,
                tensorboard=args.tensorboard,
            )
        )
    return sp_out / "final.pt"


def finished(path: Path) -> bool:
    """Whether ``path`` is the final.pt of a run that did all its steps (not one stopped early
    by --max-steps)."""
    if not path.exists():
        return False
    ckpt = load_checkpoint(path)
    return ckpt["step"] >= ckpt.get("total_steps", ckpt["step"])


SCHEDULES = ("constant", "cosine")


def lr_scale(schedule: str, step: int, total_steps: int) -> float:
    """Factor on the base learning rates for the step about to be taken (step 0 first)."""
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))  # cosine: 1 -> 0


def main(args: Args) -> dict:
    if args.schedule not in SCHEDULES:
        raise ValueError(f"unknown --schedule {args.schedule!r}; choose one of {SCHEDULES}")
    if args.baseline not in BASELINES:
        raise ValueError(f"unknown --baseline {args.baseline!r}; choose one of {BASELINES}")
    if args.reward not in REWARDS:
        raise ValueError(f"unknown --reward {args.reward!r}; choose one of {REWARDS}")
    if args.price < 0 or args.entropy < 0:
        raise ValueError(f"need --price >= 0 and --entropy >= 0, got {args.price}, {args.entropy}")
    if args.alpha < 0 or not 0 <= args.gamma <= 1:
        raise ValueError(f"need alpha >= 0 and 0 <= gamma <= 1, got {args.alpha}, {args.gamma}")
    if args.sp is None and args.pretrain.init is None and not args.pretrain.from_scratch:
        raise ValueError(
            "train/hybrid.py needs an SP network: --sp PATH (the final.pt of "
            "train/supervised.py), or SP run first into OUT/sp from --pretrain.init PATH (a "
            "plain network from train/base.py) or with --pretrain.from-scratch"
        )
    # a name or a path, resolved before anything is made (no run folder on a bad --sp)
    sp_path = resolve_checkpoint(args.sp) if args.sp is not None else run_pretraining(args)
    dist = distributed.setup(args.device)
    device = dist.device
    autocast(device, args.amp)
    prepare_device(device, args.threads)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(args.seed)
    run = RunDir(args.out, args.resume, writer=dist.is_main)

    # data
    train_loader, eval_loader = cifar_loaders(args, device, dist.is_main)

    # model: the SP network (or the checkpoint being resumed)
    if args.fresh_gate and not args.resume:
        payload = load_checkpoint(resolve_checkpoint(sp_path), BACKBONE_KINDS, map_location=device)
        backbone = load_backbone(payload, map_location=device)
        model = SkipNet(backbone, build_gate({"type": "rnn"}, backbone.block_channels))
    else:
        model = load_skipnet(run.last if args.resume else sp_path, map_location=device)
    model = model.to(device, memory_format=fmt)
    if args.freeze_backbone:
        model.backbone.requires_grad_(False)
    # a block skipped by every image of a batch gets no gradient that step
    net = DistributedDataParallel(model, find_unused_parameters=True) if dist.enabled else model
    optimizer = torch.optim.SGD(
        [
            {"params": model.backbone.parameters(), "lr": args.lr},
            {"params": model.gate.parameters(), "lr": args.gate_lr},
        ],
        momentum=args.momentum,
        weight_decay=args.weight_decay,
    )
    table = model.backbone.macs_table()
    run_macs = torch.tensor(table.block_execute[1:]) - torch.tensor(table.block_skip[1:])  # K
    block_cost = run_macs.double() / table.full  # K: what running block k + 1 adds to the MACs
    total_steps = max(1, round(args.epochs * len(train_loader)))
    config = config_dict(args)
    config["sp"] = str(sp_path)
    generator = torch.Generator(device=device)

    # one step: sampled routes, really skipped; REINFORCE + cross-entropy
    def step(x: torch.Tensor, y: torch.Tensor, index: int) -> StepOutput:
        generator.manual_seed((args.seed * 1_000_003 + index) * 64 + dist.rank)
        loss, ce, out = hrl_step_loss(
            model,
            x,
            y,
            net=net,
            generator=generator,
            alpha=args.alpha,
            gamma=args.gamma,
            rl_weight=args.rl_weight,
            baseline=args.baseline,
            explore=args.explore,
            amp=args.amp,
            reward=args.reward,
            price=args.price,
            block_cost=block_cost,
            entropy=args.entropy,
            supervised=not args.freeze_backbone,
            fold_bn=args.fold_bn,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        scale = lr_scale(args.schedule, index, total_steps)
        for group, base_lr in zip(optimizer.param_groups, (args.lr, args.gate_lr), strict=True):
            group["lr"] = base_lr * scale
        optimizer.step()
        flops = table.flops_fraction(out.executed)  # B
        show = {
            "flops": f"{float(flops.mean()):.3f}",
            "p": f"{out.probs.mean().item():.3f}",
            "lr": f"{args.lr * scale:.2g}",
        }
        return StepOutput(out.logits, ce.item(), out.executed, show, out.probs, flops)

    def train_mode() -> None:
        net.train()
        if args.freeze_bn:
            freeze_batch_norm(model)

    # checkpoint entries of this entry point (the weights were loaded from run.last above)
    def state() -> dict:
        return {
            "model": model.backbone.state_dict(),
            "gate": model.gate.state_dict(),
            "optimizer": optimizer.state_dict(),
        }

    return train(
        args,
        run=run,
        dist=dist,
        kind="hrl",
        arch=model.arch(),
        config=config,
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
        restore=lambda ckpt: optimizer.load_state_dict(ckpt["optimizer"]),
        train_mode=train_mode,
        eval_every=args.eval_every or None,
        what=f"train/hybrid.py: SkipNet-{model.backbone.depth} HRL, alpha {args.alpha:g}, from "
        f"{sp_path}, {args.epochs:g} epochs (lr {args.lr:g}, gate lr {args.gate_lr:g}, "
        f"{args.schedule}), batch {args.batch_size}",
        eval_size=eval_loader.num_samples,
        examples=example_callback(model.backbone, model.gate, eval_loader),
    )


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except CheckpointError as err:
        raise SystemExit(f"hybrid.py: error: {err}") from None
