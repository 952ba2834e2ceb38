"""Routing diagnostics: does a gated network route images differently, or run one static route?

SkipNet's claim is per-input routing: easy images take a short path, hard ones a long one.
From the executed mask of a greedy evaluation (B x N bool, block 0 always run) this module
measures whether that happens:

- blocks run per image: mean, standard deviation and histogram over the counts 1..N;
- distinct routes, the most common route and the share of images on it;
- dynamic blocks: blocks whose skip rate lies strictly between ``low`` (5%) and ``high`` (95%),
  i.e. blocks the gate runs for some images and skips for others;
- per-block skip rates;
- the static control: accuracy of the same weights with the most common route applied to
  every image (:meth:`skipenv.models.resnet.SkipResNet.forward_skip`). A per-image policy is
  worth something only where its accuracy beats this control.

A route is written as a string of ``1`` (run) and ``0`` (skipped), one character per block,
block 0 first, e.g. ``"111011..."``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from skipenv.models.resnet import SkipResNet

#: A block is dynamic when its skip rate is strictly inside (DYNAMIC_LOW, DYNAMIC_HIGH).
DYNAMIC_LOW, DYNAMIC_HIGH = 0.05, 0.95


def route_string(route: Sequence[bool] | torch.Tensor) -> str:
    """``"1"`` per run block, ``"0"`` per skipped one, block 0 first."""
    flags = route.tolist() if isinstance(route, torch.Tensor) else list(route)
    return "".join("1" if bool(f) else "0" for f in flags)


def parse_route(route: str | Sequence[bool], num_blocks: int | None = None) -> list[bool]:
    """A route (``"1101..."`` or N flags) as N bools; block 0 must run.

    Raises:
        ValueError: characters other than 0/1, a wrong length, or block 0 skipped.
    """
    if isinstance(route, str):
        if not route or set(route) - {"0", "1"}:
            raise ValueError(f"a route string holds only '0' and '1', one per block; got {route!r}")
        flags = [c == "1" for c in route]
    else:
        flags = [bool(f) for f in route]
    if num_blocks is not None and len(flags) != num_blocks:
        raise ValueError(
            f"the route {route_string(flags)!r} has {len(flags)} blocks, the network {num_blocks}"
        )
    if not flags or not flags[0]:
        raise ValueError(f"block 0 always runs: the route {route_string(flags)!r} skips it")
    return flags


@dataclass(frozen=True)
class RoutingStats:
    """Routing diagnostics of one evaluation (fractions in [0, 1], counts of images).

    Attributes:
        num_images: images evaluated.
        num_blocks: N, blocks of the network (block 0 included).
        blocks_mean: mean number of blocks run per image (1..N).
        blocks_std: population standard deviation of the blocks run per image.
        blocks_histogram: N + 1 counts; entry c is the number of images that ran c blocks
            (entry 0 is always 0: block 0 runs).
        distinct_routes: number of different routes taken.
        top_route: the most common route (``"1101..."``).
        top_route_share: share of images on ``top_route``.
        top_routes: up to 5 most common routes with their shares, most common first.
        dynamic_blocks: indices of blocks skipped by more than 5% and fewer than 95% of images.
        skip_rates: per block, the share of images that skipped it (block 0 first, always 0).
        accuracy: top-1 of the evaluation (None when not given).
        static_accuracy: top-1 of the same weights with ``top_route`` for every image (None
            when not measured).
    """

    num_images: int
    num_blocks: int
    blocks_mean: float
    blocks_std: float
    blocks_histogram: list[int]
    distinct_routes: int
    top_route: str
    top_route_share: float
    top_routes: list[tuple[str, float]] = field(default_factory=list)
    dynamic_blocks: list[int] = field(default_factory=list)
    skip_rates: list[float] = field(default_factory=list)
    accuracy: float | None = None
    static_accuracy: float | None = None

    @property
    def num_dynamic(self) -> int:
        return len(self.dynamic_blocks)

    @property
    def route(self) -> list[bool]:
        """``top_route`` as N bools."""
        return parse_route(self.top_route)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; ``num_dynamic`` and ``static_gain`` (accuracy - static) added."""
        out = asdict(self)
        out["top_routes"] = [[r, s] for r, s in self.top_routes]
        out["num_dynamic"] = self.num_dynamic
        out["static_gain"] = (
            None
            if self.accuracy is None or self.static_accuracy is None
            else self.accuracy - self.static_accuracy
        )
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoutingStats:
        """The stats back from :meth:`to_dict` (derived keys ignored)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["top_routes"] = [(r, s) for r, s in kw.get("top_routes", [])]
        return cls(**kw)

    def summary(self) -> str:
        """One line for logs."""
        line = (
            f"blocks/image {self.blocks_mean:.2f} +- {self.blocks_std:.2f} (of {self.num_blocks}), "
            f"{self.distinct_routes} routes, top route on {100 * self.top_route_share:.1f}%, "
            f"{self.num_dynamic} dynamic blocks"
        )
        if self.static_accuracy is not None:
            line += f", static control (top route for all) {self.static_accuracy:.4f}"
        return line


def routing_stats(
    executed: torch.Tensor,
    *,
    accuracy: float | None = None,
    static_accuracy: float | None = None,
    low: float = DYNAMIC_LOW,
    high: float = DYNAMIC_HIGH,
) -> RoutingStats:
    """Diagnostics of an executed mask.

    Args:
        executed: B x N bool (or 0/1), which blocks each image ran; block 0 must be run.
        accuracy, static_accuracy: recorded as given.
        low, high: a block is dynamic when ``low < skip rate < high``.

    Raises:
        ValueError: not B x N with B >= 1, N >= 1, or an image that skipped block 0.
    """
    if executed.ndim != 2 or executed.shape[0] == 0 or executed.shape[1] == 0:
        raise ValueError(
            "executed must be B x N (images x blocks, B, N >= 1), got shape "
            f"{tuple(executed.shape)}"
        )
    mask = executed.detach().bool().cpu()  # B x N
    if not bool(mask[:, 0].all()):
        raise ValueError("block 0 always runs, but some rows of executed skip it")
    b, n = mask.shape
    counts = mask.sum(dim=1)  # B
    histogram = torch.bincount(counts, minlength=n + 1)  # N + 1
    routes, route_counts = torch.unique(mask, dim=0, return_counts=True)  # R x N, R
    order = torch.argsort(route_counts, descending=True, stable=True)
    top = [(route_string(routes[i]), int(route_counts[i]) / b) for i in order[:5].tolist()]
    skip = 1.0 - mask.double().mean(dim=0)  # N
    return RoutingStats(
        num_images=b,
        num_blocks=n,
        blocks_mean=float(counts.double().mean()),
        blocks_std=float(counts.double().std(unbiased=False)),
        blocks_histogram=[int(c) for c in histogram],
        distinct_routes=int(routes.shape[0]),
        top_route=top[0][0],
        top_route_share=top[0][1],
        top_routes=top,
        dynamic_blocks=[i for i, r in enumerate(skip.tolist()) if low < r < high],
        skip_rates=[round(float(r), 6) for r in skip],
        accuracy=accuracy,
        static_accuracy=static_accuracy,
    )


def route_decisions(route: Sequence[bool], batch: int, device: torch.device | str) -> torch.Tensor:
    """The B x K decisions of ``forward_skip`` that apply ``route`` (N flags) to every image."""
    flags = torch.tensor(parse_route(route)[1:], dtype=torch.bool, device=device)  # K
    return flags.expand(batch, -1)  # B x K


def static_route_correct(
    backbone: SkipResNet,
    route: Sequence[bool],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    autocast: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Per image, whether ``backbone`` with ``route`` for every image classifies it right.

    Eval mode, real skipping (``forward_skip``), under ``torch.inference_mode``.

    Args:
        backbone: the network (put in eval mode for the call, then restored).
        route: N flags (block 0 true) or a route string.
        batches: ``(x, y)`` pairs of normalised images B x 3 x H x W and labels B.
        autocast: optional context-manager factory, as in
            :func:`skipenv.training.evaluation.evaluate_gated`.

    Returns:
        images bool (CPU), in batch order.
    """
    flags = parse_route(route, backbone.num_blocks)
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        with torch.inference_mode():
            for x, y in batches:
                with autocast() if autocast is not None else contextlib.nullcontext():
                    logits = backbone.forward_skip(x, route_decisions(flags, x.shape[0], x.device))
                out.append((logits.argmax(dim=1) == y).cpu())  # B
    finally:
        backbone.train(was_training)
    if not out:
        raise ValueError("no images: the batches were empty")
    return torch.cat(out)


def static_control(
    backbone: SkipResNet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    executed: Sequence[torch.Tensor],
    correct: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    route: Sequence[bool],
    *,
    autocast: Callable[[], Any] | None = None,
) -> float:
    """Accuracy with ``route`` for every image, re-running only the images that took another.

    The images whose gated route already was ``route`` keep their gated result (the same
    computation); the others are run again with ``route``. So a collapsed policy costs almost
    nothing to check and a diverse one at most one more pass.

    Args:
        backbone: the network.
        batches: the evaluation's batches, iterated again in the same order.
        executed, correct, labels: per batch of the first pass, its B x N executed mask, B
            correct flags and B labels (to check the second pass sees the same images).
        route: N flags.
        autocast: as in the first pass.

    Raises:
        ValueError: the batches do not repeat the first pass (a one-shot iterator, or a
            shuffled loader).
    """
    flags = torch.tensor(parse_route(route, backbone.num_blocks), dtype=torch.bool)  # N
    right, n, i = 0, 0, -1
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode():
            for i, (x, y) in enumerate(batches):
                if i >= len(executed) or not torch.equal(y.cpu(), labels[i].cpu()):
                    raise ValueError(
                        "the static control iterates the batches twice and needs the same images "
                        "in the same order both times: pass a re-iterable, unshuffled loader"
                    )
                on_route = (executed[i].cpu() == flags).all(dim=1)  # B
                right += int(correct[i].cpu()[on_route].sum())
                n += y.numel()
                off = (~on_route).nonzero().squeeze(1)  # R
                if off.numel() == 0:
                    continue
                off_dev = off.to(x.device)
                xs, ys = x.index_select(0, off_dev), y.index_select(0, off_dev)  # R x ..., R
                with autocast() if autocast is not None else contextlib.nullcontext():
                    logits = backbone.forward_skip(xs, route_decisions(flags, len(off), x.device))
                right += int((logits.argmax(dim=1) == ys).sum())
    finally:
        backbone.train(was_training)
    if i + 1 != len(executed):
        raise ValueError(
            f"the second pass over the batches gave {i + 1} batches, the first {len(executed)}: "
            "pass a re-iterable, unshuffled loader"
        )
    return right / n


def format_routing_table(rows: Sequence[tuple[str, RoutingStats | dict[str, Any]]]) -> str:
    """A fixed-width table of named diagnostics (stats or their ``to_dict``)."""
    header = (
        f"{'name':<28} {'blocks':>6} {'std':>5} {'routes':>6} {'top %':>6} {'dyn':>3} "
        f"{'acc':>7} {'static':>7}"
    )
    lines = [header]
    for name, s in rows:
        d = s.to_dict() if isinstance(s, RoutingStats) else s

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.2f}"

        lines.append(
            f"{name:<28} {d['blocks_mean']:>6.2f} {d['blocks_std']:>5.2f} "
            f"{d['distinct_routes']:>6} {100 * d['top_route_share']:>6.1f} "
            f"{len(d['dynamic_blocks']):>3} {pct(d['accuracy']):>7} {pct(d['static_accuracy']):>7}"
        )
    return "\n".join(lines)


def routing_line(metrics: dict[str, Any], split: str) -> str | None:
    """The console line of a training run's logged ``{split}_routing``
    (``"val routing: blocks/image ..."``, :meth:`RoutingStats.summary`); None without it."""
    routing = metrics.get(f"{split}_routing")
    if routing is None:
        return None
    return f"{split} routing: {RoutingStats.from_dict(routing).summary()}"
