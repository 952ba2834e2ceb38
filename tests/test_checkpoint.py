"""Checkpoints: atomic writes, safe loads, and backbones that refuse the wrong arch."""

from __future__ import annotations

import pytest
import torch

from skipenv.models.checkpoint import (
    CheckpointError,
    load_backbone,
    load_checkpoint,
    save_checkpoint,
)
from skipenv.models.resnet import build_resnet


def _payload(depth: int = 14, kind: str = "base", dataset: str | None = "cifar10") -> dict:
    torch.manual_seed(0)
    model = build_resnet(depth, widths=(4, 8, 16))
    arch = {"name": "cifar_resnet", "depth": depth, "num_classes": 10, "widths": [4, 8, 16]}
    if dataset is not None:
        arch["dataset"] = dataset
    return {"kind": kind, "config": {}, "arch": arch, "model": model.state_dict()}


def test_load_backbone_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _payload())
    model = load_backbone(path, depth=14)
    x = torch.randn(2, 3, 32, 32)
    expected = build_resnet(14, widths=(4, 8, 16))
    expected.load_state_dict(_payload()["model"])
    assert torch.equal(model.eval()(x), expected.eval()(x))


def test_early_checkpoints_without_dataset_are_cifar10(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _payload(dataset=None))
    assert load_backbone(path).depth == 14


@pytest.mark.parametrize(
    ("payload", "kwargs", "match"),
    [
        (_payload(), {"depth": 38}, "depth=38"),
        (_payload(dataset="svhn"), {}, "trained on 'svhn'"),
        (_payload(kind="ppo"), {}, "'ppo'"),
    ],
)
def test_load_backbone_refuses(tmp_path, payload, kwargs, match):
    path = save_checkpoint(tmp_path / "m.pt", payload)
    with pytest.raises(CheckpointError, match=match):
        load_backbone(path, **kwargs)


def test_weights_that_do_not_fit_are_an_error(tmp_path):
    payload = _payload()
    payload["arch"]["widths"] = [8, 16, 32]
    with pytest.raises(CheckpointError, match="do not fit"):
        load_backbone(save_checkpoint(tmp_path / "m.pt", payload))


def test_torn_file_is_an_error(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read"):
        load_checkpoint(path)
