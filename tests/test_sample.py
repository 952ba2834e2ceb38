"""The CIFAR-10 sample shipped in the package (split "sample"): what it holds, that it is
package data, and that it is never read in place of a missing split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

import skipenv.data.splits as splits
from skipenv.data.sources import CIFAR10_CLASSES, DataError
from skipenv.data.splits import SPLITS, load_cifar10, load_sample
from skipenv.envs.env import SkipNetEnv


def test_sample_is_1000_stratified_val_images() -> None:
    sample = load_cifar10("sample", root="/nonexistent")  # no data root needed
    assert "sample" in SPLITS and sample.split == "sample" and sample.source == "sample"
    assert len(sample) == 1000 and sample.class_counts() == [100] * 10
    assert sample.images.shape == (1000, 3, 32, 32) and sample.images.dtype == torch.uint8
    assert sample.classes == CIFAR10_CLASSES
    positions = sample.indices.tolist()  # among the 50,000 training images
    assert len(set(positions)) == 1000 and 0 <= min(positions) and max(positions) < 50_000
    assert float(sample.images.float().std()) > 30  # real pictures, not a constant
    assert sample.path is not None and sample.path.stat().st_size < 5 * 2**20


def test_missing_data_is_an_error_never_the_sample(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        with pytest.raises(DataError, match="CIFAR-10"):
            load_cifar10(split, root=tmp_path / "nothing", progress=False)


def test_a_broken_sample_says_reinstall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "sample.npz"
    np.savez(bad, images=np.zeros((2, 3, 32, 32), np.uint8))  # no labels
    monkeypatch.setattr(splits, "sample_path", lambda: bad)
    with pytest.raises(DataError, match="reinstall"):
        load_sample()
    monkeypatch.setattr(splits, "sample_path", lambda: tmp_path / "missing.npz")
    with pytest.raises(DataError, match="reinstall"):
        load_sample()


def test_the_env_runs_on_the_sample(tiny_model) -> None:
    env = SkipNetEnv(split="sample", backbone=tiny_model, device="cpu")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs) and len(env.data) == 1000


def test_package_data_ships_the_sample() -> None:
    text = (REPO / "pyproject.toml").read_text()
    section = text[text.index("[tool.setuptools.package-data]") :].split("\n[", 1)[0]
    assert '"skipenv.data" = ["sample/*.npz"]' in section
    assert (REPO / "skipenv" / "data" / "sample" / splits.SAMPLE_FILE).is_file()
