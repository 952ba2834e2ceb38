"""Compare agents on SkipNet-CIFAR10-v0: accuracy against FLOPs, on the same images.

    python scripts/compare_agents.py --checkpoint runs/sp38/final.pt --split val
    python scripts/compare_agents.py --checkpoint skipnet38-hrl-a0.6 --limit 1000 \\
        --sb3 runs/ppo/model.zip --sb3-algo ppo --json compare.json --plot compare.png

The checkpoint (base, sp, hrl or static; a path or a shipped name) is the environment's
backbone. Every agent routes the same images, each exactly once: the first ``--limit`` images
of ``--split`` (default all), reset in batches of ``--num-envs`` into the natively batched
vector env with ``options={"indices": ...}`` (one batch = one round of K steps;
:func:`agents.protocol.evaluate_agent`). Agents:

- ``GateAgent``: the gate of an sp / hrl checkpoint, greedy (execute iff p > 0.5), or the
  route of a static one (:class:`agents.static.RouteGate`);
- ``AlwaysExecute``: the full network;
- ``RandomSkip(p=...)``: each block executed with probability p (``--random-p``);
- ``FixedPattern.skip_last(k=...)``: the last k blocks of every stage skipped (``--skip-last``);
- ``SB3:<ALGO>``: a Stable-Baselines3 model (``--sb3``, ``--sb3-algo``), deterministic.

Per agent: top-1 ``accuracy``; ``flops_fraction`` (backbone MACs per image over the full
network's, from the env's final info; no gate MACs); ``block_fraction`` (executed blocks over
all blocks); ``return`` (mean episode return of the paper reward with ``--alpha``);
``steps_per_s`` (environment steps per second, agent and environment together); ``routing``
(:mod:`skipenv.training.routing`: blocks run per image, distinct routes, top route and its
share, dynamic blocks), for the gate agent with its static control (its most common route run
on every image, same backbone), printed as a second table.

The gate also runs inside the network (``forward_gated``,
:func:`agents.protocol.check_gate_agent`) on the same images: ``gate agent == batched
forward: True`` when decisions and predictions match exactly (``gate_check`` in the JSON).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

from agents.baselines import AlwaysExecute, FixedPattern, RandomSkip
from agents.gate_agent import GateAgent
from agents.protocol import (
    SB3_ALGOS,
    Agent,
    AgentRun,
    check_gate_agent,
    evaluate_agent,
    load_sb3,
    same_layout,
)
from agents.skipnet import load_backbone_and_gate
from skipenv.data.sources import DataError
from skipenv.data.splits import load_cifar10
from skipenv.envs.config import EnvConfig
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models.checkpoint import CheckpointError
from skipenv.training.devices import resolve_device, tune_cpu_allocator
from skipenv.training.routing import format_routing_table, routing_stats, static_route_correct

GATE_AGENT = "GateAgent"


@dataclass
class Args:
    checkpoint: str
    """a base, sp, hrl or static checkpoint (path or shipped name): the env's backbone; an
    sp/hrl gate (a static route) is also an agent"""
    split: str = "val"
    """CIFAR-10 split: val (the 5,000 held out of train), train, train-full or test"""
    data_dir: str | None = None
    """CIFAR-10 data root (default: $SKIPNET_DATA, else the per-user cache folder)"""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda"""
    num_envs: int = 500
    """B: images routed together in one round of K steps"""
    limit: int | None = None
    """use the first LIMIT images of the split only (default: all)"""
    seed: int = 0
    """seeds RandomSkip and the env"""
    alpha: float = 0.1
    """alpha of the paper reward, for the return"""
    random_p: tuple[float, ...] = (0.9, 0.75, 0.5)
    """p_execute of each RandomSkip agent (none: no RandomSkip)"""
    skip_last: tuple[int, ...] = (1, 2)
    """blocks skipped per stage by each FixedPattern.skip_last agent (none: no FixedPattern)"""
    sb3: Path | None = None
    """a Stable-Baselines3 model zip to compare too"""
    sb3_algo: str = "ppo"
    """the class that saved --sb3: ppo, a2c, dqn, recurrentppo or maskableppo"""
    json: Path | None = None
    """write the results to this file"""
    plot: Path | None = None
    """save an accuracy-vs-FLOPs scatter plot here (needs matplotlib)"""
    progress: bool = True
    """progress bars (tqdm, on stderr)"""

    def check(self) -> None:
        """Raise ValueError naming every bad value."""
        if self.num_envs < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError(
                f"--num-envs and --limit must be >= 1, got {self.num_envs} and {self.limit}"
            )
        if any(not 0.0 <= p <= 1.0 for p in self.random_p):
            raise ValueError(f"--random-p values must be probabilities, got {self.random_p}")
        if any(k < 0 for k in self.skip_last):
            raise ValueError(f"--skip-last values must be >= 0, got {self.skip_last}")
        if self.sb3_algo not in SB3_ALGOS:
            raise ValueError(
                f"--sb3-algo must be one of {sorted(SB3_ALGOS)}, got {self.sb3_algo!r}"
            )


def fail(message: str) -> None:
    """Exit with status 2 and ``message`` on stderr, as a command-line error."""
    print(f"compare_agents.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def add_routing(
    runs: dict[str, AgentRun], env: SkipNetVectorEnv, batches: Sequence[np.ndarray]
) -> None:
    """Give every row ``routing`` (:mod:`skipenv.training.routing`); the gate agent's also holds
    its static control: its most common route run on every image with the same backbone."""
    episodes = env.episodes
    for name, run in runs.items():
        stats = routing_stats(torch.from_numpy(run.executed), accuracy=run.row["accuracy"])
        if name == GATE_AGENT:
            images = (
                (
                    episodes.inputs(i),  # B x 3 x H x W
                    episodes.labels.index_select(0, torch.from_numpy(i).to(episodes.device)),  # B
                )
                for i in batches
            )
            correct = static_route_correct(episodes.backbone, stats.route, images)  # M
            stats = dataclasses.replace(stats, static_accuracy=int(correct.sum()) / len(correct))
        run.row["routing"] = stats.to_dict()


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    width = max(len("agent"), *(len(r["agent"]) for r in rows))
    lines = [
        f"{'agent':<{width}}  {'accuracy':>8}  {'FLOPs %':>7}  {'blocks %':>8}  "
        f"{'return':>8}  {'steps/s':>9}"
    ]
    for r in rows:
        lines.append(
            f"{r['agent']:<{width}}  {100 * r['accuracy']:>8.2f}  "
            f"{100 * r['flops_fraction']:>7.1f}  {100 * r['block_fraction']:>8.1f}  "
            f"{r['return']:>8.4f}  {r['steps_per_s']:>9.0f}"
        )
    return "\n".join(lines)


def require_matplotlib() -> None:
    """Raise ImportError with what to do when matplotlib (needed by --plot) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "--plot needs matplotlib, which is not installed: `pip install matplotlib`, or "
            "leave out --plot (the table and --json need nothing extra)"
        ) from err


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy against FLOPs, one labelled point per agent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        x, y = 100 * r["flops_fraction"], 100 * r["accuracy"]
        ax.scatter([x], [y], s=36, marker="*" if r["agent"] == GATE_AGENT else "o")
        ax.annotate(r["agent"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("FLOPs (% of the full network's MACs)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.2, y=0.1)  # room for the labels of the rightmost points
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = tyro.cli(Args, args=argv, description=__doc__)

    # backbone, gate, data, optional SB3 model
    try:
        args.check()
        if args.plot is not None:
            require_matplotlib()
        device = resolve_device(args.device)
        if device.type == "cpu":
            tune_cpu_allocator()
        payload, backbone, gate = load_backbone_and_gate(args.checkpoint, device)
        sb3 = load_sb3(args.sb3, args.sb3_algo, device) if args.sb3 is not None else None
        data = load_cifar10(args.split, args.data_dir, progress=args.progress)
    except (CheckpointError, DataError, FileNotFoundError, ImportError, ValueError) as err:
        fail(str(err))

    # the images, in batches of B; one vector env per (obs_mode, B)
    n = len(data) if args.limit is None else min(args.limit, len(data))
    indices = np.arange(n, dtype=np.int64)
    batches = [indices[i : i + args.num_envs] for i in range(0, n, args.num_envs)]
    config = EnvConfig(backbone=backbone, data=data, device=device, alpha=args.alpha)

    @functools.cache
    def make_env(num_envs: int, obs_mode: str = "vector") -> SkipNetVectorEnv:
        return SkipNetVectorEnv(num_envs, config, obs_mode=obs_mode)

    env = make_env(len(batches[0]))
    space, channels = env.single_observation_space, backbone.block_channels
    print(
        f"{args.checkpoint} ({payload['kind']}, ResNet-{backbone.depth}, {env.num_blocks} "
        f"blocks, K = {env.num_decisions}) on {args.split}: {n} images in {len(batches)} "
        f"batches of <= {args.num_envs}, device {device}"
    )

    # the agents: name, agent, observation mode
    agents: list[tuple[str, Agent, str]] = []
    gate_error = None
    if gate is not None:
        try:
            agents.append((GATE_AGENT, GateAgent(gate, space, channels, device=device), "vector"))
        except TypeError as err:  # a feedforward gate: needs the full activation map
            gate_error = str(err)
            print(f"no gate agent: {gate_error}")
    agents.append(("AlwaysExecute", AlwaysExecute(space, channels), "vector"))
    for i, p in enumerate(args.random_p):
        agent = RandomSkip(space, channels, p_execute=p, seed=args.seed + i)
        agents.append((f"RandomSkip(p={p:g})", agent, "vector"))
    for k in args.skip_last:
        agent = FixedPattern.skip_last(space, channels, k)
        agents.append((f"FixedPattern.skip_last(k={k})", agent, "vector"))
    if sb3 is not None:
        sb3_space = make_env(len(batches[0]), sb3.obs_mode).single_observation_space
        if not same_layout(sb3.model.observation_space, sb3_space):
            fail(
                f"the SB3 model {args.sb3} observes {sb3.model.observation_space}, but this "
                f"env's obs_mode={sb3.obs_mode!r} gives {sb3_space}: was it trained on a "
                "backbone of another depth or widths?"
            )
        agents.append((f"SB3:{SB3_ALGOS[args.sb3_algo][1]}", sb3, sb3.obs_mode))

    # run them, and check the gate agent against the batched forward
    runs: dict[str, AgentRun] = {}
    for name, agent, obs_mode in agents:
        runs[name] = evaluate_agent(
            name,
            agent,
            functools.partial(make_env, obs_mode=obs_mode),
            batches,
            seed=args.seed,
            progress=args.progress,
        )
    gate_check = None
    if GATE_AGENT in runs and gate is not None:
        gate_check = check_gate_agent(runs[GATE_AGENT], env, gate, batches)

    add_routing(runs, env, batches)  # issue 12: per-image routing diagnostics

    # report
    rows = sorted((r.row for r in runs.values()), key=lambda r: r["flops_fraction"])
    print(format_table(rows))
    print(format_routing_table([(r["agent"], r["routing"]) for r in rows]))
    if gate_check is not None:
        print(f"gate agent == batched forward: {gate_check['equal']}")
        if not gate_check["equal"]:
            print(
                f"  decisions differ on {gate_check['images_with_other_decisions']} images, "
                f"predictions on {gate_check['images_with_other_predictions']}; accuracy "
                f"{gate_check['accuracy_agent']:.4f} (agent) vs "
                f"{gate_check['accuracy_batched']:.4f} (batched)"
            )
    results = {
        "checkpoint": str(args.checkpoint),
        "kind": payload["kind"],
        "depth": backbone.depth,
        "split": args.split,
        "num_images": n,
        "num_envs": args.num_envs,
        "alpha": args.alpha,
        "device": str(device),
        "rows": rows,
        "gate_agent_equals_batched_forward": None if gate_check is None else gate_check["equal"],
        "gate_check": gate_check,
        "gate_agent_error": gate_error,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot is not None:
        name = Path(args.checkpoint).name
        plot(rows, args.plot, f"{name}: ResNet-{backbone.depth} on {args.split} ({n} images)")
    return results


if __name__ == "__main__":
    main()
