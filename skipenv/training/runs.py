"""A training run's folder: checkpoints, metrics and resuming, shared by the entry points.

Layout of ``out/``: ``last.pt`` (written every few minutes and at each evaluation, atomically),
``final.pt`` (the finished run), ``metrics.jsonl`` (one JSON line per evaluation). A run is
started in an empty folder, or resumed from ``last.pt`` with ``--resume``; the metrics of
evaluations the checkpoint never saw (made after it, before a kill) are dropped on resume.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from skipenv.data.loader import BatchLoader
from skipenv.data.splits import load_cifar10
from skipenv.models.checkpoint import load_checkpoint, save_checkpoint
from skipenv.utils import atomic_write, check_payload


class RunDir:
    """The files of one run in ``out``; ``resume`` says whether ``last.pt`` must exist.

    Only the main process of a distributed run writes (``writer=False`` on the others). The
    folder is created by the first write (a metrics line or a checkpoint), so a run that fails
    while starting (a bad argument, missing data) leaves no empty folder behind.
    """

    def __init__(self, out: Path, resume: bool, writer: bool = True) -> None:
        self.out, self.resume, self.writer = Path(out), resume, writer
        self.last, self.final = self.out / "last.pt", self.out / "final.pt"
        self.metrics = self.out / "metrics.jsonl"
        if not resume and self.last.exists():
            raise FileExistsError(
                f"{self.last} exists: pass --resume to continue it, or a new --out"
            )
        # the folder is made by the first write, so a run that fails before leaves none
        self._last_save = time.monotonic()

    def load_last(self, kinds: tuple[str, ...], map_location: Any) -> dict[str, Any]:
        """The checkpoint to resume from; forgets metrics logged after it."""
        ckpt = load_checkpoint(self.last, kinds=kinds, map_location=map_location)
        if self.writer and self.metrics.exists():
            lines = [ln for ln in self.metrics.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln)["step"] <= ckpt["step"]]
            text = "".join(ln + "\n" for ln in kept)
            atomic_write(self.metrics, lambda f: f.write(text.encode()))
        return ckpt

    def log(self, metrics: dict[str, Any]) -> None:
        """Append one evaluation to ``metrics.jsonl``.

        Raises:
            skipenv.utils.PayloadError: a value JSON would refuse or change (a numpy scalar, a
                tuple, ...), named by its key; nothing is written.
        """
        check_payload(metrics, "json", f"a line of {self.metrics}")
        line = json.dumps(metrics)
        json.loads(line)  # reads back (NaN and inf included: Python's json reads them)
        if self.writer:
            self.out.mkdir(parents=True, exist_ok=True)
            with self.metrics.open("a") as f:
                f.write(line + "\n")

    def save(self, payload: dict[str, Any], final: bool = False) -> None:
        """Write ``last.pt`` (or ``final.pt``) atomically, checked and read back
        (:func:`skipenv.models.checkpoint.save_checkpoint`)."""
        if self.writer:
            save_checkpoint(self.final if final else self.last, payload)
        self._last_save = time.monotonic()

    def due(self, minutes: float) -> bool:
        """Whether ``minutes`` have passed since the last save."""
        return time.monotonic() - self._last_save > 60 * minutes


def rng_state() -> dict[str, torch.Tensor]:
    """Torch's global RNG states (CPU, and CUDA when present), for a checkpoint."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def config_dict(args: Any) -> dict[str, Any]:
    """An argument dataclass as plain JSON types (paths as strings), for a checkpoint."""
    return json.loads(json.dumps(dataclasses.asdict(args), default=str))


@dataclass(kw_only=True)
class MeasureArgs:
    """The arguments the measuring scripts share (``scripts/skip_tolerance.py``,
    ``scripts/route_headroom.py``; each adds its own)."""

    data_dir: str | None = None
    """CIFAR-10 data root (default: $SKIPNET_DATA, else the per-user cache folder)"""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda"""
    threads: int | None = None
    """torch CPU threads (default: all cores; lower it when another job shares the machine)"""
    amp: str = "none"
    """mixed precision of the forward passes: none or bf16 (CPU; about 3x faster) or fp16"""
    batch_size: int = 500
    """images per forward pass"""
    json: Path | None = None
    """also write the results to this JSON file"""
    progress: bool = True
    """show a progress bar"""


@dataclass
class RunArgs:
    """The arguments every training entry point shares (each adds its own after these)."""

    batch_size: int = 128
    """images per step (the global batch under torchrun)"""
    train_split: str = "train"
    """split to train on: train (45,000) or train-full (50,000)"""
    eval_split: str = "val"
    """split evaluated during training (val: the fixed 5,000 held out of train)"""
    data_dir: str | None = None
    """CIFAR-10 data root (default: $SKIPNET_DATA, else the per-user cache folder)"""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda"""
    seed: int = 0
    """seeds everything random: fresh weights, batch order, augmentation, sampled decisions"""
    channels_last: bool = True
    """NHWC memory format (faster convs on CPUs; README, Performance notes)"""
    amp: str = "none"
    """mixed precision: none, bf16 (faster steps on AVX-512 BF16 CPUs) or fp16 (CUDA)"""
    checkpoint_minutes: float = 5.0
    """minutes between checkpoints (one is also written at each evaluation)"""
    resume: bool = False
    """continue from OUT/last.pt instead of starting afresh"""
    max_steps: int | None = None
    """stop after this many steps in all (smoke tests); the schedule still spans all epochs"""
    progress: bool = True
    """show a progress bar"""
    threads: int | None = None
    """torch CPU threads (default: all cores; lower it when another job shares the machine)"""
    tensorboard: bool = True
    """also log to TensorBoard in OUT/tb (--no-tensorboard: metrics.jsonl only)"""


def cifar_loaders(
    args: RunArgs, device: torch.device, is_main: bool = True
) -> tuple[BatchLoader, BatchLoader]:
    """The shuffled, augmented training loader and the plain evaluation loader of a run.

    Every process of a distributed run builds the same loaders (same seed, same batches);
    :func:`skipenv.training.distributed.shard` then keeps each process's rows.
    """
    train = load_cifar10(args.train_split, args.data_dir, progress=is_main)
    held = load_cifar10(args.eval_split, args.data_dir, progress=is_main)
    train_loader = BatchLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        augment=True,
        drop_last=True,
        device=device,
        seed=args.seed,
        channels_last=args.channels_last,
    )
    eval_loader = BatchLoader(held, batch_size=500, device=device, channels_last=args.channels_last)
    return train_loader, eval_loader
