"""agents/static.py and train/static.py: greedy static routes, StaticRoute, kind static."""

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
from synthetic import write_folder

from agents.skipnet import load_backbone_and_gate
from agents.static import (
    RouteGate,
    StaticRoute,
    greedy_static_route,
    route_flops_fraction,
    selection_batches,
)
from skipenv.data.loader import normalize
from skipenv.data.splits import CifarSplit
from skipenv.envs.vector_env import SkipNetVectorEnv, last_step_info
from skipenv.models.checkpoint import load_checkpoint, save_checkpoint
from skipenv.models.pretrained import export_weights
from skipenv.models.resnet import SkipResNet, build_resnet
from skipenv.training.evaluation import evaluate_gated
from skipenv.training.routing import static_route_correct

ENV = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


static = load_script("train/static.py")


@pytest.fixture
def net() -> SkipResNet:
    torch.manual_seed(0)
    return build_resnet(14, widths=(4, 8, 16)).eval()  # 6 blocks; 2 and 4 project


def split(n: int = 24, seed: int = 0) -> CifarSplit:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return CifarSplit(images, torch.arange(n) % 10)


def accuracy(net: SkipResNet, route, batches) -> float:
    c = static_route_correct(net, route, batches)
    return int(c.sum()) / c.numel()


def test_route_flops_fraction(net: SkipResNet) -> None:
    table = net.macs_table()
    assert route_flops_fraction(table, "111111") == 1.0
    route = [True, False, True, True, False, True]
    expected = table.flops_fraction(torch.tensor([route]))[0].item()
    by_hand = (
        table.stem
        + table.head
        + sum(  # run blocks cost their MACs, skipped their shortcut
            e if r else s
            for e, s, r in zip(table.block_execute, table.block_skip, route, strict=True)
        )
    )
    assert expected == pytest.approx(by_hand / table.full) and expected < 1.0
    assert route_flops_fraction(table, route) == pytest.approx(expected)
    assert route_flops_fraction(table, "101101") == pytest.approx(expected)  # the same route
    # a gate in the table is left out (flops_fraction, not flops_fraction_with_gate)
    with_gate = net.macs_table(gate=RouteGate(route))
    assert route_flops_fraction(with_gate, route) == pytest.approx(expected)


def test_greedy_drops_the_cheapest_block_each_round(net: SkipResNet) -> None:
    batches = selection_batches(split(), None, batch_size=10)
    result = greedy_static_route(net, batches, 0.6, progress=False)
    table = net.macs_table()
    assert result.flops_fraction <= 0.6 < result.trace[-2].flops_fraction
    flops = [s.flops_fraction for s in result.trace]
    assert flops[0] == 1.0 and flops == sorted(flops, reverse=True)
    saved = [e - s for e, s in zip(table.block_execute, table.block_skip, strict=True)]
    for before, after in zip(result.trace, result.trace[1:], strict=False):
        assert after.accuracy == accuracy(net, after.route, batches)
        # brute force: no other single drop from `before` is better by (accuracy, MACs saved)
        candidates = [j for j in range(1, 6) if before.route[j] == "1"]
        keys = {}
        for j in candidates:
            r = before.route[:j] + "0" + before.route[j + 1 :]
            keys[j] = (accuracy(net, r, batches), saved[j])
        assert keys[after.dropped] == max(keys.values())
    # the sequence serves every higher budget: a run to 0.8 returns result.at(0.8)
    higher = greedy_static_route(net, batches, 0.8, progress=False)
    assert higher.route == result.at(0.8).route
    with pytest.raises(ValueError, match="above the budget"):
        higher.at(0.3)


def test_greedy_ties_go_to_more_macs_saved(net: SkipResNet) -> None:
    with torch.no_grad():  # every route predicts class 0: all accuracies tie
        net.head[-1].weight.zero_()
        net.head[-1].bias.copy_(torch.arange(10, 0, -1).float())
    data = split()
    data = CifarSplit(data.images, torch.zeros(len(data), dtype=torch.int64))
    batches = selection_batches(data, None)
    floor = route_flops_fraction(net.macs_table(), "100000")
    result = greedy_static_route(net, batches, floor, progress=False)
    # non-projecting blocks (1, 3, 5) save more MACs than the projecting ones (2, 4)
    assert [s.dropped for s in result.trace[1:]] == [1, 3, 5, 2, 4]
    assert result.route == "100000" and result.accuracy == 1.0
    with pytest.raises(ValueError, match="below"):
        greedy_static_route(net, batches, floor / 2, progress=False)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        greedy_static_route(net, batches, 1.5, progress=False)


def test_selection_batches_are_a_seeded_subset() -> None:
    data = split(30)
    a = selection_batches(data, 12, seed=1, batch_size=5)
    b = selection_batches(data, 12, seed=1, batch_size=5)
    assert [len(y) for _, y in a] == [5, 5, 2]
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b, strict=True))
    assert sum(len(y) for _, y in selection_batches(data, 100)) == 30
    with pytest.raises(ValueError, match="positive"):
        selection_batches(data, 0)


def test_static_route_drives_the_env_like_forward_skip(net: SkipResNet) -> None:
    data = split(8)
    route = "110101"
    venv = SkipNetVectorEnv(8, backbone=net, data=data, device="cpu", obs_mode="vector")
    agent = StaticRoute(venv.single_observation_space, net.block_channels, route)
    agent.reset(num_envs=8)
    obs, _ = venv.reset(seed=0, options={"indices": np.arange(8)})
    actions = []
    for _ in range(venv.num_decisions):
        actions.append(agent.act(obs))
        obs, _, terminated, _, info = venv.step(actions[-1])
    assert terminated.all()
    final = last_step_info(info)  # the terminal step's info, in any autoreset mode
    with torch.no_grad():
        logits = agent.forward(venv.backbone, normalize(data.images))  # 8 x 10
    assert np.array_equal(np.stack(actions, axis=1), agent.decisions(8).long().numpy())
    assert final["executed"].tolist() == [[c == "1" for c in route]] * 8
    assert np.array_equal(final["prediction"], logits.argmax(1).numpy())
    with pytest.raises(ValueError, match="block 0"):
        StaticRoute(venv.single_observation_space, net.block_channels, "010101")


def test_route_gate_in_evaluate_gated_is_forward_skip(net: SkipResNet) -> None:
    batches = selection_batches(split(), None, batch_size=10)
    result = evaluate_gated(net, RouteGate("101101"), batches)
    assert result["accuracy"] == accuracy(net, "101101", batches)
    assert result["routing"]["distinct_routes"] == 1 and result["routing"]["top_route"] == "101101"
    assert result["flops_fraction"] == pytest.approx(
        route_flops_fraction(net.macs_table(), "101101")
    )
    assert result["flops_fraction_with_gate"] == result["flops_fraction"]  # a route has no MACs


def test_static_checkpoint_loads_exports_and_evaluates(net: SkipResNet, tmp_path: Path) -> None:
    arch = {"name": "cifar_resnet", "dataset": "cifar10", "depth": 14, "num_classes": 10}
    payload = {"kind": "static", "config": {}, "arch": arch | {"widths": [4, 8, 16]}}
    payload |= {"model": net.state_dict(), "route": [True, False, True, True, False, True]}
    path = save_checkpoint(tmp_path / "static.pt", payload)
    loaded, backbone, gate = load_backbone_and_gate(path)
    assert backbone.depth == 14
    assert loaded["kind"] == "static" and isinstance(gate, RouteGate)
    assert gate.route == payload["route"]
    exported = export_weights(path, tmp_path / "w.pt", name="static14")
    assert load_checkpoint(exported)["route"] == payload["route"]


# ---------------------------------------------------------------------------- train/static.py


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_folder(root / "train", per_class=10)  # 100 images: 90 train, 10 val
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    model = build_resnet(14, widths=(4, 8, 16))
    arch = {"name": "cifar_resnet", "dataset": "cifar10", "depth": 14, "num_classes": 10}
    payload = {"kind": "base", "config": {}, "arch": arch | {"widths": [4, 8, 16]}}
    return save_checkpoint(
        tmp_path_factory.mktemp("base") / "b.pt", payload | {"model": model.state_dict()}
    )


def static_args(root: Path, ckpt: Path, out: Path, **kw) -> static.Args:
    defaults = dict(
        out=out,
        checkpoint=str(ckpt),
        epochs=2,
        batch_size=16,
        data_dir=str(root),
        progress=False,
        tensorboard=False,
    )
    return static.Args(**(defaults | kw))


def test_train_static_greedy_then_evaluate(
    data_root: Path, base_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    metrics = static.main(static_args(data_root, base_checkpoint, out, budget=0.7, epochs=1))
    ckpt = load_checkpoint(out / "final.pt", kinds=("static",))
    assert ckpt["step"] == 90 // 16 and len(ckpt["route"]) == 6 and ckpt["route"][0]
    assert ckpt["selection"]["route"] == "".join("1" if f else "0" for f in ckpt["route"])
    assert ckpt["selection"]["flops_fraction"] <= 0.7
    assert metrics["val_routing"]["distinct_routes"] == 1
    assert metrics["val_routing"]["static_accuracy"] == metrics["val_accuracy"]
    before = load_checkpoint(base_checkpoint)["model"]
    assert any(not torch.equal(before[k], ckpt["model"][k]) for k in before)  # it trained
    js = tmp_path / "eval.json"
    cmd = [
        sys.executable,
        str(REPO / "train" / "evaluate.py"),
        "--checkpoint",
        str(out / "final.pt"),
    ]
    cmd += ["--data-dir", str(data_root), "--json", str(js)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(js.read_text())
    assert result["kind"] == "static" and result["accuracy"] == metrics["val_accuracy"]
    assert result["routing"]["top_route"] == ckpt["selection"]["route"]
    assert "1 routes" in r.stdout


def test_train_static_resume_gives_identical_weights(
    data_root: Path, base_checkpoint: Path, tmp_path: Path
) -> None:
    route = "110110"
    static.main(static_args(data_root, base_checkpoint, tmp_path / "a", route=route))
    static.main(static_args(data_root, base_checkpoint, tmp_path / "b", route=route, max_steps=7))
    partial = load_checkpoint(tmp_path / "b" / "final.pt", kinds=("static",))  # partly trained
    assert (partial["step"], partial["total_steps"]) == (7, 2 * (90 // 16))
    static.main(static_args(data_root, base_checkpoint, tmp_path / "b", route=route, resume=True))
    a = load_checkpoint(tmp_path / "a" / "final.pt")
    b = load_checkpoint(tmp_path / "b" / "final.pt")
    assert a["route"] == b["route"] == [c == "1" for c in route]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    with pytest.raises(ValueError, match="differs"):
        static.main(
            static_args(data_root, base_checkpoint, tmp_path / "b", route="111111", resume=True)
        )


def test_train_static_needs_route_or_budget(
    data_root: Path, base_checkpoint: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="exactly one of --route and --budget"):
        static.main(static_args(data_root, base_checkpoint, tmp_path / "x"))
    with pytest.raises(ValueError, match="block 0"):
        static.main(static_args(data_root, base_checkpoint, tmp_path / "y", route="011111"))


def test_selection_batches_take_every_class_in_its_share() -> None:
    # labels ordered by class, as in an image folder: the first images are one class only
    labels = torch.arange(10).repeat_interleave(6)  # 60 images, 6 per class
    data = CifarSplit(torch.zeros(60, 3, 32, 32, dtype=torch.uint8), labels)
    batches = selection_batches(data, 20, seed=3, batch_size=7)
    y = torch.cat([b for _, b in batches])
    assert torch.bincount(y, minlength=10).tolist() == [2] * 10
    assert [len(b) for _, b in batches] == [7, 7, 6]
    again = torch.cat([b for _, b in selection_batches(data, 20, seed=3, batch_size=20)])
    assert torch.equal(again, y)
    assert len(torch.cat([b for _, b in selection_batches(data, None)])) == 60
    with pytest.raises(ValueError, match="got 0"):
        selection_batches(data, 0)
