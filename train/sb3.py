"""Train a Stable-Baselines3 agent (PPO, A2C, DQN, RecurrentPPO, MaskablePPO) on SkipNet-CIFAR10-v0.

    python train/sb3.py --algo ppo --checkpoint skipnet38-hrl-a0.6 --alpha 0.1 \\
        --total-steps 1000000 --out runs/ppo-a0.1
    python train/sb3.py --algo dqn --hp learning_rate=5e-4 buffer_size=50000 --out runs/dqn
    python train/sb3.py --algo ppo --out runs/ppo-a0.1 --total-steps 2000000 --resume

The environment is the natively batched vector env (:class:`SkipNetVectorEnv`, B =
``--num-envs`` episodes in lockstep, one backbone block per step) behind the SB3 adapter
(:class:`skipenv.envs.sb3.SB3VecEnv`), ``VecMonitor`` and, when the hyperparameters say
``normalize``, ``VecNormalize``. The backbone is frozen; the agent only routes. An env step is
one decision of one image, so ``--total-steps`` counts decisions (K = 17 per image on
ResNet-38).

Hyperparameters: one section per algorithm in ``train/hyperparams/sb3.yml`` (rl-baselines3-zoo
style; each value says where it came from), overridden by ``--hp KEY=VALUE`` (values read as
YAML: ``--hp n_steps=17 policy_kwargs="{net_arch: [32, 32]}"``).

Written to ``--out``:

- ``last.zip`` every ``--checkpoint-minutes`` and at the end, with ``last.vecnormalize.pkl``
  (the observation statistics) and, for DQN, ``last.replay.pkl`` (the replay buffer), each
  written atomically, the zip last; ``--resume`` loads them and continues the step count;
- ``final.zip`` (+ ``final.vecnormalize.pkl``): the trained agent, without the optimizer's
  state (``scripts/compare_agents.py --sb3 OUT/final.zip``);
- ``metrics.jsonl``: one line per ``--log-every`` env steps: ``step`` (env steps), ``wall_s``,
  and over the training episodes that ended since the last line ``accuracy``,
  ``flops_fraction``, ``block_fraction``, ``return``;
- ``progress.csv`` and TensorBoard events (when ``tensorboard`` is installed): SB3's own
  logger, with the same episode metrics under ``skipnet/``;
- ``val.json``: the final agent, deterministic, on ``--eval-split`` (val: the 5,000 images
  held out of train): the fields of ``train/evaluate.py`` (accuracy, loss, flops_fraction,
  block_fraction, skip_rates, images_per_s, num_images; ``flops_fraction_with_gate`` is None,
  the policy is not a gate of the backbone) and ``routing`` (when
  ``skipenv.training.routing`` is present), plus ``env_steps``, ``train_wall_s`` and
  ``time`` (seconds in env steps, in the rest of rollout collection -- the policy's forward
  and the rollout buffer -- and in gradient updates);
- ``run.json``: the arguments and the hyperparameters used.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import pickle
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro
import yaml
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnvWrapper, VecMonitor, VecNormalize
from tqdm.auto import tqdm

from agents.protocol import (
    SB3_ALGOS,
    SB3Agent,
    evaluate_on,
    evaluation_results,
    normalizer_path,
)
from agents.skipnet import load_backbone_and_gate
from skipenv.data.sources import DataError
from skipenv.data.splits import load_cifar10
from skipenv.envs.config import EnvConfig
from skipenv.envs.sb3 import SB3VecEnv
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models.checkpoint import CheckpointError
from skipenv.training.devices import prepare_device
from skipenv.utils import atomic_write

HYPERPARAMS = Path(__file__).with_name("hyperparams") / "sb3.yml"
#: keys of a hyperparameter section that train/sb3.py reads itself (not constructor arguments)
OWN_KEYS = ("policy", "normalize", "obs_mode")
OFF_POLICY = ("dqn",)

Algo = Literal["ppo", "a2c", "dqn", "recurrentppo", "maskableppo"]


@dataclass
class Args:
    algo: Algo = "ppo"
    """ppo, a2c, dqn (stable-baselines3), recurrentppo or maskableppo (sb3-contrib)"""
    checkpoint: str = "skipnet38-hrl-a0.6"
    """the env's frozen backbone: a base, sp or hrl checkpoint (path or shipped name)"""
    reward: Literal["paper", "accuracy"] = "paper"
    """paper (alpha / K per skipped block, minus the cross-entropy) or accuracy (+1 if right,
    minus lam x MACs spent / full network's)"""
    alpha: float = 0.1
    """the paper reward's bonus for skipping every decided block"""
    lam: float = 1.0
    """the accuracy reward's price of the full network's MACs"""
    total_steps: int = 1_000_000
    """env steps (decisions) to train for in all, resumed runs included"""
    num_envs: int = 64
    """B: episodes run in lockstep by the native vector env"""
    split: str = "train"
    """images the agent trains on: train, val-agent (the 3,000 val images outside val-eval),
    val, train-full or test"""
    augment: bool = False
    """randomly crop and flip each training episode's image (the env's augment option); the
    evaluation never augments"""
    eval_split: str = "val"
    """split of the final evaluation (val: the 5,000 held out of train)"""
    eval_limit: int | None = None
    """evaluate on the first EVAL_LIMIT images of --eval-split only (default: all)"""
    data_dir: str | None = None
    """CIFAR-10 data root (default: $SKIPNET_DATA, else the per-user cache folder)"""
    seed: int = 0
    """seeds the policy's initial weights, its sampling and the images drawn"""
    device: str = "auto"
    """where the backbone runs: auto (CUDA when present), cpu or cuda"""
    policy_device: str = "cpu"
    """where the policy runs and learns (small MLPs are fastest on the CPU)"""
    threads: int | None = None
    """torch intra-op threads (default: torch's choice)"""
    out: Path = Path("runs/sb3")
    """run folder"""
    resume: bool = False
    """continue from OUT/last.zip (same algorithm and backbone) instead of starting afresh"""
    hp: tuple[str, ...] = ()
    """KEY=VALUE overrides of the algorithm's hyperparameters (values read as YAML)"""
    hyperparams: Path = HYPERPARAMS
    """the hyperparameter file (one section per algorithm)"""
    checkpoint_minutes: float = 5.0
    """minutes between checkpoints (OUT/last.zip); 0: after every rollout"""
    log_every: int = 10_000
    """env steps between lines of metrics.jsonl (at rollout ends)"""
    progress: bool = True
    """show a progress bar"""

    def check(self) -> None:
        """Raise ValueError naming every bad value."""
        for name in ("total_steps", "num_envs", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"--eval-limit must be >= 1, got {self.eval_limit}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.checkpoint_minutes < 0:
            raise ValueError(f"--checkpoint-minutes must be >= 0, got {self.checkpoint_minutes}")


def fail(message: str) -> None:
    print(f"sb3.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------- hyperparameters


def load_hyperparams(path: Path, algo: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The ``algo`` section of ``path`` with ``KEY=VALUE`` overrides applied (YAML values).

    Raises:
        ValueError: no such section, or an override that is not ``KEY=VALUE``.
    """
    sections = yaml.safe_load(Path(path).read_text()) or {}
    if algo not in sections:
        raise ValueError(f"{path} has no section {algo!r} (it has {sorted(sections)})")
    hp = dict(sections[algo])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--hp takes KEY=VALUE pairs, got {item!r} (e.g. --hp n_steps=17)")
        hp[key.strip()] = yaml.safe_load(value)
    return hp


def algo_class(algo: str) -> type[BaseAlgorithm]:
    module, name = SB3_ALGOS[algo]
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------------------- env


class TimedVecEnv(VecEnvWrapper):
    """Counts the seconds spent inside the wrapped env's ``reset`` and ``step``."""

    def __init__(self, venv: Any) -> None:
        super().__init__(venv)
        self.seconds = 0.0

    def reset(self) -> Any:
        started = time.perf_counter()
        obs = self.venv.reset()
        self.seconds += time.perf_counter() - started
        return obs

    def step_wait(self) -> Any:
        started = time.perf_counter()
        out = self.venv.step_wait()
        self.seconds += time.perf_counter() - started
        return out


def normalizer_of(venv: Any) -> VecNormalize | None:
    while isinstance(venv, VecEnvWrapper):
        if isinstance(venv, VecNormalize):
            return venv
        venv = venv.venv
    return None


# ---------------------------------------------------------------------------- files


def save_agent(
    model: BaseAlgorithm, out: Path, name: str, replay: bool, optimizer_state: bool = True
) -> Path:
    """``OUT/NAME.zip`` (+ ``NAME.vecnormalize.pkl``, + ``NAME.replay.pkl`` when ``replay``),
    each atomically, the zip last: a zip on disk always has its companions.

    ``optimizer_state=False`` leaves the optimizer's per-parameter state (Adam's moments, twice
    the policy's size) out of the zip, for an agent that is only evaluated (``final.zip``;
    ``--resume`` reads ``last.zip``); the zip still loads with SB3's ``load``."""
    norm = normalizer_of(model.get_env())
    if norm is not None:
        data = pickle.dumps(norm)  # VecNormalize pickles without its env
        atomic_write(normalizer_path(out / f"{name}.zip"), lambda f: f.write(data))
    if replay and getattr(model, "replay_buffer", None) is not None:
        buf = io.BytesIO()
        model.save_replay_buffer(buf)
        atomic_write(out / f"{name}.replay.pkl", lambda f: f.write(buf.getvalue()))
    buf = io.BytesIO()
    optimizer = model.policy.optimizer
    kept = optimizer.state
    if not optimizer_state:
        optimizer.state = defaultdict(dict)  # param_groups stay: load() matches them exactly
    try:
        model.save(buf)
    finally:
        optimizer.state = kept
    return atomic_write(out / f"{name}.zip", lambda f: f.write(buf.getvalue()))


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    json.loads(path.read_text())  # readable by its own reader


# ---------------------------------------------------------------------------- callback


class RunCallback(BaseCallback):
    """Progress bar, episode metrics (SB3 logger + metrics.jsonl), timed checkpoints, and
    where the time goes (rollouts vs gradient updates)."""

    def __init__(self, args: Args, env_timer: TimedVecEnv, wall_s: float, replay: bool) -> None:
        super().__init__()
        self.args, self.env_timer, self.replay = args, env_timer, replay
        self.wall_before = wall_s  # wall time of the run before this process
        self.metrics_path = args.out / "metrics.jsonl"
        self.rollout_s = self.train_s = 0.0
        self._episodes: dict[str, list[float]] = {}
        self._last_log = 0
        self._last_save = time.monotonic()
        self._mark = time.perf_counter()
        self.bar: Any = None

    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def _on_training_start(self) -> None:
        self.started = time.perf_counter()
        self._mark = self.started
        self._last_log = self.num_timesteps
        self.bar = tqdm(
            total=self.args.total_steps,
            initial=self.num_timesteps,
            unit="step",
            desc=self.args.algo,
            disable=not self.args.progress,
        )

    def _on_rollout_start(self) -> None:
        now = time.perf_counter()
        self.train_s += now - self._mark  # the updates between two rollouts
        self._mark = now

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        infos, dones = self.locals["infos"], self.locals["dones"]
        for i in np.flatnonzero(dones).tolist():
            info = infos[i]
            for key in ("correct", "flops_fraction"):
                self._episodes.setdefault(key, []).append(float(info[key]))
            self._episodes.setdefault("block_fraction", []).append(float(np.mean(info["executed"])))
            if "episode" in info:
                self._episodes.setdefault("return", []).append(float(info["episode"]["r"]))
        return True

    def _on_rollout_end(self) -> None:
        now = time.perf_counter()
        self.rollout_s += now - self._mark
        self._mark = now
        if self.num_timesteps - self._last_log >= self.args.log_every and self._episodes:
            self.log_metrics()
        if time.monotonic() - self._last_save >= 60 * self.args.checkpoint_minutes:
            self.save()

    def _on_training_end(self) -> None:
        self.train_s += time.perf_counter() - self._mark
        if self._episodes:
            self.log_metrics()
        self.bar.close()

    def log_metrics(self) -> None:
        e = self._episodes
        line = {
            "step": self.num_timesteps,
            "wall_s": round(self.wall_s(), 3),
            "episodes": len(e["correct"]),
            "accuracy": float(np.mean(e["correct"])),
            "flops_fraction": float(np.mean(e["flops_fraction"])),
            "block_fraction": float(np.mean(e["block_fraction"])),
            "return": float(np.mean(e["return"])) if e.get("return") else None,
        }
        for key in ("accuracy", "flops_fraction", "block_fraction"):
            self.logger.record(f"skipnet/{key}", line[key])
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        self.bar.set_postfix(acc=f"{line['accuracy']:.3f}", flops=f"{line['flops_fraction']:.3f}")
        self._episodes = {}
        self._last_log = self.num_timesteps

    def save(self) -> None:
        save_agent(self.model, self.args.out, "last", self.replay)
        write_json(
            self.args.out / "last.json",
            {"step": self.num_timesteps, "wall_s": self.wall_s(), "time": self.times()},
        )
        self._last_save = time.monotonic()

    def times(self) -> dict[str, float]:
        env = self.env_timer.seconds
        return {
            "env_s": round(env, 3),
            "policy_and_buffer_s": round(self.rollout_s - env, 3),
            "train_s": round(self.train_s, 3),
        }


# ---------------------------------------------------------------------------- main


def drop_metrics_after(path: Path, step: int) -> None:
    """Forget metrics lines logged after the checkpoint being resumed."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in kept))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = tyro.cli(Args, args=argv, description=__doc__)
    try:
        args.check()
        hp = load_hyperparams(args.hyperparams, args.algo, args.hp)
        last = args.out / "last.zip"
        if args.resume and not last.is_file():
            raise FileNotFoundError(f"--resume: no {last} to continue (drop --resume to start)")
        if not args.resume and last.exists():
            raise FileExistsError(f"{last} exists: pass --resume to continue it, or a new --out")
        if args.resume:
            saved = json.loads((args.out / "run.json").read_text())["args"]
            keys = ("algo", "checkpoint", "reward", "alpha", "lam", "num_envs", "split", "augment")
            for key in keys:
                # runs from before --augment existed did not augment
                before = saved.get(key, False) if key == "augment" else saved[key]
                if before != json.loads(json.dumps(getattr(args, key), default=str)):
                    raise ValueError(
                        f"--resume: {args.out} was trained with --{key.replace('_', '-')} "
                        f"{before!r}, not {getattr(args, key)!r}; pass the same value"
                    )
        device = prepare_device(args.device, args.threads)
        payload, backbone, _ = load_backbone_and_gate(args.checkpoint, device)
        train_data = load_cifar10(args.split, args.data_dir, progress=args.progress)
        eval_data = load_cifar10(args.eval_split, args.data_dir, progress=args.progress)
    except (CheckpointError, DataError, FileNotFoundError, FileExistsError, ValueError) as err:
        fail(str(err))
    args.out.mkdir(parents=True, exist_ok=True)

    # the env: native vector env -> SB3 adapter -> timer -> VecMonitor -> VecNormalize
    own = {k: hp.pop(k) for k in OWN_KEYS if k in hp}
    obs_mode = own.get("obs_mode", "vector")
    config = EnvConfig(
        backbone=backbone,
        device=device,
        reward=args.reward,
        alpha=args.alpha,
        lam=args.lam,
        obs_mode=obs_mode,
    )
    # SB3 expects same-step autoreset (the native env defaults to Gymnasium's NEXT_STEP)
    native = SkipNetVectorEnv(
        args.num_envs,
        dataclasses.replace(config, augment=args.augment),  # the evaluation's config: none
        data=train_data,
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    timer = TimedVecEnv(SB3VecEnv(native))
    venv: Any = VecMonitor(timer)
    normalize = own.get("normalize", False)
    cls = algo_class(args.algo)
    replay = args.algo in OFF_POLICY
    if args.resume:
        stats = normalizer_path(last)
        if stats.is_file():
            venv = VecNormalize.load(str(stats), venv)
            venv.training = True
        model = cls.load(str(last), env=venv, device=args.policy_device)
        if replay and (args.out / "last.replay.pkl").is_file():
            model.load_replay_buffer(str(args.out / "last.replay.pkl"))
        state = json.loads((args.out / "last.json").read_text())
        wall_s = float(state["wall_s"])
        drop_metrics_after(args.out / "metrics.jsonl", model.num_timesteps)
    else:
        if normalize:
            venv = VecNormalize(venv, **(normalize if isinstance(normalize, dict) else {}))
        model = cls(
            own.get("policy", "MlpPolicy"),
            venv,
            seed=args.seed,
            device=args.policy_device,
            verbose=0,
            **hp,
        )
        wall_s = 0.0
        (args.out / "metrics.jsonl").unlink(missing_ok=True)
    venv.seed(args.seed + model.num_timesteps)  # a resumed run draws other images
    write_json(
        args.out / "run.json",
        {
            "args": json.loads(json.dumps(dataclasses.asdict(args), default=str)),
            "hyperparams": {**own, **hp},
        },
    )

    formats = ["csv"]
    try:
        importlib.import_module("tensorboard")
        formats.append("tensorboard")
    except ImportError:
        pass
    model.set_logger(configure(str(args.out), formats))
    remaining = args.total_steps - model.num_timesteps
    print(
        f"{SB3_ALGOS[args.algo][1]} on SkipNet-CIFAR10-v0: backbone {args.checkpoint} "
        f"({payload['kind']}, ResNet-{backbone.depth}, K = {native.num_decisions}), "
        f"{args.split} ({len(train_data)} images{', augmented' if args.augment else ''}), "
        f"B = {args.num_envs}, reward {args.reward} "
        f"(alpha {args.alpha:g}, lam {args.lam:g}), obs {obs_mode}, normalize {normalize}\n"
        f"  hyperparameters: {hp}\n"
        f"  {'resuming at' if args.resume else 'starting at'} step {model.num_timesteps:,} of "
        f"{args.total_steps:,}; backbone on {device}, policy on {model.device}, "
        f"{torch.get_num_threads()} threads; logs: {', '.join(formats)}"
        f"{'' if 'tensorboard' in formats else ' (pip install tensorboard for TensorBoard)'}; "
        f"out {args.out}"
    )

    callback = RunCallback(args, timer, wall_s, replay)
    start_steps = model.num_timesteps
    if remaining > 0:
        model.learn(remaining, callback=callback, reset_num_timesteps=False, progress_bar=False)
        callback.save()
        this_run_s = callback.wall_s() - wall_s  # training only, this process
    save_agent(model, args.out, "final", replay=False, optimizer_state=False)

    # the final agent, deterministic, on the eval split
    norm = normalizer_of(model.get_env())
    if norm is not None:
        norm.training = False
    agent = SB3Agent(model, obs_mode, norm)
    run = evaluate_on(
        args.algo, agent, config, eval_data, limit=args.eval_limit, seed=args.seed,
        progress=args.progress,
    )  # fmt: skip
    state = json.loads((args.out / "last.json").read_text()) if remaining > 0 else {}
    results = {
        "checkpoint": str(args.checkpoint),
        "kind": payload["kind"],
        "depth": backbone.depth,
        "split": args.eval_split,
        **evaluation_results(run, native.num_decisions),
        "agent": SB3_ALGOS[args.algo][1],
        "model": str(args.out / "final.zip"),
        "reward": args.reward,
        "alpha": args.alpha,
        "lam": args.lam,
        "env_steps": int(model.num_timesteps),
        "train_wall_s": state.get("wall_s", wall_s),
        "time": state.get("time"),
        "train_env_steps_per_s": None,
    }
    if remaining > 0:
        results["train_env_steps_per_s"] = (model.num_timesteps - start_steps) / max(
            this_run_s, 1e-9
        )
        results["time"] = callback.times()
    write_json(args.out / "val.json", results)
    print(
        f"{results['agent']} after {results['env_steps']:,} env steps on {args.eval_split} "
        f"({results['num_images']} images): accuracy {results['accuracy']:.4f}, FLOPs "
        f"{100 * results['flops_fraction']:.1f}%, blocks {100 * results['block_fraction']:.1f}%"
        f" -> {args.out / 'val.json'}"
    )
    return results


if __name__ == "__main__":
    main()
