"""Simple baselines over the SkipNet environment's observations.

Same interface as :class:`agents.gate_agent.GateAgent` (``reset``, ``act``, ``predict``), so
the same evaluation loop compares them with learnt gates and SB3 models:

- :class:`AlwaysExecute`: the plain network (100% of the blocks).
- :class:`RandomSkip`: executes each block with probability ``p_execute``, independently.
- :class:`FixedPattern`: the same blocks for every image (static depth reduction), e.g.
  :meth:`FixedPattern.skip_last` (the last k blocks of each stage skipped) or
  :meth:`FixedPattern.from_blocks`.
- :class:`FlopsBudget`: executes blocks while the MACs spent so far (read from the
  observation) are under a budget, and skips the rest.

None of them looks at the pooled activation, and none has a recurrent state (``predict``
returns None). ``deterministic`` does not change them: ``RandomSkip`` always samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from gymnasium import spaces

from agents.gate_agent import AgentState, ObservationAgent


class AlwaysExecute(ObservationAgent):
    """Execute every block: the full network, the accuracy and compute reference.

    Args:
        observation_space: the env's ``single_observation_space`` (``vector`` or ``dict``).
        block_channels: output channels of every block of the env's backbone.
    """

    def __init__(self, observation_space: spaces.Space, block_channels: tuple[int, ...]) -> None:
        super().__init__(observation_space, block_channels)

    def _decide(
        self,
        pooled: np.ndarray,
        block: np.ndarray,
        frac: np.ndarray,
        state: AgentState,
        episode_start: np.ndarray,
        deterministic: bool,
    ) -> tuple[np.ndarray, AgentState]:
        return np.ones(len(block), dtype=np.int64), None


class RandomSkip(ObservationAgent):
    """Execute each block with probability ``p_execute``, independently of everything.

    Args:
        observation_space: the env's ``single_observation_space`` (``vector`` or ``dict``).
        block_channels: output channels of every block of the env's backbone.
        p_execute: probability of executing a block, in [0, 1].
        seed: seed of the numpy generator.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        block_channels: tuple[int, ...],
        p_execute: float = 0.5,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= p_execute <= 1.0:
            raise ValueError(f"p_execute must be in [0, 1], got {p_execute!r}")
        super().__init__(observation_space, block_channels, deterministic=False, seed=seed)
        self.p_execute = float(p_execute)

    def _decide(
        self,
        pooled: np.ndarray,
        block: np.ndarray,
        frac: np.ndarray,
        state: AgentState,
        episode_start: np.ndarray,
        deterministic: bool,
    ) -> tuple[np.ndarray, AgentState]:
        return (self.rng.random(len(block)) < self.p_execute).astype(np.int64), None


def stages(block_channels: Sequence[int]) -> list[list[int]]:
    """Block indices of each stage: runs of blocks with the same width (the CIFAR ResNets'
    stages all have different widths)."""
    out: list[list[int]] = []
    for i, c in enumerate(block_channels):
        if i == 0 or c != block_channels[i - 1]:
            out.append([])
        out[-1].append(i)
    return out


class FixedPattern(ObservationAgent):
    """Execute the same blocks for every image.

    Args:
        observation_space: the env's ``single_observation_space`` (``vector`` or ``dict``).
        block_channels: output channels of every block of the env's backbone.
        execute: one flag per block (``len(block_channels)``); block 0 always runs, so its
            flag must be true.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        block_channels: tuple[int, ...],
        execute: Sequence[bool],
    ) -> None:
        super().__init__(observation_space, block_channels)
        flags = np.asarray(execute, dtype=bool)
        if flags.shape != (self.num_blocks,):
            raise ValueError(
                f"execute needs one flag per block ({self.num_blocks}), got shape {flags.shape}"
            )
        if not flags[0]:
            raise ValueError("block 0 always runs: execute[0] must be True")
        self.execute = flags

    @classmethod
    def from_blocks(
        cls,
        observation_space: spaces.Space,
        block_channels: tuple[int, ...],
        blocks: Iterable[int],
    ) -> FixedPattern:
        """Execute exactly ``blocks`` (and block 0, which always runs)."""
        n = len(block_channels)
        flags = np.zeros(n, dtype=bool)
        flags[0] = True
        for b in blocks:
            if not 0 <= b < n:
                raise ValueError(f"block {b!r} is out of range 0..{n - 1}")
            flags[b] = True
        return cls(observation_space, block_channels, flags)

    @classmethod
    def skip_last(
        cls, observation_space: spaces.Space, block_channels: tuple[int, ...], k: int
    ) -> FixedPattern:
        """Skip the last ``k`` blocks of every stage (block 0 still runs)."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k!r}")
        flags = np.ones(len(block_channels), dtype=bool)
        for stage in stages(block_channels):
            flags[stage[len(stage) - min(k, len(stage)) :]] = False
        flags[0] = True
        return cls(observation_space, block_channels, flags)

    def _decide(
        self,
        pooled: np.ndarray,
        block: np.ndarray,
        frac: np.ndarray,
        state: AgentState,
        episode_start: np.ndarray,
        deterministic: bool,
    ) -> tuple[np.ndarray, AgentState]:
        return self.execute[block + 1].astype(np.int64), None


class FlopsBudget(ObservationAgent):
    """Execute the next block while the fraction of MACs spent so far is below ``budget``.

    Reads ``obs[C_max + 1]`` (MACs spent / full network's). Early blocks run and late ones
    are skipped; the episode can end above ``budget`` by the last block executed, plus the
    projection shortcuts of skipped stage-entry blocks.

    Args:
        observation_space: the env's ``single_observation_space`` (``vector`` or ``dict``).
        block_channels: output channels of every block of the env's backbone.
        budget: target fraction of the full network's MACs, in (0, 1].
    """

    def __init__(
        self, observation_space: spaces.Space, block_channels: tuple[int, ...], budget: float
    ) -> None:
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"budget must be a fraction in (0, 1], got {budget!r}")
        super().__init__(observation_space, block_channels)
        self.budget = float(budget)

    def _decide(
        self,
        pooled: np.ndarray,
        block: np.ndarray,
        frac: np.ndarray,
        state: AgentState,
        episode_start: np.ndarray,
        deterministic: bool,
    ) -> tuple[np.ndarray, AgentState]:
        return (frac < self.budget).astype(np.int64), None
