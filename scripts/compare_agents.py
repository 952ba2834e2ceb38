"""Compare agents on SkipNet-CIFAR10-v0: accuracy against FLOPs, on the same images.

    python scripts/compare_agents.py --checkpoint runs/sp38/final.pt --split val
    python scripts/compare_agents.py --checkpoint skipnet38-hrl-a0.6 --limit 1000 \\
        --sb3 runs/ppo/model.zip --sb3-algo ppo --json compare.json --plot compare.png

The checkpoint (base, sp, hrl or static; a path or a shipped name) is the environment's
backbone. Every agent routes the same images, each exactly once: all of ``--split``, or with
``--limit`` a stratified sample of it (each class in its share, picked with ``--seed``;
printed and in the JSON's ``subset``), reset in batches of ``--num-envs`` into the natively
batched vector env with ``options={"indices": ...}`` (one batch = one round of K steps;
:func:`agents.protocol.evaluate_agent`). Agents:

- ``GateAgent``: the gate of an sp / hrl checkpoint, greedy (execute iff p > 0.5), or the
  route of a static one (:class:`agents.static.RouteGate`);
- ``AlwaysExecute``: the full network;
- ``RandomSkip(p=...)``: each block executed with probability p (``--random-p``);
- ``FixedPattern.skip_last(k=...)``: the last k blocks of every stage skipped (``--skip-last``);
- ``SB3:<ALGO>``: a Stable-Baselines3 model (``--sb3``, ``--sb3-algo``), deterministic.

Per agent: top-1 ``accuracy``; ``flops_fraction`` (backbone MACs per image over the full
network's, from the env's final info; no gate MACs); ``block_fraction`` (executed blocks over
all blocks); ``return`` (mean episode return of the paper reward with ``--alpha``, by
default the checkpoint's own training alpha: an hrl checkpoint's ``config["alpha"]``, else
0.1); ``steps_per_s`` (environment steps per second, agent and environment together);
``routing`` (:mod:`skipenv.training.routing`: blocks run per image, distinct routes, top route
and its share, dynamic blocks), for the gate agent with its static control (its most common
route run on every image, same backbone), printed as a second table.

The gate also runs inside the network (``forward_gated``,
:func:`agents.protocol.check_gate_agent`) on the same images: ``gate agent == batched
forward: True`` when decisions and predictions match exactly (``gate_check`` in the JSON).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro
from gymnasium.vector import AutoresetMode

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
from skipenv.data.splits import load_cifar10, per_class, stratified_subset
from skipenv.envs.config import EnvConfig
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models.checkpoint import CheckpointError
from skipenv.models.pretrained import list_pretrained, pretrained_info
from skipenv.training.devices import resolve_device, set_threads, tune_cpu_allocator
from skipenv.training.routing import format_routing_table, routing_stats, static_route_correct
from skipenv.training.summary import images, print_summary
from skipenv.utils import write_json

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
    """route LIMIT images only (default: all): a stratified sample of the split, the same
    share of every class, picked with --seed (skipenv.data.splits.stratified_subset)"""
    seed: int = 0
    """seeds RandomSkip and the env"""
    alpha: float | None = None
    """alpha of the paper reward, for the return (default: the checkpoint's own training alpha
    for an hrl checkpoint, else 0.1)"""
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
    """save an accuracy-vs-FLOPs plot here (needs matplotlib): the agents, their Pareto front,
    and the shipped models' registry numbers as reference points (val split only)"""
    progress: bool = True
    """progress bars (tqdm, on stderr)"""
    threads: int | None = None
    """torch CPU threads (default: all cores; lower it when another job shares the machine)"""

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


def checkpoint_alpha(payload: dict[str, Any], default: float = 0.1) -> float:
    """The alpha an hrl checkpoint was trained with (``config["alpha"]``), else ``default``."""
    alpha = payload.get("config", {}).get("alpha") if payload.get("kind") == "hrl" else None
    return float(alpha) if isinstance(alpha, (int, float)) else default


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


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats (fewer or equal FLOPs and higher or equal accuracy,
    one strictly), sorted by FLOPs: ``(flops, accuracy)`` pairs."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(set(points), key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def reference_points(split: str, depth: int) -> list[dict[str, Any]]:
    """The shipped models of ``depth`` with their registry (model card) val numbers: reference
    points for a plot on ``val`` (other splits: none, the numbers would not compare)."""
    if split != "val":
        return []
    points = []
    for name in list_pretrained():
        info = pretrained_info(name)
        if info["depth"] == depth and info["val_accuracy"] is not None:
            points.append(
                {
                    "name": name,
                    "kind": info["kind"],
                    "accuracy": info["val_accuracy"],
                    "flops_fraction": info["flops_fraction"],
                }
            )
    return points


def plot(
    rows: Sequence[dict[str, Any]],
    path: Path,
    title: str,
    references: Sequence[dict[str, Any]] = (),
) -> None:
    """Accuracy against FLOPs: one marker per agent (named in the legend), the agents' Pareto
    front, and the shipped models (``references``, registry numbers) in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "osD^v<>phX"
    for i, r in enumerate(rows):
        x, y = 100 * r["flops_fraction"], 100 * r["accuracy"]
        style = {"marker": "*", "s": 160} if r["agent"] == GATE_AGENT else {"s": 50}
        style.setdefault("marker", markers[i % len(markers)])
        ax.scatter([x], [y], label=r["agent"], zorder=3, **style)
    front = pareto_front([(100 * r["flops_fraction"], 100 * r["accuracy"]) for r in rows])
    ax.plot(*zip(*front, strict=True), "k--", lw=1, zorder=2, label="Pareto front (agents)")
    if references:
        xs = [100 * r["flops_fraction"] for r in references]
        ys = [100 * r["accuracy"] for r in references]
        ax.scatter(xs, ys, marker="x", c="grey", s=40, zorder=2,
                   label="shipped models (registry, val 5,000)")  # fmt: skip
        for r, x, y in zip(references, xs, ys, strict=True):
            short = r["name"].split("-", 1)[-1] if r["kind"] == "hrl" else r["name"]
            above = r["kind"] == "base"  # plain and SP sit together at 100%: one above, one below
            ax.annotate(short, (x, y), textcoords="offset points", xytext=(0, 6 if above else -11),
                        fontsize=7, color="grey", ha="center")  # fmt: skip
    ax.set_xlabel("FLOPs (% of the full network's MACs)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = tyro.cli(Args, args=argv, description=__doc__)

    # backbone, gate, data, optional SB3 model
    try:
        args.check()
        if args.plot is not None:
            require_matplotlib()
        device = resolve_device(args.device)
        set_threads(args.threads)
        if device.type == "cpu":
            tune_cpu_allocator()
        payload, backbone, gate = load_backbone_and_gate(args.checkpoint, device)
        sb3 = load_sb3(args.sb3, args.sb3_algo, device) if args.sb3 is not None else None
        data = load_cifar10(args.split, args.data_dir, progress=args.progress)
    except (CheckpointError, DataError, FileNotFoundError, ImportError, ValueError) as err:
        fail(str(err))

    # the images, in batches of B; one vector env per (obs_mode, B)
    if args.limit is None or args.limit >= len(data):
        indices = np.arange(len(data), dtype=np.int64)  # M
    else:  # never the first LIMIT: a split is ordered by class
        indices = stratified_subset(data.labels, args.limit, seed=args.seed).numpy()  # M'
    n = len(indices)
    counts = per_class(data.labels[torch.from_numpy(indices)], len(data.classes))
    subset = {
        "images": n,
        "of": len(data),
        "stratified": n < len(data),
        "seed": args.seed if n < len(data) else None,
        "per_class": dict(zip(data.classes, counts, strict=True)),
    }
    batches = [indices[i : i + args.num_envs] for i in range(0, n, args.num_envs)]
    alpha = args.alpha if args.alpha is not None else checkpoint_alpha(payload)
    config = EnvConfig(backbone=backbone, data=data, device=device, alpha=alpha)

    @functools.cache
    def make_env(num_envs: int, obs_mode: str = "vector") -> SkipNetVectorEnv:
        # every round is reset with its own images: no autoreset
        return SkipNetVectorEnv(
            num_envs, config, obs_mode=obs_mode, autoreset_mode=AutoresetMode.DISABLED
        )

    env = make_env(len(batches[0]))
    space, channels = env.single_observation_space, backbone.block_channels
    where = ", ".join(str(p) for p in (args.json, args.plot) if p is not None)
    print_summary(
        f"scripts/compare_agents.py: agents routing images through {args.checkpoint} "
        f"({payload['kind']}, ResNet-{backbone.depth}, {env.num_blocks} blocks, "
        f"K = {env.num_decisions}) as SkipNet-CIFAR10-v0",
        device=device,
        data=images(n, args.split) + (f", first {n} of {len(data)}" if n < len(data) else ""),
        steps=f"{len(batches)} rounds of K = {env.num_decisions} steps, <= {args.num_envs} envs",
        out=where or "stdout only",
        reward=f"paper, alpha {alpha:g}"
        + (
            " (the checkpoint's own)"
            if args.alpha is None and "alpha" in payload.get("config", {})
            else ""
        ),
    )
    if subset["stratified"]:
        print(
            f"a stratified sample of {n} of the {len(data)} {args.split} images (seed "
            f"{args.seed}), per class: "
            + ", ".join(f"{c} {k}" for c, k in subset["per_class"].items())
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
        "subset": subset,
        "num_envs": args.num_envs,
        "alpha": alpha,
        "device": str(device),
        "rows": rows,
        "gate_agent_equals_batched_forward": None if gate_check is None else gate_check["equal"],
        "gate_check": gate_check,
        "gate_agent_error": gate_error,
    }
    if args.json is not None:
        write_json(args.json, results)
    if args.plot is not None:
        name = Path(args.checkpoint).name
        title = (
            f"agents on {name} (ResNet-{backbone.depth}), {args.split}, {n} images; "
            f"return with alpha {alpha:g}"
        )
        refs = reference_points(args.split, backbone.depth) if n == len(data) else []
        plot(rows, args.plot, title, refs)
    return results


if __name__ == "__main__":
    main()
