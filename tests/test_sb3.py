"""The Stable-Baselines3 adapter (skipenv.envs.sb3): semantics on generic vector envs, then SB3 and
sb3_contrib algorithms training on the native SkipNet vector env."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

from skipenv.data.splits import CifarSplit
from skipenv.envs.sb3 import SB3VecEnv, make_sb3_vec_env, unbatch_info
from skipenv.models.resnet import build_resnet

N = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run fastest on one thread; two threads beside a busy CPU spin-wait
    (SB3's training loop was 30x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cartpole_sync(n: int = N, **kwargs: Any) -> SyncVectorEnv:
    return SyncVectorEnv(
        [lambda: gym.make("CartPole-v1", **kwargs) for _ in range(n)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )


# ---------------------------------------------------------------------------- small test envs


class Counter(gym.Env):
    """Observation = steps taken; terminates after ``length`` steps; infos say which step."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, length: int) -> None:
        self.length = length
        self.observation_space = spaces.Dict(
            {"t": spaces.Box(0, 100, (1,), np.float32), "length": spaces.Discrete(100)}
        )
        self.action_space = spaces.Discrete(3)
        self.t = 0

    def _obs(self) -> dict[str, Any]:
        return {"t": np.array([self.t], dtype=np.float32), "length": self.length}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {"reset": True}

    def step(self, action: int):
        self.t += 1
        done = self.t >= self.length
        info: dict[str, Any] = {"t": self.t}
        if done:
            info["last"] = True
        return self._obs(), 1.0, done, False, info

    def action_masks(self) -> np.ndarray:
        return np.array([True, self.t % 2 == 0, False])


class BatchedCounter(VectorEnv):
    """A batched vector env (one object for the batch, like SkipNetVectorEnv): every episode
    lasts ``length`` steps, obs = step index; ``action_masks()`` returns N x 2."""

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int, length: int = 3) -> None:
        self.num_envs, self.length, self.t = num_envs, length, 0
        self.render_mode = None
        self.scale = 1.0
        self.single_observation_space = spaces.Box(0, 100, (2,), np.float32)
        self.single_action_space = spaces.Discrete(2)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, N)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, N)

    def _obs(self) -> np.ndarray:
        return np.full((self.num_envs, 2), self.t * self.scale, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.t = 0
        return self._obs(), {"seed": np.full(self.num_envs, -1 if seed is None else seed)}

    def step(self, actions: np.ndarray):
        self.t += 1
        reward = np.asarray(actions, dtype=np.float64)
        done = np.full(self.num_envs, self.t == self.length)
        info: dict[str, Any] = {"t": np.full(self.num_envs, self.t)}
        if done.all():
            info["final_obs"] = np.empty(self.num_envs, dtype=object)
            info["final_obs"][:] = list(self._obs())  # per-env rows, as Gymnasium does
            info["_final_obs"] = done.copy()
            info["final_info"] = {"t": info.pop("t"), "_t": done.copy()}
            info["_final_info"] = done.copy()
            self.t = 0
            info["t"] = np.zeros(self.num_envs, dtype=np.int64)
        return self._obs(), reward, done, np.zeros_like(done), info

    def action_masks(self) -> np.ndarray:
        masks = np.ones((self.num_envs, 2), dtype=bool)
        masks[::2, 1] = False
        return masks

    def add(self, x: float) -> float:
        return self.scale + x


# ---------------------------------------------------------------------------- generic semantics


def test_cartpole_matches_independent_envs() -> None:
    """Observations, rewards, dones and terminal observations equal those of N single envs
    seeded seed + i and reset by hand after each episode; terminal_observation is present
    exactly for done envs, and the obs returned with done is the next episode's first one."""
    venv = SB3VecEnv(cartpole_sync())
    refs = [gym.make("CartPole-v1") for _ in range(N)]
    assert venv.seed(11) == [11, 12, 13, 14]
    obs = venv.reset()
    ref_obs = [env.reset(seed=11 + i)[0] for i, env in enumerate(refs)]
    np.testing.assert_array_equal(obs, np.stack(ref_obs))
    rng = np.random.default_rng(0)
    dones_seen = 0
    for _ in range(60):
        actions = rng.integers(0, 2, N)
        obs, rewards, dones, infos = venv.step(actions)
        assert obs.shape == (N, 4) and rewards.dtype == np.float32 and dones.dtype == bool
        assert isinstance(infos, list) and len(infos) == N
        for i, env in enumerate(refs):
            o, r, term, trunc, _ = env.step(int(actions[i]))
            assert rewards[i] == r and dones[i] == (term or trunc)
            assert ("terminal_observation" in infos[i]) == dones[i]
            assert infos[i]["TimeLimit.truncated"] is False
            if dones[i]:
                np.testing.assert_array_equal(infos[i]["terminal_observation"], o)
                o, _ = env.reset()
            np.testing.assert_array_equal(obs[i], o)
        dones_seen += int(dones.sum())
    assert dones_seen >= N  # random CartPole episodes last ~20 steps


def test_truncation_flag() -> None:
    venv = SB3VecEnv(cartpole_sync(max_episode_steps=3))
    venv.seed(0)
    venv.reset()
    for step in range(3):
        _, _, dones, infos = venv.step(np.zeros(N, dtype=np.int64) + step % 2)
    assert dones.all()
    assert all(info["TimeLimit.truncated"] for info in infos)


def test_seed_reproduces_and_is_used_once() -> None:
    def rollout(venv: SB3VecEnv, seed: int | None) -> np.ndarray:
        if seed is not None:
            venv.seed(seed)
        first = venv.reset()
        steps = [venv.step(np.arange(N) % 2)[0] for _ in range(10)]
        return np.concatenate([first, *steps])

    a, b = SB3VecEnv(cartpole_sync()), SB3VecEnv(cartpole_sync())
    np.testing.assert_array_equal(rollout(a, 5), rollout(b, 5))
    assert not np.array_equal(rollout(a, 5), rollout(b, 6))
    # the seed applies to the next reset only
    assert not np.array_equal(rollout(a, 5), rollout(a, None))


def test_dict_obs_final_info_and_reset_infos() -> None:
    lengths = (1, 2, 3, 2)
    venv = SB3VecEnv(
        SyncVectorEnv(
            [lambda n=n: Counter(n) for n in lengths], autoreset_mode=AutoresetMode.SAME_STEP
        )
    )
    obs = venv.reset()
    assert isinstance(obs, dict) and set(obs) == {"t", "length"}
    assert obs["t"].shape == (N, 1) and obs["length"].tolist() == list(lengths)
    assert all(info == {"reset": True} for info in venv.reset_infos)
    obs, _, dones, infos = venv.step(np.zeros(N, dtype=np.int64))
    assert dones.tolist() == [True, False, False, False]
    assert obs["t"][:, 0].tolist() == [0, 1, 1, 1]  # env 0 already reset
    assert infos[0]["terminal_observation"]["t"].tolist() == [1]
    assert infos[0]["last"] is True and infos[0]["t"] == 1  # the final_info, merged in
    assert "last" not in infos[1] and "terminal_observation" not in infos[1]
    assert venv.reset_infos[0]["reset"] is True
    _, _, dones, infos = venv.step(np.zeros(N, dtype=np.int64))
    assert dones.tolist() == [True, True, False, True]
    assert [info.get("t") for info in infos] == [1, 2, 2, 2]
    # sub-env attributes and methods, per env
    assert venv.get_attr("length") == list(lengths)
    venv.set_attr("length", 7, indices=[1])
    assert venv.get_attr("length") == [1, 7, 3, 2]
    assert venv.env_method("action_masks", indices=[0, 1])[1].tolist() == [True, True, False]
    assert venv.action_masks().shape == (N, 3)
    assert venv.env_is_wrapped(gym.wrappers.TimeLimit) == [False] * N


def test_batched_env_shares_attributes_and_masks() -> None:
    venv = SB3VecEnv(BatchedCounter(N))
    venv.seed(9)
    venv.reset()
    assert [info["seed"] for info in venv.reset_infos] == [9] * N
    assert venv.get_attr("length") == [3] * N and venv.get_attr("scale", indices=[2]) == [1.0]
    assert venv.env_method("add", 2.0) == [3.0] * N
    masks = venv.env_method("action_masks")
    assert len(masks) == N and [m.tolist() for m in masks[:2]] == [[True, False], [True, True]]
    assert venv.has_attr("action_masks")
    venv.set_attr("scale", 2.0)
    with pytest.raises(ValueError, match="indices=None"):
        venv.set_attr("scale", 3.0, indices=[0])
    with pytest.raises(AttributeError, match="nope"):
        venv.get_attr("nope")
    for _ in range(2):
        obs, _, dones, infos = venv.step(np.ones(N, dtype=np.int64))
        assert not dones.any() and all("terminal_observation" not in i for i in infos)
    obs, _, dones, infos = venv.step(np.ones(N, dtype=np.int64))
    assert dones.all() and np.all(obs == 0)
    assert all(i["terminal_observation"].tolist() == [6.0, 6.0] for i in infos)
    assert all(i["t"] == 3 for i in infos)  # final_info wins over the reset info
    assert venv.env_is_wrapped(gym.Wrapper) == [False] * N


def test_masks_default_to_all_true() -> None:
    venv = SB3VecEnv(cartpole_sync())
    venv.reset()
    masks = venv.env_method("action_masks")
    assert len(masks) == N and all(m.tolist() == [True, True] for m in masks)
    assert venv.has_attr("action_masks")


def test_rejects_next_step_autoreset() -> None:
    sync = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)  # NEXT_STEP by default
    with pytest.raises(ValueError, match="SAME_STEP"):
        SB3VecEnv(sync)
    with pytest.raises(TypeError, match="DummyVecEnv"):
        SB3VecEnv(gym.make("CartPole-v1"))  # type: ignore[arg-type]


def test_unbatch_info_respects_masks() -> None:
    info = {
        "a": np.array([1, 2, 3]),
        "_a": np.array([True, False, True]),
        "rows": np.arange(6).reshape(3, 2),
        "nested": {"x": np.array([0.5, 0.0, 0.0]), "_x": np.array([True, False, False])},
        "_nested": np.array([True, False, False]),
    }
    out = unbatch_info(info, 3)
    assert out[0] == {"a": 1, "rows": out[0]["rows"], "nested": {"x": 0.5}}
    assert out[1].keys() == {"rows"} and out[2]["a"] == 3 and "nested" not in out[2]
    out[0]["rows"][0] = 99
    assert info["rows"][0, 0] == 0  # no memory shared with the env's arrays


# ---------------------------------------------------------------------------- the native env


@pytest.fixture(scope="module")
def native_kwargs() -> dict[str, Any]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    data = CifarSplit(
        images=torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=gen),
        labels=torch.randint(0, 10, (32,), generator=gen),
    )
    return {"backbone": build_resnet(14, widths=(4, 8, 16)), "data": data, "device": "cpu"}


def test_native_env_semantics(native_kwargs: dict[str, Any]) -> None:
    venv = make_sb3_vec_env(N, **native_kwargs)
    num_blocks, c_max = 6, 16
    assert venv.num_envs == N and venv.observation_space.shape == (c_max + 2,)
    assert venv.get_attr("render_mode") == [None] * N
    assert venv.get_attr("num_decisions") == [num_blocks - 1] * N
    masks = np.stack(venv.env_method("action_masks"))
    assert masks.shape == (N, 2) and masks.all()

    def episode(seed: int) -> tuple[list, list]:
        venv.seed(seed)
        trace = [venv.reset()]
        started = [info["index"] for info in venv.reset_infos]
        for step in range(num_blocks - 1):
            obs, rewards, dones, infos = venv.step(np.arange(N) % 2)
            assert dones.all() == (step == num_blocks - 2) and dones.any() == dones.all()
            trace += [obs, rewards]
        return trace, [started, infos, [info["index"] for info in venv.reset_infos]]

    trace, (started, infos, restarted) = episode(3)
    for i, info in enumerate(infos):
        assert info["terminal_observation"].shape == (c_max + 2,)
        assert info["terminal_observation"][c_max] == 1.0
        assert info["TimeLimit.truncated"] is False
        assert "prediction" in info and "correct" in info
        assert info["index"] == started[i]  # the finished episode's info, not the new one's
    np.testing.assert_allclose(trace[0][:, c_max], 1 / num_blocks)
    np.testing.assert_allclose(trace[-2][:, c_max], 1 / num_blocks)  # the next episode's start
    again, (started_again, _, restarted_again) = episode(3)
    assert (started_again, restarted_again) == (started, restarted)
    for a, b in zip(trace, again, strict=True):
        np.testing.assert_array_equal(a, b)
    venv.close()


def test_native_rgb_array_images(native_kwargs: dict[str, Any]) -> None:
    venv = make_sb3_vec_env(N, render_mode="rgb_array", **native_kwargs)
    venv.reset()
    frames = venv.get_images()
    assert len(frames) == N and all(f.dtype == np.uint8 and f.ndim == 3 for f in frames)
    tiled = venv.render()
    assert tiled.ndim == 3 and tiled.shape[0] == 2 * frames[0].shape[0]  # 2 x 2 tiles


def test_native_dict_obs(native_kwargs: dict[str, Any]) -> None:
    venv = make_sb3_vec_env(N, obs_mode="dict", **native_kwargs)
    obs = venv.reset()
    assert isinstance(obs, dict) and obs["activation"].shape == (N, 16, 8, 8)
    for _ in range(5):
        obs, _, dones, infos = venv.step(np.zeros(N, dtype=np.int64))
    assert dones.all() and set(infos[0]["terminal_observation"]) == set(obs)


TINY = {"net_arch": [8]}
ON_POLICY = {"n_steps": 16, "batch_size": 32, "n_epochs": 1}
ALGORITHMS: dict[str, tuple[str, dict[str, Any]]] = {
    "PPO": ("MlpPolicy", ON_POLICY),
    "A2C": ("MlpPolicy", {"n_steps": 5}),
    "DQN": (
        "MlpPolicy",
        {"learning_starts": 64, "buffer_size": 500, "batch_size": 16, "train_freq": 4},
    ),
    "RecurrentPPO": (
        "MlpLstmPolicy",
        {**ON_POLICY, "policy_kwargs": {**TINY, "lstm_hidden_size": 8}},
    ),
    "MaskablePPO": ("MlpPolicy", ON_POLICY),
}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_algorithms_learn(name: str, native_kwargs: dict[str, Any]) -> None:
    import sb3_contrib
    import stable_baselines3
    from stable_baselines3.common.vec_env import VecCheckNan, VecMonitor

    policy, kwargs = ALGORITHMS[name]
    kwargs = {"policy_kwargs": TINY, **kwargs}
    cls = getattr(stable_baselines3, name, None) or getattr(sb3_contrib, name)
    venv = VecMonitor(VecCheckNan(make_sb3_vec_env(N, **native_kwargs), raise_exception=True))
    model = cls(policy, venv, device="cpu", seed=0, **kwargs)
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    episodes = list(model.ep_info_buffer)
    assert episodes and all(ep["l"] == 5 for ep in episodes)  # K = 5 decisions per image


def test_ppo_multi_input_dict_obs(native_kwargs: dict[str, Any]) -> None:
    from stable_baselines3 import PPO

    venv = make_sb3_vec_env(N, obs_mode="dict", **native_kwargs)
    model = PPO(
        "MultiInputPolicy",
        venv,
        n_steps=8,
        batch_size=32,
        n_epochs=1,
        policy_kwargs={"net_arch": [8]},
        device="cpu",
        seed=0,
    )
    model.learn(total_timesteps=64)
    assert model.num_timesteps >= 64


def test_async_vector_env_survives_missing_attributes() -> None:
    """AsyncVectorEnv shuts a worker down on an error: probing attributes must not raise
    there."""
    async_env = gym.vector.AsyncVectorEnv(
        [lambda: gym.make("CartPole-v1")] * 2, autoreset_mode=AutoresetMode.SAME_STEP
    )
    venv = SB3VecEnv(async_env)
    try:
        venv.reset()
        assert not venv.has_attr("nope")
        assert [m.tolist() for m in venv.env_method("action_masks")] == [[True, True]] * 2
        venv.set_attr("foo", 3)
        venv.set_attr("foo", 4, indices=[1])
        assert venv.get_attr("foo") == [3, 4]
        obs, _, _, _ = venv.step(np.zeros(2, dtype=np.int64))  # the workers still run
        assert obs.shape == (2, 4)
    finally:
        venv.close()
