"""Issue 11, case 1: the autoreset modes of the native vector env, every wrapper of
``gymnasium.wrappers.vector`` and every keyword of ``gymnasium.make`` / ``make_vec``.

Each wrapper and keyword either works on the single env and on the vector env, or fails at
construction with an error that names what to do instead. Tiny backbones (ResNet-8: N = 3
blocks, K = 2 decisions), random weights, synthetic images.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import gymnasium.wrappers as single_wrappers
import gymnasium.wrappers.vector as vector_wrappers
import numpy as np
import pytest
import torch
from conftest import ENV_ID, synthetic_split
from gymnasium.error import DependencyNotInstalled, ResetNeeded
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from skipenv.envs.env import SkipNetEnv
from skipenv.envs.sb3 import SB3VecEnv, make_sb3_vec_env
from skipenv.envs.vector_env import SkipNetVectorEnv, last_step_info

K = 2  # decisions of ResNet-8
B = 2  # envs
TINY: dict[str, Any] = {"depth": 8, "pretrained": False, "device": "cpu"}


def tiny(**kwargs: Any) -> dict[str, Any]:
    return {**TINY, "data": synthetic_split(), **kwargs}


def make_single(**kwargs: Any) -> gym.Env:
    return gym.make(ENV_ID, **tiny(**kwargs))


def make_vector(**kwargs: Any) -> gym.vector.VectorEnv:
    return gym.make_vec(ENV_ID, num_envs=B, **tiny(**kwargs))


# ---------------------------------------------------------------------------- autoreset modes


def run_vector(env: gym.vector.VectorEnv, steps: int) -> list[tuple]:
    """``steps`` steps of all-execute actions from a seeded reset; DISABLED envs are reset
    when their episodes end."""
    env.reset(seed=0)
    out = []
    for _ in range(steps):
        result = env.step(np.ones(env.num_envs, dtype=np.int64))
        out.append(result)
        if (
            env.metadata["autoreset_mode"] == AutoresetMode.DISABLED
            and (result[2] | result[3]).all()
        ):
            env.reset()
    return out


def test_default_is_next_step_as_in_gymnasium():
    env = make_vector()
    assert isinstance(env, SkipNetVectorEnv)
    assert env.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    assert SkipNetVectorEnv.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    same = make_vector(autoreset_mode=AutoresetMode.SAME_STEP)
    assert same.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    assert env.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP  # instance copies
    assert make_vector(autoreset_mode="Disabled").autoreset_mode is AutoresetMode.DISABLED
    with pytest.raises(ValueError, match=r"AutoresetMode.SAME_STEP \('SameStep'\).*'sometimes'"):
        make_vector(autoreset_mode="sometimes")


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_each_mode_matches_gymnasiums_sync_vector_env(mode):
    """The native env and Gymnasium's SyncVectorEnv of single envs, in the same autoreset
    mode, on the same images and actions: the same rewards, terminations, observations and
    last-step infos over two episodes (the step after the end included)."""
    data = synthetic_split()
    native = SkipNetVectorEnv(B, **tiny(data=data), autoreset_mode=mode)
    sync = SyncVectorEnv(
        [lambda: SkipNetEnv(**tiny(data=data)) for _ in range(B)], autoreset_mode=mode
    )
    indices = [3, 7]
    native.reset(seed=0, options={"indices": indices})
    sync.reset(seed=0)
    for env, index in zip(sync.envs, indices, strict=True):
        env.reset(options={"index": index})
    for t in range(K + 1):  # one episode and the step after it
        action = np.array([1, t % 2])
        if t == K and mode == AutoresetMode.DISABLED:
            for env in (native, sync):  # no autoreset: both refuse to step on
                with pytest.raises((ResetNeeded, AssertionError)):
                    env.step(action)
            break
        got, want = native.step(action), sync.step(action)
        for name, a, b in zip(
            ("reward", "terminated", "truncated"), got[1:4], want[1:4], strict=True
        ):
            np.testing.assert_allclose(a, b, err_msg=f"{name} at step {t}")
        if t == K - 1:  # the last step: the terminal observations and infos agree
            assert got[2].all()
            a, b = last_step_info(got[4]), last_step_info(want[4])
            for key in ("prediction", "correct", "index", "macs", "flops_fraction"):
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            if mode == AutoresetMode.SAME_STEP:
                for i in range(B):
                    np.testing.assert_allclose(
                        got[4]["final_obs"][i], want[4]["final_obs"][i], rtol=1e-5, atol=1e-6
                    )
            else:
                np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
        elif t < K - 1:
            np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
        else:  # the step after the end (new images: drawn by each env its own way)
            assert not got[2].any()
            np.testing.assert_array_equal(got[4]["next_block"], want[4]["next_block"])
            if mode == AutoresetMode.NEXT_STEP:  # the reset step: reward 0, actions ignored
                assert (got[1] == 0).all() and (got[4]["next_block"] == 1).all()


def test_next_step_autoreset():
    env = make_vector()
    env.reset(seed=0)
    for _ in range(K - 1):
        env.step(np.ones(B, dtype=np.int64))
    obs, reward, terminated, truncated, info = env.step(np.zeros(B, dtype=np.int64))
    assert terminated.all() and not truncated.any() and "final_obs" not in info
    assert (obs[:, 16 if obs.shape[1] == 18 else -2] == 1.0).all()  # the terminal observation
    assert info["_prediction"].all() and info["correct"].dtype == bool
    assert last_step_info(info) is info
    obs, reward, terminated, truncated, info = env.step(np.full(B, 7))  # actions ignored
    assert not terminated.any() and (reward == 0).all() and "prediction" not in info
    np.testing.assert_array_equal(info["next_block"], [1] * B)
    env.step(np.ones(B, dtype=np.int64))  # the new episodes run


def test_disabled_autoreset_needs_reset():
    env = make_vector(autoreset_mode=AutoresetMode.DISABLED)
    env.reset(seed=0)
    for _ in range(K):
        *_, info = env.step(np.ones(B, dtype=np.int64))
    assert "prediction" in info and "final_info" not in info
    with pytest.raises(ResetNeeded, match="reset"):
        env.step(np.ones(B, dtype=np.int64))
    with pytest.raises(ValueError, match=r"lockstep.*all True"):
        env.reset(options={"reset_mask": np.array([True, False])})
    env.reset(options={"reset_mask": np.ones(B, dtype=bool)})
    env.step(np.ones(B, dtype=np.int64))


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_max_episode_steps_truncates(mode):
    """``max_episode_steps`` below K truncates every episode: no prediction; in every mode,
    as ``TimeLimit`` does on the single env."""
    env = make_vector(max_episode_steps=1, autoreset_mode=mode)
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(np.ones(B, dtype=np.int64))
    assert truncated.all() and not terminated.any()
    assert "prediction" not in last_step_info(info)
    single = make_single(max_episode_steps=1)
    single.reset(seed=0)
    *_, term, trunc, info = single.step(1)
    assert trunc and not term and "prediction" not in info
    longer = make_vector(max_episode_steps=K + 3, autoreset_mode=mode)  # changes nothing
    assert run_vector(longer, K)[-1][2].all()


def test_sb3_adapter_asks_for_same_step():
    venv = make_sb3_vec_env(B, **tiny())
    assert venv.venv.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    venv.reset()
    for _ in range(K):
        obs, _, dones, infos = venv.step(np.ones(B, dtype=np.int64))
    assert dones.all() and all("terminal_observation" in i and "correct" in i for i in infos)
    assert (obs[:, -2] < 1).all()  # the next episodes' first observations, as SB3 expects
    for mode in (AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED):
        with pytest.raises(ValueError, match=r"autoreset_mode=gymnasium\.vector\.AutoresetMode"):
            SB3VecEnv(make_vector(autoreset_mode=mode))


# ---------------------------------------------------------------------------- vector wrappers

Case = dict[str, Any]  # obs_mode / render_mode of the env; "args": the wrapper's arguments


#: Every public wrapper of gymnasium.wrappers.vector, with a reasonable set of arguments.
#: "single": the counterpart in gymnasium.wrappers (same name), or None; "requires": for a
#: wrapper that does not apply to these spaces, the message of its construction error.
WRAPPERS: dict[str, Case] = {
    "VectorizeTransformObservation": {
        "args": lambda: {"wrapper": single_wrappers.DtypeObservation, "dtype": np.float64},
        "single": None,
    },
    "VectorizeTransformAction": {
        "args": lambda: {
            "wrapper": single_wrappers.TransformAction,
            "func": lambda a: a,
            "action_space": gym.spaces.Discrete(2),
        },
        "single": None,
    },
    "VectorizeTransformReward": {
        "args": lambda: {"wrapper": single_wrappers.TransformReward, "func": lambda r: 2 * r},
        "single": None,
    },
    "DictInfoToList": {"args": dict, "single": None},
    "TransformObservation": {
        "args": lambda: {"func": lambda o: 2 * o},
        "single_args": lambda env: {"func": lambda o: 2 * o, "observation_space": None},
    },
    "FilterObservation": {"obs_mode": "dict", "args": lambda: {"filter_keys": ["pooled"]}},
    "FlattenObservation": {"obs_mode": "dict", "args": dict},
    "GrayscaleObservation": {"args": dict, "requires": "requires an image with 3 channels"},
    "ResizeObservation": {
        "obs_mode": "activation",
        "args": lambda: {"shape": (4, 4)},
        "requires": "requires observation bounds 0 to 255",
    },
    "ReshapeObservation": {"args": lambda: {"shape": (2, 33)}},
    "RescaleObservation": {
        "args": lambda: {"min_obs": np.float32(-1), "max_obs": np.float32(1)},
    },
    "DtypeObservation": {"args": lambda: {"dtype": np.float64}},
    "NormalizeObservation": {"args": dict},
    "TransformAction": {
        "args": lambda: {"func": lambda a: a},
        "single_args": lambda env: {"func": lambda a: a, "action_space": env.action_space},
    },
    "ClipAction": {"args": dict, "requires": "requires a Box action space"},
    "RescaleAction": {
        "args": lambda: {"min_action": 0.0, "max_action": 1.0},
        "requires": "requires a Box action space",
    },
    "TransformReward": {"args": lambda: {"func": lambda r: 2 * r}},
    "ClipReward": {"args": lambda: {"min_reward": -0.5, "max_reward": 0.5}},
    "NormalizeReward": {"args": dict},
    "RecordEpisodeStatistics": {"args": dict},
    "RecordVideo": {
        "render_mode": "rgb_array",
        "args": "video",  # a folder under tmp_path
        "needs": "moviepy",
    },
    "HumanRendering": {"render_mode": "rgb_array", "args": dict, "needs": "pygame"},
    "ArrayConversion": {
        "args": lambda: {"env_xp": np, "target_xp": torch},
        "needs": "array_api_compat",
    },
    "JaxToNumpy": {"args": dict, "needs": "jax"},
    "JaxToTorch": {"args": dict, "needs": "jax"},
    "NumpyToTorch": {"args": dict, "needs": "array_api_compat"},
}


def test_every_vector_wrapper_is_listed():
    """A wrapper added to Gymnasium must be added to the table (and so tested)."""
    assert sorted(vector_wrappers.__all__) == sorted(WRAPPERS)


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _drive(env: Any, vector: bool, episodes: int = 2) -> None:
    """``episodes`` episodes from a seeded reset, through the env's own autoreset."""
    env.reset(seed=0)
    disabled = vector and env.metadata["autoreset_mode"] == AutoresetMode.DISABLED
    for _ in range(episodes * (K + 1)):
        action = env.action_space.sample() if vector else 1
        *_, terminated, truncated, _ = env.step(action)
        done = np.logical_or(np.asarray(terminated), np.asarray(truncated))  # torch too
        if (not vector or disabled) and done.all():
            env.reset()


@pytest.mark.parametrize("name", sorted(WRAPPERS))
@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_vector_wrapper(name, mode, tmp_path):
    """Every wrapper of gymnasium.wrappers.vector on the native vector env, in every autoreset
    mode, and its counterpart of gymnasium.wrappers on the single env: it works, or it fails
    at construction with an error that says what it needs (the same on both envs)."""
    case = WRAPPERS[name]
    needs = case.get("needs")
    env_kwargs = {k: case[k] for k in ("obs_mode", "render_mode") if k in case}
    if needs is not None and not _available(needs):
        # an optional dependency of Gymnasium, named by the error: at construction, or (as
        # HumanRendering does) when it first draws, at reset
        with pytest.raises((DependencyNotInstalled, ImportError), match=needs):
            wrapped = getattr(vector_wrappers, name)(
                make_vector(autoreset_mode=mode, **env_kwargs), **_args(case, tmp_path)
            )
            wrapped.reset(seed=0)
        return
    cls = getattr(vector_wrappers, name)
    single_cls = case.get("single", getattr(single_wrappers, name, None))
    requires = case.get("requires")
    if requires is not None:
        # (under SAME_STEP an observation wrapper first names the autoreset modes it takes)
        with pytest.raises((TypeError, ValueError), match=f"{requires}|NEXT_STEP"):
            cls(make_vector(autoreset_mode=mode, **env_kwargs), **_args(case, tmp_path))
        if single_cls is not None:
            with pytest.raises((TypeError, ValueError), match=requires):
                single_cls(make_single(**env_kwargs), **_args(case, tmp_path))
        return

    # the single env
    if single_cls is not None:
        single = make_single(**env_kwargs)
        single_args = case.get("single_args")
        args = single_args(single) if single_args else _args(case, tmp_path)
        _drive(single_cls(single, **args), vector=False)

    # the vector env
    base = make_vector(autoreset_mode=mode, **env_kwargs)
    try:
        wrapped = cls(base, **_args(case, tmp_path))
    except ValueError as err:
        # Gymnasium's observation wrappers need NEXT_STEP (or DISABLED) autoreset: refused at
        # construction, naming the modes they take
        assert mode != AutoresetMode.NEXT_STEP, err
        assert "NEXT_STEP" in str(err), err
        return
    if mode == AutoresetMode.SAME_STEP and name in {"ArrayConversion", "NumpyToTorch"}:
        # Gymnasium's own limit, not this env's: SAME_STEP puts final_obs in an object array
        # (Gymnasium's layout), which array conversion cannot move; SyncVectorEnv fails alike
        sync = SyncVectorEnv([lambda: SkipNetEnv(**tiny(**env_kwargs))] * B, autoreset_mode=mode)
        for env in (wrapped, cls(sync, **_args(case, tmp_path))):
            with pytest.raises(BufferError):
                _drive(env, vector=True)
        return
    _drive(wrapped, vector=True)
    wrapped.close()


def _args(case: Case, tmp_path: Any) -> dict[str, Any]:
    args = case["args"]
    if args == "video":
        return {"video_folder": str(tmp_path / "video")}
    return args()


# ---------------------------------------------------------------------------- make keywords


def _keywords(function: Callable[..., Any]) -> set[str]:
    return {
        name
        for name, p in inspect.signature(function).parameters.items()
        if p.kind is not inspect.Parameter.VAR_KEYWORD and name != "id"
    }


#: Keywords a Gymnasium user may pass to make / make_vec: their named parameters, the
#: render modes they treat specially, and those of older Gymnasium releases.
MAKE_KEYWORDS = {"max_episode_steps", "disable_env_checker"}
MAKE_VEC_KEYWORDS = {"num_envs", "vectorization_mode", "vector_kwargs", "wrappers"}
LEGACY = {"autoreset": True, "apply_api_compatibility": True}


def test_the_keyword_lists_are_gymnasiums():
    assert _keywords(gym.make) == MAKE_KEYWORDS
    assert _keywords(gym.make_vec) == MAKE_VEC_KEYWORDS


MODES = ["sync", "async", "vector_entry_point"]


@pytest.mark.parametrize("how", ["single", *MODES])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_episode_steps": 1},
        {"max_episode_steps": 50},
        {"disable_env_checker": True},
        {"disable_env_checker": False},
        {"render_mode": "rgb_array"},
        {"render_mode": "ansi"},
    ],
    ids=repr,
)
def test_make_keyword_works(how, kwargs):
    if how == "single":
        env = make_single(**kwargs)
        env.reset(seed=0)
        _, _, terminated, truncated, _ = env.step(1)
        if kwargs.get("max_episode_steps") == 1:
            assert truncated and not terminated
        if "render_mode" in kwargs:
            assert env.render() is not None
        env.close()
        return
    env = make_vector(vectorization_mode=how, **kwargs)
    env.reset(seed=0)
    _, _, terminated, truncated, _ = env.step(np.ones(B, dtype=np.int64))
    if kwargs.get("max_episode_steps") == 1:
        assert truncated.all() and not terminated.any()
    if "render_mode" in kwargs:
        frames = env.render()
        assert len(frames) == B
    env.close()


@pytest.mark.parametrize("how", ["single", *MODES])
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"render_mode": "rgb_array_list"}, None),
        ({"render_mode": "human"}, "pygame"),
        ({"autoreset": True}, "gymnasium.wrappers.Autoreset"),
        ({"apply_api_compatibility": True}, "leave it out"),
        ({"autoreset_mode": AutoresetMode.SAME_STEP}, "vector_kwargs"),
        ({"vector_kwargs": {"autoreset_mode": AutoresetMode.SAME_STEP}}, "only through kwargs"),
        ({"wrappers": [single_wrappers.RecordEpisodeStatistics]}, "wrappers argument"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "",
)
def test_make_keyword_works_or_names_the_alternative(how, kwargs, match):
    """Each keyword works, or construction fails with an error that says what to do."""
    if how == "single":
        if "vector_kwargs" in kwargs or "wrappers" in kwargs:
            return  # make_vec-only keywords: covered by the vector rows
        works = kwargs.get("render_mode") == "rgb_array_list" or "autoreset_mode" in kwargs
        make: Callable[[], Any] = lambda: make_single(**kwargs)  # noqa: E731
        if "autoreset_mode" in kwargs:  # no autoreset in a single env: refused, with the way
            with pytest.raises(TypeError, match="vector_kwargs"):
                make()
            return
    else:
        works = (
            ("vector_kwargs" in kwargs or "wrappers" in kwargs) and how != "vector_entry_point"
        ) or ("autoreset_mode" in kwargs and how == "vector_entry_point")
        make = lambda: make_vector(vectorization_mode=how, **kwargs)  # noqa: E731
        if kwargs.get("render_mode") == "rgb_array_list":  # RenderCollection on each env
            works, match = how != "vector_entry_point", "render_mode='rgb_array'"
    if kwargs.get("render_mode") == "human" and how != "vector_entry_point":
        # make() wraps the single env in HumanRendering, which needs pygame when it first
        # draws (at reset)
        env = make()
        if _available("pygame"):
            env.reset(seed=0)
        else:
            with pytest.raises(DependencyNotInstalled, match="pygame"):
                env.reset(seed=0)
        env.close()
        return
    if works:
        env = make()
        env.reset(seed=0)
        if how == "single":
            env.step(1)
            if kwargs.get("render_mode") == "rgb_array_list":
                assert len(env.render()) == 2  # the frames since the reset
        else:
            env.step(np.ones(B, dtype=np.int64))
            if "autoreset_mode" in kwargs or "vector_kwargs" in kwargs:
                assert env.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
        env.close()
        return
    with pytest.raises(Exception, match=match) as info:
        make()
    assert isinstance(info.value, (TypeError, ValueError, gym.error.Error, ImportError))


# ---------------------------------------------------------------------------- case 4: SB3 indices


def _sb3(backend: str) -> SB3VecEnv:
    """An SB3 adapter over B = 3 SkipNet envs of ``backend`` (sync, async or native)."""
    if backend == "native":
        return make_sb3_vec_env(3, **tiny())
    cls = SyncVectorEnv if backend == "sync" else gym.vector.AsyncVectorEnv
    return SB3VecEnv(cls([lambda: gym.make(ENV_ID, **tiny())] * 3, autoreset_mode="SameStep"))


def _next_blocks(venv: SB3VecEnv) -> list[int]:
    return [int(info["next_block"]) for info in venv.step(np.ones(3, dtype=np.int64))[3]]


@pytest.mark.parametrize("backend", ["sync", "async", "native"])
@pytest.mark.parametrize(
    "method", ["get_attr", "set_attr", "env_method", "action_masks", "env_is_wrapped"]
)
def test_sb3_adapter_indices_act_on_exactly_those_envs(backend, method):
    """Every adapter method that takes ``indices`` acts on exactly those envs (here env 1 of
    0..2), or refuses with a ValueError that says to pass indices=None."""
    venv = _sb3(backend)
    venv.reset()
    try:
        if method == "get_attr":
            got = venv.get_attr("num_decisions", indices=[1])
            assert got == [K]
        elif method == "set_attr":
            try:
                venv.set_attr("alpha_note", 7, indices=[1])
            except ValueError as err:
                assert backend != "sync" and "indices=None" in str(err)
            else:
                assert venv.get_attr("alpha_note", indices=[1]) == [7]
                if backend == "sync":
                    with pytest.raises(AttributeError):
                        venv.get_attr("alpha_note", indices=[0])
        elif method == "env_method":
            _next_blocks(venv)  # every env at block 2 (K = 2: the episodes end)
            venv.reset()
            venv.step(np.zeros(3, dtype=np.int64))  # all at block 2
            try:
                venv.env_method("reset", indices=[1])
            except ValueError as err:  # the case: reset all, or refuse
                assert backend != "sync" and "indices=None" in str(err)
                assert venv.get_attr("num_envs" if backend == "native" else "num_blocks")
            else:
                blocks = [env.unwrapped.episodes.next_block for env in venv.venv.unwrapped.envs]
                assert blocks == [2, 1, 2]  # env 1 alone was reset
        elif method == "action_masks":
            masks = venv.env_method("action_masks", indices=[1, 2])
            assert np.asarray(masks).shape == (2, 2)
        elif backend == "async":  # in other processes: not guessed
            with pytest.raises(ValueError, match="VecMonitor"):
                venv.env_is_wrapped(gym.Wrapper, indices=[2])
        else:  # gym.make wraps each single env; the batched env has no single-env wrappers
            assert venv.env_is_wrapped(gym.Wrapper, indices=[2]) == [backend == "sync"]
            assert venv.env_is_wrapped(gym.wrappers.TimeLimit, indices=[2]) == [False]
        with pytest.raises(ValueError, match=r"out of range.*0\.\.2"):
            getattr(venv, method if method != "action_masks" else "env_method")(
                *{
                    "get_attr": ("num_decisions",),
                    "set_attr": ("x", 1),
                    "env_method": ("reset",),
                    "action_masks": ("action_masks",),
                    "env_is_wrapped": (gym.Wrapper,),
                }[method],
                indices=[3],
            )
    finally:
        venv.close()
