"""Running one training entry point on several processes (``torchrun --nproc_per_node=N``).

Every rank builds the same :class:`~skipenv.data.loader.BatchLoader` with the same seed, so all
ranks see the same global batches; each keeps its own rows (``rank::world_size``), runs
forward and backward on them, and DistributedDataParallel averages the gradients. The global
batch, the schedule and the data order are those of a one-process run. Only rank 0 writes
files (checkpoints, metrics) and shows a progress bar. Gloo on the CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from skipenv.training.devices import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, resolve_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, dev)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], info: DistInfo
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's rows of each global batch: ``x[rank::world_size]``."""
    for x, y in batches:
        if info.enabled:
            if x.shape[0] < info.world_size:
                raise ValueError(
                    f"a batch of {x.shape[0]} images cannot be split over {info.world_size} "
                    "processes; use a larger batch size"
                )
            x, y = x[info.rank :: info.world_size], y[info.rank :: info.world_size]
        yield x, y


def all_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum ``values`` over ranks (identity with one process)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
