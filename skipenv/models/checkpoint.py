"""Self-describing checkpoints, written atomically and loaded safely.

A checkpoint is one dict::

    {"format": "skipnet-gym/1", "kind": "base" | "sp" | "hrl" | ...,
     "config": {...}, "arch": {...}, "model": state_dict, ...}

``arch`` says what to build: ``{"name": "cifar_resnet", "dataset": "cifar10", "depth": 38,
"num_classes": 10, "widths": [16, 32, 64]}``, plus ``"gate": {...}`` (the gate's own spec) in
SkipNet checkpoints. ``model`` is always the backbone's state dict; a SkipNet checkpoint keeps
its gate's in ``gate``. Checkpoints written before ``dataset`` was recorded are CIFAR-10 (the
only data set this format has been trained on).

A checkpoint is written with :func:`skipenv.utils.atomic_write` (a temporary file in the
target folder, flushed to disk and renamed over the target), so a run killed at any moment
leaves either the old or the new checkpoint, never a torn one. It is read with
``torch.load(..., weights_only=True)``: plain containers, numbers, strings and tensors only, no
arbitrary code. :func:`save_checkpoint` writes nothing else: it checks the payload first
(:func:`skipenv.utils.check_payload`, naming the key of any other value) and reads the file back
before it replaces the old one.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from skipenv.models import BACKBONE_KINDS
from skipenv.models.pretrained import resolve_checkpoint
from skipenv.models.resnet import DEPTHS, SkipResNet, build_resnet
from skipenv.utils import atomic_write, check_payload

FORMAT = "skipnet-gym/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or of the wrong kind or shape."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (with ``format`` added) to ``path`` atomically
    (:func:`skipenv.utils.atomic_write`); returns the path.

    The payload must hold only what ``torch.load(weights_only=True)`` reads (dicts, lists,
    tuples, numbers, strings, None, tensors): it is checked before anything is written, and
    the written file is read back before it replaces ``path``, so an existing checkpoint is
    never replaced by one that cannot be loaded.

    Raises:
        skipenv.utils.PayloadError: a value of another type (a numpy scalar or array, a path,
            ...); the message names its key path, e.g. ``metrics.val_accuracy: numpy.float64``,
            and how to convert it. Nothing is written.
        CheckpointError: the written file does not read back (it is removed).
    """
    if not isinstance(payload, dict):
        raise TypeError(f"a checkpoint payload is a dict, got {type(payload).__name__}")
    full = {"format": FORMAT, **payload}
    check_payload(full, "torch", f"checkpoint {path}")

    def verify(tmp: Path) -> None:
        try:
            back = torch.load(tmp, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(
                f"checkpoint {path} did not read back after writing ({type(err).__name__}: "
                f"{err}); nothing was replaced"
            ) from err
        if not isinstance(back, dict) or back.keys() != full.keys():
            raise CheckpointError(f"checkpoint {path} read back with other keys; not replaced")

    return atomic_write(path, lambda f: torch.save(full, f), verify)


def _read_error(path: Path, err: Exception) -> CheckpointError:
    """What went wrong reading ``path``: a value of a type weights-only loading refuses, or a
    file that is not a whole torch file."""
    refused = "Unsupported global" in str(err) or "Unsupported class" in str(err)
    if isinstance(err, pickle.UnpicklingError) and refused and zipfile.is_zipfile(path):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # the listing is a courtesy; the cause is known
            names = []
        listed = f" ({', '.join(names)})" if names else ""
        return CheckpointError(
            f"{path} is a whole torch file, but it holds values of types that safe "
            f"(weights_only=True) loading refuses{listed}: it was not written by this "
            "version's save_checkpoint. If you trust its source, load it with "
            "torch.load(path, weights_only=False), turn those values into plain ones "
            "(float(x), x.tolist(), str(p)) and save it again with save_checkpoint"
        )
    return CheckpointError(
        f"could not read checkpoint {path}: {err.__class__.__name__}: {err}. It is truncated, "
        "damaged or not a torch file: write it again (or use the run's other checkpoint)"
    )


def load_checkpoint(
    path: str | Path, kinds: tuple[str, ...] | None = None, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file, or the name of a shipped pretrained model
            (:func:`skipenv.models.pretrained.resolve_checkpoint`).
        kinds: accepted values of its ``kind``; None accepts any.
        map_location: where tensors are loaded.

    Raises:
        CheckpointError: the file is missing, holds values of types safe loading refuses,
            is truncated or not a torch file, not one of ours, or of another kind; the
            message says which.
    """
    path = resolve_checkpoint(path)  # raises CheckpointError when neither
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise _read_error(path, err) from err
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
        source: a checkpoint path or shipped model's name, or a payload already read by
            :func:`load_checkpoint`.
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
