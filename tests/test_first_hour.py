"""What a new user meets first: runs that say what they do (start summary, readable evaluation
lines, TensorBoard, --threads), supervised.py's refusal without a starting point, usable
checkpoints after --max-steps, the demo on the shipped sample, and the comparison plot's
helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, load_script
from PIL import Image
from synthetic import write_folder

from agents import leaderboard
from agents.gates import RNNGate
from agents.skipnet import SkipNet, load_skipnet
from skipenv.models.checkpoint import load_backbone, load_checkpoint, save_checkpoint
from skipenv.models.resnet import build_resnet
from skipenv.training.devices import set_threads
from skipenv.training.summary import format_metrics, start_summary

base = load_script("train/base.py")
supervised = load_script("train/supervised.py")
hybrid = load_script("train/hybrid.py")
compare = load_script("scripts/compare_agents.py")
demo = load_script("scripts/demo.py")


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    write_folder(root / "train", per_class=10)  # 100 images: 90 train, 10 val
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path / "cache"))
    return root


def tiny(module, root: Path, out: Path, **kw):
    defaults = dict(out=out, depth=8, epochs=2, batch_size=16, data_dir=str(root), progress=False)
    if module is supervised and "init" not in kw:
        defaults["from_scratch"] = True
    return module.Args(**(defaults | kw))


# ------------------------------------------------------------------ start summary, lines


def test_training_prints_a_start_summary_and_readable_evaluations(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    base.main(tiny(base, data_root, out, max_steps=5, tensorboard=False))
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("train/base.py: plain ResNet-8, 2 epochs")
    assert f"  device  cpu, {torch.get_num_threads()} threads" in lines
    assert "  data    train (90 images), evaluated on val (10 images)" in lines
    assert any(ln.startswith("  steps   5 to run, 0 -> 5 of 10 (2 epochs of 5)") for ln in lines)
    assert any(ln.startswith(f"  output  {out} (last.pt, final.pt") for ln in lines)
    assert "  start   fresh" in lines
    evaluation = next(ln for ln in lines if ln.startswith("step 5/10 (epoch 1.00)"))
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert f"val acc {100 * logged['val_accuracy']:.2f}%" in evaluation
    assert "FLOPs 100.0%" in evaluation and "{" not in evaluation  # not a JSON dump
    assert isinstance(logged["val_loss"], float) and len(repr(logged["val_loss"])) > 8  # precise
    assert "stopped by --max-steps after step 5 of 10" in text

    base.main(tiny(base, data_root, out, resume=True, tensorboard=False))
    assert f"  start   resumed from {out / 'last.pt'} at step 5" in capsys.readouterr().out


def test_start_summary_and_metrics_format() -> None:
    text = start_summary("x.py: thing", device="cpu", data="val (5 images)", start="fresh")
    assert text.splitlines()[0] == "x.py: thing" and "  start   fresh" in text.splitlines()
    line = format_metrics(
        {"step": 3, "epoch": 0.5, "val_accuracy": 0.886, "val_flops_fraction": 0.66123},
        "val",
        6,
    )
    assert line == "step 3/6 (epoch 0.50)  val acc 88.60%  FLOPs 66.1%"


def test_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 == torch.get_num_threads()
        assert set_threads(None) == 1  # None keeps torch's setting ($OMP_NUM_THREADS)
        for bad in (0, -2, 1.5, True):
            with pytest.raises(ValueError, match="--threads"):
                set_threads(bad)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "script", ["train/base.py", "train/supervised.py", "train/hybrid.py", "train/evaluate.py",
               "scripts/compare_agents.py", "scripts/demo.py", "scripts/pretrained_table.py",
               "benchmarks/env_throughput.py", "benchmarks/skipping.py", "benchmarks/hrl_step.py",
               "benchmarks/data.py", "train/static.py", "scripts/skip_tolerance.py",
               "scripts/static_routes.py", "scripts/routing_figure.py"],
)  # fmt: skip
def test_every_entry_point_takes_threads(script: str) -> None:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(REPO / script), "--help"], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and "--threads" in r.stdout, r.stderr[-2000:]


# ------------------------------------------------------------------ supervised.py's start


def test_supervised_refuses_to_start_without_init(data_root: Path, tmp_path: Path) -> None:
    args = tiny(supervised, data_root, tmp_path / "sp", from_scratch=False)
    with pytest.raises(ValueError, match=r"--init PATH.*or --from-scratch"):
        supervised.main(args)
    assert not (tmp_path / "sp").exists()  # refused before any work
    with pytest.raises(ValueError, match="contradict"):
        supervised.recipe(tiny(supervised, data_root, tmp_path / "sp", init=Path("x.pt"),
                               from_scratch=True))  # fmt: skip
    scratch = supervised.recipe(supervised.Args(from_scratch=True))
    assert (scratch.epochs, scratch.lr) == (30, 0.1)
    fine = supervised.recipe(supervised.Args(init=Path("base.pt")))
    assert (fine.epochs, fine.lr) == (4, 0.02)
    assert supervised.recipe(supervised.Args(from_scratch=True, lr=0.05)).lr == 0.05
    env = os.environ | {"PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(REPO / "train/supervised.py"), "--out",
                        str(tmp_path / "cli")], env=env, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode != 0 and "--from-scratch" in r.stderr
    with pytest.raises(ValueError, match=r"--sp PATH.*--pretrain.init"):
        hybrid.main(hybrid.Args(out=tmp_path / "hrl", data_dir=str(data_root), progress=False))


# ------------------------------------------------------------------ --max-steps


def test_max_steps_leaves_a_final_checkpoint_the_next_stage_takes(
    data_root: Path, tmp_path: Path
) -> None:
    base.main(tiny(base, data_root, tmp_path / "base", max_steps=3, tensorboard=False))
    final = load_checkpoint(tmp_path / "base" / "final.pt", kinds=("base",))
    assert (final["step"], final["total_steps"]) == (3, 10)
    load_backbone(final)
    supervised.main(
        tiny(supervised, data_root, tmp_path / "sp", init=tmp_path / "base" / "final.pt",
             max_steps=2, tensorboard=False)
    )  # fmt: skip
    sp_final = tmp_path / "sp" / "final.pt"
    load_skipnet(sp_final)
    assert not hybrid.finished(sp_final)  # hybrid.py would finish this SP run, not skip it
    supervised.main(
        tiny(supervised, data_root, tmp_path / "sp", init=tmp_path / "base" / "final.pt",
             resume=True, tensorboard=False)
    )  # fmt: skip
    assert hybrid.finished(sp_final) and load_checkpoint(sp_final)["step"] == 10


# ------------------------------------------------------------------ TensorBoard


def test_tensorboard_logs_scalars_skip_rates_histograms_and_routes(
    data_root: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "sp"
    supervised.main(tiny(supervised, data_root, out, epochs=2))
    runs = list((out / "tb").glob("events.out.tfevents.*"))
    assert runs, "no event file"
    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/batch_accuracy", "train/block_fraction",
                "train/flops_fraction", "eval/val_accuracy", "eval/val_flops_fraction",
                "skip_rate/block_00", "skip_rate/block_02"):  # fmt: skip
        assert tag in tags["scalars"], tag
    assert "train/p_execute" in tags["histograms"] and "p_execute/decision_00" in tags["histograms"]
    assert "routes" in tags["images"]
    accuracy = [e.value for e in events.Scalars("eval/val_accuracy")]
    logged = [json.loads(ln)["val_accuracy"] for ln in (out / "metrics.jsonl").open()]
    assert accuracy == pytest.approx(logged)
    base.main(tiny(base, data_root, tmp_path / "off", max_steps=2, tensorboard=False))
    assert not (tmp_path / "off" / "tb").exists()


# ------------------------------------------------------------------ demo and plot helpers


@pytest.fixture
def tiny_sp(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    backbone = build_resnet(14, widths=(4, 8, 16))
    net = SkipNet(backbone, RNNGate(backbone.block_channels))
    payload = {"kind": "sp", "arch": net.arch(), "model": backbone.state_dict(),
               "gate": net.gate.state_dict()}  # fmt: skip
    return save_checkpoint(tmp_path / "tiny-sp.pt", payload)


def test_demo_routes_the_shipped_sample_and_draws_the_picture(
    tiny_sp: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "routes.png"
    result = demo.main(demo.Args(checkpoint=str(tiny_sp), out=out, progress=False, device="cpu"))
    text = capsys.readouterr().out
    assert "data    sample (1,000 images)" in text and "distinct routes" in text
    assert result["num_images"] == 1000 and sum(result["routes"].values()) == 1000
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 < result["flops_fraction"] <= 1.0
    with Image.open(out) as picture:
        assert picture.size[0] > 500 and picture.size[1] > 300


def test_pareto_front_and_checkpoint_alpha() -> None:
    points = [(50, 57), (66, 78), (66.1, 88), (76, 78), (100, 86), (83, 87)]
    assert leaderboard.pareto_front(points) == [(50, 57), (66, 78), (66.1, 88)]
    assert compare.checkpoint_alpha({"kind": "hrl", "config": {"alpha": 0.6}}) == 0.6
    assert compare.checkpoint_alpha({"kind": "sp", "config": {"alpha": 3}}) == 0.1
    assert compare.checkpoint_alpha({"kind": "hrl", "config": {}}, default=0.2) == 0.2
    refs = leaderboard.reference_points("val", 38)
    assert {r["name"] for r in refs} >= {"resnet38", "skipnet38-hrl-a0.6"}
    assert leaderboard.reference_points("train", 38) == []
    assert np.isfinite([r["accuracy"] for r in refs]).all()
