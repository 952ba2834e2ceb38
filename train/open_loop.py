"""Train the open-loop (BlockDrop-style) router by REINFORCE on SkipNet-CIFAR10-v0.

    python train/open_loop.py --checkpoint skipnet38-hrl-a0.6 --alpha 0.1 \\
        --total-steps 1000000 --out runs/openloop-a0.1
    python train/open_loop.py --out runs/openloop-a0.1 --total-steps 2000000 --resume

The policy (:class:`agents.open_loop.OpenLoopPolicy`) sees block 0's pooled output of each
image and decides all K blocks at once; the natively batched vector env then runs the B images
through those routes with the backbone frozen and pays the env's reward (``paper``: alpha / K
per skip, minus the cross-entropy; or ``accuracy``). Each update is one round of B episodes
(:func:`agents.open_loop.reinforce_episodes`: Adam on ``-(R - baseline) log pi(route)``). The
images of update u are drawn from ``--split`` with a generator seeded by (seed, u), and the
routes with another, so a resumed run continues exactly.

Written to ``--out`` (:class:`skipenv.training.runs.RunDir`): ``last.pt`` every
``--checkpoint-minutes`` and at the end, ``final.pt`` (kind ``openloop``: the policy, its
spec, the backbone's name, the env steps and wall time), ``metrics.jsonl`` (every
``--log-every`` env steps: the sampled routes' accuracy, FLOPs, blocks, return, loss), and
``val.json``: the greedy policy on ``--eval-split`` with the fields of ``train/evaluate.py``,
plus ``env_steps`` and ``train_wall_s``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro
from tqdm.auto import tqdm

from agents.open_loop import KIND, OpenLoopAgent, OpenLoopPolicy, reinforce_episodes
from agents.protocol import evaluate_on, evaluation_results
from agents.skipnet import load_backbone_and_gate
from skipenv.data.sources import DataError
from skipenv.data.splits import load_cifar10
from skipenv.envs.config import EnvConfig
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models.checkpoint import CheckpointError
from skipenv.training.devices import prepare_device
from skipenv.training.runs import RunDir, config_dict
from skipenv.utils import atomic_write


@dataclass
class Args:
    checkpoint: str = "skipnet38-hrl-a0.6"
    """the env's frozen backbone: a base, sp or hrl checkpoint (path or shipped name)"""
    reward: Literal["paper", "accuracy"] = "paper"
    """the env's reward: paper (alpha / K per skip, minus the cross-entropy) or accuracy"""
    alpha: float = 0.1
    """the paper reward's bonus for skipping every decided block"""
    lam: float = 1.0
    """the accuracy reward's price of the full network's MACs"""
    total_steps: int = 1_000_000
    """env steps (decisions) to train for in all, resumed runs included"""
    num_envs: int = 64
    """B: episodes (images) per update (one update per B x K env steps)"""
    lr: float = 1e-2
    """Adam learning rate (at 1e-3, 100k env steps = 46 updates of B = 128 left the fresh
    policy's p(execute) = 0.9 almost where it was)"""
    hidden: int = 64
    """width of the policy's hidden layer"""
    init_execute_prob: float = 0.9
    """p(execute) of every decision of the fresh policy"""
    baseline: Literal["mean", "greedy"] = "mean"
    """REINFORCE baseline: the batch's mean return, or each image's greedy-route return
    (BlockDrop's self-critical choice; twice the env steps)"""
    explore: float = 0.0
    """mix the policy's probabilities with a fair coin by this much while training"""
    split: str = "train"
    """images the policy trains on: train, val, train-full or test"""
    eval_split: str = "val"
    """split of the final evaluation (val: the 5,000 held out of train)"""
    eval_limit: int | None = None
    """evaluate on the first EVAL_LIMIT images of --eval-split only (default: all)"""
    data_dir: str | None = None
    """CIFAR-10 data root (default: $SKIPNET_DATA, else the per-user cache folder)"""
    seed: int = 0
    """seeds the policy's weights, the images of each update and the sampled routes"""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda: backbone and policy"""
    threads: int | None = None
    """torch intra-op threads (default: torch's choice)"""
    out: Path = Path("runs/openloop")
    """run folder"""
    resume: bool = False
    """continue from OUT/last.pt instead of starting afresh"""
    checkpoint_minutes: float = 5.0
    """minutes between checkpoints (OUT/last.pt)"""
    log_every: int = 10_000
    """env steps between lines of metrics.jsonl"""
    progress: bool = True
    """show a progress bar"""

    def check(self) -> None:
        for name in ("total_steps", "num_envs", "hidden", "log_every"):
            if getattr(self, name) < 1:
                flag = name.replace("_", "-")
                raise ValueError(f"--{flag} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0.0 < self.init_execute_prob < 1.0:
            raise ValueError(
                f"--lr must be > 0 and --init-execute-prob in (0, 1), got {self.lr} and "
                f"{self.init_execute_prob}"
            )
        if not 0.0 <= self.explore <= 1.0:
            raise ValueError(f"--explore must be in [0, 1], got {self.explore}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")


def fail(message: str) -> None:
    print(f"open_loop.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = tyro.cli(Args, args=argv, description=__doc__)
    try:
        args.check()
        run = RunDir(args.out, args.resume)
        device = prepare_device(args.device, args.threads)
        payload, backbone, _ = load_backbone_and_gate(args.checkpoint, device)
        train_data = load_cifar10(args.split, args.data_dir, progress=args.progress)
        eval_data = load_cifar10(args.eval_split, args.data_dir, progress=args.progress)
        ckpt = run.load_last((KIND,), device) if args.resume else None
    except (CheckpointError, DataError, FileExistsError, ValueError) as err:
        fail(str(err))

    config = EnvConfig(
        backbone=backbone, device=device, reward=args.reward, alpha=args.alpha, lam=args.lam
    )
    env = SkipNetVectorEnv(args.num_envs, config, data=train_data)
    torch.manual_seed(args.seed)
    policy = OpenLoopPolicy(
        backbone.block_channels[0], env.num_decisions, args.hidden, args.init_execute_prob
    ).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    step, update, wall_before = 0, 0, 0.0
    if ckpt is not None:
        policy.load_state_dict(ckpt["policy"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, update, wall_before = ckpt["step"], ckpt["update"], ckpt["wall_s"]

    def state(wall_s: float) -> dict[str, Any]:
        return {
            "kind": KIND,
            "config": config_dict(args),
            "arch": {"policy": policy.spec(), "backbone": str(args.checkpoint)},
            "policy": policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "update": update,
            "wall_s": wall_s,
        }

    print(
        f"open-loop REINFORCE on SkipNet-CIFAR10-v0: backbone {args.checkpoint} "
        f"({payload['kind']}, ResNet-{backbone.depth}, K = {env.num_decisions}), {args.split} "
        f"({len(train_data)} images), B = {args.num_envs}, reward {args.reward} (alpha "
        f"{args.alpha:g}, lam {args.lam:g}), baseline {args.baseline}, lr {args.lr:g}, "
        f"{'resuming at' if ckpt else 'starting at'} step {step:,} of {args.total_steps:,}, "
        f"device {device}, {torch.get_num_threads()} threads, out {args.out}"
    )
    started = time.perf_counter()
    bar = tqdm(
        total=args.total_steps, initial=step, unit="step", desc="open-loop",
        disable=not args.progress,
    )  # fmt: skip
    window: list[dict[str, float]] = []
    last_log = step
    while step < args.total_steps:
        rng = np.random.default_rng([args.seed, update])
        indices = rng.integers(len(train_data), size=args.num_envs).astype(np.int64)  # B
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + update)
        stats = reinforce_episodes(
            policy, env, optimizer, indices, generator, baseline=args.baseline,
            explore=args.explore,
        )  # fmt: skip
        step += stats["env_steps"]
        update += 1
        window.append(stats)
        bar.update(stats["env_steps"])
        wall_s = wall_before + time.perf_counter() - started
        if step - last_log >= args.log_every or step >= args.total_steps:
            line = {"step": step, "update": update, "wall_s": round(wall_s, 3)}
            for key in ("accuracy", "flops_fraction", "block_fraction", "return", "loss"):
                line[key] = float(np.mean([s[key] for s in window]))
            run.log(line)
            bar.set_postfix(acc=f"{line['accuracy']:.3f}", flops=f"{line['flops_fraction']:.3f}")
            window, last_log = [], step
        if run.due(args.checkpoint_minutes):
            run.save(state(wall_s))
    bar.close()
    wall_s = wall_before + time.perf_counter() - started
    run.save(state(wall_s))
    run.save(state(wall_s), final=True)

    policy.eval()
    agent = OpenLoopAgent(policy, env.single_observation_space, backbone.block_channels, device)
    evaluated = evaluate_on(
        "OpenLoop", agent, config, eval_data, limit=args.eval_limit, seed=args.seed,
        progress=args.progress,
    )  # fmt: skip
    results = {
        "checkpoint": str(args.checkpoint),
        "kind": payload["kind"],
        "depth": backbone.depth,
        "split": args.eval_split,
        **evaluation_results(evaluated, env.num_decisions),
        "agent": "OpenLoop",
        "model": str(run.final),
        "reward": args.reward,
        "alpha": args.alpha,
        "lam": args.lam,
        "env_steps": step,
        "train_wall_s": wall_s,
    }
    text = json.dumps(results, indent=2) + "\n"
    atomic_write(args.out / "val.json", lambda f: f.write(text.encode()))
    json.loads((args.out / "val.json").read_text())
    print(
        f"OpenLoop after {step:,} env steps on {args.eval_split} ({results['num_images']} "
        f"images): accuracy {results['accuracy']:.4f}, FLOPs "
        f"{100 * results['flops_fraction']:.1f}%, blocks {100 * results['block_fraction']:.1f}%"
        f" -> {args.out / 'val.json'}"
    )
    return results


if __name__ == "__main__":
    main()
