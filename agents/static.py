"""Static routes: one fixed block subset for every image (the paper's "static compression").

SkipNet's per-image routing is only worth its gate where it beats the best *static* pruning of
the same network at the same compute. This module gives that baseline:

- :func:`greedy_static_route`: starting from every block, repeatedly drop the block whose
  removal costs least accuracy on given (val) images, ties broken by more MACs saved, until the
  route's ``flops_fraction`` (:func:`route_flops_fraction`) is at most a budget. The whole drop
  sequence is kept (:class:`GreedyResult.trace`), so one run to the lowest budget gives the
  route of every higher budget too (:meth:`GreedyResult.at`): the same route a run to that
  budget returns.
- :class:`StaticRoute`: an agent over ``SkipNet-CIFAR10-v0``'s observations that runs the
  route (the block index read from the observation), and its batched twin
  (:meth:`StaticRoute.decisions` for ``SkipResNet.forward_skip``): both route alike.
- :class:`RouteGate`: the route as a :class:`~skipenv.models.gating.Gate` (p = 1 or 0, no MACs),
  so that everything that evaluates gated networks (``evaluate_gated``, the routing
  diagnostics) evaluates a static route unchanged. Checkpoints of kind ``static``
  (``train/static.py``) keep the route in ``route`` (N bools, block 0 first) beside the
  backbone's ``model``.

FLOPs here are ``flops_fraction`` (:meth:`skipenv.models.flops.MacsTable.flops_fraction`):
backbone MACs executed (stem, executed blocks, projection shortcuts of skipped blocks, head)
over the full network's; a static route has no gate to charge, so it equals
``flops_fraction_with_gate``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from gymnasium import spaces
from tqdm.auto import tqdm

from agents.baselines import FixedPattern
from skipenv.data.loader import normalize
from skipenv.data.splits import CifarSplit, stratified_subset
from skipenv.models.flops import MacsTable
from skipenv.models.gating import Gate
from skipenv.models.resnet import SkipResNet
from skipenv.training.routing import (
    parse_route,
    route_decisions,
    route_string,
    static_route_correct,
)

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def route_flops_fraction(table: MacsTable, route: Sequence[bool] | str) -> float:
    """``flops_fraction`` of ``route`` (N flags or ``"1101..."``): its backbone MACs per image
    over the full network's (any gate in ``table`` left out)."""
    flags = torch.tensor(parse_route(route, table.num_blocks)).view(1, -1)  # 1 x N
    return float(table.flops_fraction(flags)[0])


@dataclass(frozen=True)
class GreedyStep:
    """One route of the greedy sequence: after dropping ``dropped`` (None for the full route)."""

    route: str
    dropped: int | None
    accuracy: float
    flops_fraction: float


@dataclass
class GreedyResult:
    """The greedy drop sequence; ``route`` / ``accuracy`` / ``flops_fraction`` are its last step.

    Attributes:
        budget: the ``flops_fraction`` the search ran down to.
        trace: every route tried and kept, the full route first.
        num_images: images the accuracies were measured on.
    """

    budget: float
    trace: list[GreedyStep] = field(default_factory=list)
    num_images: int = 0

    @property
    def route(self) -> str:
        return self.trace[-1].route

    @property
    def accuracy(self) -> float:
        return self.trace[-1].accuracy

    @property
    def flops_fraction(self) -> float:
        return self.trace[-1].flops_fraction

    def at(self, budget: float) -> GreedyStep:
        """The first route of the sequence within ``budget``: the route a greedy run to
        ``budget`` returns.

        Raises:
            ValueError: ``budget`` is below what this run reached.
        """
        for step in self.trace:
            if step.flops_fraction <= budget:
                return step
        raise ValueError(
            f"this greedy run stopped at {self.flops_fraction:.4f} of the FLOPs, above the "
            f"budget {budget}; run greedy_static_route with budget <= {budget}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "num_images": self.num_images,
            "route": self.route,
            "accuracy": self.accuracy,
            "flops_fraction": self.flops_fraction,
            "trace": [vars(s) for s in self.trace],
        }


def greedy_static_route(
    backbone: SkipResNet,
    batches: Batches,
    budget: float,
    *,
    autocast: Callable[[], Any] | None = None,
    progress: bool = True,
) -> GreedyResult:
    """Greedy block dropping on ``batches`` until ``flops_fraction`` is at most ``budget``.

    Each round tries dropping each block still run (block 0 always runs) and keeps the drop
    with the highest accuracy on ``batches``; ties go to the block that saves more MACs, then
    to the lower index. Rounds: about N * (blocks dropped) evaluations of routes.

    Args:
        backbone: the network (eval mode during the search).
        batches: ``(x, y)`` pairs of normalised images and labels (a list: iterated per route).
        budget: ``flops_fraction`` to reach (backbone MACs over the full network's), in (0, 1].
        autocast: optional context-manager factory for the forward passes.
        progress: show a progress bar over rounds.

    Raises:
        ValueError: ``budget`` outside (0, 1], or below the cost of block 0 alone.
    """
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be a FLOPs fraction in (0, 1], got {budget!r}")
    table = backbone.macs_table(tuple(batches[0][0].shape[-2:]))
    n = backbone.num_blocks
    floor = route_flops_fraction(table, [True] + [False] * (n - 1))
    if budget < floor:
        raise ValueError(
            f"budget {budget} is below {floor:.4f}, the FLOPs fraction of block 0 alone; "
            "no route of this network fits it"
        )
    saved = [e - s for e, s in zip(table.block_execute, table.block_skip, strict=True)]

    def accuracy(route: list[bool]) -> float:
        correct = static_route_correct(backbone, route, batches, autocast=autocast)
        return int(correct.sum()) / correct.numel()

    route = [True] * n
    result = GreedyResult(budget, num_images=sum(len(y) for _, y in batches))
    full = GreedyStep(route_string(route), None, accuracy(route), 1.0)
    result.trace.append(full)
    bar = tqdm(desc=f"greedy to {budget:.3f}", unit="drop", disable=not progress)
    while result.flops_fraction > budget:
        best: tuple[float, int, int] | None = None  # (accuracy, MACs saved, -block)
        for j in range(1, n):
            if not route[j]:
                continue
            candidate = route.copy()
            candidate[j] = False
            key = (accuracy(candidate), saved[j], -j)
            if best is None or key > best:
                best = key
        assert best is not None  # budget >= floor: some block is still droppable
        j = -best[2]
        route[j] = False
        step = GreedyStep(route_string(route), j, best[0], route_flops_fraction(table, route))
        result.trace.append(step)
        bar.update()
        bar.set_postfix(dropped=j, acc=f"{step.accuracy:.4f}", flops=f"{step.flops_fraction:.3f}")
    bar.close()
    return result


class RouteGate(Gate):
    """A static route as a gate: p(execute block k + 1) = route[k + 1] for every image.

    Args:
        route: N flags (block 0 true) or a route string.
    """

    def __init__(self, route: Sequence[bool] | str) -> None:
        super().__init__()
        self.route = parse_route(route)
        self.register_buffer("flags", torch.tensor(self.route, dtype=torch.float32), False)

    def forward(self, h: torch.Tensor, block: int, state: Any) -> tuple[torch.Tensor, Any]:
        if not 0 <= block < len(self.route) - 1:
            raise ValueError(f"block {block} has no decision after it (0..{len(self.route) - 2})")
        return self.flags[block + 1].to(h.dtype).expand(h.shape[0]), state  # B

    def forward_pooled(
        self, pooled: torch.Tensor, block: int, state: Any
    ) -> tuple[torch.Tensor, Any]:
        """The same from a block's pooled output (B x C), so that
        :class:`agents.gate_agent.GateAgent` drives the env with the route."""
        return self.forward(pooled, block, state)

    def macs(self, block: int, in_shape: tuple[int, int, int]) -> int:
        return 0

    def spec(self) -> dict[str, Any]:
        return {"name": "route", "route": route_string(self.route)}


class StaticRoute(FixedPattern):
    """Run the same route for every image, on the env's observations or in a batched forward.

    The env's step is read from the observation (the block that produced it), so the agent
    needs no state: ``act`` on an observation at block k gives ``route[k + 1]``.

    Args:
        observation_space: the env's ``single_observation_space`` (``vector`` or ``dict``).
        block_channels: output channels of every block of the env's backbone.
        route: N flags (block 0 true) or a route string.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        block_channels: tuple[int, ...],
        route: Sequence[bool] | str,
    ) -> None:
        flags = parse_route(route, len(block_channels))
        super().__init__(observation_space, block_channels, flags)

    @property
    def route(self) -> str:
        return route_string(self.execute)

    def decisions(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """B x K bool decisions for ``SkipResNet.forward_skip``."""
        return route_decisions(self.execute.tolist(), batch, device)

    def forward(self, backbone: SkipResNet, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``backbone`` on ``x`` (B x 3 x H x W) with the route: B x classes."""
        return backbone.forward_skip(x, self.decisions(x.shape[0], x.device))

    def gate(self) -> RouteGate:
        return RouteGate(self.execute.tolist())


def selection_batches(
    data: CifarSplit,
    limit: int | None,
    seed: int = 0,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised ``(x, y)`` batches of a stratified subset of ``limit`` images of ``data``
    (:func:`skipenv.data.splits.stratified_subset` with ``seed``: every class in its share;
    all images, in order, when ``limit`` is None or not smaller), for the greedy search.

    Raises:
        ValueError: ``limit`` < 1.
    """
    n = len(data)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images or None, got {limit!r}")
    if limit is None or limit >= n:
        index = torch.arange(n)
    else:
        index = stratified_subset(data.labels, limit, seed)  # limit
    out = []
    for i in range(0, len(index), batch_size):
        rows = index[i : i + batch_size]
        x = normalize(data.images[rows], memory_format=memory_format).to(device)  # B x 3 x H x W
        out.append((x, data.labels[rows].to(device)))  # B
    return out
