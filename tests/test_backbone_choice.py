"""scripts/backbone_choice.py on two tiny backbones and synthetic images (issue 14, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_script
from synthetic import write_folder

from agents.static import route_flops_fraction
from skipenv.data.loader import normalize
from skipenv.data.splits import load_cifar10
from skipenv.models.checkpoint import save_checkpoint
from skipenv.models.resnet import build_resnet
from skipenv.training.routing import static_route_correct

choice = load_script("scripts/backbone_choice.py")
ARCH = {"name": "cifar_resnet", "depth": 14, "num_classes": 10, "widths": [4, 8, 16]}


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path / "cache"))
    write_folder(tmp_path / "data" / "train", per_class=20)  # val: 20 images
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_resnet(14, widths=(4, 8, 16))
        payload = {"kind": "base", "arch": ARCH, "model": model.state_dict()}
        paths.append(str(save_checkpoint(tmp_path / f"base{seed}.pt", payload)))
    return tmp_path, paths


def test_backbone_choice_table_criterion_and_reuse(setup) -> None:
    tmp_path, paths = setup
    out = tmp_path / "out"
    args = choice.Args(
        checkpoints=paths, names=["a", "b"], out=out, routes=3, select_limit=12, amp="none",
        data_dir=str(tmp_path / "data"), threads=1, progress=False,
    )  # fmt: skip
    result = choice.main(args)
    assert json.loads((out / "backbones.json").read_text()) == result
    md = (out / "backbones.md").read_text()
    assert md.count("\n| a |") == 1 and md.count("\n| b |") == 1
    val = load_cifar10("val", tmp_path / "data", progress=False)
    for r in result["rows"]:
        tol = json.loads((out / f"skip_tolerance-{r['name']}.json").read_text())
        half = r["0.5"]
        # the chosen static route, re-evaluated by hand on all 20 val images
        model = build_resnet(14, widths=(4, 8, 16))
        model.load_state_dict(torch.load(r["checkpoint"], weights_only=True)["model"])
        pairs = [(normalize(val.images), val.labels)]
        correct = static_route_correct(model.eval(), half["static_route"], pairs)
        assert half["static_accuracy"] == int(correct.sum()) / 20
        flops = route_flops_fraction(model.macs_table(), half["static_route"])
        assert half["static_flops_fraction"] == pytest.approx(flops)
        for f in ("0.5", "0.75"):  # as many blocks as the random routes of that fraction
            assert r[f]["static_route"].count("1") == tol["random"][f]["blocks_run"]
        assert r["room"] == pytest.approx(tol["oracle_accuracy"] - half["static_accuracy"])
        assert half["random_mean"] == tol["random"]["0.5"]["accuracy_mean"]
        retained = half["random_mean"] / r["full_accuracy"]
        assert r["eligible"] == (retained >= 0.5)
    eligible = [r for r in result["rows"] if r["eligible"]]
    best = max(eligible, key=lambda r: r["room"])["name"] if eligible else None
    assert result["most_room"] == best
    # a second run reads the random routes back instead of measuring them again
    stamp = (out / "skip_tolerance-a.json").stat().st_mtime_ns
    again = choice.main(args)
    assert (out / "skip_tolerance-a.json").stat().st_mtime_ns == stamp
    assert again["rows"] == result["rows"]


def test_backbone_choice_needs_a_name_per_checkpoint(setup) -> None:
    _, paths = setup
    with pytest.raises(SystemExit, match="one --names entry per --checkpoints entry"):
        choice.main(choice.Args(checkpoints=paths, names=["a"]))
