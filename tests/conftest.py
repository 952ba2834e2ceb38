"""Shared fixtures: tiny networks (fast on 2 CPU cores)."""

from __future__ import annotations

import pytest
import torch

from skipenv.models.resnet import SkipResNet, build_resnet


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
