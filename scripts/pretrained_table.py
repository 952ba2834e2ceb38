"""The shipped models' table, in one command: re-evaluate every one and write the table.

    python scripts/pretrained_table.py --split val            # README + model card + JSON
    python scripts/pretrained_table.py --split sample --no-write-docs   # offline look

Evaluates every model of the registry (``python -m skipenv.models.pretrained list``) on
``--split`` with greedy gates and real skipping (:func:`skipenv.training.evaluation.
evaluate_gated`), writes the results as JSON (``--json``) and, for ``val`` (the split the
registry and the docs quote), replaces the markdown table between the markers
``<!-- pretrained-table:begin -->`` / ``<!-- pretrained-table:end -->`` in README.md and
skipenv/models/weights/MODEL_CARD.md. Columns: val top-1, ``flops_fraction``,
``flops_fraction_with_gate``, block computation, and a routing diagnostic: the blocks whose
decision depends on the image (skip rate strictly between 0 and 1; the rest are always run or
always skipped). When ``skipenv.training.routing`` (routing diagnostics) is installed its
``summarize(backbone, gate, loader)`` is added to the JSON too.

Measured numbers that differ from ``registry.json`` (to 4 decimals) are reported; the docs are
then written from the registry only after ``--update-registry`` puts the new numbers there,
so README, model card and registry always agree (tests/test_pretrained_table.py checks it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tyro

from agents.skipnet import load_backbone_and_gate
from skipenv.data.loader import BatchLoader
from skipenv.data.splits import load_cifar10
from skipenv.models import pretrained
from skipenv.models.pretrained import list_pretrained, pretrained_info
from skipenv.training.devices import prepare_device
from skipenv.training.evaluation import evaluate_gated
from skipenv.training.summary import images, print_summary
from skipenv.utils import atomic_write

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- pretrained-table:begin (scripts/pretrained_table.py writes this table) -->"
END = "<!-- pretrained-table:end -->"
KIND_NAMES = {"base": "plain", "sp": "SP", "hrl": "HRL"}
#: registry key -> evaluate_gated key
METRICS = {
    "val_accuracy": "accuracy",
    "flops_fraction": "flops_fraction",
    "flops_fraction_with_gate": "flops_fraction_with_gate",
    "block_fraction": "block_fraction",
}


@dataclass
class Args:
    split: str = "val"
    """split to evaluate on: val (what the registry and the docs quote), sample, train, ..."""
    data_dir: str | None = None
    """CIFAR-10 data root (default: $SKIPNET_DATA, else the per-user cache folder)"""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda"""
    batch_size: int = 500
    """images per forward pass"""
    threads: int | None = None
    """torch CPU threads (default: all cores; lower it when another job shares the machine)"""
    json: Path = REPO / "results" / "pretrained_table.json"
    """where the measured results go"""
    write_docs: bool = True
    """replace the table in README.md and the model card (val only)"""
    update_registry: bool = False
    """write the measured val numbers into registry.json where they differ"""
    progress: bool = True
    """progress bars"""


def dependent_blocks(skip_rates: list[float]) -> int:
    """Blocks whose decision depends on the image: skip rate strictly between 0 and 1."""
    return sum(1 for r in skip_rates if 0.0 < r < 1.0)


def render_table(entries: list[dict[str, Any]]) -> str:
    """The markdown table of registry-style entries (``name``, ``kind``, the four metrics,
    ``default_for_depth``, and optionally ``dependent_blocks`` / ``num_blocks``)."""
    lines = [
        "| name | kind | val top-1 | FLOPs | FLOPs with gate | block computation "
        "| image-dependent blocks |",
        "|------|------|----------:|------:|----------------:|------------------:"
        "|----------------------:|",
    ]
    for e in entries:
        name = e["name"] + (" (default)" if e.get("default_for_depth") else "")
        dependent = (
            f"{e['dependent_blocks']} of {e['num_blocks']}" if "dependent_blocks" in e else "-"
        )
        cells = [f"{100 * e[k]:.2f}%" for k in METRICS]
        lines.append(f"| {name} | {KIND_NAMES[e['kind']]} | {' | '.join(cells)} | {dependent} |")
    return "\n".join(lines)


def replace_between_markers(text: str, table: str, where: str) -> str:
    """``text`` with what lies between :data:`BEGIN` and :data:`END` replaced by ``table``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"{where} must hold the markers {BEGIN!r} and {END!r} once each")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def table_between_markers(text: str) -> str:
    """The table between the markers (for tests)."""
    return text.split(BEGIN)[1].split(END)[0].strip()


def measure(args: Args, device: torch.device) -> list[dict[str, Any]]:
    data = load_cifar10(args.split, args.data_dir, progress=args.progress)
    loader = BatchLoader(data, batch_size=args.batch_size, device=device, channels_last=True)
    names = list_pretrained()
    docs = args.write_docs and args.split == "val"
    print_summary(
        f"scripts/pretrained_table.py: re-evaluate the {len(names)} shipped models "
        "(greedy gates, real skipping)",
        device=device,
        data=images(len(data), args.split),
        steps=f"{len(names)} models x {len(loader)} batches of <= {args.batch_size}",
        out=f"{args.json}" + (", README.md and MODEL_CARD.md" if docs else ""),
    )
    try:
        from skipenv.training import routing  # optional: routing diagnostics (issue 12)
    except ImportError:
        routing = None
    rows = []
    for name in names:
        _, backbone, gate = load_backbone_and_gate(name, device)
        backbone = backbone.to(memory_format=torch.channels_last)
        result = evaluate_gated(backbone, gate, loader, progress=args.progress, desc=name)
        row = {**pretrained_info(name), "split": args.split}
        row |= {key: result[m] for key, m in METRICS.items()}
        row |= {
            "skip_rates": result["skip_rates"],
            "dependent_blocks": dependent_blocks(result["skip_rates"]),
            "num_blocks": backbone.num_blocks,
            "num_images": result["num_images"],
        }
        if routing is not None and hasattr(routing, "summarize"):
            row["routing"] = routing.summarize(backbone, gate, loader)
        print(
            f"{name}: top-1 {100 * row['val_accuracy']:.2f}%  FLOPs "
            f"{100 * row['flops_fraction']:.2f}%  blocks {100 * row['block_fraction']:.2f}%  "
            f"image-dependent blocks {row['dependent_blocks']} of {row['num_blocks']}"
        )
        rows.append(row)
    return rows


def main(args: Args) -> list[dict[str, Any]]:
    rows = measure(args, prepare_device(args.device, args.threads))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, lambda f: f.write((json.dumps(rows, indent=2) + "\n").encode()))
    json.loads(args.json.read_text())  # read back
    print(f"wrote {args.json}")
    if args.split != "val":
        print(render_table(rows))
        print("(README and model card quote val: not written for another split)")
        return rows
    differs = [
        r["name"]
        for r in rows
        if any(round(r[k], 4) != round(pretrained_info(r["name"])[k], 4) for k in METRICS)
    ]
    registry_path = pretrained.weights_dir() / pretrained.REGISTRY
    if differs and args.update_registry:
        entries = json.loads(registry_path.read_text())
        measured = {r["name"]: r for r in rows}
        for entry in entries:
            if entry["name"] in differs:
                entry |= {k: measured[entry["name"]][k] for k in METRICS}
        text = json.dumps(entries, indent=2) + "\n"
        atomic_write(registry_path, lambda f: f.write(text.encode()))
        print(f"updated {registry_path} for {', '.join(differs)}")
        differs = []
    if differs:
        print(
            f"measured numbers differ from {registry_path} for {', '.join(differs)} (another "
            "device or torch version can flip a borderline image); the docs were not written: "
            "rerun with --update-registry to adopt the new numbers"
        )
        return rows
    if args.write_docs:
        table = render_table(rows)
        for path in (REPO / "README.md", pretrained.weights_dir() / "MODEL_CARD.md"):
            new = replace_between_markers(path.read_text(), table, str(path))
            atomic_write(path, lambda f, new=new: f.write(new.encode()))
            print(f"wrote the table in {path}")
        print(table)
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
