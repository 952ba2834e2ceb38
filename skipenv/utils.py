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
exported weights), :func:`check_payload` (the one check that what a writer is about to write is
made only of what its reader reads back), :func:`write_json` (JSON results files, checked and
read back), :func:`check_int` and :func:`check_real` (argument validation with one error
wording), :func:`import_script` (one entry point or a test importing another).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import secrets
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Literal


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], None],
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a fresh temporary file in the same folder,
    which is flushed to disk and renamed over ``path`` (``os.replace``).

    A reader, or a process killed at any moment, sees the old file or the new one, never a
    torn one. The temporary file is created with the usual umask-governed permissions and a
    unique name (``.NAME.PID.RANDOM.tmp``), so concurrent writers do not collide; it is removed
    when anything fails, and the error propagates. The parent folder is created if needed.

    ``verify(tmp_path)``, when given, reads the written file back before it replaces ``path``
    (raising if it cannot), so a file its reader would refuse never takes the place of a good
    one.

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
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class PayloadError(TypeError):
    """A value a writer was asked to write that its reader would not read back."""


_JSON_SCALARS = (str, int, float, bool, type(None))
_TORCH_SCALARS = (str, bytes, bytearray, int, float, complex, bool, type(None))
_READERS = {
    "torch": "torch.load(weights_only=True)",
    "json": "json.loads",
}
_HOW = {
    "torch": (
        "checkpoints hold only dicts, lists, tuples, sets, str, bytes, int, float, complex, "
        "bool, None and torch tensors, sizes, dtypes and devices: convert it first (float(x) or "
        "int(x) for a numpy scalar, torch.from_numpy(x) or x.tolist() for an array, str(p) for "
        "a path)"
    ),
    "json": (
        "JSON files hold only dicts with str keys, lists, str, int, float, bool and None: "
        "convert it first (float(x) or int(x) for a numpy or torch scalar, x.tolist() for an "
        "array or tuple, str(p) for a path)"
    ),
}


def _type_name(value: Any) -> str:
    kind = type(value)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def check_payload(payload: Any, fmt: Literal["torch", "json"], what: str = "payload") -> None:
    """Raise :class:`PayloadError` unless ``payload`` is made only of what the reader of
    ``fmt`` reads back as it was written.

    ``fmt="torch"``: what ``torch.load(weights_only=True)`` accepts (the checkpoint and
    data-cache reader); ``fmt="json"``: what ``json.loads`` gives back unchanged (no tuples,
    which come back as lists; no non-str keys, which come back as str). Types are matched
    exactly: a numpy float64 (a subclass of float) or an IntEnum is refused, because the
    reader refuses (torch) or changes (json) it. Nothing is converted.

    Args:
        payload: what is about to be written.
        fmt: ``"torch"`` or ``"json"``.
        what: the file or thing written, for the message.

    Raises:
        PayloadError: naming the key path of the first bad value (``metrics.val_accuracy``,
            ``rows[2].accuracy``), its type and what to do.
    """
    if fmt not in _READERS:
        raise ValueError(f"fmt must be 'torch' or 'json', got {fmt!r}")
    bad = _first_bad(payload, fmt, "")
    if bad is not None:
        where, value = bad
        raise PayloadError(
            f"cannot write {what}: {where or '(the whole payload)'}: {_type_name(value)} is "
            f"not read back by {_READERS[fmt]}; {_HOW[fmt]}"
        )


def _first_bad(value: Any, fmt: str, where: str) -> tuple[str, Any] | None:
    kind = type(value)
    if fmt == "json":
        if kind in _JSON_SCALARS:
            return None
        if kind is list:
            items: Any = enumerate(value)
        elif kind is dict:
            for key in value:
                if type(key) is not str:
                    return f"{where}[{key!r}] (a key)" if where else f"[{key!r}] (a key)", key
            items = value.items()
        else:
            return where, value
    else:
        if kind in _TORCH_SCALARS:
            return None
        import torch

        if kind in (torch.Tensor, torch.nn.Parameter, torch.Size, torch.dtype, torch.device):
            return None
        if kind in (list, tuple, set):
            items = enumerate(value)
        elif kind in (dict, OrderedDict):
            for key in value:
                if type(key) not in _TORCH_SCALARS and type(key) is not tuple:
                    return f"{where}[{key!r}] (a key)" if where else f"[{key!r}] (a key)", key
            items = value.items()
        else:
            return where, value
    for key, item in items:
        if isinstance(key, int) and not isinstance(value, dict):
            inner = f"{where}[{key}]"
        else:
            inner = f"{where}.{key}" if where else str(key)
        bad = _first_bad(item, fmt, inner)
        if bad is not None:
            return bad
    return None


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path``: checked with :func:`check_payload`, written
    atomically and read back (equal to ``obj``, NaN aside) before it replaces ``path``.

    Raises:
        PayloadError: a value JSON would refuse or change (the message names its key path).
    """
    check_payload(obj, "json", str(path))
    text = json.dumps(obj, indent=2) + "\n"

    def verify(tmp: Path) -> None:
        json.loads(tmp.read_text())

    return atomic_write(path, lambda f: f.write(text.encode()), verify)


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
