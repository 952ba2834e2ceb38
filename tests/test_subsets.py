"""Issue 11, case 7: every option that evaluates on part of a split takes a stratified, seeded
subset (skipenv.data.splits.stratified_subset) and reports what it used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_script
from synthetic import write_folder

from skipenv.data.splits import load_cifar10, per_class, stratified_subset
from skipenv.models.checkpoint import save_checkpoint
from skipenv.models.resnet import build_resnet

compare = load_script("scripts/compare_agents.py")


def test_a_subset_has_every_class_in_its_share():
    labels = torch.arange(5000) // 500  # ordered by class, as a split is: 500 per class
    subset = stratified_subset(labels, 1000, seed=0)
    assert len(subset) == 1000 and torch.equal(subset, subset.sort().values)
    assert per_class(labels[subset], 10) == [100] * 10
    assert per_class(labels[:1000], 10) == [500, 500] + [0] * 8  # what --limit used to take
    assert torch.equal(subset, stratified_subset(labels, 1000, seed=0))  # seeded
    assert not torch.equal(subset, stratified_subset(labels, 1000, seed=1))
    assert len(set(subset.tolist())) == 1000  # no repeats


def test_uneven_classes_and_rounding():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    counts = per_class(labels[stratified_subset(labels, 7, seed=3)], 3)
    assert sum(counts) == 7 and counts == [4, 2, 1]  # 3.5, 2.1, 1.4 by largest remainder
    assert per_class(labels[stratified_subset(labels, 10)], 3) == [5, 3, 2]
    assert torch.equal(stratified_subset(labels, 500), torch.arange(100))  # n >= M: all
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            stratified_subset(labels, bad)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    root = tmp_path / "data"
    write_folder(root / "train", per_class=20)  # val: 2 per class, ordered by class
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = build_resnet(8, widths=(4, 8, 16))
    arch = {"name": "cifar_resnet", "depth": 8, "num_classes": 10, "widths": [4, 8, 16]}
    ckpt = save_checkpoint(
        tmp_path / "base.pt", {"kind": "base", "arch": arch, "model": model.state_dict()}
    )
    return root, ckpt


def test_compare_agents_limit_is_a_reported_stratified_sample(setup, tmp_path, capsys):
    root, ckpt = setup
    argv = ["--checkpoint", str(ckpt), "--data-dir", str(root), "--device", "cpu"]
    argv += ["--no-progress", "--random-p", "--json", str(tmp_path / "r.json")]
    results = compare.main([*argv, "--limit", "10", "--num-envs", "4"])
    subset = results["subset"]
    assert results["num_images"] == 10 and subset["stratified"] and subset["seed"] == 0
    assert list(subset["per_class"].values()) == [1] * 10  # not 2 airplanes, 2 cars, ...
    assert "a stratified sample of 10 of the 20 val images (seed 0)" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["subset"] == subset
    whole = compare.main(argv)
    assert whole["num_images"] == 20 and not whole["subset"]["stratified"]
    assert list(whole["subset"]["per_class"].values()) == [2] * 10
    val = load_cifar10("val", root, progress=False)
    assert per_class(val.labels[:10], 10) == [2] * 5 + [0] * 5  # the first 10: half the classes
