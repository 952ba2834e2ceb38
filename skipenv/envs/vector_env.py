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
    - Autoreset: every episode ends on the same step (after K steps, or ``max_episode_steps``);
      what follows depends on ``autoreset_mode`` (``metadata["autoreset_mode"]``):

      * ``NEXT_STEP`` (default, as Gymnasium's own vector envs): the step that ends the
        episodes returns their terminal observations, and its info holds ``prediction``,
        ``correct`` and ``loss``; the next ``step`` ignores its actions and starts ``num_envs``
        new episodes (reward 0, ``terminated`` and ``truncated`` False, the info of the reset).
      * ``SAME_STEP`` (what Stable-Baselines3 expects; :mod:`skipenv.envs.sb3` asks for it):
        the step that ends the episodes already returns the observations of new ones; the
        terminal observations are in ``info["final_obs"]`` (object array, one observation per
        environment) and the terminal infos (with ``prediction``, ``correct`` and ``loss``) in
        ``info["final_info"]``.
      * ``DISABLED``: the step that ends the episodes returns their terminal observations and
        info; call ``reset()`` before the next ``step`` (``options={"reset_mask": m}`` is
        accepted when ``m`` is all True: the episodes run in lockstep, so a part of them
        cannot be reset alone).

      :func:`last_step_info` gives the info of the last step of an episode in every mode.
    - ``max_episode_steps`` (what ``gymnasium.make_vec(..., max_episode_steps=T)`` passes):
      with ``T < K`` every episode is truncated after ``T`` steps (``truncated`` True, no
      prediction, no head run), as ``gymnasium.wrappers.TimeLimit`` does to the single env.
    - Infos are dicts of arrays with ``"_key"`` masks, as in Gymnasium's vector envs.
    - ``reset(seed=..., options={"indices": [...]})`` picks the ``num_envs`` images; without
      it they are drawn with ``self.np_random``, as are the images of every autoreset.
    - ``render()`` returns one frame (``rgb_array``) or line (``ansi``) per environment.

    Args:
        num_envs: B, the batch size.
        config, options: the options of :class:`~skipenv.envs.env.SkipNetEnv`, as an
            :class:`~skipenv.envs.config.EnvConfig` and/or keywords.
        autoreset_mode: ``gymnasium.vector.AutoresetMode`` (or its value, e.g.
            ``"SameStep"``): ``NEXT_STEP`` (default), ``SAME_STEP`` or ``DISABLED``.
        max_episode_steps: truncate every episode after this many steps (None: never; values
            of K and up change nothing).
        disable_env_checker: accepted for ``gymnasium.make_vec``, which passes it on; a vector
            env is never checked by Gymnasium's env checker.

    Raises:
        ValueError: a bad ``num_envs``, ``autoreset_mode`` or ``max_episode_steps``, or a bad
            option (see :class:`~skipenv.envs.config.EnvConfig`).
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": list(RENDER_MODES),
        "render_fps": 4,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        config: EnvConfig | None = None,
        *,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        max_episode_steps: int | None = None,
        disable_env_checker: bool | None = None,
        **options: Any,
    ) -> None:
        self.num_envs = check_int(num_envs, "num_envs", minimum=1)
        self.autoreset_mode = check_autoreset_mode(autoreset_mode)
        if max_episode_steps is not None:
            check_int(max_episode_steps, "max_episode_steps", minimum=1)
        self.max_episode_steps = max_episode_steps
        # an instance copy: the class's stays the default
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
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
        self._steps = 0  # steps of the current episodes
        self._ended = False  # the episodes ended on the last step (terminated or truncated)

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
        unknown = set(options) - {"indices", "reset_mask"}
        if unknown:
            raise ValueError(
                f"unknown reset options {sorted(unknown)}; the options are 'indices' and "
                "'reset_mask'"
            )
        mask = options.get("reset_mask")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != bool or mask.shape != (self.num_envs,):
                raise ValueError(
                    f"options['reset_mask'] must be a bool array of shape ({self.num_envs},), "
                    f"got {mask!r}"
                )
            if not mask.all():
                raise ValueError(
                    "the episodes of SkipNetVectorEnv run in lockstep and end together, so they "
                    f"are reset together: options['reset_mask'] must be all True, got {mask!r}"
                )
        if options.get("indices") is not None:
            indices = self.episodes.check_indices(options["indices"])
            if indices.shape != (self.num_envs,):
                raise ValueError(
                    f"options['indices'] needs {self.num_envs} image indices (one per "
                    f"environment), got {len(indices)}"
                )
        else:
            indices = self._draw()
        obs, info = self.episodes.start(indices, self.np_random)
        self._steps, self._ended = 0, False
        return obs, with_masks(info, self.num_envs)

    def step(self, actions: Any) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        n = self.num_envs
        if self._ended and self.autoreset_mode == AutoresetMode.NEXT_STEP:
            obs, info = self.reset()  # Gymnasium's next-step autoreset: the actions are ignored
            zeros = np.zeros(n, dtype=bool)
            return obs, np.zeros(n, dtype=np.float64), zeros, zeros.copy(), info
        if self._ended or not self.episodes.running:
            when = "the episodes have ended" if self._ended else "no episodes have started"
            raise ResetNeeded(f"{when}: call reset() before step()")
        execute = self._check_actions(actions)
        obs, rewards, done, info = self.episodes.step(execute)
        self._steps += 1
        cut = not done and self.max_episode_steps is not None
        cut = cut and self._steps >= self.max_episode_steps
        terminated = np.full(n, done, dtype=bool)
        truncated = np.full(n, cut, dtype=bool)
        infos = with_masks(info, n)
        if done or cut:
            self._ended = True
            self.episodes.abandon()  # a truncated route is dropped (no-op when done)
            if self.autoreset_mode == AutoresetMode.SAME_STEP:
                final_obs = np.empty(n, dtype=object)
                for i in range(n):  # Gymnasium's layout: one object per environment
                    final_obs[i] = row(obs, i)
                obs, reset_info = self.reset()
                infos = {
                    **reset_info,
                    "final_obs": final_obs,
                    "_final_obs": np.ones(n, dtype=bool),
                    "final_info": infos,
                    "_final_info": np.ones(n, dtype=bool),
                }
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


def check_autoreset_mode(mode: Any) -> AutoresetMode:
    """``mode`` as a :class:`gymnasium.vector.AutoresetMode` (the enum or its value)."""
    try:
        return AutoresetMode(mode)
    except ValueError:
        valid = ", ".join(f"AutoresetMode.{m.name} ({m.value!r})" for m in AutoresetMode)
        raise ValueError(f"autoreset_mode must be one of {valid}; got {mode!r}") from None


def last_step_info(info: dict[str, Any]) -> dict[str, Any]:
    """The info of the step that ended the episodes (with ``prediction`` and ``correct``), in
    every autoreset mode: ``info["final_info"]`` under ``SAME_STEP``, else ``info`` itself."""
    return info["final_info"] if "final_info" in info else info
