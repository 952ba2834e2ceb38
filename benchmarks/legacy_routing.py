"""Routing and gate pooling as they were before issue 13, so benchmarks time before and after.

``legacy_routing()`` swaps them in for the duration of a ``with`` block: the block routing
of :class:`skipenv.models.resnet.BasicBlock` (two ``nonzero`` calls per block; under autograd the
built-in ``index_select`` / ``index_copy`` backward: a zero-filled B-row tensor per gather,
a cloned B-row tensor per scatter, and their sum) and the gates' pooling (``h.mean``, whose
broadcast gradient is slow to add to a bfloat16 channels_last gradient on CPU). Outputs and
gradients are the same as now; only the cost differs. Not covered: the greedy baseline's
``no_grad`` (now ``inference_mode``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

import agents.gates
from skipenv.models import resnet
from skipenv.models.resnet import BasicBlock, put_rows, take_rows

#: The block method that routes (renamed ``forward_skip`` on the new package layout).
ROUTE_METHOD = "forward_skip"


def _needs_graph(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def legacy_forward_skip(self: BasicBlock, x: torch.Tensor, execute: torch.Tensor) -> torch.Tensor:
    """The pre-issue-13 ``BasicBlock.forward_skip`` (then ``forward_routed``), verbatim."""
    run = execute.nonzero().squeeze(1)  # R executing images
    if run.numel() == x.shape[0]:
        return self(x)
    if run.numel() == 0:
        return self.shortcut(x)
    y = self(take_rows(x, run))  # R x C' x H' x W'
    if not self.projects:
        return put_rows(x, run, y, inplace=not _needs_graph(x, y))
    rest = (~execute).nonzero().squeeze(1)  # B - R skipping images
    s = self.shortcut(take_rows(x, rest))  # (B - R) x C' x H' x W'
    fmt = torch.channels_last if resnet._channels_last(y) else torch.contiguous_format
    shape = (x.shape[0], *y.shape[1:])  # B x C' x H' x W'
    out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=fmt)
    put_rows(out, run, y, inplace=True)
    return put_rows(out, rest, s, inplace=True)


@contextlib.contextmanager
def legacy_routing(enabled: bool = True) -> Iterator[None]:
    """Within the block, every ``BasicBlock`` routes the pre-issue-13 way (if ``enabled``)."""
    if not enabled:
        yield
        return
    current, pool = getattr(BasicBlock, ROUTE_METHOD), agents.gates.global_avg_pool
    setattr(BasicBlock, ROUTE_METHOD, legacy_forward_skip)
    agents.gates.global_avg_pool = _mean_pool
    try:
        yield
    finally:
        setattr(BasicBlock, ROUTE_METHOD, current)
        agents.gates.global_avg_pool = pool


def _mean_pool(h: torch.Tensor) -> torch.Tensor:
    return h.mean(dim=(2, 3))  # B x C
