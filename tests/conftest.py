"""Shared fixtures and helpers: tiny networks (fast on 2 CPU cores), synthetic splits, the env
id, and loading the entry-point scripts."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

import skipenv
from skipenv.data.splits import CifarSplit
from skipenv.models.resnet import SkipResNet, build_resnet
from skipenv.utils import import_script

REPO = Path(__file__).resolve().parents[1]
ENV_ID = skipenv.ENV_ID


def synthetic_split(n: int = 20, seed: int = 0) -> CifarSplit:
    """``n`` random uint8 images (a fixed seed), labels cycling over the 10 classes."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return CifarSplit(images, torch.arange(n) % 10, split="synthetic")


def load_script(path: str) -> ModuleType:
    """The script ``REPO/path`` (e.g. ``train/base.py``) as a module, imported once."""
    return import_script(REPO / path)


@pytest.fixture
def tiny_model() -> SkipResNet:
    """ResNet-14 with narrow stages: 6 blocks, 5 decisions, two projecting blocks."""
    torch.manual_seed(0)
    return build_resnet(14, widths=(4, 8, 16))


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tiny networks gain nothing from threads, and spin-waiting threads stall when the CPU is
    shared (CI runs on 2 cores): one intra-op thread keeps the suite fast and steady."""
    torch.set_num_threads(1)
