"""MAC accounting against torch's own FLOP counter (which counts 2 FLOPs per MAC)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from skipenv.models.flops import MacsTable
from skipenv.models.gating import Gate
from skipenv.models.resnet import SkipResNet, build_resnet


def counted_macs(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    total = counter.get_total_flops()
    assert total % 2 == 0
    return total // 2


class ConvGate(Gate):
    """A small gate with real compute: 1x1 conv on the activation, pooled, linear."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, 2, 1, bias=False) for c in channels[:-1])
        self.fc = nn.Linear(2, 1)

    def forward(self, h: torch.Tensor, block: int, state: Any) -> tuple[torch.Tensor, Any]:
        z = self.convs[block](h).mean(dim=(2, 3))  # B x 2
        return torch.sigmoid(self.fc(z)).squeeze(1), state  # B

    def macs(self, block: int, in_shape: tuple[int, int, int]) -> int:
        c, h, w = in_shape
        return 2 * c * h * w + 2


@pytest.mark.parametrize("depth", [20, 38])
def test_full_network_macs_equal_flop_counter(depth: int) -> None:
    model = build_resnet(depth).eval()
    x = torch.randn(2, 3, 32, 32)
    assert counted_macs(lambda: model(x)) == 2 * model.macs_table().full


def test_partly_skipped_path_equals_flop_counter(tiny_model: SkipResNet) -> None:
    tiny_model.eval()
    x = torch.randn(5, 3, 32, 32)
    execute = torch.tensor(
        [[1, 0, 1, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0], [1, 1, 0, 0, 1]]
    ).bool()
    executed = torch.cat([torch.ones(5, 1, dtype=torch.bool), execute], dim=1)
    table = tiny_model.macs_table()
    expected = int(table.backbone_macs(executed).sum())
    assert counted_macs(lambda: tiny_model.forward_skip(x, execute)) == expected
    # the masked formulation computes everything (and each projection twice over)
    assert counted_macs(lambda: tiny_model.forward_masked(x, execute.float())) > expected


def test_gate_macs_are_counted(tiny_model: SkipResNet) -> None:
    tiny_model.eval()
    gate = ConvGate(tiny_model.block_channels)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = tiny_model.forward_gated(x, gate)
    counted = counted_macs(lambda: tiny_model.forward_gated(x, gate))
    assert int(out.macs.sum()) == counted
    table = tiny_model.macs_table(gate=gate)
    assert torch.equal(table.backbone_macs(out.executed) + table.gate_total, out.macs)
    assert len(table.gate) == tiny_model.num_decisions and sum(table.gate) > 0


def test_table_by_hand_for_resnet8() -> None:
    model = build_resnet(8)  # one block per stage; blocks 1 and 2 project
    t = model.macs_table()
    stem = 16 * 32 * 32 * 3 * 9
    b0 = 2 * 16 * 32 * 32 * 16 * 9
    b1_proj = 32 * 16 * 16 * 16
    b1 = 32 * 16 * 16 * 16 * 9 + 32 * 16 * 16 * 32 * 9 + b1_proj
    b2_proj = 64 * 8 * 8 * 32
    b2 = 64 * 8 * 8 * 32 * 9 + 64 * 8 * 8 * 64 * 9 + b2_proj
    assert t == MacsTable(stem, (b0, b1, b2), (0, b1_proj, b2_proj), 64 * 10)
    executed = torch.tensor([[True, False, False], [True, True, True]])
    assert t.backbone_macs(executed).tolist() == [stem + b0 + b1_proj + b2_proj + 640, t.full]
    with pytest.raises(ValueError, match=r"B x 3"):
        t.backbone_macs(torch.ones(2, 2, dtype=torch.bool))


def test_flops_fraction_leaves_the_gate_out_and_the_with_gate_fraction_adds_it(
    tiny_model: SkipResNet,
) -> None:
    gate = ConvGate(tiny_model.block_channels)
    table = tiny_model.macs_table(gate=gate)
    every = torch.ones(2, tiny_model.num_blocks, dtype=torch.bool)
    assert table.flops_fraction(every).tolist() == [1.0, 1.0]
    with_gate = table.flops_fraction_with_gate(every)
    assert torch.allclose(with_gate, torch.full((2,), 1.0 + table.gate_total / table.full).double())
    some = every.clone()
    some[:, 2:] = False
    assert float(table.flops_fraction(some)[0]) < 1.0
    assert tiny_model.macs_table().gate_total == 0
