"""An open-loop router in the style of BlockDrop: every decision made from block 0's output.

BlockDrop (Wu et al., CVPR 2018) picks, per image and in one shot, which residual blocks of a
frozen ResNet run, with a policy network that sees only the input; it is trained by
REINFORCE. Here the policy sees what the environment shows at reset -- the global average of
block 0's output (C_0 channels) -- and outputs K execute probabilities at once; the env is then
stepped with those K decisions, whatever the later activations look like. Against the
recurrent gate (closed loop: each decision sees the block just computed) this measures what
looking at intermediate activations is worth.

- :class:`OpenLoopPolicy`: C_0 -> hidden -> K probabilities (an MLP).
- :class:`OpenLoopAgent`: the policy as an agent on the env's ``vector``/``dict``
  observations; it decides at block 0 and replays the route (its state: B x K decisions).
- :func:`reinforce_episodes`: one REINFORCE update from one round of B episodes of the native
  vector env with the env's own rewards (return = sum of the K rewards; baseline: the batch
  mean, or the greedy route's return on the same images, BlockDrop's self-critical choice).
- :func:`load_open_loop`: the policy of a checkpoint of kind ``openloop``
  (``train/open_loop.py``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from agents.gate_agent import AgentState, ObservationAgent
from skipenv.envs.vector_env import SkipNetVectorEnv, last_step_info
from skipenv.models.checkpoint import CheckpointError, load_checkpoint
from skipenv.models.gating import log_prob
from skipenv.training.devices import resolve_device

KIND = "openloop"
BASELINES = ("mean", "greedy")


class OpenLoopPolicy(nn.Module):
    """K execute probabilities from block 0's pooled output: Linear-ReLU-Linear-sigmoid.

    Args:
        in_channels: C_0, channels of block 0.
        num_decisions: K.
        hidden: width of the hidden layer.
        init_execute_prob: p(execute) of every decision of a fresh policy, for every input
            (the output layer starts at zero weights and this bias): a router that starts by
            running almost everything keeps the backbone's accuracy while it learns.
    """

    def __init__(
        self,
        in_channels: int,
        num_decisions: int,
        hidden: int = 64,
        init_execute_prob: float = 0.9,
    ) -> None:
        super().__init__()
        if not 0.0 < init_execute_prob < 1.0:
            raise ValueError(f"init_execute_prob must be in (0, 1), got {init_execute_prob!r}")
        if in_channels < 1 or num_decisions < 1 or hidden < 1:
            raise ValueError(
                f"in_channels, num_decisions and hidden must be >= 1, got {in_channels}, "
                f"{num_decisions}, {hidden}"
            )
        self.in_channels, self.num_decisions, self.hidden = in_channels, num_decisions, hidden
        self.init_execute_prob = float(init_execute_prob)
        self.net = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, num_decisions)
        )
        nn.init.zeros_(self.net[2].weight)
        nn.init.constant_(self.net[2].bias, math.log(init_execute_prob / (1 - init_execute_prob)))
        # pooled ReLU activations are >= 0 and of varying scale: normalise them per channel
        self.norm = nn.LayerNorm(in_channels, elementwise_affine=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled``: B x C_0 global-average-pooled block 0 outputs -> B x K p(execute)."""
        return torch.sigmoid(self.net(self.norm(pooled.float())))  # B x K

    def spec(self) -> dict[str, Any]:
        return {
            "name": "open_loop",
            "in_channels": self.in_channels,
            "num_decisions": self.num_decisions,
            "hidden": self.hidden,
            "init_execute_prob": self.init_execute_prob,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> OpenLoopPolicy:
        return cls(
            spec["in_channels"], spec["num_decisions"], spec["hidden"], spec["init_execute_prob"]
        )


class OpenLoopAgent(ObservationAgent):
    """An :class:`OpenLoopPolicy` deciding the whole route at each episode's first step.

    At block 0 (``next_block == 1``) the policy turns the pooled activation into K decisions
    (greedy: p > 0.5; else Bernoulli(p)), kept as the agent's state (B x K, one row per env);
    every later step plays the stored decision for its block. Later observations are read
    only for the block index.

    Args:
        policy: the policy (moved to ``device``, used as is under ``torch.inference_mode``).
        observation_space: the env's ``single_observation_space`` (``vector`` or ``dict``).
        block_channels: output channels of every block of the env's backbone.
        device: where the policy runs.
        deterministic: greedy decisions in :meth:`act`.
        seed: seed of the generator for sampled decisions.
    """

    def __init__(
        self,
        policy: OpenLoopPolicy,
        observation_space: spaces.Space,
        block_channels: tuple[int, ...],
        device: str | torch.device = "cpu",
        deterministic: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(observation_space, block_channels, deterministic, seed)
        if (policy.in_channels, policy.num_decisions) != (block_channels[0], self.num_decisions):
            raise ValueError(
                f"the policy reads {policy.in_channels} channels and makes "
                f"{policy.num_decisions} decisions; this backbone's block 0 has "
                f"{block_channels[0]} channels and K = {self.num_decisions}"
            )
        self.device = resolve_device(device)
        self.policy = policy.to(self.device)

    def _state_from_numpy(self, state: Any) -> AgentState:
        return None if state is None else torch.as_tensor(state)

    def route_probs(self, pooled: np.ndarray) -> torch.Tensor:
        """B x K p(execute) for block 0's pooled outputs (B x C_max, zero-padded)."""
        with torch.inference_mode():
            x = torch.as_tensor(pooled[:, : self.block_channels[0]], device=self.device)
            return self.policy(x).cpu()  # B x K

    def _decide(
        self,
        pooled: np.ndarray,
        block: np.ndarray,
        frac: np.ndarray,
        state: AgentState,
        episode_start: np.ndarray,
        deterministic: bool,
    ) -> tuple[np.ndarray, AgentState]:
        n = len(block)
        first = block == 0
        if state is None or state.shape != (n, self.num_decisions):
            if not first.all():
                i = int(np.flatnonzero(~first)[0])
                raise ValueError(
                    f"observation {i} is at block {int(block[i]) + 1} of its episode, but the "
                    "open-loop agent decides the route at block 1: start from the episode's "
                    "first observation (or pass the state predict() returned)"
                )
            state = torch.zeros(n, self.num_decisions, dtype=torch.int64)  # B x K
        else:
            state = state.clone()
        if first.any():
            rows = np.flatnonzero(first)
            probs = self.route_probs(pooled[rows]).numpy()  # R x K
            state[torch.from_numpy(rows)] = torch.from_numpy(self._bernoulli(probs, deterministic))
        actions = state[torch.arange(n), torch.from_numpy(block)].numpy()  # B
        return actions.astype(np.int64), state


# ---------------------------------------------------------------------------- training


def run_route(env: SkipNetVectorEnv, decisions: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Step ``env`` (at the first step of its episodes) through the K decisions of
    ``decisions`` (B x K); returns the episode returns (B) and the final info."""
    total = np.zeros(env.num_envs)  # B
    info: dict[str, Any] = {}
    for k in range(env.num_decisions):
        _, reward, terminated, _, info = env.step(decisions[:, k])
        total += reward
    if not terminated.all():
        raise RuntimeError(f"episodes did not end after K = {env.num_decisions} steps")
    return total, last_step_info(info)


def reinforce_episodes(
    policy: OpenLoopPolicy,
    env: SkipNetVectorEnv,
    optimizer: torch.optim.Optimizer,
    indices: np.ndarray,
    generator: torch.Generator,
    *,
    baseline: str = "mean",
    explore: float = 0.0,
) -> dict[str, float]:
    """One REINFORCE update from B = ``env.num_envs`` episodes on the images ``indices``.

    Routes are sampled from the policy (mixed with a fair coin by ``explore``); the loss is
    ``-mean_b (R_b - baseline_b) sum_k log pi(a_bk)`` with ``R_b`` the episode's return under
    the env's reward. Env steps taken: B x K (twice that with ``baseline="greedy"``).

    Returns:
        ``loss``, ``return`` (mean sampled return), ``accuracy``, ``flops_fraction`` and
        ``block_fraction`` of the sampled routes, ``env_steps``.
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {BASELINES}")
    if not 0.0 <= explore <= 1.0:
        raise ValueError(f"explore must be in [0, 1], got {explore!r}")
    device = next(policy.parameters()).device
    c0 = policy.in_channels
    obs, _ = env.reset(options={"indices": indices})
    pooled = torch.as_tensor(np.asarray(obs)[:, :c0], device=device)  # B x C_0
    probs = policy(pooled)  # B x K
    probs = (1 - explore) * probs + explore * 0.5
    sample = torch.rand(probs.shape, generator=generator, device="cpu").to(device) < probs
    returns, final = run_route(env, sample.cpu().numpy().astype(np.int64))  # B
    steps = env.num_envs * env.num_decisions
    if baseline == "greedy":
        env.reset(options={"indices": indices})
        greedy = (probs.detach() > 0.5).cpu().numpy().astype(np.int64)
        base, _ = run_route(env, greedy)
        steps *= 2
    else:
        base = np.full_like(returns, returns.mean())
    advantage = torch.as_tensor(returns - base, dtype=torch.float32, device=device)  # B
    logp = log_prob(probs, sample).sum(dim=1)  # B
    loss = -(logp * advantage).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {
        "loss": float(loss.detach()),
        "return": float(returns.mean()),
        "accuracy": float(np.mean(final["correct"])),
        "flops_fraction": float(np.mean(final["flops_fraction"])),
        "block_fraction": float(np.mean(final["executed"])),
        "env_steps": steps,
    }


def load_open_loop(
    source: str | Path | dict[str, Any], map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], OpenLoopPolicy]:
    """The payload and policy (eval mode) of an ``openloop`` checkpoint (path or payload).

    Raises:
        CheckpointError: missing, unreadable, another kind, or weights that do not fit.
    """
    payload = (
        source
        if isinstance(source, dict)
        else load_checkpoint(source, (KIND,), map_location=map_location)
    )
    if payload.get("kind") != KIND:
        raise CheckpointError(f"expected an {KIND!r} checkpoint, got {payload.get('kind')!r}")
    policy = OpenLoopPolicy.from_spec(payload["arch"]["policy"])
    try:
        policy.load_state_dict(payload["policy"])
    except RuntimeError as err:
        raise CheckpointError(f"policy weights do not fit its spec: {err}") from err
    return payload, policy.to(map_location).eval()
