"""SkipNetEnv: API checkers, observations, rewards by hand, real skipping, bad input."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ENV_ID, synthetic_split
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from synthetic import write_folder

import skipenv
from skipenv.data.loader import normalize
from skipenv.data.sources import DataError
from skipenv.envs.config import EnvConfig
from skipenv.envs.env import SkipNetEnv
from skipenv.envs.episode import random_backbone
from skipenv.envs.render import (
    COLUMN_WIDTH,
    EXECUTED,
    LINE_HEIGHT,
    MARGIN,
    PANEL_HEIGHT,
    PENDING,
    SCALE,
    SKIPPED,
    rgb_frame,
)
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models.checkpoint import CheckpointError, save_checkpoint
from skipenv.models.resnet import SkipResNet, build_resnet
from skipenv.training.devices import resolve_device

MODES = ("vector", "activation", "dict")


def make_env(backbone: SkipResNet, **kwargs) -> SkipNetEnv:
    kwargs.setdefault("data", synthetic_split())
    kwargs.setdefault("device", "cpu")
    return SkipNetEnv(backbone=backbone, **kwargs)


def image(env: SkipNetEnv, index: int) -> torch.Tensor:
    """The normalised image ``index``: 1 x 3 x 32 x 32."""
    return normalize(env.data.images[index : index + 1])


def run_episode(env: SkipNetEnv, actions, **reset_kwargs):
    obs, info = env.reset(**reset_kwargs)
    steps = [(obs, 0.0, False, info)]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        assert truncated is False
        steps.append((obs, reward, terminated, info))
    return steps


# ---------------------------------------------------------------------------- API checkers


@pytest.mark.parametrize("obs_mode", MODES)
def test_gymnasium_check_env_without_warnings(tiny_model, obs_mode):
    env = gymnasium.make(ENV_ID, backbone=tiny_model, data=synthetic_split(), obs_mode=obs_mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    env.close()


def test_sb3_check_env_without_warnings(tiny_model):
    env = gymnasium.make(ENV_ID, backbone=tiny_model, data=synthetic_split())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(env)


@pytest.mark.parametrize("obs_mode", ["activation", "dict"])
def test_sb3_check_env_only_flags_activation_as_non_image(tiny_model, obs_mode):
    """SB3's checker passes; its only warnings say a float C x 8 x 8 Box is no uint8 image
    (CNN policies on it need a custom features extractor, as documented)."""
    env = gymnasium.make(ENV_ID, backbone=tiny_model, data=synthetic_split(), obs_mode=obs_mode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env)
    messages = [str(w.message) for w in caught]
    assert messages, "expected SB3's image warnings for a float activation Box"
    assert all("image" in m for m in messages), messages


# ---------------------------------------------------------------------------- registration


def test_make_by_id_and_vector_entry_point(tiny_model):
    env = gymnasium.make(ENV_ID, backbone=tiny_model, data=synthetic_split())
    assert isinstance(env.unwrapped, SkipNetEnv)
    assert env.spec.id == ENV_ID
    assert gymnasium.spec(ENV_ID).vector_entry_point == "skipenv.envs.vector_env:SkipNetVectorEnv"
    obs, _ = env.reset(seed=0)
    assert obs.shape == (16 + 2,)


def test_reimport_does_not_register_twice():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(skipenv)
    assert ENV_ID in gymnasium.registry


def test_make_with_module_prefix_without_importing_skipenv(tmp_path):
    write_folder(tmp_path / "data" / "cifar10-jpeg" / "train", per_class=2)
    script = (
        "import sys, gymnasium\n"
        "assert 'skipenv' not in sys.modules\n"
        f"env = gymnasium.make('skipenv:{ENV_ID}', depth=8, pretrained=False, split='train',\n"
        f"                     data_root={str(tmp_path / 'data')!r}, device='cpu')\n"
        "obs, info = env.reset(seed=0)\n"
        "obs, r, term, trunc, info = env.step(1)\n"
        "assert obs.shape == (66,) and info['next_block'] == 2, (obs.shape, info)\n"
        "print('ok', len(env.unwrapped.data))\n"
    )
    env = {**os.environ, "SKIPNET_CACHE": str(tmp_path / "cache")}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "20"]


# ---------------------------------------------------------------------------- construction


def test_random_backbone_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = random_backbone(8), random_backbone(8)
    assert torch.equal(state, torch.random.get_rng_state())
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    env = SkipNetEnv(depth=8, pretrained=False, data=synthetic_split(), device="cpu")
    assert env.backbone.depth == 8
    assert torch.equal(env.backbone.stem[0].weight, a.stem[0].weight)


def test_backbone_is_frozen_in_eval_mode_and_its_depth_wins(tiny_model):
    env = make_env(tiny_model.train(), depth=110)
    assert env.backbone is tiny_model
    assert not tiny_model.training
    assert not any(p.requires_grad for p in tiny_model.parameters())
    assert env.num_blocks == 6 and env.num_decisions == 5


def test_device_auto_uses_resolve_device(tiny_model):
    env = make_env(tiny_model, device="auto")
    assert env.device == resolve_device("auto")


def test_loads_the_split_from_a_data_root(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path / "cache"))
    images, labels = write_folder(tmp_path / "cifar10-jpeg" / "train", per_class=2)
    env = SkipNetEnv(backbone=tiny_model, split="train-full", data_root=tmp_path, device="cpu")
    assert len(env.data) == 20
    _, info = env.reset(options={"index": 5})
    assert info["label"] == labels[5]
    assert torch.equal(env.data.images[5], torch.from_numpy(images[5]))


# ---------------------------------------------------------------------------- observations


def test_vector_observation_layout(tiny_model):
    env = make_env(tiny_model)
    table = tiny_model.macs_table()
    c_max, n = 16, 6
    obs, _ = env.reset(options={"index": 3})
    with torch.inference_mode():
        h = tiny_model.blocks[0](tiny_model.stem(image(env, 3)))  # 1 x 4 x 32 x 32
    assert obs.dtype == np.float32 and obs.shape == (c_max + 2,)
    np.testing.assert_allclose(obs[:4], h.mean(dim=(2, 3))[0].numpy(), rtol=1e-5, atol=1e-6)
    assert not obs[4:c_max].any()
    assert obs[c_max] == np.float32(1 / n)
    assert obs[c_max + 1] == np.float32((table.stem + table.block_execute[0]) / table.full)
    assert round(obs[c_max] * n) - 1 == 0  # the block that produced the activation

    for k, (obs, _, terminated, _) in enumerate(run_episode(env, [1] * 5)[1:]):
        block = k + 1
        assert obs[c_max] == np.float32((block + 1) / n)
        channels = tiny_model.block_channels[block]
        assert not obs[channels:c_max].any()
        assert terminated == (block == 5)
    assert obs[c_max] == 1.0 and obs[c_max + 1] == 1.0  # every block ran, head included


def test_activation_and_dict_observations(tiny_model):
    data = synthetic_split()
    env = make_env(tiny_model, data=data, obs_mode="activation")
    vec = make_env(tiny_model, data=data)
    dic = make_env(tiny_model, data=data, obs_mode="dict")
    assert env.observation_space.shape == (16, 8, 8)
    act, _ = env.reset(options={"index": 7})
    pooled, _ = vec.reset(options={"index": 7})
    d, _ = dic.reset(options={"index": 7})
    with torch.inference_mode():
        h = tiny_model.blocks[0](tiny_model.stem(image(env, 7)))
        expected = F.adaptive_avg_pool2d(h, 8)[0].numpy()  # 4 x 8 x 8
    np.testing.assert_allclose(act[:4], expected, rtol=1e-5, atol=1e-6)
    assert act.dtype == np.float32 and not act[4:].any()
    assert set(d) == {"activation", "block", "flops_fraction", "pooled"}
    np.testing.assert_array_equal(d["activation"], act)
    np.testing.assert_array_equal(d["pooled"], pooled[:16])
    assert d["block"] == 1 and isinstance(d["block"], np.int64)
    assert d["flops_fraction"].shape == (1,) and d["flops_fraction"][0] == pooled[17]
    for e in (env, vec, dic):
        obs, *_ = e.step(0)
        assert obs in e.observation_space


def test_observations_are_fresh_arrays(tiny_model):
    env = make_env(tiny_model, obs_mode="dict")
    first, info = env.reset(seed=0)
    second, _, _, _, info2 = env.step(1)
    for key in first:
        if isinstance(first[key], np.ndarray):
            assert not np.shares_memory(first[key], second[key]), key
    assert not np.shares_memory(info["executed"], info2["executed"])


# ---------------------------------------------------------------------------- rewards and info


def test_rewards_by_hand(tiny_model):
    actions = [1, 0, 0, 1, 0]  # block 2 (a projecting block) is skipped, block 4 runs
    alpha, lam, k = 0.3, 2.0, 5
    table = tiny_model.macs_table()
    paper = make_env(tiny_model, alpha=alpha)
    accuracy = make_env(tiny_model, reward="accuracy", lam=lam)
    with torch.inference_mode():
        x = image(paper, 11)
        logits = tiny_model.forward_skip(x, torch.tensor([actions], dtype=torch.bool))
    ce = float(F.cross_entropy(logits, torch.tensor([1])))  # label of image 11
    correct = float(logits.argmax() == 1)

    got = [s[1] for s in run_episode(paper, actions, options={"index": 11})[1:]]
    s = alpha / k
    np.testing.assert_allclose(got, [0.0, s, s, 0.0, s - ce], rtol=1e-5)

    steps = run_episode(accuracy, actions, options={"index": 11})
    costs = [
        table.block_execute[b] if a else table.block_skip[b] for b, a in enumerate(actions, start=1)
    ]
    assert costs[1] > 0 and costs[2] == 0  # a skipped projecting block still pays its 1x1 conv
    expected = [-lam * c / table.full for c in costs]
    expected[-1] += correct
    np.testing.assert_allclose([s[1] for s in steps[1:]], expected, rtol=1e-6)

    info = steps[-1][3]
    executed = torch.tensor([[True, *map(bool, actions)]])
    assert info["macs"] == int(table.backbone_macs(executed)[0])
    assert info["flops_fraction"] == pytest.approx(float(table.flops_fraction(executed)[0]))
    assert info["prediction"] == int(logits.argmax()) and info["correct"] == bool(correct)
    assert info["loss"] == pytest.approx(ce, rel=1e-5)


def test_info_keys_and_types(tiny_model):
    env = make_env(tiny_model)
    _, info = env.reset(options={"index": 4})
    base = {"index", "label", "macs", "flops_fraction", "executed", "next_block"}
    assert set(info) == base
    assert info["index"] == 4 and info["label"] == 4 and info["next_block"] == 1
    assert isinstance(info["macs"], int) and isinstance(info["flops_fraction"], float)
    np.testing.assert_array_equal(info["executed"], [True, False, False, False, False, False])
    for a in [1, 0, 1, 0]:
        _, _, terminated, _, info = env.step(a)
        assert set(info) == base and not terminated
    np.testing.assert_array_equal(info["executed"], [True, True, False, True, False, False])
    _, _, terminated, _, info = env.step(1)
    assert terminated and set(info) == base | {"prediction", "correct", "loss"}
    assert isinstance(info["prediction"], int) and isinstance(info["correct"], bool)
    assert isinstance(info["loss"], float) and info["loss"] >= 0
    assert info["correct"] == (info["prediction"] == info["label"])
    assert info["next_block"] == 6


def test_seeded_determinism(tiny_model):
    data = synthetic_split()
    a, b = make_env(tiny_model, data=data), make_env(tiny_model, data=data)
    rng = np.random.default_rng(0)
    for episode in range(2):
        actions = rng.integers(0, 2, size=5).tolist()
        seed = 7 if episode == 0 else None
        ea, eb = run_episode(a, actions, seed=seed), run_episode(b, actions, seed=seed)
        for (oa, ra, ta, ia), (ob, rb, tb, ib) in zip(ea, eb, strict=True):
            np.testing.assert_array_equal(oa, ob)
            assert ra == rb and ta == tb and ia["index"] == ib["index"]

    def indices(seed: int) -> list[int]:
        return [a.reset(seed=seed)[1]["index"]] + [a.reset()[1]["index"] for _ in range(4)]

    assert indices(3) == indices(3) != indices(4)


# ---------------------------------------------------------------------------- real skipping


def count_calls(model: SkipResNet) -> list[int]:
    """Calls of each block's full forward (its residual branch), via forward hooks."""
    calls = [0] * model.num_blocks
    for i, block in enumerate(model.blocks):
        block.conv1.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_skipped_blocks_are_not_computed(tiny_model):
    env = make_env(tiny_model)
    calls = count_calls(tiny_model)
    table = tiny_model.macs_table()
    *_, (_, _, terminated, info) = run_episode(env, [0] * 5, options={"index": 0})
    assert terminated and calls == [1, 0, 0, 0, 0, 0]
    np.testing.assert_array_equal(info["executed"], [True] + [False] * 5)
    assert info["macs"] == table.stem + table.block_execute[0] + sum(table.block_skip) + table.head

    calls[:] = [0] * 6
    *_, (_, _, _, info) = run_episode(env, [1, 0, 1, 0, 1], options={"index": 0})
    assert calls == [1, 1, 0, 1, 0, 1]
    executed = torch.tensor([[True, True, False, True, False, True]])
    assert info["macs"] == int(table.backbone_macs(executed)[0])


# ---------------------------------------------------------------------------- rendering


def test_render_rgb_array(tiny_model):
    env = make_env(tiny_model, render_mode="rgb_array")
    env.reset(options={"index": 2})
    frame = env.render()
    width = 32 * SCALE + 3 * (MARGIN + COLUMN_WIDTH)
    assert frame.shape == (32 * SCALE + PANEL_HEIGHT, width, 3) and frame.dtype == np.uint8
    picture = env.data.images[2].numpy().transpose(1, 2, 0).repeat(SCALE, 0).repeat(SCALE, 1)
    np.testing.assert_array_equal(frame[: 32 * SCALE, : 32 * SCALE], picture)
    first_cell = frame[0, 32 * SCALE + MARGIN]
    second_cell = frame[32 * SCALE - 2, 32 * SCALE + MARGIN]  # block 1, undecided
    assert tuple(first_cell) == EXECUTED and tuple(second_cell) == PENDING
    env.step(0)
    assert not np.array_equal(env.render(), frame)


def test_rgb_frame_writes_the_verdict_in_its_colour():
    image = np.zeros((3, 32, 32), dtype=np.uint8)
    executed = np.ones(6, dtype=bool)

    def tint(**kw) -> tuple[int, int]:
        """Greenish and reddish pixels on the prediction's line (text is antialiased)."""
        frame = rgb_frame(image, executed, 6, 3, label="cat", flops_fraction=0.5, **kw)
        top = 32 * SCALE + 2 + LINE_HEIGHT
        line = frame[top : top + LINE_HEIGHT].astype(int).reshape(-1, 3)  # pixels x RGB
        green, red = line[:, 1] - line[:, 0] > 40, line[:, 0] - line[:, 1] > 40
        return int(green.sum()), int(red.sum())

    assert tint(prediction="cat")[0] > 10 and tint(prediction="cat")[1] == 0  # correct: green
    assert tint(prediction="dog")[1] > 10 and tint(prediction="dog")[0] == 0  # wrong: red
    assert tint() == (0, 0)  # pending
    frame = rgb_frame(image, executed, 6, 3)
    legend = {tuple(int(v) for v in px) for px in frame[-PANEL_HEIGHT // 3 :].reshape(-1, 3)}
    assert {EXECUTED, SKIPPED, PENDING} <= legend  # the legend's swatches
    bare = rgb_frame(image, executed, 6, 3, panel=False)
    assert bare.shape[0] == 32 * SCALE


def test_render_ansi(tiny_model):
    env = make_env(tiny_model, render_mode="ansi")
    env.reset(options={"index": 2})
    line = env.render()
    assert isinstance(line, str) and "\n" not in line
    assert line.startswith("image 2 (bird) blocks 1.|..|..")
    for a in [1, 0, 1, 0, 1]:
        env.step(a)
    line = env.render()
    assert "blocks 11|01|01" in line and "->" in line


# ---------------------------------------------------------------------------- bad input


def assert_usable(env: SkipNetEnv) -> None:
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(1)
    assert info["next_block"] == 2 and not terminated


def test_step_before_reset(tiny_model):
    env = make_env(tiny_model)
    with pytest.raises(ResetNeeded, match=r"reset\(\)"):
        env.step(1)
    assert_usable(env)


def test_step_after_termination(tiny_model):
    env = make_env(tiny_model)
    run_episode(env, [1] * 5)
    with pytest.raises(ResetNeeded, match=r"terminated.*reset\(\)"):
        env.step(1)
    assert_usable(env)


@pytest.mark.parametrize("action", [2, -1, 0.5, "1", None, np.array([1]), np.float32(1.0)])
def test_action_outside_the_space(tiny_model, action):
    env = make_env(tiny_model)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action .* is not in Discrete\(2\)"):
        env.step(action)
    _, _, _, _, info = env.step(np.int64(1))  # the episode goes on where it was
    assert info["next_block"] == 2
    assert_usable(env)


def test_bad_reset_options(tiny_model):
    env = make_env(tiny_model)
    with pytest.raises(ValueError, match=r"0\.\.19"):
        env.reset(options={"index": 20})
    with pytest.raises(ValueError, match="index"):
        env.reset(options={"indices": [1]})
    assert_usable(env)


def test_checkpoint_of_another_depth_or_dataset(tmp_path):
    model = build_resnet(8, widths=(4, 8, 16))
    arch = {"name": "cifar_resnet", "depth": 8, "num_classes": 10, "widths": [4, 8, 16]}
    path = save_checkpoint(
        tmp_path / "base8.pt", {"kind": "base", "arch": arch, "model": model.state_dict()}
    )
    with pytest.raises(CheckpointError, match="ResNet-8, but depth=14"):
        SkipNetEnv(checkpoint=path, depth=14, data=synthetic_split(), device="cpu")
    other = save_checkpoint(
        tmp_path / "c100.pt",
        {"kind": "base", "arch": {**arch, "dataset": "cifar100"}, "model": model.state_dict()},
    )
    with pytest.raises(CheckpointError, match="cifar100"):
        SkipNetEnv(checkpoint=other, depth=8, data=synthetic_split(), device="cpu")
    env = SkipNetEnv(checkpoint=path, depth=8, data=synthetic_split(), device="cpu")
    assert torch.equal(env.backbone.head[-1].weight, model.head[-1].weight)
    assert_usable(env)


def test_data_root_without_the_split(tmp_path):
    with pytest.raises(DataError) as caught:
        SkipNetEnv(depth=8, pretrained=False, data_root=tmp_path, device="cpu")
    message = str(caught.value)
    assert str(tmp_path) in message and "download=True" in message and "tar xzf" in message


def test_pretrained_without_checkpoint_says_what_to_pass():
    # ResNet-38 ships (tests/test_pretrained.py); no ResNet-110 does
    with pytest.raises(ValueError, match="no pretrained ResNet-110") as caught:
        SkipNetEnv(depth=110, data=synthetic_split(), device="cpu")
    assert "checkpoint=" in str(caught.value) and "pretrained=False" in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"obs_mode": "image"}, "obs_mode"),
        ({"reward": "flops"}, "reward"),
        ({"render_mode": "human"}, "render_mode"),
        ({"alpha": float("nan")}, "alpha"),
        ({"checkpoint": "x.pt"}, "not both"),
    ],
)
def test_bad_arguments(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_env(tiny_model, **kwargs)
    assert_usable(make_env(tiny_model))


def test_options_are_one_validated_config(tiny_model):
    data = synthetic_split()
    config = EnvConfig(backbone=tiny_model, data=data, device="cpu", obs_mode="dict")
    env = SkipNetEnv(config, reward="accuracy")  # keywords override the config's fields
    assert env.config.obs_mode == "dict" and env.config.reward == "accuracy"
    assert config.reward == "paper"  # frozen: the caller's config is not changed
    venv = SkipNetVectorEnv(3, config)
    assert venv.config is not env.config and venv.single_observation_space == env.observation_space
    with pytest.raises(TypeError, match=r"unknown SkipNet-CIFAR10-v0 option.*'obs'"):
        SkipNetEnv(config, obs="vector")
    with pytest.raises(ValueError, match="lam must be a finite number"):
        EnvConfig(lam=float("inf"))
    with pytest.raises(ValueError, match="split must be one of"):
        EnvConfig(split="validation")
