"""The open-loop (BlockDrop-style) router: decides every block from block 0's output, replays
that route whatever comes later, learns from the env's reward, and trains from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script, synthetic_split
from synthetic import write_folder

from agents.open_loop import OpenLoopAgent, OpenLoopPolicy, load_open_loop, reinforce_episodes
from skipenv.data.loader import normalize
from skipenv.envs.vector_env import SkipNetVectorEnv, last_step_info
from skipenv.models.checkpoint import save_checkpoint
from skipenv.models.resnet import build_resnet

open_loop = load_script("train/open_loop.py")


def make_env(model, b: int = 8, **options) -> SkipNetVectorEnv:
    return SkipNetVectorEnv(b, backbone=model, data=synthetic_split(20), device="cpu", **options)


def spread_policy(model) -> OpenLoopPolicy:
    """A policy whose routes differ from image to image (random output weights)."""
    torch.manual_seed(1)
    policy = OpenLoopPolicy(model.block_channels[0], model.num_decisions, hidden=16)
    torch.nn.init.normal_(policy.net[2].weight, std=3.0)
    torch.nn.init.zeros_(policy.net[2].bias)
    return policy


def test_routes_from_block_zero_only(tiny_model) -> None:
    env = make_env(tiny_model)
    policy = spread_policy(tiny_model)
    agent = OpenLoopAgent(policy, env.single_observation_space, tiny_model.block_channels)
    indices = np.arange(8)
    obs, _ = env.reset(options={"indices": indices})
    agent.reset(8)

    # the route is the greedy policy on block 0's pooled output of each image
    x = normalize(env.data.images[torch.from_numpy(indices)])  # B x 3 x 32 x 32
    with torch.no_grad():
        h0 = tiny_model.blocks[0](tiny_model.stem(x))  # B x C_0 x 32 x 32
        expected = (policy(h0.mean(dim=(2, 3))) > 0.5).numpy()  # B x K
    assert 0 < expected.mean() < 1 and len({r.tobytes() for r in expected}) > 1

    actions = []
    for _ in range(env.num_decisions):
        a = agent.act(obs)
        actions.append(a)
        obs, _, terminated, _, info = env.step(a)
        if not terminated.all():
            obs[:, : max(tiny_model.block_channels)] = 1e3  # later activations are never read
    np.testing.assert_array_equal(np.stack(actions, axis=1), expected)
    np.testing.assert_array_equal(last_step_info(info)["executed"][:, 1:], expected)

    # SB3-style predict with the returned state makes the same decisions
    obs, _ = env.reset(options={"indices": indices})
    state, got = None, []
    for k in range(env.num_decisions):
        a, state = agent.predict(obs, state, episode_start=np.full(8, k == 0))
        got.append(a)
        obs, *_ = env.step(a)
    np.testing.assert_array_equal(np.stack(got, axis=1), expected)


def test_refuses_mid_episode_start_and_wrong_backbone(tiny_model) -> None:
    env = make_env(tiny_model)
    agent = OpenLoopAgent(
        spread_policy(tiny_model), env.single_observation_space, tiny_model.block_channels
    )
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(np.ones(8, dtype=np.int64))
    agent.reset(8)
    with pytest.raises(ValueError, match="decides the route at block 1"):
        agent.act(obs)
    with pytest.raises(ValueError, match="K ="):
        OpenLoopAgent(
            OpenLoopPolicy(tiny_model.block_channels[0], 3),
            env.single_observation_space,
            tiny_model.block_channels,
        )


@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_reinforce_learns_to_skip_when_skipping_pays(tiny_model, baseline: str) -> None:
    """alpha = 20: skipping every block earns far more than any cross-entropy costs here, so
    REINFORCE must drive p(execute) down."""
    env = make_env(tiny_model, b=16, alpha=20.0)
    torch.manual_seed(0)
    policy = OpenLoopPolicy(tiny_model.block_channels[0], tiny_model.num_decisions, hidden=16)
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    first = None
    for _ in range(15):
        stats = reinforce_episodes(
            policy, env, optimizer, rng.integers(20, size=16), generator, baseline=baseline,
            explore=0.2,
        )  # fmt: skip
        first = first or stats
    assert stats["env_steps"] == 16 * 5 * (2 if baseline == "greedy" else 1)
    with torch.no_grad():
        p = policy(torch.rand(4, tiny_model.block_channels[0])).mean()
    assert p < 0.5 and stats["block_fraction"] < first["block_fraction"]


@pytest.fixture
def tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    write_folder(root / "train", per_class=20)
    torch.manual_seed(0)
    model = build_resnet(8, widths=(4, 8, 16))
    arch = {"name": "cifar_resnet", "depth": 8, "num_classes": 10, "widths": [4, 8, 16]}
    ckpt = save_checkpoint(
        tmp_path / "base8.pt",
        {"kind": "base", "config": {}, "arch": arch, "model": model.state_dict()},
    )
    return root, ckpt


def test_cli_trains_resumes_and_evaluates(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    root, ckpt = tiny_run
    out = tmp_path / "ol"
    common = [
        "--checkpoint", str(ckpt), "--data-dir", str(root), "--device", "cpu",
        "--num-envs", "8", "--out", str(out), "--log-every", "1", "--no-progress",
    ]  # fmt: skip
    first = open_loop.main([*common, "--total-steps", "32"])  # K = 2: 2 updates of 16 steps
    assert first["env_steps"] == 32 and first["num_images"] == 20 and first["split"] == "val"
    again = open_loop.main([*common, "--total-steps", "64", "--resume"])
    assert again["env_steps"] == 64
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [16, 32, 48, 64]
    payload, policy = load_open_loop(out / "final.pt")
    assert payload["step"] == 64 and policy.num_decisions == 2
    assert json.loads((out / "val.json").read_text())["accuracy"] == again["accuracy"]
    with pytest.raises(SystemExit):  # a finished run is not started over
        open_loop.main([*common, "--total-steps", "32"])
