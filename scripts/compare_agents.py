"""Compare agents on SkipNet-CIFAR10-v0: accuracy against executed FLOPs, on the same images.

    python scripts/compare_agents.py --checkpoint runs/sp38/final.pt --split val
    python scripts/compare_agents.py --checkpoint runs/hrl38/final.pt --limit 1000 \\
        --sb3 runs/ppo/model.zip --sb3-algo ppo --json compare.json --plot compare.png

The checkpoint (base, sp or hrl) is the environment's backbone. Every agent routes the same
images, each exactly once: the first ``--limit`` images of ``--split`` (default all), reset
in batches of ``--num-envs`` into the natively batched vector env with
``options={"indices": ...}``. Its episodes run in lockstep, so one batch is one round of K
steps. Agents:

- ``GateAgent``: the gate of an sp / hrl checkpoint, greedy (execute iff p > 0.5);
- ``AlwaysExecute``: the full network;
- ``RandomSkip(p=...)``: each block executed with probability p (``--random-p``);
- ``FixedPattern.skip_last(k=...)``: the last k blocks of every stage skipped (``--skip-last``);
- ``SB3:<ALGO>``: a Stable-Baselines3 model (``--sb3``, ``--sb3-algo``), deterministic.

Per agent: top-1 ``accuracy``; ``flops_fraction``, the MACs run per image (stem, executed
blocks, projection shortcuts of skipped blocks, head) over the full network's, from the final
info (the environment does not count gate MACs); ``block_fraction``, executed blocks over all
blocks (block 0 included) from the final info's ``executed`` mask; ``return``, the mean
episode return of the paper reward with ``--alpha``; ``steps_per_s``, environment steps
(images x K) per wall-clock second, agent and environment together.

The gate is also run inside the network (``backbone.forward_gated(x, gate, mode="greedy")``)
on the same batches; the script prints ``gate agent == batched forward: True`` when the
decisions (executed masks) and the predictions, hence the accuracy, match exactly, and
stores the check in the JSON under ``gate_check``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium import spaces
from tqdm import tqdm

from agents.baselines import AlwaysExecute, FixedPattern, RandomSkip
from agents.gate_agent import GateAgent
from agents.skipnet import load_backbone_and_gate as load_models  # payload, backbone, gate
from skipenv.augment import normalize
from skipenv.checkpoint import CheckpointError
from skipenv.data import SPLITS, CifarSplit, DataError, load_cifar10
from skipenv.devices import resolve_device, tune_cpu_allocator
from skipenv.gating import Gate
from skipenv.resnet import SkipResNet
from skipenv.routing import format_routing_table, routing_stats, static_route_correct
from skipenv.vector_env import SkipNetVectorEnv

#: --sb3-algo -> (module, class).
SB3_ALGOS: dict[str, tuple[str, str]] = {
    "ppo": ("stable_baselines3", "PPO"),
    "a2c": ("stable_baselines3", "A2C"),
    "dqn": ("stable_baselines3", "DQN"),
    "recurrentppo": ("sb3_contrib", "RecurrentPPO"),
    "maskableppo": ("sb3_contrib", "MaskablePPO"),
}
GATE_AGENT = "GateAgent"


class Agent(Protocol):
    """What the comparison needs of an agent (the agents of :mod:`agents` have it)."""

    def reset(self, num_envs: int = 1) -> None: ...

    def act(self, obs: Any) -> int | np.ndarray: ...


# ---------------------------------------------------------------------------- SB3 models


class SB3Agent:
    """A Stable-Baselines3 model as an agent: deterministic ``predict``, recurrent state kept.

    RecurrentPPO gets its LSTM state back on every call and ``episode_start`` True on the
    first step of each batch of episodes; the other algorithms ignore both.

    Args:
        model: the loaded model.
        obs_mode: the environment observation mode the model was trained on.
    """

    def __init__(self, model: Any, obs_mode: str) -> None:
        self.model, self.obs_mode = model, obs_mode
        self._state: Any = None
        self._starts = np.ones(1, dtype=bool)

    def reset(self, num_envs: int = 1) -> None:
        self._state, self._starts = None, np.ones(num_envs, dtype=bool)

    def act(self, obs: Any) -> np.ndarray:
        actions, self._state = self.model.predict(
            obs, state=self._state, episode_start=self._starts, deterministic=True
        )
        self._starts = np.zeros_like(self._starts)
        return np.asarray(actions, dtype=np.int64).reshape(-1)


def obs_mode_of(space: spaces.Space) -> str:
    """The environment's ``obs_mode`` whose observation space has the layout of ``space``."""
    if isinstance(space, spaces.Dict):
        return "dict"
    if isinstance(space, spaces.Box) and len(space.shape) == 3:
        return "activation"
    return "vector"


def same_layout(a: spaces.Space, b: spaces.Space) -> bool:
    """Whether two observation spaces have the same kind, keys and shapes (bounds aside)."""
    if isinstance(a, spaces.Dict) and isinstance(b, spaces.Dict):
        return set(a.spaces) == set(b.spaces) and all(same_layout(a[k], b[k]) for k in a.spaces)
    if isinstance(a, spaces.Discrete) and isinstance(b, spaces.Discrete):
        return int(a.n) == int(b.n)
    return type(a) is type(b) and a.shape == b.shape


def load_sb3(path: Path, algo: str, device: torch.device) -> SB3Agent:
    """Load an SB3 model zip with the class of ``algo`` (a key of :data:`SB3_ALGOS`)."""
    if not (path.is_file() or path.with_name(path.name + ".zip").is_file()):
        raise FileNotFoundError(f"no SB3 model at {path} (pass the .zip that model.save wrote)")
    module, name = SB3_ALGOS[algo]
    cls = getattr(importlib.import_module(module), name)
    try:
        model = cls.load(str(path), device=device.type)
    except Exception as err:  # SB3 raises many kinds for a zip of another class
        raise ValueError(
            f"could not load {path} as a {name} model ({type(err).__name__}: {err}); is "
            f"--sb3-algo right (one of {', '.join(SB3_ALGOS)})?"
        ) from err
    return SB3Agent(model, obs_mode_of(model.observation_space))


# ---------------------------------------------------------------------------- running agents


class Envs:
    """Vector envs over one backbone and data split, made on demand per (obs_mode, batch size).

    The last batch of a split that ``num_envs`` does not divide gets an env of its own size,
    so every image is routed exactly once.
    """

    def __init__(
        self, backbone: SkipResNet, data: CifarSplit, device: torch.device, alpha: float
    ) -> None:
        self.backbone, self.data, self.device, self.alpha = backbone, data, device, alpha
        self._envs: dict[tuple[str, int], SkipNetVectorEnv] = {}

    def get(self, obs_mode: str, num_envs: int) -> SkipNetVectorEnv:
        key = (obs_mode, num_envs)
        if key not in self._envs:
            self._envs[key] = SkipNetVectorEnv(
                num_envs,
                backbone=self.backbone,
                data=self.data,
                device=self.device,
                reward="paper",
                alpha=self.alpha,
                obs_mode=obs_mode,
            )
        return self._envs[key]


@dataclass
class Run:
    """One agent over all images: the metrics and, per image, what it did."""

    row: dict[str, Any]
    executed: np.ndarray  # images x N bool
    prediction: np.ndarray  # images int64


def run_agent(
    name: str,
    agent: Agent,
    envs: Envs,
    batches: Sequence[np.ndarray],
    *,
    obs_mode: str = "vector",
    seed: int | None = None,
    progress: bool = True,
) -> Run:
    """Route every batch of image indices through the env with ``agent`` deciding."""
    returns, correct, macs_frac, executed, predictions = [], [], [], [], []
    steps, seconds = 0, 0.0
    for i, indices in enumerate(tqdm(batches, desc=name, unit="batch", disable=not progress)):
        env = envs.get(obs_mode, len(indices))
        started = time.perf_counter()
        obs, _ = env.reset(seed=seed if i == 0 else None, options={"indices": indices})
        agent.reset(num_envs=len(indices))
        total = np.zeros(len(indices))  # B
        for _ in range(env.num_decisions):
            obs, reward, terminated, _, info = env.step(np.asarray(agent.act(obs)))
            total += reward
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)
        seconds += time.perf_counter() - started
        if not terminated.all():
            raise RuntimeError(f"episodes did not end after K = {env.num_decisions} steps")
        final = info["final_info"]
        steps += len(indices) * env.num_decisions
        returns.append(total)
        correct.append(final["correct"])
        macs_frac.append(final["flops_fraction"])
        executed.append(final["executed"])
        predictions.append(final["prediction"])
    executed_all = np.concatenate(executed)  # images x N
    row = {
        "agent": name,
        "accuracy": float(np.concatenate(correct).mean()),
        "flops_fraction": float(np.concatenate(macs_frac).mean()),
        "block_fraction": float(executed_all.mean()),
        "return": float(np.concatenate(returns).mean()),
        "steps_per_s": steps / seconds if seconds > 0 else float("nan"),
    }
    return Run(row, executed_all, np.concatenate(predictions))


def batched_forward_check(
    run: Run, env: SkipNetVectorEnv, gate: Gate, batches: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Run ``gate`` inside the network (greedy, real skipping) on the same batches as the env,
    with the env's backbone, normalisation and memory format, and compare with ``run``."""
    episodes = env.episodes
    backbone = episodes.backbone
    executed, predictions, macs, labels = [], [], [], []
    was_training = gate.training
    gate.eval()
    try:
        with torch.inference_mode():
            for indices in batches:
                index_t = torch.from_numpy(indices).to(episodes.device)  # B
                x = normalize(
                    episodes.images.index_select(0, index_t),
                    memory_format=episodes.memory_format,
                )  # B x 3 x H x W
                out = backbone.forward_gated(x, gate, mode="greedy", routing="skip")
                executed.append(out.executed.cpu().numpy())  # B x N
                predictions.append(out.logits.argmax(dim=1).cpu().numpy())  # B
                macs.append(out.macs.cpu().numpy())  # B
                labels.append(episodes.labels_np[indices])  # B
    finally:
        gate.train(was_training)
    executed_np, prediction_np = np.concatenate(executed), np.concatenate(predictions)
    accuracy = float((prediction_np == np.concatenate(labels)).mean())
    decisions_equal = bool(np.array_equal(executed_np, run.executed))
    predictions_equal = bool(np.array_equal(prediction_np, run.prediction))
    return {
        "equal": decisions_equal and predictions_equal and accuracy == run.row["accuracy"],
        "decisions_equal": decisions_equal,
        "predictions_equal": predictions_equal,
        "images_with_other_decisions": int((executed_np != run.executed).any(axis=1).sum()),
        "images_with_other_predictions": int((prediction_np != run.prediction).sum()),
        "accuracy_agent": run.row["accuracy"],
        "accuracy_batched": accuracy,
        "block_fraction_batched": float(executed_np.mean()),
        "flops_fraction_batched_with_gates": float(
            np.concatenate(macs).astype(np.float64).mean() / episodes.full_macs
        ),
    }


def add_routing(runs: dict[str, Run], env: SkipNetVectorEnv, batches: Sequence[np.ndarray]) -> None:
    """Give every row ``routing`` (:mod:`skipenv.routing`); the gate agent's also holds its
    static control: its most common route run on every image with the same backbone."""
    episodes = env.episodes
    for name, run in runs.items():
        stats = routing_stats(torch.from_numpy(run.executed), accuracy=run.row["accuracy"])
        if name == GATE_AGENT:
            images = (
                (
                    normalize(
                        episodes.images.index_select(0, torch.from_numpy(i).to(episodes.device)),
                        memory_format=episodes.memory_format,
                    ),  # B x 3 x H x W
                    torch.from_numpy(episodes.labels_np[i]).to(episodes.device),  # B
                )
                for i in batches
            )
            correct = static_route_correct(episodes.backbone, stats.route, images)  # images
            stats = dataclasses.replace(stats, static_accuracy=int(correct.sum()) / len(correct))
        run.row["routing"] = stats.to_dict()


# ---------------------------------------------------------------------------- output


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
    """Accuracy against executed FLOPs, one labelled point per agent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        x, y = 100 * r["flops_fraction"], 100 * r["accuracy"]
        ax.scatter([x], [y], s=36, marker="*" if r["agent"] == GATE_AGENT else "o")
        ax.annotate(r["agent"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("executed FLOPs (% of the full network)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.2, y=0.1)  # room for the labels of the rightmost points
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- CLI


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {text!r}")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare_agents.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        type=str,
        required=True,
        help="a base, sp or hrl checkpoint (path or shipped name): the env's backbone; an "
        "sp/hrl gate is also an agent",
    )
    parser.add_argument(
        "--split", default="val", choices=SPLITS, help="CIFAR-10 split (default: val)"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="CIFAR-10 data root (default: $SKIPNET_DATA, else the per-user cache folder)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (default: CUDA when present), cpu or cuda"
    )
    parser.add_argument(
        "--num-envs",
        type=_positive,
        default=500,
        help="batch size of the vector env: images routed together in one round of K steps "
        "(default: 500)",
    )
    parser.add_argument(
        "--limit",
        type=_positive,
        default=None,
        help="use the first N images of the split only (default: all)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds RandomSkip and the env (default: 0)"
    )
    parser.add_argument(
        "--alpha",
        type=_finite,
        default=0.1,
        help="alpha of the paper reward, for the return (default: 0.1)",
    )
    parser.add_argument(
        "--random-p",
        type=_probability,
        nargs="*",
        default=[0.9, 0.75, 0.5],
        metavar="P",
        help="p_execute of each RandomSkip agent (default: 0.9 0.75 0.5; none: no RandomSkip)",
    )
    parser.add_argument(
        "--skip-last",
        type=int,
        nargs="*",
        default=[1, 2],
        metavar="K",
        help="blocks skipped per stage by each FixedPattern.skip_last agent (default: 1 2)",
    )
    parser.add_argument(
        "--sb3", type=Path, default=None, help="a Stable-Baselines3 model zip to compare too"
    )
    parser.add_argument(
        "--sb3-algo",
        default="ppo",
        choices=sorted(SB3_ALGOS),
        help="the class that saved --sb3 (default: ppo)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results to this file")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="save an accuracy-vs-FLOPs scatter plot here (needs matplotlib)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (tqdm, on stderr)"
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(k < 0 for k in args.skip_last):
        parser.error(f"--skip-last values must be >= 0, got {args.skip_last}")
    try:
        if args.plot is not None:
            require_matplotlib()
        device = resolve_device(args.device)
        if device.type == "cpu":
            tune_cpu_allocator()
        payload, backbone, gate = load_models(args.checkpoint, device)
        sb3 = load_sb3(args.sb3, args.sb3_algo, device) if args.sb3 is not None else None
        data = load_cifar10(args.split, args.data_dir, progress=not args.no_progress)
    except (CheckpointError, DataError, FileNotFoundError, ImportError, ValueError) as err:
        parser.error(str(err))

    n = len(data) if args.limit is None else min(args.limit, len(data))
    indices = np.arange(n, dtype=np.int64)
    batches = [indices[i : i + args.num_envs] for i in range(0, n, args.num_envs)]
    envs = Envs(backbone, data, device, args.alpha)
    env = envs.get("vector", len(batches[0]))
    space, channels = env.single_observation_space, env.backbone.block_channels
    print(
        f"{args.checkpoint} ({payload['kind']}, ResNet-{backbone.depth}, {env.num_blocks} "
        f"blocks, K = {env.num_decisions}) on {args.split}: {n} images in {len(batches)} "
        f"batches of <= {args.num_envs}, device {device}"
    )

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
        sb3_space = envs.get(sb3.obs_mode, len(batches[0])).single_observation_space
        if not same_layout(sb3.model.observation_space, sb3_space):
            parser.error(
                f"the SB3 model {args.sb3} observes {sb3.model.observation_space}, but this "
                f"env's obs_mode={sb3.obs_mode!r} gives {sb3_space}: was it trained on a "
                "backbone of another depth or widths?"
            )
        agents.append((f"SB3:{SB3_ALGOS[args.sb3_algo][1]}", sb3, sb3.obs_mode))

    runs: dict[str, Run] = {}
    for name, agent, obs_mode in agents:
        runs[name] = run_agent(
            name,
            agent,
            envs,
            batches,
            obs_mode=obs_mode,
            seed=args.seed,
            progress=not args.no_progress,
        )

    gate_check = None
    if GATE_AGENT in runs and gate is not None:
        gate_check = batched_forward_check(runs[GATE_AGENT], env, gate, batches)

    add_routing(runs, env, batches)  # issue 12: per-image routing diagnostics
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
        title = f"{name}: ResNet-{backbone.depth} on {args.split} ({n} images)"
        plot(rows, args.plot, title)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
