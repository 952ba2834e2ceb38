"""train/supervised.py, train/hybrid.py and train/evaluate.py on synthetic images, tiny depth."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, load_script
from synthetic import write_folder

from agents.skipnet import load_skipnet
from skipenv.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from skipenv.models.resnet import build_resnet

ENV = os.environ | {"PYTHONPATH": str(REPO)}  # os.environ is sandboxed by conftest by now


supervised = load_script("train/supervised.py")
hybrid = load_script("train/hybrid.py")
evaluate = load_script("train/evaluate.py")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_folder(root / "train", per_class=10)  # 100 images: 90 train, 10 val
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def sp_args(root: Path, out: Path, **kw) -> supervised.Args:
    defaults = dict(
        out=out, depth=8, epochs=2, batch_size=16, data_dir=str(root), progress=False
    ) | ({} if "init" in kw else {"from_scratch": True})
    return supervised.Args(**(defaults | kw))


def hrl_args(root: Path, out: Path, sp: Path | None, **kw) -> hybrid.Args:
    defaults = dict(out=out, sp=sp, epochs=2, batch_size=16, data_dir=str(root), progress=False)
    return hybrid.Args(**(defaults | kw))


@pytest.fixture(scope="module")
def sp_checkpoint(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sp")
    supervised.main(sp_args(data_root, out, epochs=1))
    return out / "final.pt"


def run_cli(script: str, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "train" / script), *argv]
    return subprocess.run(cmd, env=ENV, timeout=timeout, capture_output=True, text=True)


def test_cli_smoke_sp_then_hrl_then_evaluate(data_root: Path, tmp_path: Path) -> None:
    # base -> SP from it -> HRL -> evaluate each, all through the command lines
    common = ["--batch-size", "16", "--data-dir", str(data_root), "--no-progress"]
    base_out, sp_out, hrl_out = tmp_path / "base", tmp_path / "sp", tmp_path / "hrl"
    r = run_cli("base.py", "--out", str(base_out), "--depth", "8", "--epochs", "1", *common)
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "supervised.py", "--out", str(sp_out), "--init", str(base_out / "final.pt"),
        "--depth", "8", "--epochs", "1", *common,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "hybrid.py", "--out", str(hrl_out), "--sp", str(sp_out / "final.pt"),
        "--epochs", "1", "--alpha", "0.5", *common,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for out, kind in [(base_out, "base"), (sp_out, "sp"), (hrl_out, "hrl")]:
        ckpt = load_checkpoint(out / "final.pt", kinds=(kind,))
        assert ckpt["arch"]["depth"] == 8 and ckpt["step"] == 90 // 16
        metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        assert metrics and 0 <= metrics[-1]["val_accuracy"] <= 1
        js = tmp_path / f"{kind}.json"
        r = run_cli(
            "evaluate.py", "--checkpoint", str(out / "final.pt"), "--split", "val",
            "--data-dir", str(data_root), "--json", str(js),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        result = json.loads(js.read_text())
        assert result["num_images"] == 10 and result["kind"] == kind
        assert 0 < result["flops_fraction"] <= 1.02 and 0 < result["block_fraction"] <= 1
        if kind != "base":
            assert result["accuracy"] == pytest.approx(metrics[-1]["val_accuracy"])
            assert result["flops_fraction"] == pytest.approx(metrics[-1]["val_flops_fraction"])
            # the loop logs evaluate_gated's routing diagnostics (issue 12), as evaluate.py does
            logged, measured = metrics[-1]["val_routing"], result["routing"]
            for key in ("top_route", "distinct_routes", "blocks_histogram", "dynamic_blocks"):
                assert logged[key] == measured[key], key
        else:  # a plain network has one route: its training run does not measure routing
            assert "val_routing" not in metrics[-1] and result["routing"]["distinct_routes"] == 1
        assert "routing: blocks/image" in r.stdout
    assert "per skipped block" in run_cli("hybrid.py", "--help").stdout


def test_hybrid_runs_sp_first_when_no_sp_checkpoint(data_root: Path, tmp_path: Path) -> None:
    args = hrl_args(data_root, tmp_path / "hrl", None, max_steps=2)
    args.pretrain = sp_args(data_root, Path("ignored"), epochs=1)
    hybrid.main(args)
    assert load_checkpoint(tmp_path / "hrl" / "sp" / "final.pt", kinds=("sp",))["step"] == 5
    assert load_checkpoint(tmp_path / "hrl" / "last.pt", kinds=("hrl",))["step"] == 2


@pytest.mark.parametrize("stage", ["sp", "hrl", "hrl-cosine"])
def test_resume_gives_identical_weights(
    stage: str, data_root: Path, sp_checkpoint: Path, tmp_path: Path
) -> None:
    def args(out: Path, **kw):
        if stage == "sp":
            return sp_args(data_root, out, **kw)
        if stage == "hrl-cosine":
            kw["schedule"] = "cosine"
        return hrl_args(data_root, out, sp_checkpoint, **kw)

    module = supervised if stage == "sp" else hybrid
    module.main(args(tmp_path / "straight"))
    module.main(args(tmp_path / "split", max_steps=7))  # stops mid-epoch 2
    partial = load_checkpoint(tmp_path / "split" / "final.pt")  # usable, says it is partial
    assert (partial["step"], partial["total_steps"]) == (7, 10)
    module.main(args(tmp_path / "split", resume=True))
    a = load_checkpoint(tmp_path / "straight" / "final.pt")
    b = load_checkpoint(tmp_path / "split" / "final.pt")
    for part in ("model", "gate"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=key)


def test_hybrid_resumes_after_a_kill(data_root: Path, sp_checkpoint: Path, tmp_path: Path) -> None:
    argv = [
        "--sp", str(sp_checkpoint), "--epochs", "6", "--batch-size", "16",
        "--data-dir", str(data_root), "--no-progress", "--checkpoint-minutes", "0",
    ]  # fmt: skip
    assert run_cli("hybrid.py", "--out", str(tmp_path / "straight"), *argv).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train" / "hybrid.py"), "--out", str(out), *argv],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # whatever step it is at
    proc.wait()
    assert not (out / "final.pt").exists()
    r = run_cli("hybrid.py", "--out", str(out), *argv, "--resume")
    assert r.returncode == 0, r.stderr
    a = load_checkpoint(tmp_path / "straight" / "final.pt")
    b = load_checkpoint(out / "final.pt")
    for part in ("model", "gate"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=key)
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no evaluation logged twice


def test_cosine_schedule_decays_to_zero(
    data_root: Path, sp_checkpoint: Path, tmp_path: Path
) -> None:
    assert hybrid.lr_scale("constant", 7, 10) == 1.0
    scales = [hybrid.lr_scale("cosine", s, 10) for s in range(10)]
    assert scales[0] == 1.0 and scales[5] == pytest.approx(0.5) and 0 < scales[-1] < 0.03
    assert all(a > b for a, b in itertools.pairwise(scales))
    args = hrl_args(data_root, tmp_path / "cos", sp_checkpoint, schedule="cosine")
    hybrid.main(args)
    ckpt = load_checkpoint(tmp_path / "cos" / "final.pt")
    last = hybrid.lr_scale("cosine", ckpt["step"] - 1, ckpt["step"])  # the last step's factor
    lrs = [g["lr"] for g in ckpt["optimizer"]["param_groups"]]
    assert lrs == pytest.approx([args.lr * last, args.gate_lr * last])
    with pytest.raises(ValueError, match="unknown --schedule 'step'"):
        hybrid.main(hrl_args(data_root, tmp_path / "bad", sp_checkpoint, schedule="step"))


def test_large_alpha_raises_skipping(data_root: Path, sp_checkpoint: Path, tmp_path: Path) -> None:
    # REINFORCE's sign: with a large compute reward the gates learn to skip more
    hybrid.main(
        hrl_args(data_root, tmp_path / "hrl", sp_checkpoint, alpha=20.0, epochs=4, gate_lr=0.1)
    )
    before = load_skipnet(sp_checkpoint)
    after = load_skipnet(tmp_path / "hrl" / "final.pt")
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        p_before = before.eval()(x).probs.mean()
        p_after = after.eval()(x).probs.mean()
    assert p_after < p_before - 0.1


def test_bad_inputs_are_clear_errors(data_root: Path, sp_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown --gate"):
        supervised.main(sp_args(data_root, tmp_path / "a", gate="lstm9"))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        hybrid.main(hrl_args(data_root, tmp_path / "b", sp_checkpoint, resume=True))
    plain = build_resnet(8)
    base_ckpt = save_checkpoint(
        tmp_path / "plain.pt",
        {
            "kind": "base",
            "arch": {"name": "cifar_resnet", "depth": 8, "num_classes": 10, "widths": [16, 32, 64]},
            "model": plain.state_dict(),
        },
    )
    with pytest.raises(CheckpointError, match=r"holds a .base. checkpoint"):
        hybrid.main(hrl_args(data_root, tmp_path / "c", base_ckpt))
    with pytest.raises(CheckpointError, match="depth"):
        supervised.main(sp_args(data_root, tmp_path / "d", depth=14, init=base_ckpt))


@pytest.mark.parametrize("script", ["base.py", "supervised.py", "hybrid.py"])
def test_torchrun_two_cpu_processes(
    script: str, data_root: Path, sp_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    stage = {
        "hybrid.py": ["--sp", str(sp_checkpoint)],
        "supervised.py": ["--depth", "8", "--from-scratch"],
        "base.py": ["--depth", "8"],
    }[script]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--standalone", str(REPO / "train" / script), "--out", str(out), *stage,
        "--epochs", "1", "--batch-size", "16", "--data-dir", str(data_root),
        "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    r = subprocess.run(cmd, env=ENV | {"OMP_NUM_THREADS": "1"}, timeout=300, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    ckpt = load_checkpoint(out / "final.pt")
    assert ckpt["step"] == 90 // 16
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # only rank 0 writes
    assert sorted(p.name for p in out.iterdir()) == ["final.pt", "last.pt", "metrics.jsonl", "tb"]


def test_gate_alone_on_a_frozen_backbone(
    data_root: Path, sp_checkpoint: Path, tmp_path: Path
) -> None:
    args = hrl_args(
        data_root,
        tmp_path / "rl",
        sp_checkpoint,
        freeze_backbone=True,
        fresh_gate=True,
        reward="accuracy",
        price=0.5,
        entropy=0.01,
        epochs=1,
    )
    hybrid.main(args)
    before = load_checkpoint(sp_checkpoint)
    after = load_checkpoint(tmp_path / "rl" / "final.pt", kinds=("hrl",))
    for key, value in before["model"].items():  # the backbone never moved
        torch.testing.assert_close(after["model"][key], value, rtol=0, atol=0, msg=key)
    assert any(not torch.equal(after["gate"][k], v) for k, v in before["gate"].items())
    assert after["config"]["reward"] == "accuracy" and after["config"]["freeze_backbone"]
    with pytest.raises(ValueError, match="--reward"):
        hybrid.main(hrl_args(data_root, tmp_path / "bad", sp_checkpoint, reward="correct"))


def test_sp_gumbel_noise_and_target_rate(
    data_root: Path, sp_checkpoint: Path, tmp_path: Path
) -> None:
    """ConvNet-AIG's options of SP (issue 12): off by default; a zero-weighted target-rate
    term changes nothing; a weighted one with Gumbel noise lowers the execute rate; --init
    takes a SkipNet checkpoint's backbone."""
    supervised.main(sp_args(data_root, tmp_path / "paper"))
    supervised.main(sp_args(data_root, tmp_path / "zero", target_rate=0.2, target_weight=0.0))
    a = load_checkpoint(tmp_path / "paper" / "final.pt")
    b = load_checkpoint(tmp_path / "zero" / "final.pt")
    for part in ("model", "gate"):  # the default loss is the cross-entropy alone
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=key)
    assert a["config"]["gumbel_tau"] is None and a["config"]["target_rate"] is None

    def train_blocks(out: Path) -> float:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["train_block_fraction"]

    common = dict(init=str(sp_checkpoint), epochs=3, gate_lr=0.5)
    supervised.main(sp_args(data_root, tmp_path / "init", **common))
    supervised.main(
        sp_args(
            data_root, tmp_path / "aig", gumbel_tau=1.0, target_rate=0.0, target_weight=20.0,
            **common,
        )
    )  # fmt: skip
    assert train_blocks(tmp_path / "aig") < train_blocks(tmp_path / "init") - 0.1
    c = load_checkpoint(tmp_path / "aig" / "final.pt", kinds=("sp",))
    assert c["config"]["gumbel_tau"] == 1.0 and c["config"]["target_rate"] == 0.0
    with pytest.raises(ValueError, match="--gumbel-tau must be > 0"):
        supervised.main(sp_args(data_root, tmp_path / "e", gumbel_tau=0.0))
    with pytest.raises(ValueError, match="--target-rate must be in"):
        supervised.main(sp_args(data_root, tmp_path / "f", target_rate=1.5))
