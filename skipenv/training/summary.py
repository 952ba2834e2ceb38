"""What a run is about to do, said before it starts, and its evaluations as readable lines.

Every entry point (``train/*.py``, ``scripts/*.py``) prints :func:`start_summary` first::

    train/hybrid.py: SkipNet-38 HRL (alpha 0.6) from runs/sp38/final.pt
      device   cpu, 2 threads
      data     train (45,000 images), evaluated on val (5,000 images)
      steps    702 (2 epochs of 351)
      output   runs/hrl38
      start    fresh

and :func:`format_metrics` turns one evaluation (a ``metrics.jsonl`` line, which keeps full
precision) into ``step 351/702 (epoch 1.00)  val acc 88.60%  FLOPs 66.1% ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch


def start_summary(
    what: str,
    *,
    device: str | torch.device,
    data: str | None = None,
    steps: str | None = None,
    out: str | Path | None = None,
    start: str | None = None,
    **more: Any,
) -> str:
    """The block of lines an entry point prints before it starts work.

    Args:
        what: the script and what it trains or evaluates, e.g.
            ``"train/base.py: plain ResNet-38"``.
        device: where it runs; the line adds torch's intra-op thread count.
        data: the split(s) and sizes, e.g. ``"val (5,000 images)"``.
        steps: how many steps (or batches, or episodes) it will run.
        out: where its files go.
        start: ``"fresh"`` or what it resumes from.
        more: further ``name=value`` lines (underscores become spaces).
    """
    rows = [("device", f"{device}, {torch.get_num_threads()} threads")]
    for name, value in (("data", data), ("steps", steps), ("output", out), ("start", start)):
        if value is not None:
            rows.append((name, str(value)))
    rows += [(name.replace("_", " "), str(value)) for name, value in more.items()]
    width = max(len(name) for name, _ in rows)
    return "\n".join([what] + [f"  {name:<{width}}  {value}" for name, value in rows])


def print_summary(what: str, **fields: Any) -> str:
    """Print :func:`start_summary` to stdout (flushed, before any progress bar) and return it."""
    text = start_summary(what, **fields)
    print(text, flush=True)
    sys.stdout.flush()
    return text


def images(n: int, split: str) -> str:
    """``"val (5,000 images)"``."""
    return f"{split} ({n:,} images)"


def _percent(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else 100 * float(value)


def format_metrics(metrics: dict[str, Any], split: str, total_steps: int | None = None) -> str:
    """One evaluation as a line: step, epoch, held-out accuracy / loss / FLOPs / blocks,
    train accuracy and blocks, wall time. Keys are those :func:`skipenv.training.loop.train`
    logs (``{split}_accuracy``, ``train_accuracy``, ``wall_s``, ...); absent ones are left out.
    """
    step = metrics.get("step")
    parts = []
    if step is not None:
        parts.append(f"step {step}" + (f"/{total_steps}" if total_steps else ""))
    if metrics.get("epoch") is not None:
        parts[-1:] = [f"{parts[-1]} (epoch {metrics['epoch']:.2f})" if parts else ""]
    shown = (
        (f"{split}_accuracy", f"{split} acc", "{:.2f}%", True),
        (f"{split}_loss", "loss", "{:.4f}", False),
        (f"{split}_flops_fraction", "FLOPs", "{:.1f}%", True),
        (f"{split}_flops_fraction_with_gate", "with gate", "{:.1f}%", True),
        (f"{split}_block_fraction", "blocks", "{:.1f}%", True),
        ("train_accuracy", "train acc", "{:.2f}%", True),
        ("train_block_fraction", "train blocks", "{:.1f}%", True),
    )
    for key, name, form, percent in shown:
        if metrics.get(key) is None:
            continue
        value = _percent(metrics, key) if percent else float(metrics[key])
        parts.append(f"{name} {form.format(value)}")
    if metrics.get("wall_s") is not None:
        parts.append(f"wall {metrics['wall_s'] / 60:.1f} min")
    return "  ".join(p for p in parts if p)
