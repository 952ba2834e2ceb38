"""Shared fixtures: tiny networks (fast on 2 CPU cores)."""

from __future__ import annotations

import pytest
import torch

from skipenv.resnet import SkipResNet, build_resnet


@pytest.fixture
def tiny_model() -> SkipResNet:
    """ResNet-14 with narrow stages: 6 blocks, 5 decisions, two projecting blocks."""
    torch.manual_seed(0)
    return build_resnet(14, widths=(4, 8, 16))
