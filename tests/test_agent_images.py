"""Which images agents learn on (issue 14, item 6): the val-agent / val-eval splits and the
env's augment option."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script, synthetic_split
from gymnasium.utils import seeding
from synthetic import write_folder

from skipenv.data.loader import augment, normalize
from skipenv.data.splits import (
    SPLITS,
    load_cifar10,
    stratified_subset,
    val_eval_count,
    val_parts,
)
from skipenv.envs.config import EnvConfig
from skipenv.envs.env import SkipNetEnv
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models.checkpoint import save_checkpoint
from skipenv.models.resnet import build_resnet
from skipenv.training.routing import static_route_correct


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A synthetic image folder of 200 training images (20 per class): 20 of them are val."""
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path / "cache"))
    write_folder(tmp_path / "data" / "train", per_class=20)
    return tmp_path / "data"


# ---------------------------------------------------------------------------- the splits


def test_val_agent_and_val_eval_partition_val(root: Path) -> None:
    val, agent, held = (
        load_cifar10(s, root, progress=False) for s in ("val", "val-agent", "val-eval")
    )
    full = load_cifar10("train-full", root, progress=False)
    assert (len(val), len(agent), len(held)) == (20, 12, 8)  # 40% of val is val-eval
    assert (agent.split, held.split) == ("val-agent", "val-eval")
    assert set(agent.indices.tolist()).isdisjoint(held.indices.tolist())
    assert sorted(agent.indices.tolist() + held.indices.tolist()) == val.indices.tolist()
    # val-eval is the stratified subset that --limit N --seed 0 routes on val
    positions = stratified_subset(val.labels, 8, seed=0)
    assert torch.equal(held.indices, val.indices[positions])
    assert torch.equal(held.images, full.images[held.indices])
    assert torch.equal(agent.labels, full.labels[agent.indices])
    assert sorted(held.class_counts()) == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]  # 8 of 10 classes


def test_val_parts_at_the_real_size_is_3000_and_the_leaderboards_2000() -> None:
    labels = torch.arange(5000) % 10  # val: 500 per class
    agent, held = val_parts(labels)
    assert val_eval_count(5000) == 2000 and (len(agent), len(held)) == (3000, 2000)
    assert torch.equal(held, stratified_subset(labels, 2000, seed=0))
    assert torch.bincount(labels[held]).tolist() == [200] * 10
    assert torch.bincount(labels[agent]).tolist() == [300] * 10
    assert sorted(agent.tolist() + held.tolist()) == list(range(5000))
    with pytest.raises(ValueError, match="at least 2 val images, got 1"):
        val_parts([3])


def test_env_draws_val_agent_images_only(root: Path, tiny_model) -> None:
    env = SkipNetEnv(backbone=tiny_model, split="val-agent", data_root=root, device="cpu")
    assert env.data.split == "val-agent" and len(env.data) == 12
    held = load_cifar10("val-eval", root, progress=False)
    for seed in range(5):
        _, info = env.reset(seed=seed)
        assert int(env.data.indices[info["index"]]) not in held.indices.tolist()
    assert "val-agent" in SPLITS and "val-eval" in SPLITS
    with pytest.raises(ValueError, match="val-agent"):
        EnvConfig(split="val-train")  # the message lists the splits


# ---------------------------------------------------------------------------- augmentation


def test_augment_crops_and_flips_with_the_envs_rng(tiny_model) -> None:
    data = synthetic_split()
    env = SkipNetEnv(backbone=tiny_model, data=data, device="cpu", augment=True)
    obs, info = env.reset(seed=3)
    # the same draws by hand: the image index, then the seed of the crops and flips
    rng, _ = seeding.np_random(3)
    index = int(rng.integers(len(data), size=1)[0])
    g = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
    expected = augment(data.images[index : index + 1], g)  # 1 x 3 x 32 x 32
    assert info["index"] == index
    assert torch.equal(env.episodes.shown, expected)
    assert not torch.equal(expected, data.images[index : index + 1])
    with torch.no_grad():
        h = tiny_model.eval().blocks[0](tiny_model.stem(normalize(expected)))  # 1 x 4 x 32 x 32
    np.testing.assert_allclose(obs[:4], h.mean(dim=(2, 3))[0].numpy(), rtol=1e-5, atol=1e-6)
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs, again)
    plain = SkipNetEnv(backbone=tiny_model, data=data, device="cpu")
    unaugmented, _ = plain.reset(options={"index": index})
    assert not np.allclose(obs, unaugmented)
    assert plain.episodes.shown is None


def test_augment_in_the_vector_env_is_seeded_and_differs_per_episode(tiny_model) -> None:
    data = synthetic_split()
    env = SkipNetVectorEnv(8, backbone=tiny_model, data=data, device="cpu", augment=True)
    indices = np.zeros(8, dtype=np.int64)  # one image eight times: different crops
    first, _ = env.reset(seed=0, options={"indices": indices})
    shown = env.episodes.shown.clone()  # 8 x 3 x 32 x 32
    assert len({bytes(s.numpy()) for s in shown}) > 1
    again, _ = env.reset(seed=0, options={"indices": indices})
    np.testing.assert_array_equal(first, again)
    assert torch.equal(env.episodes.shown, shown)


def test_augment_needs_a_bool_and_an_rng(tiny_model) -> None:
    with pytest.raises(TypeError, match="augment must be True or False, got 'yes'"):
        EnvConfig(augment="yes")
    env = SkipNetEnv(backbone=tiny_model, data=synthetic_split(), device="cpu", augment=True)
    with pytest.raises(ValueError, match="pass the env's rng"):
        env.episodes.start(np.array([0]))


# ---------------------------------------------------------------------------- train/sb3.py


def test_sb3_trains_on_val_agent_augmented_and_evaluates_on_val_eval(root: Path) -> None:
    sb3 = load_script("train/sb3.py")
    torch.manual_seed(0)
    model = build_resnet(8, widths=(4, 8, 16))
    arch = {"name": "cifar_resnet", "depth": 8, "num_classes": 10, "widths": [4, 8, 16]}
    ckpt = save_checkpoint(
        root.parent / "base8.pt",
        {"kind": "base", "config": {}, "arch": arch, "model": model.state_dict()},
    )
    out = root.parent / "ppo"

    def cli(steps: int, *extra: str) -> list[str]:
        return [
            "--algo", "ppo", "--checkpoint", str(ckpt), "--data-dir", str(root), "--device",
            "cpu", "--num-envs", "4", "--total-steps", str(steps), "--out", str(out),
            "--split", "val-agent", "--eval-split", "val-eval", "--checkpoint-minutes", "0",
            "--no-progress", "--hp", "n_steps=4", "batch_size=16", "n_epochs=1", *extra,
        ]  # fmt: skip

    first = sb3.main(cli(32, "--augment"))
    assert first["split"] == "val-eval" and first["num_images"] == 8
    run = json.loads((out / "run.json").read_text())["args"]
    assert run["split"] == "val-agent" and run["augment"] is True
    with pytest.raises(SystemExit):  # resuming without --augment is refused
        sb3.main(cli(64, "--resume"))
    assert sb3.main(cli(64, "--augment", "--resume"))["env_steps"] >= 64

    # scripts/agent_images.py tabulates the run, with its static control on val-eval
    images = load_script("scripts/agent_images.py")
    table = images.main(
        images.Args(runs=[out], out=root.parent / "table", train_limit=10,
                    data_dir=str(root), device="cpu", progress=False)
    )  # fmt: skip
    (r,) = table["rows"]
    held = load_cifar10("val-eval", root, progress=False)
    pairs = [(normalize(held.images), held.labels)]
    correct = static_route_correct(model.eval(), r["top_route"], pairs)
    assert r["static_control"] == int(correct.sum()) / 8
    assert r["condition"] == "val-agent + augment" and r["env_steps"] >= 64
    assert 0.0 <= r["train_accuracy"] <= 1.0 and 0.0 < r["train_flops_fraction"] <= 1.0
    assert table["summary"][0]["runs"] == 1
    assert json.loads((root.parent / "table" / "agent_images.json").read_text()) == table


def test_the_rgb_frame_shows_the_augmented_image(tiny_model) -> None:
    data = synthetic_split()
    env = SkipNetEnv(
        backbone=tiny_model, data=data, device="cpu", augment=True, render_mode="rgb_array"
    )
    _, info = env.reset(seed=3)
    index = info["index"]
    augmented = env.render()
    plain = SkipNetEnv(backbone=tiny_model, data=data, device="cpu", render_mode="rgb_array")
    plain.reset(options={"index": index})
    assert not np.array_equal(augmented, plain.render())
    env.episodes.shown = data.images[index : index + 1].clone()  # as if not augmented
    np.testing.assert_array_equal(env.render(), plain.render())


def test_matched_flops_recovers_the_offsets_of_a_linear_trade_off() -> None:
    images = load_script("scripts/agent_images.py")
    rows = [
        {"condition": c, "flops_fraction": f, "accuracy": 0.5 + 0.6 * f + off + noise}
        for c, off in (("train", 0.0), ("val-agent", -0.03))
        for f, noise in ((0.45, 0.002), (0.5, -0.004), (0.55, 0.002))
    ]
    fit = images.matched_flops(rows, at=0.5)
    assert fit["slope"] == pytest.approx(0.6)
    v = fit["conditions"]["val-agent"]
    assert v["minus_first"] == pytest.approx(-0.03) and 0 < v["minus_first_se"] < 0.01
    assert fit["conditions"]["train"]["accuracy"] == pytest.approx(0.8, abs=1e-9)
    assert fit["conditions"]["train"]["minus_first"] == 0.0
    assert images.matched_flops(rows[:2]) is None  # 2 runs: too few for 1 condition + 2
