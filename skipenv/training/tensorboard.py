"""TensorBoard logging for the training entry points (``OUT/tb``, beside ``metrics.jsonl``).

Logged: every ``every`` steps the training loss, the batch's accuracy, its executed blocks
and FLOPs and a histogram of the gates' p(execute); at each evaluation the held-out
accuracy, loss, FLOPs fractions, block fraction, the skip rate of every block
(``skip_rate/block_NN``), one p(execute) histogram per decision, and a few routed example
images (the environment's ``rgb_array`` frames: image, blocks run, label, prediction, FLOPs).
``--no-tensorboard`` turns it off. View with ``tensorboard --logdir runs/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skipenv.envs.render import rgb_frame
from skipenv.models.gating import Gate
from skipenv.models.resnet import SkipResNet


class TensorBoard:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir``, or nothing when None.

    Raises:
        ImportError: ``tensorboard`` is not installed (the message says what to do).
    """

    def __init__(self, log_dir: Path | None, every: int = 10) -> None:
        self.every = every
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "TensorBoard logging needs the tensorboard package: `pip install tensorboard`, "
                "or pass --no-tensorboard"
            ) from err
        self.writer = SummaryWriter(str(log_dir))

    def step(
        self,
        step: int,
        loss: float,
        accuracy: float,
        executed: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
        flops: torch.Tensor | None = None,
    ) -> None:
        """One training step (written every ``every`` steps). ``executed``: B x N bool,
        ``probs``: B x K, ``flops``: B flops fractions."""
        if self.writer is None or step % self.every:
            return
        w = self.writer
        w.add_scalar("train/loss", loss, step)
        w.add_scalar("train/batch_accuracy", accuracy, step)
        if executed is not None:
            w.add_scalar("train/block_fraction", float(executed.float().mean()), step)
        if flops is not None:
            w.add_scalar("train/flops_fraction", float(flops.float().mean()), step)
        if probs is not None:
            w.add_histogram("train/p_execute", probs.detach().float().cpu(), step)

    def evaluation(
        self, step: int, metrics: dict[str, Any], split: str, probs: torch.Tensor | None = None
    ) -> None:
        """One evaluation: the scalars of ``metrics`` (``{split}_accuracy``, ...), the skip
        rate of every block, and per decision a histogram of ``probs`` (M x K) if given."""
        if self.writer is None:
            return
        w = self.writer
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                w.add_scalar(f"eval/{key}", value, step)
        for block, rate in enumerate(metrics.get(f"{split}_skip_rates") or []):
            w.add_scalar(f"skip_rate/block_{block:02d}", rate, step)
        if probs is not None:
            for k in range(probs.shape[1]):
                w.add_histogram(f"p_execute/decision_{k:02d}", probs[:, k].float().cpu(), step)

    def images(self, step: int, frames: np.ndarray) -> None:
        """Routed example images: ``B x H x W x 3`` uint8."""
        if self.writer is not None and len(frames):
            self.writer.add_images("routes", frames, step, dataformats="NHWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def routed_examples(
    backbone: SkipResNet,
    gate: Gate | None,
    images: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[str, ...],
) -> tuple[np.ndarray, torch.Tensor | None]:
    """Greedy routes of a few images as frames, and the gate's p(execute).

    Args:
        backbone, gate: the network (eval mode for the call); gate None: every block.
        images: B x 3 x 32 x 32 uint8, the pictures.
        inputs: B x 3 x 32 x 32, the same images normalised, on the model's device.
        labels: B int64.
        classes: class names.

    Returns:
        ``B x H x W x 3`` uint8 frames and the B x K probabilities (None without a gate).
    """
    modules = [backbone] + ([gate] if gate is not None else [])
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.inference_mode():
            if gate is None:
                logits = backbone(inputs)  # B x classes
                executed = torch.ones(len(inputs), backbone.num_blocks, dtype=torch.bool)
                probs = None
            else:
                out = backbone.forward_gated(inputs, gate, mode="greedy", routing="skip")
                logits, executed, probs = out.logits, out.executed, out.probs  # B x N, B x K
    finally:
        for m, mode in zip(modules, was_training, strict=True):
            m.train(mode)
    table = backbone.macs_table(tuple(inputs.shape[-2:]))
    flops = table.flops_fraction(executed.cpu())  # B
    stages = len(backbone.widths)
    frames = [
        rgb_frame(
            images[i].cpu().numpy(),
            executed[i].cpu().numpy(),
            backbone.num_blocks,
            stages,
            label=classes[int(labels[i])],
            prediction=classes[int(logits[i].argmax())],
            flops_fraction=float(flops[i]),
        )
        for i in range(len(inputs))
    ]
    return np.stack(frames), (None if probs is None else probs.float().cpu())


def example_callback(
    backbone: SkipResNet, gate: Gate | None, loader: Any, count: int = 8
) -> Callable[[], tuple[np.ndarray, torch.Tensor | None]]:
    """A function giving :func:`routed_examples` of the first ``count`` images of ``loader``
    (a :class:`~skipenv.data.loader.BatchLoader` without shuffling: its first batch starts
    with them)."""
    from skipenv.data.sources import CIFAR10_CLASSES

    def examples() -> tuple[np.ndarray, torch.Tensor | None]:
        x, y = next(iter(loader))  # B x 3 x 32 x 32 normalised, B
        return routed_examples(
            backbone, gate, loader.images[:count], x[:count], y[:count], CIFAR10_CLASSES
        )

    return examples
