"""The routing scripts on tiny checkpoints and synthetic images: compare_agents' routing
diagnostics, skip_tolerance.py, route_headroom.py and routing_figure.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from synthetic import write_image

from agents.gates import RNNGate
from agents.skipnet import SkipNet
from skipenv.data.loader import normalize
from skipenv.data.sources import CIFAR10_CLASSES
from skipenv.data.splits import load_cifar10
from skipenv.models.checkpoint import save_checkpoint
from skipenv.models.resnet import build_resnet
from skipenv.training.routing import static_route_correct

compare = load_script("scripts/compare_agents.py")
tolerance = load_script("scripts/skip_tolerance.py")
headroom = load_script("scripts/route_headroom.py")
figure = load_script("scripts/routing_figure.py")


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """200 noise images (180 train, 20 val) of differing brightness and contrast, so that a
    gate can tell them apart."""
    root, rng = tmp_path / "data", np.random.default_rng(0)
    for cls in CIFAR10_CLASSES:
        for i in range(20):
            level, contrast = rng.uniform(0.0, 1.0), rng.uniform(0.1, 1.0)
            pixels = rng.random((32, 32, 3)) * contrast + level * (1 - contrast)  # H x W x 3
            write_image(root / "train" / cls / f"{i:04d}.png", (pixels * 255).astype(np.uint8))
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path / "cache"))
    return root


@pytest.fixture
def sp_checkpoint(tmp_path: Path, data_root: Path) -> Path:
    """A tiny SP checkpoint whose gate routes the synthetic val images differently."""
    torch.manual_seed(0)
    backbone = build_resnet(14, widths=(4, 8, 16)).eval()
    gate = RNNGate(backbone.block_channels, init_execute_prob=None)
    x = normalize(load_cifar10("val", data_root, progress=False).images)  # 20 x 3 x 32 x 32
    with torch.no_grad():
        gate.proj.weight.mul_(20.0)
        probs = backbone.forward_gated(x, gate, routing="masked").probs  # 20 x K
        gate.proj.bias.sub_(torch.logit(probs).median())
    payload = {
        "kind": "sp",
        "config": {},
        "arch": SkipNet(backbone, gate).arch(),
        "model": backbone.state_dict(),
        "gate": gate.state_dict(),
    }
    return save_checkpoint(tmp_path / "sp.pt", payload)


def test_compare_agents_reports_routing_and_the_gates_static_control(
    sp_checkpoint: Path, data_root: Path, tmp_path: Path
) -> None:
    argv = ["--checkpoint", str(sp_checkpoint), "--data-dir", str(data_root), "--device", "cpu"]
    argv += ["--num-envs", "8", "--no-progress", "--json", str(tmp_path / "c.json")]
    compare.main(argv)
    rows = {r["agent"]: r for r in json.loads((tmp_path / "c.json").read_text())["rows"]}
    gate = rows["GateAgent"]["routing"]
    assert gate["distinct_routes"] > 1 and gate["blocks_std"] > 0  # this gate routes per image
    assert gate["accuracy"] == rows["GateAgent"]["accuracy"]
    backbone = build_resnet(14, widths=(4, 8, 16))
    backbone.load_state_dict(torch.load(sp_checkpoint, weights_only=True)["model"])
    val = load_cifar10("val", data_root, progress=False)
    correct = static_route_correct(
        backbone, gate["top_route"], [(normalize(val.images), val.labels)]
    )
    assert gate["static_accuracy"] == int(correct.sum()) / len(correct)
    plain = rows["AlwaysExecute"]["routing"]
    assert plain["distinct_routes"] == 1 and plain["top_route"] == "1" * 6
    assert plain["static_accuracy"] is None  # only the gate's is measured
    assert rows["RandomSkip(p=0.5)"]["routing"]["num_dynamic"] == 5


def test_compare_agents_on_a_static_checkpoint(data_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = build_resnet(14, widths=(4, 8, 16))
    arch = {"name": "cifar_resnet", "dataset": "cifar10", "depth": 14, "num_classes": 10}
    route = [True, True, False, True, False, True]
    payload = {"kind": "static", "config": {}, "arch": arch | {"widths": [4, 8, 16]}}
    path = save_checkpoint(
        tmp_path / "static.pt", payload | {"model": backbone.state_dict(), "route": route}
    )
    argv = ["--checkpoint", str(path), "--data-dir", str(data_root), "--device", "cpu"]
    argv += ["--num-envs", "8", "--no-progress", "--random-p", "--skip-last"]
    result = compare.main(argv)
    assert result["kind"] == "static" and result["gate_agent_equals_batched_forward"] is True
    rows = {r["agent"]: r for r in result["rows"]}
    gate = rows["GateAgent"]["routing"]  # the route is the agent: one route, its own control
    assert gate["distinct_routes"] == 1 and gate["top_route"] == "110101"
    assert gate["static_accuracy"] == rows["GateAgent"]["accuracy"]
    val = load_cifar10("val", data_root, progress=False)
    correct = static_route_correct(backbone.eval(), route, [(normalize(val.images), val.labels)])
    assert rows["GateAgent"]["accuracy"] == int(correct.sum()) / len(correct)


def test_skip_tolerance(sp_checkpoint: Path, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    args = tolerance.Args(
        checkpoint=str(sp_checkpoint), routes=3, data_dir=str(data_root), json=out, progress=False
    )
    result = tolerance.main(args)
    assert json.loads(out.read_text()) == result
    assert result["num_images"] == 20 and result["num_decisions"] == 5
    half, most = result["random"]["0.5"], result["random"]["0.75"]
    assert half["decidable_blocks_run"] == 3 and most["decidable_blocks_run"] == 4  # of 5
    assert len(half["accuracy_per_route"]) == 3
    assert half["flops_fraction_mean"] < most["flops_fraction_mean"] < 1.0
    assert max(half["accuracy_per_route"]) <= result["oracle_accuracy"] <= 1.0
    again = tolerance.main(tolerance.Args(**(vars(args) | {"json": None})))
    assert again["random"] == result["random"]  # seeded


def test_random_decisions_run_exactly_m_blocks() -> None:
    g = torch.Generator().manual_seed(0)
    d = tolerance.random_decisions(1000, 17, 9, g)  # 1000 x 17
    assert (d.sum(dim=1) == 9).all()
    rates = d.float().mean(dim=0)  # every block about 9/17 of the time
    assert ((rates - 9 / 17).abs() < 0.06).all()


def test_routing_figure_writes_pngs(sp_checkpoint: Path, data_root: Path, tmp_path: Path) -> None:
    args = figure.Args(
        checkpoint=str(sp_checkpoint), out=tmp_path / "fig", per_row=3, data_dir=str(data_root)
    )
    summary = figure.main(args)
    assert sum(r["images"] for r in summary["rows"]) == 20
    assert len(summary["rows"]) > 1  # this gate routes images differently
    for path in summary["figures"]:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "fig" / "routing-sp.json").read_text()) == summary


def test_hybrid_logs_routing_in_metrics_jsonl(
    sp_checkpoint: Path, data_root: Path, tmp_path: Path
) -> None:
    hybrid = load_script("train/hybrid.py")
    args = hybrid.Args(
        out=tmp_path / "hrl", sp=sp_checkpoint, batch_size=16, data_dir=str(data_root),
        max_steps=2, eval_every=1, progress=False, tensorboard=False,
    )  # fmt: skip
    hybrid.main(args)
    lines = [json.loads(ln) for ln in (tmp_path / "hrl" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        routing = m["val_routing"]
        assert routing["num_images"] == 20 and routing["accuracy"] == m["val_accuracy"]
        assert sum(routing["blocks_histogram"]) == 20 and routing["static_accuracy"] is not None


def test_route_headroom_deltas_are_the_paper_rewards_of_the_flipped_routes(
    sp_checkpoint: Path, data_root: Path, tmp_path: Path
) -> None:
    out, alpha = tmp_path / "h.json", 0.6
    result = headroom.main(headroom.Args(
        checkpoint=str(sp_checkpoint), alpha=alpha, data_dir=str(data_root), folds=2, json=out,
        progress=False, device="cpu",
    ))  # fmt: skip
    assert json.loads(out.read_text()) == result
    assert result["num_images"] == 20 and len(result["decisions"]) == 5
    payload = torch.load(sp_checkpoint, weights_only=True)
    backbone = build_resnet(14, widths=(4, 8, 16))
    backbone.load_state_dict(payload["model"])
    backbone.eval()
    val = load_cifar10("val", data_root, progress=False)
    x, y = normalize(val.images), val.labels
    flags = [c == "1" for c in result["route"]]

    def run(route: list[bool]) -> torch.Tensor:
        decisions = torch.tensor(route[1:]).expand(len(y), -1)  # B x K
        with torch.no_grad():
            return backbone.forward_skip(x, decisions)  # B x classes

    base = run(flags)
    ce_base = torch.nn.functional.cross_entropy(base, y, reduction="none")
    right_base = base.argmax(1) == y
    assert result["route_accuracy"] == pytest.approx(right_base.float().mean().item())
    for row in result["decisions"]:
        flipped = list(flags)
        flipped[row["block"]] = not flipped[row["block"]]
        logits = run(flipped)
        ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        sign = 1 if flags[row["block"]] else -1
        delta = sign * alpha / 5 - (ce - ce_base)
        assert row["better"] == pytest.approx((delta > 0).float().mean().item())
        assert row["oracle_gain"] == pytest.approx(delta.clamp_min(0).mean().item(), abs=1e-5)
        right = logits.argmax(1) == y
        assert row["acc_up"] == pytest.approx((right & ~right_base).float().mean().item())
        assert row["acc_down"] == pytest.approx((~right & right_base).float().mean().item())
    assert "| block | R |" in headroom.format_table(result)


def test_route_headroom_needs_a_route_for_a_gateless_checkpoint(tmp_path: Path) -> None:
    backbone = build_resnet(14, widths=(4, 8, 16))
    arch = {"name": "cifar_resnet", "depth": 14, "widths": [4, 8, 16], "num_classes": 10}
    payload = {"kind": "base", "config": {}, "arch": arch, "model": backbone.state_dict()}
    path = save_checkpoint(tmp_path / "b.pt", payload)
    with pytest.raises(ValueError, match="--route"):
        headroom.main(headroom.Args(checkpoint=str(path), data_dir=str(tmp_path / "none"),
                                    progress=False, device="cpu"))  # fmt: skip


def test_route_headroom_classifier_finds_a_linear_signal_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 8))
    target = features[:, 2] + 0.3 * rng.normal(size=400) > 0.5
    assert headroom.auc(target, headroom.cv_proba(features, target, 5, 0)) > 0.9
    noise = rng.random(400) < 0.3
    assert 0.35 < headroom.auc(noise, headroom.cv_proba(features, noise, 5, 0)) < 0.65
    assert headroom.cv_proba(features, np.zeros(400, dtype=bool), 5, 0) is None
