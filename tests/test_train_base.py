"""train/base.py on a synthetic image folder at a tiny depth: smoke, resume, bad checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, load_script
from synthetic import write_folder

from skipenv.models.checkpoint import CheckpointError, load_backbone, load_checkpoint
from skipenv.models.resnet import SkipResNet

base = load_script("train/base.py")


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    write_folder(root / "train", per_class=10)  # 100 images: 90 train, 10 val
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path / "cache"))
    return root


def tiny_args(root: Path, out: Path, **kw) -> base.Args:
    defaults = dict(out=out, depth=8, epochs=2, batch_size=16, data_dir=str(root), progress=False)
    return base.Args(**(defaults | kw))


def test_cli_smoke_run_writes_checkpoints_and_metrics(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        str(REPO / "train" / "base.py"),
        "--out",
        str(out),
        "--depth",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--data-dir",
        str(data_root),
        "--no-progress",
    ]
    subprocess.run(cmd, check=True, env=env, timeout=300, capture_output=True)
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1.0]
    assert 0.0 <= lines[0]["val_accuracy"] <= 1.0
    ckpt = load_checkpoint(out / "final.pt", kinds=("base",))
    assert ckpt["arch"]["depth"] == 8 and ckpt["step"] == 90 // 16
    assert ckpt["config"]["epochs"] == 1
    help_text = subprocess.run([*cmd[:2], "--help"], env=env, capture_output=True, text=True)
    assert "passes over the training split" in help_text.stdout  # field docstrings reach --help


def test_resume_after_interruption_gives_identical_weights(data_root: Path, tmp_path: Path) -> None:
    base.main(tiny_args(data_root, tmp_path / "straight"))
    base.main(tiny_args(data_root, tmp_path / "split", max_steps=7))  # stops mid-epoch 2
    first = load_checkpoint(tmp_path / "split" / "last.pt")
    assert first["step"] == 7
    partial = load_checkpoint(tmp_path / "split" / "final.pt")  # a usable, partly trained model
    assert (partial["step"], partial["total_steps"]) == (7, 10)
    load_backbone(partial)
    base.main(tiny_args(data_root, tmp_path / "split", resume=True))
    a = load_checkpoint(tmp_path / "straight" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "final.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    epochs = [json.loads(ln)["epoch"] for ln in (tmp_path / "split" / "metrics.jsonl").open()]
    assert epochs == [1.0, 7 / 5, 2.0]


def test_refuses_to_overwrite_and_rejects_bad_checkpoints(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    base.main(tiny_args(data_root, out, max_steps=2))
    with pytest.raises(FileExistsError, match="--resume"):
        base.main(tiny_args(data_root, out))
    with pytest.raises(CheckpointError, match="depth"):
        base.main(tiny_args(data_root, out, depth=14, resume=True))
    (out / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read"):
        base.main(tiny_args(data_root, out, resume=True))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        base.main(tiny_args(data_root, tmp_path / "empty", resume=True))


def test_random_routes_draw_per_image_rates() -> None:
    torch.manual_seed(0)
    execute = base.random_routes(4000, 17, 0.6, torch.device("cpu"))  # B x K
    assert execute.shape == (4000, 17) and execute.dtype == torch.bool
    ran = execute.float().mean(dim=1)  # B: share of decisions executed per image
    assert abs(float(ran.mean()) - 0.7) < 0.02  # 1 - E[r], r ~ U[0, 0.6]
    assert float(ran.min()) < 0.3 and float(ran.max()) == 1.0  # heavy and full routes occur
    assert not base.random_routes(8, 5, 0.0, torch.device("cpu")).logical_not().any()


def test_drop_max_trains_with_skipped_blocks(data_root: Path, tmp_path: Path) -> None:
    calls = []
    original = SkipResNet.forward_skip

    def spy(self, x, execute):
        calls.append(execute.float().mean().item())
        return original(self, x, execute)

    SkipResNet.forward_skip = spy
    try:
        base.main(tiny_args(data_root, tmp_path / "ld", depth=14, epochs=1, drop_max=0.6))
    finally:
        SkipResNet.forward_skip = original
    assert len(calls) == 90 // 16 and min(calls) < 1.0  # every step routed, some blocks skipped
    assert load_checkpoint(tmp_path / "ld" / "final.pt")["config"]["drop_max"] == 0.6
    with pytest.raises(ValueError, match="drop-max"):
        base.main(tiny_args(data_root, tmp_path / "bad", drop_max=1.0))
