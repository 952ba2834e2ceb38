"""What an agent is, Stable-Baselines3 models as agents, and running agents over a data split.

- :class:`Agent`: the protocol every agent of :mod:`agents` follows (``reset``, ``act``).
- :class:`SB3Agent` / :func:`load_sb3`: a saved Stable-Baselines3 model as an agent.
- :func:`evaluate_agent`: route a list of image batches through a natively batched
  SkipNet-CIFAR10-v0 with an agent deciding; accuracy, FLOPs, blocks, return, speed.
- :func:`check_gate_agent`: run the gate inside the network (``forward_gated``) on the same
  images and compare decisions and predictions with what the gate agent did in the env.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium import spaces
from tqdm.auto import tqdm

from skipenv.envs.vector_env import SkipNetVectorEnv, last_step_info
from skipenv.models.gating import Gate

#: ``--sb3-algo`` names -> (module, class).
SB3_ALGOS: dict[str, tuple[str, str]] = {
    "ppo": ("stable_baselines3", "PPO"),
    "a2c": ("stable_baselines3", "A2C"),
    "dqn": ("stable_baselines3", "DQN"),
    "recurrentppo": ("sb3_contrib", "RecurrentPPO"),
    "maskableppo": ("sb3_contrib", "MaskablePPO"),
}


class Agent(Protocol):
    """Decides, for B episodes in lockstep, whether each runs the next block."""

    def reset(self, num_envs: int = 1) -> None:
        """Start B = ``num_envs`` new episodes (forget any recurrent state)."""

    def act(self, obs: Any) -> int | np.ndarray:
        """Actions for a batched observation: B ints, 1 execute, 0 skip."""


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
        return np.asarray(actions, dtype=np.int64).reshape(-1)  # B


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
    """Load an SB3 model zip with the class of ``algo`` (a key of :data:`SB3_ALGOS`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the zip is not a model of that class.
    """
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


# ---------------------------------------------------------------------------- evaluation


@dataclass
class AgentRun:
    """One agent over all images: the metrics and, per image, what it did.

    Attributes:
        row: ``agent``, ``accuracy``, ``flops_fraction`` (backbone MACs over the full
            network's, from the env's final infos), ``block_fraction``, ``return`` (mean
            episode return), ``steps_per_s`` (env steps per second, agent included).
        executed: M x N bool, blocks run per image.
        prediction: M int64, predicted class per image.
    """

    row: dict[str, Any]
    executed: np.ndarray
    prediction: np.ndarray


def evaluate_agent(
    name: str,
    agent: Agent,
    make_env: Callable[[int], SkipNetVectorEnv],
    batches: Sequence[np.ndarray],
    *,
    seed: int | None = None,
    progress: bool = True,
) -> AgentRun:
    """Route every batch of image indices through a vector env with ``agent`` deciding.

    Args:
        name: the agent's name in the row and on the progress bar.
        agent: the policy.
        make_env: the vector env of B episodes for a batch of B images (cache it: it is
            called once per batch).
        batches: image indices into the env's data, one array per round of K steps.
        seed: seeds the env at the first reset.
        progress: show a progress bar.
    """
    returns, correct, flops, executed, predictions = [], [], [], [], []
    steps, seconds = 0, 0.0
    for i, indices in enumerate(tqdm(batches, desc=name, unit="batch", disable=not progress)):
        env = make_env(len(indices))
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
        final = last_step_info(info)  # the terminal step's info, in any autoreset mode
        steps += len(indices) * env.num_decisions
        returns.append(total)
        correct.append(final["correct"])
        flops.append(final["flops_fraction"])
        executed.append(final["executed"])  # B x N
        predictions.append(final["prediction"])
    executed_all = np.concatenate(executed)  # M x N
    row = {
        "agent": name,
        "accuracy": float(np.concatenate(correct).mean()),
        "flops_fraction": float(np.concatenate(flops).mean()),
        "block_fraction": float(executed_all.mean()),
        "return": float(np.concatenate(returns).mean()),
        "steps_per_s": steps / seconds if seconds > 0 else float("nan"),
    }
    return AgentRun(row, executed_all, np.concatenate(predictions))


def check_gate_agent(
    run: AgentRun, env: SkipNetVectorEnv, gate: Gate, batches: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Run ``gate`` inside the network (greedy, real skipping) on the images of ``batches``,
    as the env feeds them to its backbone, and compare with the gate agent's ``run``."""
    backbone = env.backbone
    table = backbone.macs_table(gate=gate)
    executed, predictions, labels = [], [], []
    was_training = gate.training
    gate.eval()
    try:
        with torch.inference_mode():
            for indices in batches:
                x = env.episodes.inputs(indices)  # B x 3 x H x W
                out = backbone.forward_gated(x, gate, mode="greedy", routing="skip")
                executed.append(out.executed.cpu().numpy())  # B x N
                predictions.append(out.logits.argmax(dim=1).cpu().numpy())  # B
                labels.append(env.data.labels[torch.from_numpy(indices)].numpy())  # B
    finally:
        gate.train(was_training)
    executed_np, prediction_np = np.concatenate(executed), np.concatenate(predictions)
    accuracy = float((prediction_np == np.concatenate(labels)).mean())
    decisions_equal = bool(np.array_equal(executed_np, run.executed))
    predictions_equal = bool(np.array_equal(prediction_np, run.prediction))
    executed_t = torch.from_numpy(executed_np)
    return {
        "equal": decisions_equal and predictions_equal and accuracy == run.row["accuracy"],
        "decisions_equal": decisions_equal,
        "predictions_equal": predictions_equal,
        "images_with_other_decisions": int((executed_np != run.executed).any(axis=1).sum()),
        "images_with_other_predictions": int((prediction_np != run.prediction).sum()),
        "accuracy_agent": run.row["accuracy"],
        "accuracy_batched": accuracy,
        "block_fraction_batched": float(executed_np.mean()),
        "flops_fraction_batched": float(table.flops_fraction(executed_t).mean()),
        "flops_fraction_with_gate_batched": float(
            table.flops_fraction_with_gate(executed_t).mean()
        ),
    }
