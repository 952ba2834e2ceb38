"""scripts/compare_agents.py on a tiny SP checkpoint and a synthetic data root."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from synthetic import write_folder

from agents.gate_agent import GateAgent
from agents.gates import RNNGate
from agents.protocol import check_gate_agent, evaluate_agent
from agents.skipnet import SkipNet, load_backbone_and_gate
from skipenv.data.loader import normalize
from skipenv.data.splits import load_cifar10
from skipenv.envs.config import EnvConfig
from skipenv.envs.env import SkipNetEnv
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models.checkpoint import save_checkpoint
from skipenv.models.resnet import build_resnet

compare = load_script("scripts/compare_agents.py")


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    write_folder(root / "train", per_class=20)  # 200 images: 180 train, 20 val
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path / "cache"))
    return root


@pytest.fixture
def sp_checkpoint(tmp_path: Path, data_root: Path) -> Path:
    """A tiny SP checkpoint whose gate (the authors' init, not the execute-all one) skips some
    blocks and runs others on the synthetic val images."""
    torch.manual_seed(0)
    backbone = build_resnet(14, widths=(4, 8, 16)).eval()
    gate = RNNGate(backbone.block_channels, init_execute_prob=None)
    x = normalize(load_cifar10("val", data_root, progress=False).images)  # 20 x 3 x 32 x 32
    with torch.no_grad():  # spread p(execute) out and centre it on 0.5 for these images
        gate.proj.weight.mul_(20.0)
        probs = backbone.forward_gated(x, gate, routing="masked").probs  # 20 x K
        gate.proj.bias.sub_(torch.logit(probs).median())
    model = SkipNet(backbone, gate)
    payload = {
        "kind": "sp",
        "config": {},
        "arch": model.arch(),
        "model": backbone.state_dict(),
        "gate": gate.state_dict(),
    }
    return save_checkpoint(tmp_path / "sp.pt", payload)


def common_args(checkpoint: Path, root: Path) -> list[str]:
    return [
        "--checkpoint",
        str(checkpoint),
        "--data-dir",
        str(root),
        "--device",
        "cpu",
        "--num-envs",
        "8",  # 20 val images: batches of 8, 8 and 4
        "--no-progress",
    ]


def test_compare_on_sp_checkpoint(
    sp_checkpoint: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "compare.json"
    results = compare.main([*common_args(sp_checkpoint, data_root), "--json", str(out)])
    printed = capsys.readouterr().out
    assert "gate agent == batched forward: True" in printed

    saved = json.loads(out.read_text())
    assert saved["num_images"] == 20 and saved["kind"] == "sp"
    assert saved["gate_agent_equals_batched_forward"] is True
    assert saved["gate_check"]["decisions_equal"] and saved["gate_check"]["predictions_equal"]
    rows = {r["agent"]: r for r in saved["rows"]}
    matched = [name for name in rows if name.startswith("RandomSkip(p=") and "matched" in name]
    assert len(matched) == 1 and matched[0].endswith("matched to GateAgent)")
    assert set(rows) - set(matched) == {
        "GateAgent",
        "AlwaysExecute",
        "RandomSkip(p=0.9)",
        "RandomSkip(p=0.75)",
        "RandomSkip(p=0.5)",
        "FixedPattern.skip_last(k=1)",
        "FixedPattern.skip_last(k=2)",
    }
    for row in saved["rows"]:
        assert set(row) >= {
            "agent",
            "family",
            "point",
            "accuracy",
            "loss",
            "flops_fraction",
            "block_fraction",
            "return",
            "steps_per_s",
            "routing",  # issue 12: tests/test_routing_scripts.py checks its values
            "env_steps",
            "train_wall_s",
        }
        assert 0.0 <= row["accuracy"] <= 1.0
        assert 0.0 < row["flops_fraction"] <= 1.0 + 1e-9
        assert row["steps_per_s"] > 0
    flops = [r["flops_fraction"] for r in saved["rows"]]
    assert flops == sorted(flops)

    full = rows["AlwaysExecute"]
    assert full["block_fraction"] == 1.0
    assert full["flops_fraction"] == pytest.approx(1.0)
    gate = rows["GateAgent"]
    assert 1 / 6 < gate["block_fraction"] < 1.0  # the gate really decides: some blocks skipped
    assert gate["accuracy"] == saved["gate_check"]["accuracy_batched"]
    # ResNet-14 has 2 blocks per stage: k=2 leaves block 0 only, k=1 blocks 0, 2, 4
    assert rows["FixedPattern.skip_last(k=2)"]["block_fraction"] == pytest.approx(1 / 6)
    assert rows["FixedPattern.skip_last(k=1)"]["block_fraction"] == pytest.approx(3 / 6)
    # paper return: alpha * skipped fraction - cross-entropy; all executed -> no bonus
    assert full["return"] < 0
    assert results["rows"] == saved["rows"]


def test_limit_and_sb3_recurrent_model(
    sp_checkpoint: Path, data_root: Path, tmp_path: Path
) -> None:
    from sb3_contrib import RecurrentPPO

    env = SkipNetEnv(checkpoint=sp_checkpoint, depth=14, data_root=data_root, split="val")
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=8, batch_size=8, seed=0, device="cpu")
    model.save(tmp_path / "rppo.zip")
    results = compare.main(
        [
            *common_args(sp_checkpoint, data_root),
            "--limit",
            "6",
            "--num-envs",
            "4",
            "--random-p",
            "--skip-last",
            "--sb3",
            str(tmp_path / "rppo.zip"),
            "--sb3-algo",
            "recurrentppo",
        ]
    )
    assert results["num_images"] == 6
    names = {r["agent"] for r in results["rows"]}
    assert {n for n in names if "matched" not in n} == {
        "GateAgent",
        "AlwaysExecute",
        "SB3:RecurrentPPO",
    }
    assert len(names) == 5  # a RandomSkip at each learned agent's rate
    assert results["gate_agent_equals_batched_forward"] is True
    for row in results["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0


def test_missing_checkpoint_is_a_clear_error(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "final.pt"
    with pytest.raises(SystemExit) as exit_info:
        compare.main(common_args(missing, data_root))
    assert exit_info.value.code == 2
    assert f"no checkpoint at {missing}" in capsys.readouterr().err


def test_plot_without_matplotlib_says_what_to_do(
    sp_checkpoint: Path,
    data_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit):
        compare.main([*common_args(sp_checkpoint, data_root), "--plot", str(tmp_path / "p.png")])
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_gate_check_reports_a_mismatch(sp_checkpoint: Path, data_root: Path) -> None:
    _, backbone, gate = load_backbone_and_gate(sp_checkpoint, torch.device("cpu"))
    data = load_cifar10("val", data_root, progress=False)
    config = EnvConfig(backbone=backbone, data=data, device="cpu", alpha=0.1)
    envs = {n: SkipNetVectorEnv(n, config) for n in (8, 5)}
    env = envs[8]
    agent = GateAgent(gate, env.single_observation_space, backbone.block_channels)
    batches = [np.arange(0, 8), np.arange(8, 13)]
    run = evaluate_agent("GateAgent", agent, envs.__getitem__, batches, progress=False)
    assert run.executed.shape == (13, backbone.num_blocks)
    assert check_gate_agent(run, env, gate, batches)["equal"]
    run.executed[3, 2] = not run.executed[3, 2]  # one other decision, one other prediction
    run.prediction[5] = (run.prediction[5] + 1) % 10
    check = check_gate_agent(run, env, gate, batches)
    assert not check["equal"] and not check["decisions_equal"]
    assert check["images_with_other_decisions"] == 1
    assert check["images_with_other_predictions"] == 1


def test_sb3_model_of_another_backbone_is_refused(
    sp_checkpoint: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stable_baselines3 import PPO

    env = SkipNetEnv(depth=8, pretrained=False, data_root=data_root, split="val", obs_mode="dict")
    PPO("MultiInputPolicy", env, n_steps=8, batch_size=8, device="cpu").save(tmp_path / "ppo")
    with pytest.raises(SystemExit):
        compare.main([*common_args(sp_checkpoint, data_root), "--sb3", str(tmp_path / "ppo")])
    assert "trained on a backbone of another depth" in capsys.readouterr().err


def test_leaderboard_from_manifest(
    sp_checkpoint: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tiny saved agents at two operating points each -> table (md, csv), JSON and a PNG."""
    from PIL import Image

    sb3 = load_script("train/sb3.py")
    open_loop = load_script("train/open_loop.py")
    common = ["--checkpoint", str(sp_checkpoint), "--data-dir", str(data_root)]
    common += ["--device", "cpu", "--num-envs", "4", "--no-progress", "--total-steps", "40"]
    agents = []
    for alpha in ("0.1", "2"):
        out = tmp_path / f"ppo-{alpha}"
        sb3.main([*common, "--alpha", alpha, "--out", str(out), "--hp", "n_steps=5",
                  "batch_size=10", "n_epochs=1"])  # fmt: skip
        agents.append({"family": "PPO", "point": f"alpha={alpha}", "kind": "sb3", "algo": "ppo",
                       "path": str(out / "final.zip")})  # fmt: skip
        out = tmp_path / f"ol-{alpha}"
        open_loop.main([*common, "--alpha", alpha, "--out", str(out)])
        agents.append({"family": "OpenLoop", "point": f"alpha={alpha}", "kind": "openloop",
                       "path": str(out / "final.pt")})  # fmt: skip
    agents.append({"family": "SP gate", "kind": "gate", "path": str(sp_checkpoint)})
    agents.append({"family": "SP net", "kind": "skipnet", "path": str(sp_checkpoint),
                   "env_steps": 123, "train_wall_s": 4.5})  # fmt: skip
    manifest = tmp_path / "agents.yml"
    manifest.write_text(json.dumps({"backbone": str(sp_checkpoint), "agents": agents}))
    capsys.readouterr()

    out = tmp_path / "board"
    results = compare.main(
        ["--manifest", str(manifest), "--data-dir", str(data_root), "--device", "cpu",
         "--num-envs", "8", "--no-progress", "--random-p", "--skip-last", "1", "--out", str(out)]
    )  # fmt: skip
    rows = {r["agent"]: r for r in results["rows"]}
    learned = ["PPO(alpha=0.1)", "PPO(alpha=2)", "OpenLoop(alpha=0.1)", "OpenLoop(alpha=2)"]
    for name in learned:
        assert rows[name]["env_steps"] >= 40 and rows[name]["train_wall_s"] > 0
        assert rows[name]["source"]["kind"] in ("sb3", "openloop")
    assert rows["SP net"]["env_steps"] == 123 and rows["SP net"]["backbone"] == "own"
    # the gate on the env's backbone (the same weights here) == the checkpoint's own gate
    assert (
        rows["SP gate"]["accuracy"] == rows["GateAgent"]["accuracy"] == rows["SP net"]["accuracy"]
    )
    matched = [r for r in results["rows"] if r["family"] == "RandomSkip (matched)"]
    assert len(matched) == 6  # GateAgent, SP gate, 2 PPO, 2 OpenLoop (not SP net: own backbone)
    assert {"AlwaysExecute", "FixedPattern.skip_last(k=1)"} <= set(rows)

    saved = json.loads((out / "leaderboard.json").read_text())
    assert saved["rows"] == results["rows"] and saved["manifest"] == str(manifest)
    md = (out / "leaderboard.md").read_text()
    assert all(f"| {name} |" in md for name in learned)
    with (out / "leaderboard.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    with Image.open(out / "leaderboard.png") as png:
        assert png.format == "PNG" and png.size[0] > 400
    assert "wrote" in capsys.readouterr().out

    # table and plot again from the JSON alone: the same table, a fresh PNG
    again = tmp_path / "again"
    compare.main(["--from-json", str(out / "leaderboard.json"), "--out", str(again)])
    assert (again / "leaderboard.md").read_text() == md
    assert (again / "leaderboard.csv").read_text() == (out / "leaderboard.csv").read_text()
    assert (again / "leaderboard.png").stat().st_size > 0


def test_bad_manifest_is_a_clear_error(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "agents.yml"
    manifest.write_text("backbone: x\nagents:\n  - {family: A, kind: magic, path: a.pt}\n")
    with pytest.raises(SystemExit):
        compare.main(["--manifest", str(manifest), "--data-dir", str(data_root), "--no-progress"])
    assert "kind 'magic'" in capsys.readouterr().err
