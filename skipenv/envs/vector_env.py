"""SkipNet-CIFAR10-v0 natively batched: B episodes in lockstep as one tensor batch."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from skipenv.envs.config import RENDER_MODES, EnvConfig
from skipenv.envs.episode import EpisodeFacts, Episodes, Obs, make_episodes, row
from skipenv.envs.render import render_episode
from skipenv.utils import check_int


@functools.lru_cache(maxsize=8)
def _all_true(num_envs: int) -> np.ndarray:
    mask = np.ones(num_envs, dtype=bool)
    mask.flags.writeable = False  # one array for every mask of every step
    return mask


def with_masks(info: dict[str, np.ndarray], num_envs: int) -> dict[str, np.ndarray]:
    """Gymnasium's vector info layout: every key ``k`` gets a mask ``_k`` (here all True; the
    masks are one read-only array)."""
    mask = _all_true(num_envs)
    out: dict[str, np.ndarray] = {}
    for key, value in info.items():
        out[key], out[f"_{key}"] = value, mask
    return out


class SkipNetVectorEnv(EpisodeFacts, gym.vector.VectorEnv):
    """``num_envs`` SkipNet-CIFAR10-v0 episodes, batched on the device.

    Observations, actions, rewards, episode end and info keys are those of
    :class:`~skipenv.envs.env.SkipNetEnv` (see its docstring), batched along a leading axis of
    ``num_envs``. All episodes have the same length K and run in lockstep: each step runs the
    next block once, batched, on the images whose action is 1 (real skipping), so a step
    costs about what the backbone itself costs for that block.

    - ``actions``: integer (or bool) array of shape ``(num_envs,)`` with values 0 (skip) or 1
      (execute); anything else raises ``ValueError`` naming the expected shape.
    - Autoreset (``metadata["autoreset_mode"]`` is ``SAME_STEP``): every episode terminates
      on the same step; that step returns the observations of ``num_envs`` freshly drawn
      images (stem and block 0 already run), with the terminal observations in
      ``info["final_obs"]`` (object array, one observation per environment) and the terminal
      infos (with ``prediction`` and ``correct``) in ``info["final_info"]``.
    - Infos are dicts of arrays with ``"_key"`` masks, as in Gymnasium's vector envs.
    - ``reset(seed=..., options={"indices": [...]})`` picks the ``num_envs`` images; without
      it they are drawn with ``self.np_random``, as are the images of every autoreset.
    - ``render()`` returns one frame (``rgb_array``) or line (``ansi``) per environment.

    Args:
        num_envs: B, the batch size.
        config, options: the options of :class:`~skipenv.envs.env.SkipNetEnv`, as an
            :class:`~skipenv.envs.config.EnvConfig` and/or keywords.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": list(RENDER_MODES),
        "render_fps": 4,
        "autoreset_mode": AutoresetMode.SAME_STEP,
    }

    def __init__(self, num_envs: int = 1, config: EnvConfig | None = None, **options: Any) -> None:
        self.num_envs = check_int(num_envs, "num_envs", minimum=1)
        self.config = EnvConfig.of(config, **options)
        self.render_mode = self.config.render_mode
        self.episodes: Episodes = make_episodes(self.config)
        self.single_observation_space = self.episodes.observation_space
        self.single_action_space = spaces.Discrete(2)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._expected = (
            f"an integer array of shape ({num_envs},) (one action per environment) with values "
            "0 (skip) or 1 (execute)"
        )

    # -- facts

    def action_masks(self) -> np.ndarray:
        """Both actions are always valid (for MaskablePPO): ``num_envs x 2`` True."""
        return np.ones((self.num_envs, 2), dtype=bool)

    # -- the API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"indices"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; the only one is 'indices'")
        if options.get("indices") is not None:
            indices = self.episodes.check_indices(options["indices"])
            if indices.shape != (self.num_envs,):
                raise ValueError(
                    f"options['indices'] needs {self.num_envs} image indices (one per "
                    f"environment), got {len(indices)}"
                )
        else:
            indices = self._draw()
        obs, info = self.episodes.start(indices)
        return obs, with_masks(info, self.num_envs)

    def step(self, actions: Any) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self.episodes.running:
            raise ResetNeeded("no episodes have started: call reset() before step()")
        execute = self._check_actions(actions)
        obs, rewards, done, info = self.episodes.step(execute)
        n = self.num_envs
        infos = with_masks(info, n)
        if done:
            final_obs = np.empty(n, dtype=object)
            for i in range(n):  # Gymnasium's layout: one object per environment
                final_obs[i] = row(obs, i)
            obs, reset_info = self.episodes.start(self._draw())
            infos = {
                **with_masks(reset_info, n),
                "final_obs": final_obs,
                "_final_obs": _all_true(n),
                "final_info": infos,
                "_final_info": _all_true(n),
            }
        terminated = np.full(n, done, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        return obs, rewards, terminated, truncated, infos

    def render(self) -> tuple[np.ndarray | str, ...] | None:
        if self.render_mode is None:
            gym.logger.warn(
                "render() was called without a render mode; make the environment with "
                'render_mode="rgb_array" or "ansi"'
            )
            return None
        if self.episodes.batch_size == 0:
            raise ResetNeeded("nothing to render yet: call reset() first")
        return tuple(
            render_episode(self.episodes, i, self.render_mode) for i in range(self.num_envs)
        )

    # -- helpers

    def _draw(self) -> np.ndarray:
        return self.np_random.integers(len(self.data), size=self.num_envs).astype(np.int64)

    def _check_actions(self, actions: Any) -> np.ndarray:
        """``actions`` as a contiguous bool array of shape (B,), or a ValueError."""
        array = np.asarray(actions)
        if array.dtype.kind not in "biu":
            raise ValueError(f"actions must be {self._expected}; got dtype {array.dtype}")
        if array.shape != (self.num_envs,):
            raise ValueError(f"actions must be {self._expected}; got shape {array.shape}")
        if array.dtype.kind != "b" and not bool(((array == 0) | (array == 1)).all()):
            bad = array[(array != 0) & (array != 1)]
            raise ValueError(f"actions must be {self._expected}; got values {bad[:5].tolist()}")
        return np.ascontiguousarray(array, dtype=bool)
