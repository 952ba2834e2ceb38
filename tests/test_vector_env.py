"""SkipNetVectorEnv: equals N single envs, batched real skipping, autoreset, bad input."""

from __future__ import annotations

import copy

import gymnasium
import numpy as np
import pytest
import torch
from conftest import ENV_ID, synthetic_split
from gymnasium.error import ResetNeeded
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from skipenv.envs.env import SkipNetEnv
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models.resnet import SkipResNet

K = 5  # decisions of the tiny ResNet-14


def make_vec(backbone: SkipResNet, num_envs: int = 4, **kwargs) -> SkipNetVectorEnv:
    kwargs.setdefault("data", synthetic_split())
    kwargs.setdefault("device", "cpu")
    return SkipNetVectorEnv(num_envs, backbone=backbone, **kwargs)


def assert_same(a, b, path: str = "") -> None:
    """Same structure and values (floats to 1e-5) of two observations or infos."""
    if isinstance(a, dict):
        assert set(a) == set(b), (path, sorted(a), sorted(b))
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert a.shape == b.shape, path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, (path, a.shape, b.shape, a.dtype, b.dtype)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=path)


# ---------------------------------------------------------------------------- construction


def test_make_vec_returns_the_native_vector_env(tiny_model):
    envs = gymnasium.make_vec(ENV_ID, num_envs=8, backbone=tiny_model, data=synthetic_split())
    assert isinstance(envs, SkipNetVectorEnv) and envs.num_envs == 8
    assert envs.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP  # Gymnasium's default
    assert envs.spec.id == ENV_ID
    assert envs.single_action_space == gymnasium.spaces.Discrete(2)
    assert envs.single_observation_space.shape == (18,)
    assert envs.observation_space.shape == (8, 18)
    assert envs.action_space == gymnasium.spaces.MultiDiscrete([2] * 8)
    obs, info = envs.reset(seed=0)
    assert obs.shape == (8, 18) and obs.dtype == np.float32 and obs in envs.observation_space
    assert info["index"].shape == (8,) and info["_index"].all()
    assert envs.action_masks().shape == (8, 2)


@pytest.mark.parametrize("obs_mode", ["activation", "dict"])
def test_batched_spaces(tiny_model, obs_mode):
    envs = make_vec(tiny_model, 3, obs_mode=obs_mode)
    obs, _ = envs.reset(seed=0)
    assert obs in envs.observation_space
    obs, *_ = envs.step(np.array([1, 0, 1]))
    assert obs in envs.observation_space
    if obs_mode == "dict":
        np.testing.assert_array_equal(obs["block"], [2, 2, 2])


# ---------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    ("obs_mode", "reward"), [("vector", "paper"), ("dict", "accuracy"), ("activation", "paper")]
)
def test_step_equals_single_envs(tiny_model, obs_mode, reward):
    """Native batch and Gymnasium's SyncVectorEnv of single envs: same images, same actions,
    same observations, rewards and infos (final ones included)."""
    data, n, indices = synthetic_split(), 4, [3, 7, 7, 12]
    kwargs = {"data": data, "device": "cpu", "obs_mode": obs_mode, "reward": reward}
    native = SkipNetVectorEnv(
        n, backbone=tiny_model, autoreset_mode=AutoresetMode.SAME_STEP, **kwargs
    )
    sync = SyncVectorEnv(
        [lambda: SkipNetEnv(backbone=tiny_model, **kwargs) for _ in range(n)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    _, info = native.reset(seed=0, options={"indices": indices})
    sync.reset(seed=0)
    for env, index in zip(sync.envs, indices, strict=True):
        env.reset(options={"index": index})  # the same images as the native batch
    assert info["index"].tolist() == indices
    assert sync.single_observation_space == native.single_observation_space

    actions = np.random.default_rng(1).integers(0, 2, size=(K, n))
    for t in range(K):
        got = native.step(actions[t])
        want = sync.step(actions[t])
        for name, a, b in zip(
            ("rewards", "terminated", "truncated"), got[1:4], want[1:4], strict=True
        ):
            assert_same(a, b, name)
        if t < K - 1:
            assert_same(got[0], want[0], "obs")
            assert_same(got[4], want[4], "info")
        else:  # new images after the autoreset differ; the final ones must agree
            assert got[2].all()
            assert set(got[4]) == set(want[4])
            assert_same(got[4]["final_obs"], want[4]["final_obs"], "final_obs")
            assert_same(got[4]["final_info"], want[4]["final_info"], "final_info")


def test_one_batched_call_per_block_on_the_executing_images(tiny_model):
    envs = make_vec(tiny_model, 6)
    rows: list[list[int]] = [[] for _ in range(tiny_model.num_blocks)]
    for i, block in enumerate(tiny_model.blocks):
        block.conv1.register_forward_hook(lambda _, args, __, i=i: rows[i].append(len(args[0])))
    envs.reset(seed=0)
    assert rows[0] == [6]
    actions = np.array(
        [[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 0, 0, 0]]
    )
    for t, a in enumerate(actions):
        envs.step(a)
        block = t + 1
        assert rows[block] == ([int(a.sum())] if a.any() else []), (block, rows[block])


# ---------------------------------------------------------------------------- autoreset


def test_same_step_autoreset(tiny_model):
    envs = make_vec(tiny_model, 3, autoreset_mode=AutoresetMode.SAME_STEP)
    table = tiny_model.macs_table()
    envs.reset(seed=0, options={"indices": [0, 1, 2]})
    for _ in range(K - 1):
        obs, rewards, terminated, truncated, info = envs.step(np.ones(3, dtype=np.int64))
        assert not terminated.any() and not truncated.any() and "final_obs" not in info
    obs, rewards, terminated, truncated, info = envs.step(np.zeros(3, dtype=np.int64))
    assert terminated.all() and not truncated.any() and rewards.dtype == np.float64
    assert info["_final_obs"].all() and info["_final_info"].all()
    final = info["final_obs"]
    assert final.dtype == object and final.shape == (3,)
    assert all(o.shape == (18,) and o[16] == 1.0 for o in final)
    final_info = info["final_info"]
    assert final_info["index"].tolist() == [0, 1, 2] and final_info["_prediction"].all()
    np.testing.assert_array_equal(
        final_info["correct"], final_info["prediction"] == final_info["label"]
    )
    executed = torch.tensor([[True, True, True, True, True, False]] * 3)
    np.testing.assert_array_equal(final_info["macs"], table.backbone_macs(executed).numpy())
    # the returned observations are those of new episodes at block 1
    assert np.all(obs[:, 16] == np.float32(1 / 6)) and "prediction" not in info
    np.testing.assert_array_equal(info["next_block"], [1, 1, 1])
    obs2, *_ = envs.step(np.ones(3, dtype=np.int64))
    assert np.all(obs2[:, 16] == np.float32(2 / 6))


def test_seeded_determinism(tiny_model):
    data = synthetic_split()
    a, b = make_vec(tiny_model, 4, data=data), make_vec(tiny_model, 4, data=data)
    oa, ia = a.reset(seed=11)
    ob, ib = b.reset(seed=11)
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(ia["index"], ib["index"])
    actions = np.random.default_rng(0).integers(0, 2, size=(2 * K, 4))
    for act in actions:  # two episodes, through one autoreset
        ra, rb = a.step(act), b.step(act)
        np.testing.assert_array_equal(ra[0], rb[0])
        np.testing.assert_array_equal(ra[1], rb[1])
        np.testing.assert_array_equal(ra[4]["index"], rb[4]["index"])
    assert a.reset(seed=12)[1]["index"].tolist() != ia["index"].tolist()


# ---------------------------------------------------------------------------- rendering


def test_render(tiny_model):
    envs = make_vec(tiny_model, 2, render_mode="rgb_array")
    envs.reset(seed=0)
    frames = envs.render()
    assert len(frames) == 2 and all(f.dtype == np.uint8 and f.ndim == 3 for f in frames)
    lines = make_vec(tiny_model, 2, render_mode="ansi")
    lines.reset(options={"indices": [2, 3]})
    text = lines.render()
    assert text[0].startswith("image 2 (bird)") and text[1].startswith("image 3 (cat)")


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "actions",
    [
        np.ones(5, dtype=np.int64),
        np.ones((4, 1), dtype=np.int64),
        np.ones(4, dtype=np.float32),
        np.array([0, 1, 2, 1]),
        np.array([0, -1, 0, 1]),
        ["a", "b", "c", "d"],
        1,
    ],
)
def test_bad_actions(tiny_model, actions):
    envs = make_vec(tiny_model, 4)
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        envs.step(actions)
    _, _, _, _, info = envs.step(np.array([1, 0, 1, 0], dtype=np.int32))
    np.testing.assert_array_equal(info["next_block"], [2] * 4)  # the bad step did nothing


def test_step_before_reset(tiny_model):
    envs = make_vec(tiny_model, 2)
    with pytest.raises(ResetNeeded, match=r"reset\(\)"):
        envs.step(np.ones(2, dtype=np.int64))
    envs.reset(seed=0)
    envs.step(np.array([True, False]))


def test_bad_reset_options_and_arguments(tiny_model):
    envs = make_vec(tiny_model, 2)
    with pytest.raises(ValueError, match="2 image indices"):
        envs.reset(options={"indices": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"0\.\.19"):
        envs.reset(options={"indices": [1, 20]})
    envs.reset(options={"indices": [1, 2]})
    envs.step(np.ones(2, dtype=np.int64))
    with pytest.raises(ValueError, match="num_envs"):
        make_vec(tiny_model, 0)


@pytest.mark.parametrize("obs_mode", ["vector", "activation", "dict"])
def test_observations_pool_the_routed_activations_every_step(tiny_model, obs_mode):
    """Each step's observation pools the activations of the same route run by the backbone
    (only the executing images' rows are pooled again after an identity block): with some,
    none and all images executing, and across the projection blocks."""
    from skipenv.envs.episode import pool_to_grid

    env = make_vec(tiny_model, num_envs=6, obs_mode=obs_mode)
    indices = np.arange(6)
    obs, _ = env.reset(seed=0, options={"indices": indices})
    backbone = env.backbone
    c_max = max(backbone.block_channels)
    actions = [
        np.array([1, 0, 1, 0, 0, 1]),
        np.zeros(6, dtype=np.int64),  # nobody executes: the last observation again
        np.ones(6, dtype=np.int64),
        np.array([0, 1, 1, 0, 1, 0]),
        np.array([1, 1, 0, 0, 0, 0]),
    ]
    assert len(actions) == K
    handed = []  # (observation, a copy of it)
    with torch.inference_mode():
        route = backbone.start(env.episodes.inputs(indices))
        for step, action in enumerate(actions):
            before = obs
            obs, *_ = env.step(action)
            handed.append((obs, copy.deepcopy(obs)))
            if step == K - 1:  # autoreset: the terminal observation is in final_obs
                break
            backbone.advance(route, torch.from_numpy(action.astype(bool)))
            h = route.h  # 6 x C x H x W
            c = h.shape[1]
            if obs_mode != "activation":
                pooled = obs if obs_mode == "vector" else obs["pooled"]
                np.testing.assert_allclose(pooled[:, :c], h.mean(dim=(2, 3)).numpy(), atol=1e-6)
                assert not pooled[:, c:c_max].any()  # channel padding
            if obs_mode != "vector":
                grid = obs if obs_mode == "activation" else obs["activation"]
                np.testing.assert_allclose(grid[:, :c], pool_to_grid(h).numpy(), atol=1e-6)
            if obs_mode == "vector" and not action.any() and not backbone.blocks[step + 1].projects:
                np.testing.assert_array_equal(obs[:, :c], before[:, :c])
    for given, kept in handed:  # the arrays handed out are not overwritten by later steps
        assert_same(given, kept)
