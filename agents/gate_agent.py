"""A gate as an agent: a SkipNet gate acting on ``SkipNet-CIFAR10-v0``'s observations.

The environment runs the backbone one block per step and shows the agent the global average
of the block just computed (``obs_mode="vector"``, or the ``"pooled"`` entry of
``obs_mode="dict"``). A gate that decides from that pooled vector -- the recurrent gate,
through its ``forward_pooled`` -- therefore makes, step by step, exactly the decisions it
makes inside :meth:`skipenv.models.resnet.SkipResNet.forward_gated` on the same images.

:class:`ObservationAgent` holds what every agent over these observations shares: decoding
(pooled activation, index of the block that produced it, MACs spent), one ``act`` for a
single observation or a batch of them, and Stable-Baselines3's ``predict`` signature, so one
evaluation loop runs SB3 models, gate agents and the baselines of :mod:`agents.baselines`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from skipenv.models.gating import Gate
from skipenv.training.devices import resolve_device

AgentState = Any  # a gate's recurrent state: None, a tensor, or a tuple of tensors (N rows)


def _map_state(fn: Callable[..., Any], *states: Any) -> Any:
    """Apply ``fn`` leaf-wise to states of the same structure (None, tensor/array, tuple)."""
    first = states[0]
    if first is None:
        return None
    if isinstance(first, (tuple, list)):
        return type(first)(_map_state(fn, *parts) for parts in zip(*states, strict=True))
    return fn(*states)


class ObservationAgent:
    """Base of agents acting on the SkipNet environment's ``vector`` or ``dict`` observations.

    Decoding (layout in the environment's docstring): with C_max = max(block_channels) and
    N = len(block_channels), a vector observation holds the pooled activation of the block
    just computed in ``obs[:C_max]`` (zero-padded), ``next_block / N`` in ``obs[C_max]`` and
    the fraction of MACs spent in ``obs[C_max + 1]``; the block that produced the activation
    is ``round(obs[C_max] * N) - 1``, and the decision is about the block after it.

    Subclasses implement :meth:`_decide`; they may keep a recurrent state (one row per env).

    Args:
        observation_space: the env's ``single_observation_space`` (Box of shape (C_max + 2,),
            or the Dict of ``obs_mode="dict"``).
        block_channels: output channels of every backbone block (``backbone.block_channels``).
        deterministic: the default for :meth:`act`.
        seed: seed of the numpy generator used by stochastic decisions.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        block_channels: tuple[int, ...],
        deterministic: bool = True,
        seed: int | None = None,
    ) -> None:
        self.block_channels = tuple(int(c) for c in block_channels)
        if len(self.block_channels) < 2:
            raise ValueError(
                f"block_channels must list every block's channels (>= 2 blocks), got "
                f"{block_channels!r}; pass backbone.block_channels"
            )
        self.c_max = max(self.block_channels)
        self.observation_space = observation_space
        self.dict_obs = self._check_space(observation_space)
        self.deterministic = deterministic
        self.rng = np.random.default_rng(seed)
        self._state: AgentState = None
        self._num_envs: int | None = None

    # -- shape facts

    @property
    def num_blocks(self) -> int:
        return len(self.block_channels)

    @property
    def num_decisions(self) -> int:
        """K: decisions per episode (one per block but the first)."""
        return self.num_blocks - 1

    def _check_space(self, space: spaces.Space) -> bool:
        if isinstance(space, spaces.Dict) and {"pooled", "block"} <= set(space.spaces):
            pooled = space["pooled"]
            if pooled.shape != (self.c_max,):
                raise ValueError(
                    f"the 'pooled' observation has shape {pooled.shape}, but blocks with "
                    f"{self.block_channels} channels give ({self.c_max},): is block_channels "
                    "that of the env's backbone?"
                )
            return True
        if isinstance(space, spaces.Box) and len(space.shape) == 1:
            if space.shape != (self.c_max + 2,):
                raise ValueError(
                    f"vector observations of shape {space.shape} do not fit blocks with "
                    f"{self.block_channels} channels, which give ({self.c_max + 2},): is "
                    "block_channels that of the env's backbone?"
                )
            return False
        raise TypeError(
            f"{type(self).__name__} reads the block index and pooled activation of the env's "
            f"obs_mode='vector' (or 'dict') observations; got the space {space}, which holds "
            "neither (obs_mode='activation'?)"
        )

    # -- decoding

    def decode(self, obs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """Split observations into (pooled B x C_max float32, block B int64, MACs fraction B
        float32, single) where ``block`` is the block that produced the activation and
        ``single`` says whether ``obs`` was one observation rather than a batch."""
        if self.dict_obs:
            if not isinstance(obs, dict):
                raise TypeError(f"expected a dict observation, got {type(obs).__name__}")
            pooled = np.asarray(obs["pooled"], dtype=np.float32)
            single = pooled.ndim == 1
            pooled = pooled.reshape(-1, pooled.shape[-1])
            next_block = np.asarray(obs["block"], dtype=np.int64).reshape(-1)
            frac = np.asarray(obs.get("flops_fraction", np.zeros(len(pooled))), np.float32)
            frac = frac.reshape(-1)
        else:
            arr = np.asarray(obs, dtype=np.float32)
            width = self.c_max + 2
            if arr.ndim not in (1, 2) or arr.shape[-1] != width:
                raise ValueError(
                    f"expected observations of shape ({width},) or (B, {width}), got shape "
                    f"{arr.shape}"
                )
            single = arr.ndim == 1
            arr = arr.reshape(-1, width)
            pooled, frac = arr[:, : self.c_max], arr[:, self.c_max + 1]
            next_block = np.rint(arr[:, self.c_max] * self.num_blocks).astype(np.int64)
        if pooled.shape[1] != self.c_max or len(next_block) != len(pooled):
            raise ValueError(
                f"expected pooled activations of width {self.c_max} and one block index per "
                f"observation, got {pooled.shape} and {next_block.shape}"
            )
        block = next_block - 1
        bad = (block < 0) | (block >= self.num_decisions)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            if next_block[i] == self.num_blocks:
                raise ValueError(
                    f"observation {i} is terminal (all {self.num_blocks} blocks decided): there "
                    "is nothing left to decide; reset the env"
                )
            raise ValueError(
                f"observation {i} names next block {int(next_block[i])}, outside "
                f"1..{self.num_decisions} for a backbone of {self.num_blocks} blocks"
            )
        return pooled, block, frac, single

    # -- acting

    def reset(self, num_envs: int = 1) -> None:
        """Forget the recurrent state; the next observations start episodes of ``num_envs``
        envs (each must then be at its first decision)."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs!r}")
        self._state, self._num_envs = None, int(num_envs)

    def act(self, obs: Any) -> int | np.ndarray:
        """Action for one observation (an int) or for a batch of B (B int64 actions).

        Keeps the recurrent state between calls; a row whose observation is the first of
        an episode starts from the initial state.
        """
        pooled, block, frac, single = self.decode(obs)
        if self._num_envs is not None and len(block) != self._num_envs:
            raise ValueError(
                f"got {len(block)} observations but the agent is stepping {self._num_envs} "
                f"envs; call reset(num_envs={len(block)}) first"
            )
        actions, self._state = self._decide(
            pooled, block, frac, self._state, np.zeros(len(block), bool), self.deterministic
        )
        self._num_envs = len(block)
        return int(actions[0]) if single else actions

    def predict(
        self,
        observation: Any,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Stable-Baselines3's ``predict``: (actions, next state), stateless between calls.

        Args:
            observation: one observation or a batch of B.
            state: what the previous call returned (None at the start).
            episode_start: B bool, rows whose episode starts here (their state is reset;
                a row at its first decision is reset anyway).
            deterministic: greedy (p > 0.5) decisions when True, sampled otherwise.

        Returns:
            actions (int64; shape () for one observation, B for a batch) and the state to
            pass to the next call (a tuple of numpy arrays, or None for a stateless agent).
        """
        pooled, block, frac, single = self.decode(observation)
        starts = np.zeros(len(block), bool)
        if episode_start is not None:
            starts = np.asarray(episode_start, dtype=bool).reshape(-1)
            if starts.shape != block.shape:
                raise ValueError(
                    f"episode_start must hold one flag per observation ({len(block)}), got "
                    f"shape {np.shape(episode_start)}"
                )
        actions, new_state = self._decide(
            pooled, block, frac, self._state_from_numpy(state), starts, deterministic
        )
        out_state = _map_state(lambda t: t.detach().cpu().numpy().copy(), new_state)
        return (np.asarray(actions[0]) if single else actions), out_state

    def _state_from_numpy(self, state: Any) -> AgentState:
        return state

    def _decide(
        self,
        pooled: np.ndarray,
        block: np.ndarray,
        frac: np.ndarray,
        state: AgentState,
        episode_start: np.ndarray,
        deterministic: bool,
    ) -> tuple[np.ndarray, AgentState]:
        """N int64 actions (1 = execute the next block) and the new state."""
        raise NotImplementedError

    def _bernoulli(self, p_execute: np.ndarray, deterministic: bool) -> np.ndarray:
        if deterministic:
            return (p_execute > 0.5).astype(np.int64)
        return (self.rng.random(p_execute.shape) < p_execute).astype(np.int64)


class GateAgent(ObservationAgent):
    """A gate deciding from the pooled activations in the env's observations.

    Greedy (execute iff p > 0.5) when ``deterministic``, Bernoulli(p) from a seedable numpy
    generator otherwise. Driving ``SkipNet-CIFAR10-v0`` with greedy decisions gives the
    decisions, executed blocks and predictions of
    ``backbone.forward_gated(x, gate, mode="greedy")`` on the same images.

    The gate must decide from the pooled vector alone (``gate.forward_pooled(pooled B x C_i,
    block, state)``, as :class:`agents.gates.RNNGate` does). The feedforward gates convolve
    the full activation map, which no observation holds, and are refused with a TypeError.
    The gate is used as is (its train/eval mode untouched) under ``torch.inference_mode``.

    Args:
        gate: the policy.
        observation_space: the env's ``single_observation_space`` (``obs_mode="vector"``
            or ``"dict"``).
        block_channels: output channels of every block of the env's backbone.
        device: where the gate runs (``"cpu"``, ``"cuda"``, ``"auto"``); the gate is moved.
        deterministic: greedy decisions in :meth:`act` (``predict`` takes its own flag).
        seed: seed of the generator for sampled decisions.
    """

    def __init__(
        self,
        gate: Gate,
        observation_space: spaces.Space,
        block_channels: tuple[int, ...],
        device: str | torch.device = "cpu",
        deterministic: bool = True,
        seed: int | None = None,
    ) -> None:
        if not callable(getattr(gate, "forward_pooled", None)):
            raise TypeError(
                f"{type(gate).__name__} decides from the full activation map of a block, which "
                "the env's observations do not hold (obs_mode='vector' and 'dict' give its "
                "global average, 'activation' an 8x8 average pool), so it cannot act on them "
                "exactly; use a gate with forward_pooled such as agents.gates.RNNGate, or run "
                "this gate inside the network with SkipResNet.forward_gated"
            )
        super().__init__(observation_space, block_channels, deterministic, seed)
        gate_channels = getattr(gate, "block_channels", None)
        if gate_channels is not None and tuple(gate_channels) != self.block_channels:
            raise ValueError(
                f"the gate was built for blocks with {tuple(gate_channels)} channels, the env's "
                f"backbone has {self.block_channels}"
            )
        self.device = resolve_device(device)
        self.gate = gate.to(self.device)

    def _state_from_numpy(self, state: Any) -> AgentState:
        return _map_state(lambda a: torch.as_tensor(a, device=self.device), state)

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
        with torch.inference_mode():
            fresh = torch.as_tensor((block == 0) | episode_start, device=self.device)  # B
            init = self.gate.initial_state(n, self.device)
            if state is None or bool(fresh.all()):
                if init is not None and not bool(fresh.all()):
                    i = int(np.flatnonzero(~((block == 0) | episode_start))[0])
                    raise ValueError(
                        f"observation {i} is at block {int(block[i]) + 1} of its episode, but no "
                        "recurrent state was given: pass the state the previous predict() "
                        "returned, or call act() from the episode's first observation on"
                    )
                state = init
            else:
                state = _map_state(lambda s, s0: self._reset_rows(s, s0, fresh, n), state, init)
            x = torch.as_tensor(pooled, device=self.device)  # B x C_max
            probs = torch.empty(n, device=self.device)  # B
            new_state = _map_state(torch.clone, state)
            for b in np.unique(block).tolist():
                rows = torch.as_tensor(np.flatnonzero(block == b), device=self.device)  # R
                rows_state = _map_state(lambda s, r=rows: s.index_select(0, r), state)
                p, out = self.gate.forward_pooled(
                    x.index_select(0, rows)[:, : self.block_channels[b]], b, rows_state
                )
                probs[rows] = p.to(probs.dtype)
                _map_state(lambda dst, src, r=rows: dst.index_copy_(0, r, src), new_state, out)
        return self._bernoulli(probs.cpu().numpy(), deterministic), new_state

    @staticmethod
    def _reset_rows(s: torch.Tensor, s0: torch.Tensor, fresh: torch.Tensor, n: int) -> torch.Tensor:
        if s.shape[0] != n:
            raise ValueError(
                f"the recurrent state holds {s.shape[0]} rows for {n} observations; pass the "
                f"state returned for these envs, or call reset(num_envs={n})"
            )
        return torch.where(fresh.view(-1, *[1] * (s.ndim - 1)), s0, s.to(s0.dtype))
