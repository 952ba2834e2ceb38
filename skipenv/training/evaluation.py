"""Evaluating a (gated) network: accuracy, executed FLOPs, block computation, skip rates, speed.

Measures of computation reported, as the method asks (names as in
:mod:`skipenv.models.flops`):

- ``flops_fraction``: MACs the backbone actually runs per image (stem, executed blocks,
  projection shortcuts of skipped blocks, head) over the MACs of the full plain network; what
  the environments report.
- ``flops_fraction_with_gate``: the same with the gate's calls added.
- ``block_fraction``: the paper's "computation percentage": executed blocks over all blocks,
  block 0 counted as executed; gates and shortcuts ignored.

and ``routing`` (:mod:`skipenv.training.routing`, issue 12): whether the routes differ per image,
and the accuracy of the most common route applied to every image (the static control).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from skipenv.models.gating import Gate
from skipenv.models.resnet import SkipResNet
from skipenv.training.routing import routing_stats, static_control


def evaluate_gated(
    backbone: SkipResNet,
    gate: Gate | None,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    autocast: Any = None,
    routing: bool = True,
    progress: bool = False,
    desc: str = "evaluating",
) -> dict[str, Any]:
    """Greedy gates, real skipping, eval mode; the plain network when ``gate`` is None.

    Args:
        backbone: the network (put in eval mode for the call, then restored).
        gate: the policy, or None for every block.
        batches: ``(x, y)`` pairs of normalised images and labels on the model's device.
        autocast: an optional context manager factory (e.g. ``lambda: torch.autocast(...)``).
        routing: also report ``routing``, the diagnostics of :mod:`skipenv.training.routing`
            (blocks run per image, distinct routes, dynamic blocks, ...) with the static control
            (the most common route for every image; ``batches`` is then iterated a second
            time, running only the images that took another route).
        progress: show a progress bar over the batches (tqdm, removed when done).
        desc: the bar's label.

    Returns:
        ``accuracy``, ``loss``, ``flops_fraction``, ``flops_fraction_with_gate``,
        ``block_fraction``, ``skip_rates`` (per block, block 0 first), ``images_per_s``,
        ``num_images`` (and ``routing``, a dict, unless ``routing`` is False).
    """
    modules = [backbone] + ([gate] if gate is not None else [])
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    correct, loss, n, seconds = 0, 0.0, 0, 0.0
    macs = 0  # backbone MACs of all images, gate calls left out
    executed_sum: torch.Tensor | None = None
    table = None
    masks, hits, labels = [], [], []  # per batch: B x N executed, B correct, B labels
    try:
        with torch.inference_mode():
            total = len(batches) if isinstance(batches, Sized) else None
            bar = tqdm(
                batches, desc=desc, total=total, unit="batch", leave=False, disable=not progress
            )
            for x, y in bar:
                started = time.perf_counter()
                with autocast() if autocast is not None else contextlib.nullcontext():
                    if gate is None:
                        logits = backbone(x)  # B x classes
                        executed = torch.ones(
                            x.shape[0], backbone.num_blocks, dtype=torch.bool, device=x.device
                        )  # B x N
                    else:
                        out = backbone.forward_gated(x, gate, mode="greedy", routing="skip")
                        logits, executed = out.logits, out.executed  # B x classes, B x N
                if x.device.type == "cuda":
                    torch.cuda.synchronize(x.device)
                seconds += time.perf_counter() - started
                table = table or backbone.macs_table(tuple(x.shape[-2:]), gate)
                loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                correct += int((logits.argmax(dim=1) == y).sum())
                if routing:
                    masks.append(executed.cpu())
                    hits.append((logits.argmax(dim=1) == y).cpu())
                    labels.append(y.cpu())
                n += y.numel()
                macs += int(table.backbone_macs(executed).sum())
                counts = executed.sum(dim=0).cpu()  # N
                executed_sum = counts if executed_sum is None else executed_sum + counts
    finally:
        for m, mode in zip(modules, was_training, strict=True):
            m.train(mode)
    if n == 0 or executed_sum is None or table is None:
        raise ValueError("no images to evaluate: the batches were empty")
    run_rates = executed_sum.double() / n  # N
    extra: dict[str, Any] = {}
    if routing:  # issue 12: is the routing per image, and does it beat its own static route?
        stats = routing_stats(torch.cat(masks), accuracy=correct / n)
        static = (
            None  # a one-shot iterator cannot be run through twice
            if isinstance(batches, Iterator)
            else static_control(
                backbone, batches, masks, hits, labels, stats.route, autocast=autocast
            )
        )
        extra["routing"] = dataclasses.replace(stats, static_accuracy=static).to_dict()
    return {
        "accuracy": correct / n,
        "loss": loss / n,
        "flops_fraction": macs / (n * table.full),
        "flops_fraction_with_gate": (macs + n * table.gate_total) / (n * table.full),
        "block_fraction": float(run_rates.mean()),
        "skip_rates": [round(1.0 - float(r), 6) for r in run_rates],
        "images_per_s": n / seconds if seconds > 0 else float("nan"),
        "num_images": n,
        **extra,
    }
