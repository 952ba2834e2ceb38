"""Self-describing checkpoints, written atomically and loaded safely.

A checkpoint is one dict::

    {"format": "skipnet-gym/1", "kind": "base" | "sp" | "hrl" | ...,
     "config": {...}, "arch": {...}, "model": state_dict, ...}

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
