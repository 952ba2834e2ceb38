"""Stable-Baselines3 adapter: any same-step-autoreset Gymnasium vector env as an SB3 ``VecEnv``.

Gymnasium vector envs and SB3's ``VecEnv`` differ in three ways this module bridges:

- ``step`` returns ``terminated`` and ``truncated`` in Gymnasium, one ``done`` in SB3
  (``TimeLimit.truncated`` in the info says which);
- Gymnasium's infos are one dict of per-env arrays with ``_key`` masks, SB3's a list of
  per-env dicts;
- when an episode ends, a same-step-autoreset Gymnasium env returns the next episode's first
  observation and puts the last one in ``info["final_obs"]`` (and the last step's info in
  ``info["final_info"]``); SB3 expects it in ``infos[i]["terminal_observation"]``.

Only ``AutoresetMode.SAME_STEP`` has SB3's semantics (the observation after a done is the
reset observation), so other modes are refused.

Attributes and methods: for :class:`gymnasium.vector.SyncVectorEnv` and
:class:`~gymnasium.vector.AsyncVectorEnv`, ``get_attr`` / ``set_attr`` / ``env_method`` reach
the sub-environments one by one, as SB3's ``DummyVecEnv`` does. Any other vector env (such as
:class:`skipenv.envs.vector_env.SkipNetVectorEnv`, which holds the whole batch in one object) has
its attributes shared by the batch: ``get_attr`` returns ``[value] * n`` and ``env_method``
calls the method once and returns ``[result] * n``. Every method that takes ``indices`` acts on
exactly those envs or refuses with a ValueError: a method call or ``set_attr`` on part of a
batched env (one object runs all its envs), a method call on part of an AsyncVectorEnv.
``action_masks`` is the exception, so that sb3_contrib's ``MaskablePPO`` works: it returns
one mask per env of ``indices``, from the env's own ``action_masks()`` (B x n for a batched
env, per sub-env otherwise) when there is one, else all-True masks.

Episode statistics: wrap the adapter in SB3's ``VecMonitor`` to log episode returns.

    >>> from stable_baselines3 import PPO
    >>> from skipenv.envs.sb3 import make_sb3_vec_env
    >>> venv = make_sb3_vec_env(64, pretrained=False)  # doctest: +SKIP
    >>> PPO("MlpPolicy", venv, n_steps=64).learn(10_000)  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv, VectorWrapper
from stable_baselines3.common import env_util
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from skipenv import ENV_ID
from skipenv.envs.episode import row

__all__ = ["SB3VecEnv", "make_sb3_vec_env"]

MASKS = "action_masks"  # the method sb3_contrib's MaskablePPO calls through env_method


# ---------------------------------------------------------------------------- batch helpers


def _column(value: Any, num_envs: int) -> list[Any]:
    """One entry per env from a batched info value (an array of length ``num_envs``)."""
    if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == num_envs:
        if value.ndim == 1:
            return value.tolist()  # numbers as Python scalars, objects as they are
        return list(value.copy())  # rows of a fresh array: no memory shared with the env
    if isinstance(value, (list, tuple)) and len(value) == num_envs:
        return list(value)
    return [value] * num_envs  # not batched: the same for every env


def unbatch_info(info: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Gymnasium's vector info (dict of arrays with ``_key`` masks) -> one dict per env.

    A key whose mask ``_key`` is False for env ``i`` is left out of env ``i``'s dict; nested
    dicts (such as ``final_info``) are converted the same way. Keys present for every env
    are zipped into the dicts in one pass (this runs at every step of every env).
    """
    keys: list[str] = []
    columns: list[list[Any]] = []  # one list of num_envs values per key in keys
    partial: list[tuple[str, list[Any], list[int]]] = []  # key, values, envs that have it
    for key, value in info.items():
        if key.startswith("_") and key[1:] in info:
            continue  # a mask
        if isinstance(value, dict):
            column: list[Any] = unbatch_info(value, num_envs)
        else:
            column = _column(value, num_envs)
        mask = info.get(f"_{key}")
        if mask is None or bool(np.all(mask)):
            keys.append(key)
            columns.append(column)
        else:
            partial.append((key, column, np.flatnonzero(mask).tolist()))
    if keys:
        out = [dict(zip(keys, values, strict=True)) for values in zip(*columns, strict=True)]
    else:
        out = [{} for _ in range(num_envs)]
    for key, column, envs in partial:
        for i in envs:
            out[i][key] = column[i]
    return out


def _autoreset_mode(env: VectorEnv) -> AutoresetMode | None:
    mode = env.metadata.get("autoreset_mode")
    if mode is None or isinstance(mode, AutoresetMode):
        return mode
    try:
        return AutoresetMode(mode)
    except ValueError:
        return None


# ---------------------------------------------------------------------------- adapter


class SB3VecEnv(VecEnv):
    """A Gymnasium vector env with same-step autoreset, as a Stable-Baselines3 ``VecEnv``.

    Args:
        env: the vector env; ``env.metadata["autoreset_mode"]`` must be
            ``gymnasium.vector.AutoresetMode.SAME_STEP`` (e.g. ``SyncVectorEnv(fns,
            autoreset_mode=AutoresetMode.SAME_STEP)``, or ``SkipNetVectorEnv(n,
            autoreset_mode=AutoresetMode.SAME_STEP)``; :func:`make_sb3_vec_env` does this).

    Raises:
        TypeError: ``env`` is not a Gymnasium vector env.
        ValueError: another (or no) autoreset mode.
    """

    def __init__(self, env: VectorEnv) -> None:
        if not isinstance(env, VectorEnv):
            raise TypeError(
                f"expected a gymnasium.vector.VectorEnv, got {type(env).__name__}; for single "
                "envs use stable_baselines3.common.vec_env.DummyVecEnv"
            )
        mode = _autoreset_mode(env)
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"SB3VecEnv needs a vector env with same-step autoreset, but "
                f"metadata['autoreset_mode'] is {env.metadata.get('autoreset_mode')!r}; create "
                "it with autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP (SB3 expects "
                "the observation returned with done=True to be the next episode's first one)"
            )
        self.venv = env
        base = env.unwrapped
        self._sync: SyncVectorEnv | None = base if isinstance(base, SyncVectorEnv) else None
        self._async: AsyncVectorEnv | None = base if isinstance(base, AsyncVectorEnv) else None
        self._actions: np.ndarray | None = None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self.metadata = {**env.metadata, **self.metadata}

    # -- stepping

    def reset(self) -> VecEnvObs:
        """Reset every env, with the seeds of :meth:`seed` and the options of ``set_options``
        when set (both used once)."""
        obs, info = self.venv.reset(seed=self._next_seed(), options=self._next_options())
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = unbatch_info(info, self.num_envs)
        self._actions = None
        return self._obs(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(actions); call step()")
        actions, self._actions = self._actions, None
        obs, rewards, terminated, truncated, info = self.venv.step(actions)
        terminated = np.asarray(terminated, dtype=bool)  # B
        truncated = np.asarray(truncated, dtype=bool)  # B
        dones = terminated | truncated  # B
        final_obs = info.get("final_obs")
        final_mask = info.get("_final_obs")
        final_infos = unbatch_info(info.get("final_info", {}), self.num_envs)
        top = {k: v for k, v in info.items() if k not in _FINAL_KEYS}
        infos = unbatch_info(top, self.num_envs)
        for i in np.flatnonzero(dones).tolist():
            if final_obs is None or (final_mask is not None and not final_mask[i]):
                raise RuntimeError(
                    f"env {i} is done but the vector env gave no info['final_obs'] for it; "
                    "same-step autoreset must return the terminal observation there"
                )
            self.reset_infos[i] = infos[i]
            infos[i] = {**infos[i], **final_infos[i]}  # the last step's info wins
            infos[i]["terminal_observation"] = row(final_obs, i, copy=True)
        for env_info, cut in zip(infos, (truncated & ~terminated).tolist(), strict=True):
            env_info["TimeLimit.truncated"] = cut
        rewards = np.asarray(rewards, dtype=np.float32)  # B
        return self._obs(obs), rewards, dones, infos

    def _obs(self, obs: Any) -> VecEnvObs:
        if isinstance(obs, dict):
            return {key: np.asarray(value) for key, value in obs.items()}
        if isinstance(obs, tuple):
            return tuple(np.asarray(value) for value in obs)
        return np.asarray(obs)

    def _next_seed(self) -> int | list[int | None] | None:
        seeds = self._seeds
        if all(s is None for s in seeds):
            return None
        if all(s is not None and s == seeds[0] + i for i, s in enumerate(seeds)):
            return seeds[0]  # seed + i for env i: what Gymnasium's vector envs do with an int
        return list(seeds)

    def _next_options(self) -> dict[str, Any] | None:
        first = self._options[0]
        if any(o != first for o in self._options):
            raise ValueError(
                "a Gymnasium vector env takes one options dict for all envs, but set_options "
                f"was given different ones per env: {self._options!r}; pass a single dict"
            )
        return first or None

    def close(self) -> None:
        self.venv.close()

    # -- attributes and methods

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        """``indices`` as a list of env numbers (None: all), each checked."""
        idx = [int(i) for i in self._get_indices(indices)]
        bad = [i for i in idx if not 0 <= i < self.num_envs]
        if bad:
            raise ValueError(
                f"indices {bad} out of range: this VecEnv has envs 0..{self.num_envs - 1}"
            )
        return idx

    def _all(self, idx: list[int]) -> bool:
        return sorted(idx) == list(range(self.num_envs))

    def _shared_owner(self, name: str) -> Any:
        """The outermost object of the wrapper chain that has attribute ``name``."""
        env: Any = self.venv
        while True:
            if hasattr(env, name):
                return env
            if not isinstance(env, VectorWrapper):
                raise AttributeError(
                    f"{type(self.venv.unwrapped).__name__} has no attribute {name!r}"
                )
            env = env.env

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Attribute ``attr_name`` of each env in ``indices`` (shared: the same value)."""
        idx = self._indices(indices)
        try:
            if self._sync is not None:
                return [self._sync.envs[i].get_wrapper_attr(attr_name) for i in idx]
            if self._async is not None:
                values = self._async.get_attr(self._async_attr(attr_name))
                return [values[i] for i in idx]
            return [getattr(self._shared_owner(attr_name), attr_name)] * len(idx)
        except AttributeError:
            if attr_name != MASKS:
                raise
            return [lambda i=i: self._masks([i])[0] for i in idx]

    def _async_attr(self, name: str) -> str:
        """``name`` if every sub-env has it, else AttributeError (asked first: an error in an
        AsyncVectorEnv worker shuts the worker down)."""
        assert self._async is not None
        if not all(self._async.call("has_wrapper_attr", name)):
            raise AttributeError(f"the sub-environments have no attribute {name!r}")
        return name

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set ``attr_name`` in each env of ``indices``; a shared attribute only for all."""
        idx = self._indices(indices)
        if self._sync is not None:
            for i in idx:
                self._sync.envs[i].set_wrapper_attr(attr_name, value)
        elif self._async is not None:
            has = self._async.call("has_wrapper_attr", attr_name)
            if not all(has) and len(idx) < self.num_envs:
                raise ValueError(
                    f"AsyncVectorEnv sets attributes in all its envs at once, and {attr_name!r} "
                    f"is new, so it cannot be set in envs {idx} alone (use indices=None)"
                )
            values = list(self._async.get_attr(attr_name)) if all(has) else [value] * len(has)
            for i in idx:
                values[i] = value
            self._async.set_attr(attr_name, values)
        else:
            if not self._all(idx):
                raise ValueError(
                    f"{type(self.venv.unwrapped).__name__} shares attribute {attr_name!r} "
                    f"across its {self.num_envs} envs, so it cannot be set for envs {idx} "
                    "alone; call set_attr with indices=None"
                )
            setattr(self._shared_owner(attr_name), attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs
    ) -> list[Any]:
        """Call ``method_name`` on each env of ``indices``.

        On a batched env the method is called once and its result repeated, except
        ``action_masks``, which gives one mask per env.
        """
        idx = self._indices(indices)
        if method_name == MASKS:
            return list(self._masks(idx))
        if self._sync is not None:
            return [
                self._sync.envs[i].get_wrapper_attr(method_name)(*method_args, **method_kwargs)
                for i in idx
            ]
        if self._async is not None:
            if not self._all(idx):
                raise ValueError(
                    f"AsyncVectorEnv calls methods in all its envs at once; cannot call "
                    f"{method_name!r} in envs {idx} alone (use indices=None)"
                )
            results = self._async.call(method_name, *method_args, **method_kwargs)
            return [results[i] for i in idx]
        if not self._all(idx):
            # one object runs the whole batch: its methods act on every env at once
            raise ValueError(
                f"{type(self.venv.unwrapped).__name__} runs its {self.num_envs} envs as one "
                f"batch, so {method_name!r} cannot be called for envs {idx} alone; call "
                "env_method with indices=None (all envs)"
            )
        result = getattr(self._shared_owner(method_name), method_name)(
            *method_args, **method_kwargs
        )
        return [result] * len(idx)

    def action_masks(self) -> np.ndarray:
        """Valid actions of every env: B x n bool (all True when the env has no masks)."""
        return self._masks(list(range(self.num_envs)))

    def _masks(self, idx: list[int]) -> np.ndarray:
        """len(idx) x n bool masks for sb3_contrib's MaskablePPO."""
        try:
            if self._sync is not None:
                methods = [self._sync.envs[i].get_wrapper_attr(MASKS) for i in idx]
            elif self._async is not None:
                self._async_attr(MASKS)
            else:
                method = getattr(self._shared_owner(MASKS), MASKS)
        except AttributeError:
            return np.ones((len(idx), _mask_size(self.action_space)), dtype=bool)
        if self._sync is not None:
            return np.stack([np.asarray(m(), dtype=bool) for m in methods])
        if self._async is not None:
            rows = self._async.call(MASKS)
            return np.stack([np.asarray(rows[i], dtype=bool) for i in idx])
        masks = np.asarray(method(), dtype=bool)  # B x n
        if masks.ndim != 2 or masks.shape[0] != self.num_envs:
            raise ValueError(
                f"{type(self.venv.unwrapped).__name__}.action_masks() must return one mask per "
                f"env ({self.num_envs} x n), got shape {masks.shape}"
            )
        return masks[idx]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """Whether each env of ``indices`` is wrapped in ``wrapper_class`` (a batched env never
        is: single-env wrappers cannot wrap it).

        Raises:
            ValueError: an AsyncVectorEnv, whose sub-environments live in other processes,
                where their wrappers cannot be inspected (a guess could be wrong).
        """
        idx = self._indices(indices)
        if self._sync is not None:
            return [env_util.is_wrapped(self._sync.envs[i], wrapper_class) for i in idx]
        if self._async is not None:
            raise ValueError(
                "the sub-environments of an AsyncVectorEnv run in other processes, where "
                f"whether they are wrapped in {wrapper_class.__name__} cannot be checked; use "
                "a SyncVectorEnv, or wrap the adapter in VecMonitor (which SB3's "
                "evaluate_policy looks for first) instead of Monitor"
            )
        return [False] * len(idx)

    # -- rendering

    def get_images(self) -> Sequence[np.ndarray | None]:
        """One rgb_array frame per env."""
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"the render mode is {self.render_mode!r}, but get_images needs 'rgb_array'; "
                "create the env with render_mode='rgb_array'",
                stacklevel=2,
            )
            return [None] * self.num_envs
        frames = self.venv.render()
        if frames is None:
            return [None] * self.num_envs
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            return [frames]  # already one image for the batch
        return list(frames)

    def render(self, mode: str | None = None) -> np.ndarray | None:
        """The envs' rgb_array frames tiled into one image (see SB3's ``VecEnv.render``)."""
        return super().render(mode=mode)


_FINAL_KEYS = frozenset({"final_obs", "_final_obs", "final_info", "_final_info"})


def _mask_size(space: spaces.Space) -> int:
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(space.nvec.sum())
    if isinstance(space, spaces.MultiBinary):
        return 2 * int(np.prod(space.shape))
    raise ValueError(f"action masks need a discrete action space, got {space}")


def make_sb3_vec_env(num_envs: int, **env_kwargs: Any) -> SB3VecEnv:
    """``SkipNet-CIFAR10-v0`` as a batched vector env of ``num_envs`` episodes, for SB3.

    Args:
        num_envs: B, episodes run in lockstep.
        env_kwargs: the options of :class:`skipenv.envs.env.SkipNetEnv` (``checkpoint=...``
            or ``pretrained=False``, ``split``, ``device``, ``reward``, ``obs_mode``, ...).
    """
    env = gym.make_vec(
        ENV_ID,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        autoreset_mode=AutoresetMode.SAME_STEP,  # SB3's semantics
        **env_kwargs,
    )
    return SB3VecEnv(env)
