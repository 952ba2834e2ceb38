"""Exact compute accounting for a SkipNet: multiply-accumulates (MACs) of every conv and linear.

Counts are MACs, as in the SkipNet paper and most of the literature (there, "FLOPs"). Batch
norm, ReLU, pooling and the residual addition are not counted.
`torch.utils.flop_counter.FlopCounterMode` counts a multiply-accumulate as two FLOPs, so its
totals are exactly twice ours (tests check this on full and partly skipped paths).

A :class:`MacsTable` holds, per image, the MACs of the stem, of each block when it runs (its
two 3x3 convs plus its projection shortcut, if any) and when it is skipped (only the
projection, or nothing), of the head, and of each gate call. Everything a route costs follows
from which blocks ran; the gate runs once per decision whatever it decides.

Two fractions, one name each, used throughout the project:

- ``flops_fraction``: MACs the backbone executes for an image (stem, executed blocks,
  projections of skipped blocks, head) over :attr:`MacsTable.full`, the MACs of the full
  plain network. What the environments report; at most 1.
- ``flops_fraction_with_gate``: the same with the gate's MACs added (its calls run whatever
  they decide); can exceed 1 when every block runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def conv_macs(conv: nn.Conv2d, in_hw: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """MACs per image of ``conv`` applied to an input of spatial size ``in_hw``.

    Returns the MACs and the output spatial size.
    """
    (h, w), (kh, kw) = in_hw, conv.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    if isinstance(conv.padding, str):
        raise ValueError(f"string padding {conv.padding!r} is not supported; use integers")
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    per_output = (conv.in_channels // conv.groups) * kh * kw
    return conv.out_channels * out_h * out_w * per_output, (out_h, out_w)


def linear_macs(linear: nn.Linear) -> int:
    """MACs per image of ``linear`` applied to one feature vector."""
    return linear.in_features * linear.out_features


@dataclass(frozen=True)
class MacsTable:
    """Per-image MACs of each part of a SkipNet.

    Attributes:
        stem: the stem conv.
        block_execute: per block, MACs when it runs (both 3x3 convs and its projection).
        block_skip: per block, MACs when it is skipped (its projection shortcut, else 0).
        head: the classifier (pooling is free).
        gate: per decision (K = N - 1 of them), MACs of the gate call that makes it; empty
            without a gate.
    """

    stem: int
    block_execute: tuple[int, ...]
    block_skip: tuple[int, ...]
    head: int
    gate: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.block_skip) != len(self.block_execute):
            raise ValueError("block_execute and block_skip must have one entry per block")
        if self.gate and len(self.gate) != len(self.block_execute) - 1:
            raise ValueError(
                f"gate must have one entry per decision ({len(self.block_execute) - 1}), "
                f"got {len(self.gate)}"
            )

    @property
    def num_blocks(self) -> int:
        return len(self.block_execute)

    @property
    def full(self) -> int:
        """MACs of the plain network with every block run and no gates: the 100% reference."""
        return self.stem + sum(self.block_execute) + self.head

    @property
    def gate_total(self) -> int:
        """MACs of all K gate calls of one image (0 without a gate)."""
        return sum(self.gate)

    def gate_macs(self, decision: int) -> int:
        """MACs of the gate call that makes decision ``decision`` (0 without a gate)."""
        return self.gate[decision] if self.gate else 0

    def block_costs(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        """(execute, skip) MACs per block as int64 tensors: N each."""
        execute = torch.tensor(self.block_execute, dtype=torch.int64, device=device)
        skip = torch.tensor(self.block_skip, dtype=torch.int64, device=device)
        return execute, skip

    def backbone_macs(self, executed: torch.Tensor) -> torch.Tensor:
        """MACs the backbone executes per image for whole routes (no gate calls).

        Args:
            executed: B x N bool, which blocks ran for each image.

        Returns:
            B int64 MACs: stem, executed blocks, projections of skipped blocks, head.
        """
        if executed.ndim != 2 or executed.shape[1] != self.num_blocks:
            raise ValueError(
                f"executed must be B x {self.num_blocks} (one column per block), "
                f"got shape {tuple(executed.shape)}"
            )
        execute, skip = self.block_costs(executed.device)  # N each
        blocks = torch.where(executed.bool(), execute, skip).sum(dim=1)  # B
        return blocks + (self.stem + self.head)

    def flops_fraction(self, executed: torch.Tensor) -> torch.Tensor:
        """:meth:`backbone_macs` over :attr:`full`: B float64 in (0, 1]."""
        return self.backbone_macs(executed).double() / self.full

    def flops_fraction_with_gate(self, executed: torch.Tensor) -> torch.Tensor:
        """(:meth:`backbone_macs` + :attr:`gate_total`) over :attr:`full`: B float64."""
        return (self.backbone_macs(executed) + self.gate_total).double() / self.full
