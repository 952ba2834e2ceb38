"""skipenv/training/routing.py: routing diagnostics and the static control (tiny nets,
synthetic images)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from skipenv.models.gating import Gate
from skipenv.models.resnet import SkipResNet, build_resnet
from skipenv.training.evaluation import evaluate_gated
from skipenv.training.routing import (
    RoutingStats,
    format_routing_table,
    parse_route,
    route_decisions,
    route_string,
    routing_line,
    routing_stats,
    static_control,
    static_route_correct,
)


class BrightnessGate(Gate):
    """Routes by an image feature: the mean of block 0's output. Images above ``threshold``
    ("bright") take ``bright_route``, the others run every block."""

    def __init__(self, threshold: float, bright_route: list[bool]) -> None:
        super().__init__()
        self.threshold, self.bright_route = threshold, bright_route

    def forward(self, h: torch.Tensor, block: int, state: Any) -> tuple[torch.Tensor, Any]:
        if block == 0:
            state = h.float().mean(dim=(1, 2, 3)) > self.threshold  # B
        p = torch.where(state, float(self.bright_route[block + 1]), 1.0)  # B
        return p.to(h.dtype), state

    def macs(self, block: int, in_shape: tuple[int, int, int]) -> int:
        return 0


class ConstantGate(Gate):
    """The same decisions for every image (p = 0.9 or 0.1 per block)."""

    def __init__(self, route: list[bool]) -> None:
        super().__init__()
        self.route = route

    def forward(self, h: torch.Tensor, block: int, state: Any) -> tuple[torch.Tensor, Any]:
        p = 0.9 if self.route[block + 1] else 0.1
        return torch.full((h.shape[0],), p, dtype=h.dtype, device=h.device), state

    def macs(self, block: int, in_shape: tuple[int, int, int]) -> int:
        return 0


def synthetic_batches(n: int = 48, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Images of very different brightness (half dark, half bright), random labels."""
    g = torch.Generator().manual_seed(0)
    level = torch.where(torch.arange(n) % 2 == 0, -1.5, 1.5).view(-1, 1, 1, 1)  # n x 1 x 1 x 1
    x = level + 0.3 * torch.randn(n, 3, 32, 32, generator=g)  # n x 3 x 32 x 32
    y = torch.randint(0, 10, (n,), generator=g)  # n
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


@pytest.fixture
def net() -> SkipResNet:
    torch.manual_seed(0)
    return build_resnet(14, widths=(4, 8, 16)).eval()  # 6 blocks


def block0_median(net: SkipResNet, batches) -> float:
    with torch.no_grad():
        feats = torch.cat([net.blocks[0](net.stem(x)).mean(dim=(1, 2, 3)) for x, _ in batches])
    return float(feats.median())


def test_stats_of_a_hand_made_mask() -> None:
    executed = torch.tensor(
        [[1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 1, 1], [1, 0, 1, 0]], dtype=torch.bool
    )  # 4 images x 4 blocks: 4, 3, 3, 2 blocks
    s = routing_stats(executed, accuracy=0.5)
    assert s.blocks_mean == pytest.approx(3.0)
    assert s.blocks_std == pytest.approx((0.5) ** 0.5)
    assert s.blocks_histogram == [0, 0, 1, 2, 1]
    assert s.distinct_routes == 3
    assert s.top_route == "1011" and s.top_route_share == pytest.approx(0.5)
    assert s.top_routes[0] == ("1011", 0.5)
    assert sorted(s.top_routes[1:]) == [("1010", 0.25), ("1111", 0.25)]
    assert s.skip_rates == [0.0, 0.75, 0.0, 0.25]
    assert s.dynamic_blocks == [1, 3]
    d = s.to_dict()
    assert d["num_dynamic"] == 2 and d["static_gain"] is None
    assert RoutingStats.from_dict(d) == s
    assert "3 routes" in s.summary()
    table = format_routing_table([("gate", s), ("same", d)]).splitlines()
    assert len(table) == 3 and table[1].split()[1:] == table[2].split()[1:]


def test_route_strings_and_bad_inputs() -> None:
    assert route_string(torch.tensor([True, False, True])) == "101"
    assert parse_route("101") == [True, False, True]
    assert route_decisions([True, False, True], 2, "cpu").tolist() == [[False, True]] * 2
    with pytest.raises(ValueError, match="block 0"):
        parse_route("011")
    with pytest.raises(ValueError, match="only '0' and '1'"):
        parse_route("1x1")
    with pytest.raises(ValueError, match="3 blocks, the network 4"):
        parse_route("111", 4)
    with pytest.raises(ValueError, match="B x N"):
        routing_stats(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="block 0"):
        routing_stats(torch.tensor([[0, 1]], dtype=torch.bool))


def test_a_gate_that_routes_by_an_image_feature_shows_diversity(net: SkipResNet) -> None:
    batches = synthetic_batches()
    bright_route = [True, False, True, False, True, True]  # bright images skip blocks 1 and 3
    gate = BrightnessGate(block0_median(net, batches), bright_route)
    result = evaluate_gated(net, gate, batches)
    r = result["routing"]
    assert r["blocks_std"] == pytest.approx(1.0)  # 6 or 4 blocks, half and half
    assert r["distinct_routes"] == 2 and r["top_route_share"] == pytest.approx(0.5)
    assert r["dynamic_blocks"] == [1, 3]
    assert r["blocks_histogram"] == [0, 0, 0, 0, 24, 0, 24]
    assert r["accuracy"] == result["accuracy"]
    # the static control equals the top route run on every image from scratch
    direct = static_route_correct(net, parse_route(r["top_route"]), batches)
    assert r["static_accuracy"] == pytest.approx(int(direct.sum()) / direct.numel())
    # and differs from running the other route on every image (the gated run mixes both)
    other = next(route for route, _ in r["top_routes"] if route != r["top_route"])
    assert r["static_accuracy"] != float(static_route_correct(net, other, batches).double().mean())


def test_a_constant_gate_shows_none_and_its_static_control_is_its_accuracy(
    net: SkipResNet,
) -> None:
    batches = synthetic_batches()
    route = [True, True, False, True, False, True]
    result = evaluate_gated(net, ConstantGate(route), batches)
    r = result["routing"]
    assert r["blocks_std"] == 0.0 and r["distinct_routes"] == 1 and r["dynamic_blocks"] == []
    assert r["top_route"] == route_string(route) and r["top_route_share"] == 1.0
    assert r["static_accuracy"] == result["accuracy"] and r["static_gain"] == 0.0
    direct = static_route_correct(net, route, batches)
    assert int(direct.sum()) / direct.numel() == result["accuracy"]


def test_plain_network_and_one_shot_batches(net: SkipResNet) -> None:
    batches = synthetic_batches()
    r = evaluate_gated(net, None, batches)["routing"]
    assert r["top_route"] == "111111" and r["blocks_mean"] == 6.0
    assert r["static_accuracy"] == r["accuracy"]
    one_shot = evaluate_gated(net, ConstantGate([True] * 6), iter(batches))
    assert one_shot["routing"]["static_accuracy"] is None  # cannot iterate twice
    assert "routing" not in evaluate_gated(net, None, batches, routing=False)


def test_static_control_refuses_reordered_batches(net: SkipResNet) -> None:
    batches = synthetic_batches()
    masks = [torch.ones(len(y), 6, dtype=torch.bool) for _, y in batches]
    hits = [torch.zeros(len(y), dtype=torch.bool) for _, y in batches]
    labels = [y for _, y in batches]
    with pytest.raises(ValueError, match="same order"):
        static_control(net, batches[::-1], masks, hits, labels, [True] * 6)
    with pytest.raises(ValueError, match="gave 2 batches"):
        static_control(net, batches[:2], masks, hits, labels, [True] * 6)


def test_routing_line_prints_the_routing_summary(net: SkipResNet) -> None:
    routing = evaluate_gated(net, ConstantGate([True] * 6), synthetic_batches())["routing"]
    line = routing_line({"step": 3, "val_skip_rates": [0.0], "val_routing": routing}, "val")
    assert line is not None and "\n" not in line
    assert line.startswith("val routing: blocks/image 6.00 +- 0.00 (of 6), 1 routes")
    assert line.endswith(f"static control (top route for all) {routing['static_accuracy']:.4f}")
    assert routing_line({"step": 3, "val_accuracy": 0.5}, "val") is None  # a plain network's
