"""train/sb3.py from the command line: every algorithm trains a few hundred env steps on a tiny
backbone (ResNet-8, synthetic images), resumes, and writes a val JSON with evaluate.py's fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_script
from synthetic import write_folder

from agents.protocol import SB3_ALGOS, load_sb3
from skipenv.models.checkpoint import save_checkpoint
from skipenv.models.resnet import build_resnet

sb3 = load_script("train/sb3.py")

#: tiny-run hyperparameters per algorithm: rollouts of one episode (K = 2 on ResNet-8)
TINY = {
    "ppo": ["n_steps=4", "batch_size=16", "n_epochs=1"],
    "a2c": ["n_steps=2"],
    "dqn": ["learning_starts=16", "buffer_size=1000", "batch_size=8"],
    "recurrentppo": ["n_steps=4", "batch_size=16", "n_epochs=1"],
    "maskableppo": ["n_steps=4", "batch_size=16", "n_epochs=1"],
}
EVAL_KEYS = {
    "accuracy", "loss", "flops_fraction", "flops_fraction_with_gate", "block_fraction",
    "skip_rates", "images_per_s", "num_images", "checkpoint", "kind", "depth", "split",
}  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic data root (180 train, 20 val images) and a ResNet-8 base checkpoint."""
    tmp = tmp_path_factory.mktemp("sb3")
    root = tmp / "data"
    write_folder(root / "train", per_class=20)
    torch.manual_seed(0)
    model = build_resnet(8, widths=(4, 8, 16))
    arch = {"name": "cifar_resnet", "depth": 8, "num_classes": 10, "widths": [4, 8, 16]}
    ckpt = save_checkpoint(
        tmp / "base8.pt", {"kind": "base", "config": {}, "arch": arch, "model": model.state_dict()}
    )
    return root, ckpt


def cli(algo: str, ckpt: Path, root: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--algo", algo, "--checkpoint", str(ckpt), "--data-dir", str(root), "--device", "cpu",
        "--num-envs", "4", "--total-steps", str(steps), "--out", str(out), "--seed", "1",
        "--checkpoint-minutes", "0", "--log-every", "16", "--no-progress",
        "--hp", *TINY[algo], *extra,
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("algo", list(SB3_ALGOS))
def test_trains_resumes_and_evaluates(algo: str, setup: tuple[Path, Path], tmp_path: Path) -> None:
    root, ckpt = setup
    out = tmp_path / algo
    first = sb3.main(cli(algo, ckpt, root, out, 96))
    assert first["env_steps"] >= 96
    assert EVAL_KEYS <= set(first) and first["split"] == "val" and first["num_images"] == 20
    assert 0.0 < first["flops_fraction"] <= 1.0 and len(first["skip_rates"]) == 3
    for name in ("final.zip", "last.zip", "last.json", "run.json", "progress.csv", "val.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "val.json").read_text())["env_steps"] == first["env_steps"]
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines and all(0.0 <= ln["accuracy"] <= 1.0 for ln in lines)
    if algo == "dqn":
        assert (out / "last.replay.pkl").is_file()

    # --resume continues the step count to the new total, logs after the old steps
    again = sb3.main(cli(algo, ckpt, root, out, 192, "--resume"))
    assert 192 <= again["env_steps"] < 192 + 96
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == again["env_steps"]

    # the saved agent loads as compare_agents loads it, with its observation statistics
    agent = load_sb3(out / "final.zip", algo, torch.device("cpu"))
    assert agent.normalizer is not None and agent.model.num_timesteps == again["env_steps"]
    # final.zip leaves the optimizer's moments out (last.zip, for --resume, keeps them)
    assert not agent.model.policy.optimizer.state
    assert load_sb3(out / "last.zip", algo, torch.device("cpu")).model.policy.optimizer.state


def test_refuses_bad_input(setup: tuple[Path, Path], tmp_path: Path) -> None:
    root, ckpt = setup
    out = tmp_path / "ppo"
    with pytest.raises(SystemExit):  # nothing to resume
        sb3.main(cli("ppo", ckpt, root, out, 32, "--resume"))
    with pytest.raises(SystemExit):  # not KEY=VALUE
        sb3.main(cli("ppo", ckpt, root, out, 32, "n_steps"))
    sb3.main(cli("ppo", ckpt, root, out, 32))
    with pytest.raises(SystemExit):  # a finished run is not overwritten
        sb3.main(cli("ppo", ckpt, root, out, 32))
    with pytest.raises(SystemExit):  # resuming with another algorithm
        sb3.main(cli("a2c", ckpt, root, out, 64, "--resume"))


def test_hyperparams_file_and_overrides() -> None:
    hp = sb3.load_hyperparams(sb3.HYPERPARAMS, "ppo", ["n_steps=17", "gamma=0.99"])
    assert hp["n_steps"] == 17 and hp["gamma"] == 0.99 and hp["policy"] == "MlpPolicy"
    for algo in SB3_ALGOS:  # every algorithm has a section whose keys its class accepts
        hp = sb3.load_hyperparams(sb3.HYPERPARAMS, algo, [])
        params = set(sb3.algo_class(algo).__init__.__code__.co_varnames)
        assert set(hp) - set(sb3.OWN_KEYS) <= params, algo
