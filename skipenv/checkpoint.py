"""Self-describing checkpoints, written atomically and loaded safely.

A checkpoint is one dict::

    {"format": "skipnet-gym/1", "kind": "base" | "sp" | "hrl" | ...,
     "config": {...}, "arch": {...}, "model": state_dict, ...}

``arch`` says what to build: ``{"name": "cifar_resnet", "dataset": "cifar10", "depth": 38,
"num_classes": 10, "widths": [16, 32, 64]}``, plus ``"gate": {...}`` (the gate's own spec) in
SkipNet checkpoints. ``model`` is always the backbone's state dict; a SkipNet checkpoint keeps
its gate's in ``gate``. Checkpoints written before ``dataset`` was recorded are CIFAR-10 (the
only data set this format has been trained on).

written to a temporary file in the target folder, flushed to disk and renamed over the
target, so a run killed at any moment leaves either the old or the new checkpoint, never a
torn one. It is read with ``torch.load(..., weights_only=True)``: plain containers, numbers,
strings and tensors only, no arbitrary code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from skipenv.resnet import DEPTHS, SkipResNet, build_resnet

FORMAT = "skipnet-gym/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or of the wrong kind or shape."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (with ``format`` added) to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(
    path: str | Path, kinds: tuple[str, ...] | None = None, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file.
        kinds: accepted values of its ``kind``; None accepts any.
        map_location: where tensors are loaded.

    Raises:
        CheckpointError: the file is missing, unreadable, not one of ours, or of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"could not read checkpoint {path}: {err.__class__.__name__}: {err}. "
            "It may be truncated or not a skipnet-gym checkpoint."
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a skipnet-gym checkpoint (format {found!r}, expected {FORMAT!r})"
        )
    if kinds is not None and payload.get("kind") not in kinds:
        raise CheckpointError(
            f"{path} holds a {payload.get('kind')!r} checkpoint; this needs one of {kinds}"
        )
    return payload


#: Kinds whose ``model`` is a backbone that an environment can route images through
#: (``static``: a backbone fine-tuned for one fixed route, kept in ``route``; issue 12).
BACKBONE_KINDS = ("base", "sp", "hrl", "static")


def checkpoint_arch(payload: dict[str, Any]) -> dict[str, Any]:
    """The ``arch`` of a checkpoint, with ``dataset`` filled in for early (CIFAR-10) ones."""
    arch = dict(payload.get("arch") or {})
    arch.setdefault("dataset", "cifar10")
    return arch


def load_backbone(
    source: str | Path | dict[str, Any],
    *,
    depth: int | None = None,
    dataset: str = "cifar10",
    map_location: str | torch.device = "cpu",
) -> SkipResNet:
    """Build the backbone a checkpoint describes and load its weights (the gate is not loaded).

    Args:
        source: a checkpoint path, or a payload already read by :func:`load_checkpoint`.
        depth: when given, the depth the caller expects; another depth is an error.
        dataset: the data set the caller will feed it; a backbone trained on another is an error.
        map_location: where tensors are loaded.

    Raises:
        CheckpointError: wrong kind, depth, data set, or weights that do not fit the arch.
    """
    name = str(source) if not isinstance(source, dict) else "the given checkpoint"
    payload = (
        source
        if isinstance(source, dict)
        else load_checkpoint(source, BACKBONE_KINDS, map_location)
    )
    if payload.get("kind") not in BACKBONE_KINDS:
        raise CheckpointError(
            f"{name} holds a {payload.get('kind')!r} checkpoint; a backbone needs one of "
            f"{BACKBONE_KINDS}"
        )
    arch = checkpoint_arch(payload)
    if arch.get("name") != "cifar_resnet" or arch.get("depth") not in DEPTHS:
        raise CheckpointError(f"{name} describes an unknown architecture {arch}")
    if arch["dataset"] != dataset:
        raise CheckpointError(
            f"{name} was trained on {arch['dataset']!r}, not {dataset!r}; pass a {dataset} "
            "checkpoint"
        )
    if depth is not None and arch["depth"] != depth:
        raise CheckpointError(
            f"{name} holds a ResNet-{arch['depth']}, but depth={depth} was asked for; pass "
            f"depth={arch['depth']} or a ResNet-{depth} checkpoint"
        )
    model = build_resnet(arch["depth"], arch["num_classes"], tuple(arch["widths"]))
    try:
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(f"{name}: weights do not fit {arch}: {err}") from err
    return model.to(map_location)
