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
from pathlib import Path
from typing import Any

import torch

from skipenv.checkpoint import load_checkpoint, save_checkpoint


class RunDir:
    """The files of one run in ``out``; ``resume`` says whether ``last.pt`` must exist.

    Only the main process of a distributed run writes (``writer=False`` on the others).
    """

    def __init__(self, out: Path, resume: bool, writer: bool = True) -> None:
        self.out, self.resume, self.writer = Path(out), resume, writer
        self.last, self.final = self.out / "last.pt", self.out / "final.pt"
        self.metrics = self.out / "metrics.jsonl"
        if not resume and self.last.exists():
            raise FileExistsError(
                f"{self.last} exists: pass --resume to continue it, or a new --out"
            )
        if writer:
            self.out.mkdir(parents=True, exist_ok=True)
        self._last_save = time.monotonic()

    def load_last(self, kinds: tuple[str, ...], map_location: Any) -> dict[str, Any]:
        """The checkpoint to resume from; forgets metrics logged after it."""
        ckpt = load_checkpoint(self.last, kinds=kinds, map_location=map_location)
        if self.writer and self.metrics.exists():
            lines = [ln for ln in self.metrics.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln)["step"] <= ckpt["step"]]
            self.metrics.write_text("".join(ln + "\n" for ln in kept))
        return ckpt

    def log(self, metrics: dict[str, Any]) -> None:
        """Append one evaluation to ``metrics.jsonl``."""
        if self.writer:
            with self.metrics.open("a") as f:
                f.write(json.dumps(metrics) + "\n")

    def save(self, payload: dict[str, Any], final: bool = False) -> None:
        """Write ``last.pt`` (or ``final.pt``) atomically."""
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
