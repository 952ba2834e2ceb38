"""Compare agents on SkipNet-CIFAR10-v0: accuracy against FLOPs, on the same images.

    python scripts/compare_agents.py --checkpoint runs/sp38/final.pt --split val
    python scripts/compare_agents.py --checkpoint skipnet38-hrl-a0.6 --limit 1000 \\
        --sb3 runs/ppo/final.zip --sb3-algo ppo --json compare.json --plot compare.png
    python scripts/compare_agents.py --manifest runs/leaderboard/agents.yml \\
        --out results/leaderboard   # the leaderboard from saved agents
    python scripts/compare_agents.py --from-json results/leaderboard/leaderboard.json \\
        --out results/leaderboard   # table and plot again, nothing evaluated

The checkpoint (base, sp, hrl or static; a path or a shipped name) is the environment's
backbone. Every agent routes the same images, each exactly once: all of ``--split``, or with
``--limit`` a stratified sample of it (each class in its share, picked with ``--seed``; printed
and in the JSON's ``subset``), reset in batches of ``--num-envs`` into the natively batched
vector env with ``options={"indices": ...}`` (one batch = one round of K steps, no autoreset;
:func:`agents.protocol.evaluate_agent`).

Learned agents (one row each; the rows of one ``family`` are its operating points):

- ``GateAgent``: the gate of an sp / hrl ``--checkpoint``, greedy (execute iff p > 0.5), or
  the route of a static one (:class:`agents.static.RouteGate`);
- ``SB3:<ALGO>``: a Stable-Baselines3 model (``--sb3``, ``--sb3-algo``), deterministic;
- the entries of ``--manifest`` (YAML or JSON): ``agents:`` a list of ``{family, point, kind,
  path}`` with ``kind`` one of ``sb3`` (+ ``algo``; a ``train/sb3.py`` zip), ``openloop``
  (``train/open_loop.py``'s final.pt), ``gate`` (the gate of an sp / hrl checkpoint, a path
  or shipped name, routing the env's backbone: e.g. ``train/hybrid.py --fresh-gate
  --freeze-backbone --reward paper``, the paper's gate trained by RL alone) or ``skipnet`` (gate
  and its own backbone, e.g. a hybrid-trained network: same images, another backbone).
  ``env_steps`` and ``train_wall_s`` (training cost) are read from the run's ``val.json`` or
  checkpoint, or given in the entry. A manifest may name the ``backbone`` (``--checkpoint`` wins).

Baselines on the same backbone:

- ``AlwaysExecute``: the full network (the reference line of the plot);
- ``RandomSkip``: each block executed with probability p: the ``--random-p`` values, and with
  ``--matched-random`` (default) one per learned agent at its rate of executed decisions;
- ``FixedPattern.skip_last(k=...)``: the last k blocks of every stage skipped (``--skip-last``);
- ``StaticRoute``: with ``--static-routes``, the best static route within each learned
  agent's FLOPs, chosen by greedy block dropping on the compared images (one greedy run;
  :mod:`agents.static`).

Per row: top-1 ``accuracy``, ``loss``; ``flops_fraction`` (backbone MACs per image over the
full network's, from the env's final info; no agent or gate MACs); ``block_fraction``
(executed blocks over all blocks); ``return`` (mean episode return of the paper reward with
``--alpha``, by default the checkpoint's own training alpha: an hrl checkpoint's
``config["alpha"]``, else 0.1); ``steps_per_s`` (env steps per second, agent and env
together); ``routing`` (:mod:`skipenv.training.routing`: blocks run per image, distinct
routes, top route and its share, dynamic blocks; for every learned agent with its static
control: its most common route run on every image, same backbone), printed as a second table;
``env_steps`` and ``train_wall_s`` for learned agents. ``--out DIR`` writes
``leaderboard.md``, ``.csv``, ``.json`` and the Pareto plot ``leaderboard.png`` (one marker and
line per family in the legend, the Pareto front of all rows, and on the whole val split the
shipped models' registry numbers as grey reference points).

The checkpoint's gate also runs inside the network (``forward_gated``,
:func:`agents.protocol.check_gate_agent`) on the same images: ``gate agent == batched
forward: True`` when decisions and predictions match exactly (``gate_check`` in the JSON).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro
import yaml
from gymnasium.vector import AutoresetMode

from agents.baselines import AlwaysExecute, FixedPattern, RandomSkip
from agents.gate_agent import GateAgent
from agents.leaderboard import (
    REFERENCE,
    csv_table,
    format_table,
    markdown_table,
    plot,
    reference_points,
    require_matplotlib,
    write_text,
)
from agents.open_loop import OpenLoopAgent, load_open_loop
from agents.protocol import (
    SB3_ALGOS,
    Agent,
    AgentRun,
    check_gate_agent,
    evaluate_agent,
    load_sb3,
    same_layout,
)
from agents.skipnet import load_backbone_and_gate, load_skipnet
from skipenv.data.sources import DataError
from skipenv.data.splits import load_cifar10, per_class, stratified_subset
from skipenv.envs.config import EnvConfig
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models.checkpoint import CheckpointError, load_checkpoint
from skipenv.models.pretrained import resolve_checkpoint
from skipenv.models.resnet import SkipResNet
from skipenv.training.devices import prepare_device
from skipenv.training.routing import format_routing_table, routing_stats, static_route_correct
from skipenv.training.summary import images, print_summary
from skipenv.utils import write_json

GATE_AGENT = "GateAgent"
MANIFEST_KINDS = ("sb3", "openloop", "gate", "skipnet")


@dataclass
class Args:
    checkpoint: str | None = None
    """a base, sp, hrl or static checkpoint (path or shipped name): the env's backbone; an
    sp/hrl gate (a static route) is also an agent (default: the manifest's backbone)"""
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
    """seeds RandomSkip, the env and the --limit sample"""
    alpha: float | None = None
    """alpha of the paper reward, for the return (default: the checkpoint's own training alpha
    for an hrl checkpoint, else 0.1)"""
    random_p: tuple[float, ...] = (0.9, 0.75, 0.5)
    """p_execute of each RandomSkip agent (none: no fixed-rate RandomSkip)"""
    matched_random: bool = True
    """a RandomSkip per learned agent, at its rate of executed decisions"""
    skip_last: tuple[int, ...] = (1, 2)
    """blocks skipped per stage by each FixedPattern.skip_last agent (none: no FixedPattern)"""
    static_routes: bool = False
    """the best static route (greedy on the compared images) at each learned agent's FLOPs
    (needs agents.static)"""
    sb3: Path | None = None
    """a Stable-Baselines3 model zip to compare too"""
    sb3_algo: str = "ppo"
    """the class that saved --sb3: ppo, a2c, dqn, recurrentppo or maskableppo"""
    manifest: Path | None = None
    """a YAML/JSON list of saved agents (see the module doc)"""
    from_json: Path | None = None
    """re-write table and plot (--out, --plot) from a results JSON of this script, without
    evaluating anything"""
    json: Path | None = None
    """write the results to this file"""
    plot: Path | None = None
    """save the accuracy-vs-FLOPs plot here (needs matplotlib): a line per family, the Pareto
    front, and the shipped models' registry numbers as reference points (whole val split)"""
    out: Path | None = None
    """write leaderboard.{md,csv,json,png} into this folder"""
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
        if self.checkpoint is None and self.manifest is None:
            raise ValueError("pass --checkpoint (the env's backbone) or a --manifest naming one")


@dataclass
class Entry:
    """An agent to run: its row name, family and operating point, and how it observes."""

    name: str
    family: str
    point: str
    agent: Agent
    obs_mode: str = "vector"
    learned: bool = False
    config: EnvConfig | None = None  # another backbone than the env's (kind skipnet)
    meta: dict[str, Any] = field(default_factory=dict)


def checkpoint_alpha(payload: dict[str, Any], default: float = 0.1) -> float:
    """The alpha an hrl checkpoint was trained with (``config["alpha"]``), else ``default``."""
    alpha = payload.get("config", {}).get("alpha") if payload.get("kind") == "hrl" else None
    return float(alpha) if isinstance(alpha, (int, float)) else default


def fail(message: str) -> None:
    """Exit with status 2 and ``message`` on stderr, as a command-line error."""
    print(f"compare_agents.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------- manifest


def read_manifest(path: Path) -> dict[str, Any]:
    """A manifest's ``backbone`` and checked ``agents`` list.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an entry without family, kind or path, or of an unknown kind.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}")
    data = yaml.safe_load(path.read_text()) or {}
    agents = data.get("agents") or []
    for i, entry in enumerate(agents):
        missing = [k for k in ("family", "kind", "path") if k not in entry]
        if missing:
            raise ValueError(f"{path}: agent {i} ({entry}) lacks {missing}")
        if entry["kind"] not in MANIFEST_KINDS:
            raise ValueError(
                f"{path}: agent {i} has kind {entry['kind']!r}; use one of {MANIFEST_KINDS}"
            )
        if entry["kind"] == "sb3" and entry.get("algo") not in SB3_ALGOS:
            raise ValueError(
                f"{path}: agent {i} (sb3) needs algo: one of {sorted(SB3_ALGOS)}, got "
                f"{entry.get('algo')!r}"
            )
    return {"backbone": data.get("backbone"), "agents": agents}


def training_cost(
    entry: dict[str, Any], payload: dict[str, Any] | None, num_decisions: int | None = None
) -> dict[str, Any]:
    """``env_steps`` and ``train_wall_s`` of a saved agent: the entry's own, else the run's
    ``val.json`` beside it, else (openloop and gate checkpoints) its ``env_steps`` / ``step``
    (a ``train/hybrid.py`` gate checkpoint: steps x ``batch_size`` images x ``num_decisions``)
    and ``wall_s``."""
    cost: dict[str, Any] = {"env_steps": entry.get("env_steps"), "train_wall_s": None}
    cost["train_wall_s"] = entry.get("train_wall_s")
    val = Path(entry["path"]).with_name("val.json")
    if val.is_file():
        saved = json.loads(val.read_text())
        cost["env_steps"] = cost["env_steps"] or saved.get("env_steps")
        cost["train_wall_s"] = cost["train_wall_s"] or saved.get("train_wall_s")
    if payload is not None and entry["kind"] in ("openloop", "gate"):
        # a run of train/open_loop.py, or of train/hybrid.py --fresh-gate --freeze-backbone,
        # on this frozen backbone; a skipnet checkpoint's wall_s is its last training stage
        # only, so it is not reported
        steps = payload.get(
            "env_steps", payload.get("step") if entry["kind"] == "openloop" else None
        )
        batch = payload.get("config", {}).get("batch_size")
        if steps is None and entry["kind"] == "gate" and num_decisions and batch:
            steps = int(payload["step"]) * int(batch) * num_decisions  # images x K decisions
        cost["env_steps"] = cost["env_steps"] or steps
        cost["train_wall_s"] = cost["train_wall_s"] or payload.get("wall_s")
    return cost


def manifest_entries(
    manifest: dict[str, Any],
    env: SkipNetVectorEnv,
    config: EnvConfig,
    space_of: Any,
    device: torch.device,
) -> list[Entry]:
    """The learned agents of a manifest."""
    backbone = env.backbone
    channels = backbone.block_channels
    out = []
    for entry in manifest["agents"]:
        kind, path = entry["kind"], Path(entry["path"])
        point = str(entry.get("point", ""))
        name = f"{entry['family']}({point})" if point else entry["family"]
        payload, own_config = None, None
        if kind == "sb3":
            agent: Agent = load_sb3(path, entry["algo"], device)
            obs_mode = agent.obs_mode
            if not same_layout(agent.model.observation_space, space_of(obs_mode)):
                raise ValueError(f"{path} observes another backbone's observations")
        elif kind == "openloop":
            payload, policy = load_open_loop(path, device)
            obs_mode = "vector"
            agent = OpenLoopAgent(policy, space_of("vector"), channels, device)
        else:
            path = resolve_checkpoint(entry["path"])  # a path or a shipped name
            payload = load_checkpoint(path, ("sp", "hrl"), map_location=device)
            model = load_skipnet(payload, map_location=device)
            obs_mode = "vector"
            if kind == "skipnet":  # its own backbone, the same images
                own_config = dataclasses.replace(config, backbone=model.backbone)
            elif not same_weights(model.backbone, backbone):
                print(
                    f"warning: {path}'s backbone differs from the env's; its gate routes the "
                    "env's backbone here (use kind: skipnet for its own)"
                )
            agent = GateAgent(model.gate.eval(), space_of("vector"), channels, device=device)
        meta = {
            "kind": kind,
            "path": str(path),
            **training_cost(entry, payload, backbone.num_decisions),
        }
        out.append(Entry(name, entry["family"], point, agent, obs_mode, True, own_config, meta))
    return out


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


# ---------------------------------------------------------------------------- baselines


def p_execute_of(block_fraction: float, num_blocks: int) -> float:
    """The per-decision execute rate that gives ``block_fraction`` (block 0 always runs)."""
    return min(1.0, max(0.0, (block_fraction * num_blocks - 1) / (num_blocks - 1)))


def static_entries(
    args: Args,
    env: SkipNetVectorEnv,
    data: Any,
    n: int,
    budgets: list[tuple[str, float]],
    device: torch.device,
) -> list[Entry]:
    """Best static routes (greedy on the compared images) at the given FLOPs budgets."""
    try:
        static = importlib.import_module("agents.static")
    except ImportError:
        print("no StaticRoute rows: agents.static (issue 12) is not in this checkout")
        return []
    batches = static.selection_batches(data, n, batch_size=args.num_envs, device=device)
    lowest = max(min(b for _, b in budgets), 1e-3)
    try:  # one greedy run down to the lowest budget holds the route of every higher one
        result = static.greedy_static_route(env.backbone, batches, lowest, progress=args.progress)
    except ValueError as err:  # below block 0 alone
        print(f"no StaticRoute rows: {err}")
        return []
    out = []
    for point, budget in budgets:
        route = result.at(budget).route
        agent = static.StaticRoute(env.single_observation_space, env.backbone.block_channels, route)
        out.append(Entry(f"StaticRoute({point})", "StaticRoute (greedy)", point, agent))
    return out


# ---------------------------------------------------------------------------- main


def title_of(results: dict[str, Any]) -> str:
    name = Path(str(results["checkpoint"])).name
    return (
        f"agents on {name} (ResNet-{results['depth']}), {results['split']}, "
        f"{results['num_images']} images; return with alpha {results['alpha']:g}"
    )


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """``leaderboard.{json,md,csv,png}`` in ``out``."""
    rows, title = results["rows"], title_of(results)
    write_json(out / "leaderboard.json", results)
    write_text(out / "leaderboard.md", f"{title}\n\n" + markdown_table(rows))
    write_text(out / "leaderboard.csv", csv_table(rows))
    plot(rows, out / "leaderboard.png", title, results.get("references") or ())
    print(f"wrote {out}/leaderboard.{{md,csv,json,png}}")


def rewrite(args: Args) -> dict[str, Any]:
    """``--from-json``: table and plot again from saved results."""
    try:
        if args.out is None and args.plot is None:
            raise ValueError("--from-json needs --out or --plot: where to write")
        require_matplotlib()
        results = json.loads(Path(args.from_json).read_text())
    except (FileNotFoundError, ImportError, ValueError) as err:
        fail(str(err))
    print(format_table(results["rows"]))
    if args.plot is not None:
        plot(results["rows"], args.plot, title_of(results), results.get("references") or ())
    if args.out is not None:
        write_outputs(results, args.out)
    return results


def add_routing(
    runs: dict[str, tuple[Entry, AgentRun]],
    env: SkipNetVectorEnv,
    batches: Sequence[np.ndarray],
) -> None:
    """Give every row ``routing`` (:mod:`skipenv.training.routing`); a learned agent's also
    holds its static control: its most common route run on every compared image with the
    backbone it routed (the env's, or its own for kind ``skipnet``)."""
    episodes = env.episodes
    for entry, run in runs.values():
        stats = routing_stats(torch.from_numpy(run.executed), accuracy=run.row["accuracy"])
        if entry.learned:
            backbone = entry.config.backbone if entry.config is not None else env.backbone
            assert isinstance(backbone, SkipResNet)
            pairs = (
                (
                    episodes.inputs(i),  # B x 3 x H x W
                    episodes.labels.index_select(0, torch.from_numpy(i).to(episodes.device)),  # B
                )
                for i in batches
            )
            correct = static_route_correct(backbone, stats.route, pairs)  # M
            stats = dataclasses.replace(stats, static_accuracy=int(correct.sum()) / len(correct))
        run.row["routing"] = stats.to_dict()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = tyro.cli(Args, args=argv, description=__doc__)
    if args.from_json is not None:
        return rewrite(args)

    # manifest, backbone, gate, data, optional SB3 model
    try:
        args.check()
        manifest = read_manifest(args.manifest) if args.manifest is not None else None
        checkpoint = args.checkpoint or (manifest or {}).get("backbone")
        if checkpoint is None:
            raise ValueError(f"{args.manifest} names no backbone: pass --checkpoint")
        if args.plot is not None or args.out is not None:
            require_matplotlib()
        device = prepare_device(args.device, args.threads)
        payload, backbone, gate = load_backbone_and_gate(checkpoint, device)
        sb3 = load_sb3(args.sb3, args.sb3_algo, device) if args.sb3 is not None else None
        data = load_cifar10(args.split, args.data_dir, progress=args.progress)
    except (CheckpointError, DataError, FileNotFoundError, ImportError, ValueError) as err:
        fail(str(err))

    # the images, in batches of B; one vector env per (backbone, obs_mode, B)
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
    def make_env_of(
        env_config: EnvConfig, num_envs: int, obs_mode: str = "vector"
    ) -> SkipNetVectorEnv:
        # every round is reset with its own images: no autoreset
        return SkipNetVectorEnv(
            num_envs, env_config, obs_mode=obs_mode, autoreset_mode=AutoresetMode.DISABLED
        )

    def make_env(num_envs: int, obs_mode: str = "vector") -> SkipNetVectorEnv:
        return make_env_of(config, num_envs, obs_mode)

    def space_of(obs_mode: str) -> Any:
        return make_env(len(batches[0]), obs_mode).single_observation_space

    env = make_env(len(batches[0]))
    space, channels = env.single_observation_space, backbone.block_channels
    where = ", ".join(str(p) for p in (args.json, args.plot, args.out) if p is not None)
    print_summary(
        f"scripts/compare_agents.py: agents routing images through {checkpoint} "
        f"({payload['kind']}, ResNet-{backbone.depth}, {env.num_blocks} blocks, "
        f"K = {env.num_decisions}) as SkipNet-CIFAR10-v0",
        device=device,
        data=images(n, args.split) + (f", {n} of {len(data)}" if n < len(data) else ""),
        steps=f"{len(batches)} rounds of K = {env.num_decisions} steps, <= {args.num_envs} envs",
        agents=f"manifest {args.manifest}" if args.manifest is not None else "flags only",
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

    # learned agents
    entries: list[Entry] = []
    gate_error = None
    if gate is not None:
        try:
            agent = GateAgent(gate, space, channels, device=device)
            entries.append(Entry(GATE_AGENT, "checkpoint gate", "", agent, learned=True))
        except TypeError as err:  # a feedforward gate: needs the full activation map
            gate_error = str(err)
            print(f"no gate agent: {gate_error}")
    if sb3 is not None:
        if not same_layout(sb3.model.observation_space, space_of(sb3.obs_mode)):
            fail(
                f"the SB3 model {args.sb3} observes {sb3.model.observation_space}, but this "
                f"env's obs_mode={sb3.obs_mode!r} gives {space_of(sb3.obs_mode)}: was it trained "
                "on a backbone of another depth or widths?"
            )
        name = f"SB3:{SB3_ALGOS[args.sb3_algo][1]}"
        entries.append(Entry(name, name, "", sb3, sb3.obs_mode, learned=True))
    if manifest is not None:
        try:
            entries += manifest_entries(manifest, env, config, space_of, device)
        except (CheckpointError, FileNotFoundError, ValueError) as err:
            fail(str(err))

    runs: dict[str, tuple[Entry, AgentRun]] = {}

    def run(entry: Entry) -> None:
        # the same images; kind skipnet through its own backbone
        env_config = entry.config if entry.config is not None else config
        result = evaluate_agent(
            entry.name,
            entry.agent,
            functools.partial(make_env_of, env_config, obs_mode=entry.obs_mode),
            batches,
            seed=args.seed,
            progress=args.progress,
        )
        runs[entry.name] = (entry, result)

    for entry in entries:
        run(entry)

    # baselines on the same backbone
    baselines = [Entry(REFERENCE, REFERENCE, "p=1", AlwaysExecute(space, channels))]
    for i, p in enumerate(args.random_p):
        agent = RandomSkip(space, channels, p_execute=p, seed=args.seed + i)
        baselines.append(Entry(f"RandomSkip(p={p:g})", "RandomSkip", f"p={p:g}", agent))
    learned = [runs[e.name] for e in entries if e.config is None]
    if args.matched_random:
        for i, (e, r) in enumerate(learned):
            p = p_execute_of(r.row["block_fraction"], env.num_blocks)
            agent = RandomSkip(space, channels, p_execute=p, seed=args.seed + 100 + i)
            name = f"RandomSkip(p={p:.3f}, matched to {e.name})"
            baselines.append(Entry(name, "RandomSkip (matched)", f"p={p:.3f}", agent))
    for k in args.skip_last:
        agent = FixedPattern.skip_last(space, channels, k)
        baselines.append(Entry(f"FixedPattern.skip_last(k={k})", "FixedPattern.skip_last",
                               f"k={k}", agent))  # fmt: skip
    if args.static_routes and learned:
        budgets = [(f"{100 * r.row['flops_fraction']:.1f}%", r.row["flops_fraction"])
                   for _, r in learned]  # fmt: skip
        baselines += static_entries(args, env, data, n, budgets, device)
    for entry in baselines:
        run(entry)
    gate_check = None
    if GATE_AGENT in runs and gate is not None:
        gate_check = check_gate_agent(runs[GATE_AGENT][1], env, gate, batches)
    add_routing(runs, env, batches)  # issue 12: per-image routing diagnostics, static controls

    # report
    rows = []
    for entry, result in runs.values():
        row = {**result.row, "family": entry.family, "point": entry.point}
        row["env_steps"] = entry.meta.get("env_steps")
        row["train_wall_s"] = entry.meta.get("train_wall_s")
        if entry.meta:
            row["source"] = {k: entry.meta[k] for k in ("kind", "path")}
        if entry.config is not None:
            row["backbone"] = "own"
        rows.append(row)
    rows.sort(key=lambda r: r["flops_fraction"])
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
        "checkpoint": str(checkpoint),
        "kind": payload["kind"],
        "depth": backbone.depth,
        "split": args.split,
        "num_images": n,
        "subset": subset,
        "num_envs": args.num_envs,
        "alpha": alpha,
        "device": str(device),
        "manifest": None if args.manifest is None else str(args.manifest),
        "rows": rows,
        "gate_agent_equals_batched_forward": None if gate_check is None else gate_check["equal"],
        "gate_check": gate_check,
        "gate_agent_error": gate_error,
        # the shipped models as reference points: registry numbers on the whole val split
        "references": reference_points(args.split, backbone.depth) if n == len(data) else [],
    }
    if args.json is not None:
        write_json(args.json, results)
    if args.plot is not None:
        plot(rows, args.plot, title_of(results), results["references"])
    if args.out is not None:
        write_outputs(results, args.out)
    return results


if __name__ == "__main__":
    main()
