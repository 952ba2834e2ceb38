"""Helpers every layer of skipenv may use (imports nothing from skipenv), and the shape symbols.

Shape symbols, used in docstrings and in ``# B x K`` comments on tensor lines throughout the
package, the agents and the entry points:

- ``B``: the batch: images in a forward pass, or environments (episodes) in a vector env.
- ``N``: blocks of the backbone (``SkipResNet.num_blocks``; 18 for ResNet-38).
- ``K``: decisions per image or episode, ``K = N - 1`` (block 0 always runs).
- ``C``, ``H``, ``W``: channels, height, width of an activation or image; ``C_max`` the widest
  stage.
- ``M``: images in a data set or split (``len(CifarSplit)``).

Helpers: :func:`atomic_write` (the one way files are written: data cache, checkpoints,
exported weights), :func:`check_int` and :func:`check_real` (argument validation with one
error wording), :func:`import_script` (one entry point or a test importing another).
"""

from __future__ import annotations

import importlib.util
import math
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO, Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a fresh temporary file in the same folder,
    which is flushed to disk and renamed over ``path`` (``os.replace``).

    A reader, or a process killed at any moment, sees the old file or the new one, never a
    torn one. The temporary file is created with the usual umask-governed permissions and a
    unique name (``.NAME.PID.RANDOM.tmp``), so concurrent writers do not collide; it is removed
    when anything fails, and the error propagates. The parent folder is created if needed.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) and at least ``minimum``; else a ValueError that
    quotes it."""
    if isinstance(value, bool) or not isinstance(value, int):
        wanted = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_real(value: Any, name: str) -> float:
    """``value`` as a float if it is a finite int or float (not a bool); else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def import_script(path: str | os.PathLike[str]) -> ModuleType:
    """Import the Python file ``path`` as a module named ``script_<stem>`` (once: later calls
    return the same module), without touching ``sys.path``.

    The entry points in ``train/`` are scripts, not a package; this is how one imports another
    (``train/hybrid.py`` runs ``train/supervised.py`` first) and how the tests load them. The
    module is registered in ``sys.modules`` before it runs, as dataclasses need.
    """
    path = Path(path).resolve()
    name = f"script_{path.stem}"
    module = sys.modules.get(name)
    if module is not None and Path(getattr(module, "__file__", "")).resolve() == path:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
