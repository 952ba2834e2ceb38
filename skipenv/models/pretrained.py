"""Pretrained weights shipped inside the package: the registry, name lookup and export.

``skipenv/models/weights/registry.json`` lists what ships, one entry per model::

    {"name": "skipnet38-hrl-a0.6", "file": "skipnet38-hrl-a0.6.pt", "kind": "hrl", "depth": 38,
     "dataset": "cifar10", "default_for_depth": true, "val_accuracy": 0.886,
     "flops_fraction": 0.6604, "flops_fraction_with_gate": 0.6606, "block_fraction": 0.667,
     "description": "..."}

``file`` lies beside the registry (a weights-only checkpoint written by :func:`export_weights`;
``MODEL_CARD.md`` there says how each was trained and evaluated). ``kind`` is ``base``, ``sp``
or ``hrl``; the metrics are fractions on the val split (or null) as
:func:`skipenv.training.evaluation.evaluate_gated` reports them, in [0, 1] but for
``flops_fraction_with_gate``, which the gates' own MACs can take a little over 1. At most one entry
per depth and data set is ``default_for_depth``: the backbone an environment loads when given
no checkpoint.

Anywhere a checkpoint is asked for (``gymnasium.make(..., checkpoint=...)``, ``load_checkpoint``,
``load_backbone``, ``load_skipnet``, ``train/evaluate.py --checkpoint``, ``train/supervised.py
--init``, ``train/hybrid.py --sp``, ``benchmarks/hrl_step.py --checkpoint``,
``scripts/compare_agents.py --checkpoint``), a registered name works as well as a path:
:func:`resolve_checkpoint` maps it to the shipped file, by one rule.

``$SKIPNET_PRETRAINED_DIR``, when set, replaces ``skipenv/models/weights`` with another folder
holding a ``registry.json`` and its files: for tests and packagers, not for everyday use.

Command line::

    python -m skipenv.models.pretrained list
    python -m skipenv.models.pretrained export runs/hrl38/final.pt \\
        skipenv/models/weights/skipnet38-hrl.pt --name skipnet38-hrl

Importing this module does not import torch (``import skipenv`` stays fast); export does.
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from skipenv.models import BACKBONE_KINDS

ENV_DIR = "SKIPNET_PRETRAINED_DIR"
REGISTRY = "registry.json"


#: Fields of a registry entry, in the order the CLI shows them.
FIELDS: tuple[str, ...] = (
    "name",
    "file",
    "kind",
    "depth",
    "dataset",
    "default_for_depth",
    "val_accuracy",
    "flops_fraction",
    "flops_fraction_with_gate",
    "block_fraction",
    "description",
)
_METRICS = ("val_accuracy", "flops_fraction", "flops_fraction_with_gate", "block_fraction")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

#: What a weights-only copy keeps of a training checkpoint (``format`` is added on save).
EXPORT_KEYS: tuple[str, ...] = (
    "kind",
    "arch",
    "config",
    "model",
    "gate",
    "route",  # kind static (issue 12)
    "metrics",
    "step",
    "epoch",
    "wall_s",
)


def _error(message: str) -> Exception:
    """A :class:`skipenv.models.checkpoint.CheckpointError` (torch imported only when one is
    raised)."""
    from skipenv.models.checkpoint import CheckpointError

    return CheckpointError(message)


# ---------------------------------------------------------------------------- registry


def weights_dir() -> Path:
    """The folder of the registry and the weights: ``$SKIPNET_PRETRAINED_DIR`` if set, else
    ``skipenv/models/weights`` in the installed package."""
    override = os.environ.get(ENV_DIR)
    if override:
        return Path(override).expanduser()
    folder = importlib.resources.files("skipenv.models") / "weights"
    if not isinstance(folder, os.PathLike):
        raise _error(
            f"skipenv is installed as {folder!r}, not as files on disk; shipped weights need a "
            "regular (unzipped) install of skipnet-gym"
        )
    return Path(os.fspath(folder))


def _registry() -> tuple[dict[str, Any], ...]:
    """The validated entries of the current registry (cached per file, size and mtime)."""
    path = weights_dir() / REGISTRY
    try:
        stat = path.stat()
    except OSError as err:
        raise _error(
            f"no pretrained-model registry at {path} ({err.__class__.__name__}); the install of "
            f"skipnet-gym is incomplete (reinstall it), or ${ENV_DIR} points to the wrong folder"
        ) from err
    return _read_registry(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_registry(path: str, mtime_ns: int, size: int) -> tuple[dict[str, Any], ...]:
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise _error(f"could not read the pretrained-model registry {path}: {err}") from err
    if not isinstance(entries, list):
        raise _error(
            f"the pretrained-model registry {path} must hold a JSON list of entries, got "
            f"{type(entries).__name__}"
        )
    checked = tuple(_check_entry(entry, i, path) for i, entry in enumerate(entries))
    names = [entry["name"] for entry in checked]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _error(f"the pretrained-model registry {path} lists {duplicates} more than once")
    defaults: dict[tuple[int, str], str] = {}
    for entry in checked:
        if entry["default_for_depth"]:
            key = (entry["depth"], entry["dataset"])
            if key in defaults:
                raise _error(
                    f"the pretrained-model registry {path} marks both {defaults[key]!r} and "
                    f"{entry['name']!r} default_for_depth for ResNet-{key[0]} on {key[1]}; "
                    "keep one"
                )
            defaults[key] = entry["name"]
    return checked


def _check_entry(entry: Any, index: int, path: str) -> dict[str, Any]:
    """Entry ``index`` of registry ``path``, checked field by field."""
    where = f"entry {index} of the pretrained-model registry {path}"
    if not isinstance(entry, dict):
        raise _error(f"{where} must be a JSON object, got {entry!r}")
    if isinstance(entry.get("name"), str):
        where = f"entry {index} ({entry['name']!r}) of the pretrained-model registry {path}"
    missing = [key for key in FIELDS if key not in entry]
    unknown = sorted(set(entry) - set(FIELDS))
    if missing or unknown:
        raise _error(
            f"{where} has missing fields {missing} and unknown fields {unknown}; an entry has "
            f"exactly {list(FIELDS)}"
        )

    def bad(key: str, want: str) -> Exception:
        return _error(f"{where}: {key} must be {want}, got {entry[key]!r}")

    name, file, depth = entry["name"], entry["file"], entry["depth"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise bad("name", "letters, digits, '.', '_' or '-' (not starting with a symbol)")
    if not isinstance(file, str) or Path(file).name != file or not file.endswith(".pt"):
        raise bad("file", "the name of a .pt file beside the registry (no folders)")
    if entry["kind"] not in BACKBONE_KINDS:
        raise bad("kind", f"one of {BACKBONE_KINDS}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise bad("depth", "a CIFAR ResNet depth 6n + 2 (8, 14, 20, 32, 38, 56, 110, ...)")
    if not isinstance(entry["dataset"], str) or not entry["dataset"]:
        raise bad("dataset", 'a data set name such as "cifar10"')
    if not isinstance(entry["default_for_depth"], bool):
        raise bad("default_for_depth", "true or false")
    for key in _METRICS:
        value = entry[key]
        if value is None:
            continue
        # the gates' own MACs can take this one a little over 1 when every block runs
        with_gate = key == "flops_fraction_with_gate"
        top, want = (2.0, "in [0, 2]") if with_gate else (1.0, "in [0, 1]")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (math.isfinite(value) and 0.0 <= value <= top)
        ):
            raise bad(key, f"a fraction {want} or null")
    if not isinstance(entry["description"], str):
        raise bad("description", "a string")
    return dict(entry)


def _entry(name: str) -> dict[str, Any]:
    for entry in _registry():
        if entry["name"] == name:
            return entry
    raise _error(f"no pretrained model named {name!r}; {_shipped_phrase()}")


def _shipped_phrase() -> str:
    names = list_pretrained()
    if not names:
        return f"none ships with this install (registry: {weights_dir() / REGISTRY})"
    return "shipped: " + ", ".join(names)


def list_pretrained() -> list[str]:
    """Names of the shipped pretrained models, in registry order."""
    return [entry["name"] for entry in _registry()]


def pretrained_info(name: str) -> dict[str, Any]:
    """The registry entry of shipped model ``name`` (a fresh copy)."""
    return dict(_entry(name))


def pretrained_path(name: str) -> Path:
    """The weights file of shipped model ``name``.

    Raises:
        CheckpointError: unknown name, or a registered file missing from the install.
    """
    entry = _entry(name)
    path = weights_dir() / entry["file"]
    if not path.is_file():
        raise _error(
            f"the pretrained model {name!r} is registered, but its file {path} is missing: the "
            "install of skipnet-gym is incomplete (reinstall it; the weights are package data), "
            "or pass checkpoint=PATH to a local checkpoint"
        )
    return path


def default_pretrained(depth: int, dataset: str = "cifar10") -> str | None:
    """The name of the shipped model that environments of ``depth`` load by default, if any."""
    for entry in _registry():
        if entry["default_for_depth"] and entry["depth"] == depth and entry["dataset"] == dataset:
            return entry["name"]
    return None


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> Path:
    """A checkpoint file from a shipped model's name or a path: the one rule every command-line
    option and function that takes a checkpoint follows.

    A value that is a registered name (``skipnet38-ld-hrl-a1``; a ``str`` or a ``Path``, with no
    folder part) gives its shipped file; anything else must be an existing file (``~`` is
    expanded). To use a local file that happens to carry a shipped name, give it a folder
    (``./skipnet38-ld-sp``).

    Raises:
        CheckpointError: neither; the message lists the shipped names (never the refused value,
            which is not one of them).
    """
    text = os.fspath(name_or_path)
    if not isinstance(text, str):
        raise TypeError(f"a checkpoint is a name or a path, got {name_or_path!r}")
    bare = "/" not in text and os.sep not in text
    if bare and text in list_pretrained():
        return pretrained_path(text)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise _error(
        f"no checkpoint at {path}: {text!r} is neither a checkpoint file nor the name of a "
        f"shipped pretrained model ({_shipped_phrase()}). Pass the path of a base, sp, hrl or "
        "static checkpoint (e.g. runs/base38/final.pt) or one of the shipped names"
    )


# ---------------------------------------------------------------------------- export


def export_weights(
    checkpoint_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *, name: str
) -> Path:
    """Write a weights-only copy of a trained base, sp, hrl or static checkpoint to ``out_path``.

    Keeps :data:`EXPORT_KEYS` (kind, arch, config, backbone ``model``, ``gate`` when present,
    metrics, step, epoch, wall_s) and records ``name``; drops optimizer, scheduler and RNG
    states. The backbone is rebuilt from the copy before it is written, so a copy that would
    not load is never written. This is how a trained model goes into ``skipenv/models/weights/``
    (then add its registry entry and model-card section).

    Raises:
        ValueError: ``name`` is not a valid registry name.
        CheckpointError: the checkpoint is missing, of another kind, an sp/hrl one without its
            gate, or its weights do not fit its arch.
    """
    from skipenv.models.checkpoint import (
        checkpoint_arch,
        load_backbone,
        load_checkpoint,
        save_checkpoint,
    )

    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"name must be letters, digits, '.', '_' or '-' (not starting with a symbol), "
            f"got {name!r}"
        )
    payload = load_checkpoint(checkpoint_path, kinds=BACKBONE_KINDS)
    needed = "route" if payload["kind"] == "static" else "gate"  # static: issue 12
    if payload["kind"] != "base" and needed not in payload:
        raise _error(
            f"{checkpoint_path} holds a {payload['kind']!r} checkpoint without its {needed}; "
            "export the final.pt of train/supervised.py, train/hybrid.py or train/static.py"
        )
    weights = {key: payload[key] for key in EXPORT_KEYS if key in payload}
    weights["arch"] = checkpoint_arch(payload)
    weights["name"] = name
    load_backbone(weights, dataset=weights["arch"]["dataset"])  # raises if it would not load
    return save_checkpoint(out_path, weights)


def registry_entry(
    path: str | os.PathLike[str], *, default_for_depth: bool = False
) -> dict[str, Any]:
    """A registry entry for exported weights ``path`` (metrics null: fill them in from
    ``train/evaluate.py --checkpoint NAME --split val``, and write a description)."""
    from skipenv.models.checkpoint import checkpoint_arch, load_checkpoint
    from skipenv.utils import check_payload

    payload = load_checkpoint(path)
    arch = checkpoint_arch(payload)
    entry = {
        "name": payload.get("name", Path(path).stem),
        "file": Path(path).name,
        "kind": payload["kind"],
        "depth": arch["depth"],
        "dataset": arch["dataset"],
        "default_for_depth": default_for_depth,
        "val_accuracy": None,
        "flops_fraction": None,
        "flops_fraction_with_gate": None,
        "block_fraction": None,
        "description": "",
    }
    check_payload(entry, "json", f"the registry entry of {path}")
    return _check_entry(entry, 0, "(the entry printed for registry.json)")  # as the reader does


# ---------------------------------------------------------------------------- command line


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _print_list() -> None:
    entries = _registry()
    if not entries:
        print(f"no pretrained models ship with this install (registry: {weights_dir() / REGISTRY})")
        return
    header = (
        "name",
        "kind",
        "depth",
        "dataset",
        "default",
        "val acc %",
        "FLOPs %",
        "+gate %",
        "blocks %",
    )
    rows = [
        (
            e["name"],
            e["kind"],
            str(e["depth"]),
            e["dataset"],
            "yes" if e["default_for_depth"] else "",
            *(_percent(e[key]) for key in _METRICS),
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for e in entries:
        if e["description"]:
            print(f"{e['name']}: {e['description']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m skipenv.models.pretrained",
        description="List the shipped pretrained models, or export a trained checkpoint's "
        "weights for shipping.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the shipped models and their val metrics")
    export = commands.add_parser(
        "export", help="write a weights-only copy of a checkpoint (no optimizer/RNG state)"
    )
    export.add_argument(
        "checkpoint", help="a base, sp, hrl or static checkpoint: a path or a shipped name"
    )
    export.add_argument(
        "out", type=Path, help="the .pt file to write, e.g. skipenv/models/weights/X.pt"
    )
    export.add_argument("--name", required=True, help="the registry name of the model")
    export.add_argument(
        "--default-for-depth",
        action="store_true",
        help="mark the printed registry entry as the default backbone of its depth",
    )
    args = parser.parse_args(argv)
    if args.command == "list":
        _print_list()
        return
    from skipenv.models.checkpoint import CheckpointError

    try:
        out = export_weights(args.checkpoint, args.out, name=args.name)
    except (CheckpointError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    size_mb = out.stat().st_size / 2**20
    print(f"wrote {out} ({size_mb:.2f} MB); its registry entry (fill in the val metrics):")
    entry = registry_entry(out, default_for_depth=args.default_for_depth)
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
