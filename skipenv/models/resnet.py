"""CIFAR ResNets (He et al. 2016: depth 6n + 2, BasicBlock) whose blocks can be skipped per image.

Layout as in torchvision's resnet.py: helpers, the block, the model (stem / blocks / head),
one table of depths and one builder.

Decisions. Block 0 always runs. Decision k (k = 0 .. K - 1, K = num_blocks - 1) says whether
block k + 1 runs for an image, and a gate makes it from the output of block k.

The same decisions can be applied three ways:

- **full** (``forward``): every block runs; the plain ResNet.
- **masked** (``forward_masked``): every block runs for every image and its output is mixed
  as ``g * block(x) + (1 - g) * shortcut(x)``. This is what the authors' code does; it saves
  nothing, but gradients reach the gate through ``g`` (straight-through and soft training).
- **skip** (``forward_skip``): a block runs only on the images that execute it (gathered into
  a smaller batch, the results put back); the other images take the shortcut path, which is
  the identity, or the 1x1 projection where the block changes resolution and width. In eval
  mode this gives the masked outputs for 0/1 decisions, with fewer FLOPs and less time.

One block at a time: :meth:`SkipResNet.start` runs the stem and block 0 and returns a
:class:`Route`; :meth:`SkipResNet.advance` applies one decision per image to the next block;
:meth:`SkipResNet.finish` runs the head. :meth:`SkipResNet.forward_gated` is exactly that loop
with a :class:`~skipenv.models.gating.Gate` deciding, so an environment that calls ``advance`` once
per step reproduces the batched forward.

Folded batch norm. A batch norm in eval mode is an affine map per channel, so ``bn(conv(x))``
equals one convolution with folded weights and a bias (:func:`conv_bn`). With
:meth:`SkipResNet.fold_batch_norm` (or :func:`batch_norm_folded` for a while) every conv +
eval-mode batch norm pair runs that way: the folded weights are recomputed from the conv and
batch-norm parameters at each call with differentiable tensor ops, so gradients reach the
conv weight and the batch norm's affine parameters as through the unfused pair, and the
separate batch-norm passes over the activations (forward and backward) go away. Outputs and
gradients equal the unfused ones up to float rounding; off by default.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from skipenv.models.flops import MacsTable, conv_macs, linear_macs
from skipenv.models.gating import Gate, GateMode, decide

#: How gate values are applied: ``skip`` (real skipping) or ``masked`` (every block computed).
Routing = Literal["skip", "masked"]

# ---------------------------------------------------------------------------- helpers


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a batch norm follows)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias, for projection shortcuts."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def folded_conv_bn(
    conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (C' x C x kh x kw) and bias (C') of the one convolution equal to ``bn(conv(x))``
    with ``bn`` in eval mode, as differentiable functions of the conv weight and bias and the
    batch norm's affine parameters (running statistics are constants).

    The formula of ``torch.nn.utils.fusion.fuse_conv_bn_weights``, which returns detached
    ``Parameter`` copies instead (for inference only).
    """
    scale = torch.rsqrt(bn.running_var + bn.eps)  # C'
    if bn.weight is not None:
        scale = scale * bn.weight
    weight = conv.weight * scale.view(-1, *([1] * (conv.weight.ndim - 1)))
    bias = -bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    return weight, bias


def conv_bn(
    conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, fold: bool = False
) -> torch.Tensor:
    """``bn(conv(x))``; with ``fold`` and ``bn`` in eval mode (running statistics), one
    convolution with the folded weight and bias (:func:`folded_conv_bn`) instead."""
    if not fold or bn.training or bn.running_var is None:
        return bn(conv(x))
    weight, bias = folded_conv_bn(conv, bn)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The images ``index`` of ``x`` (B x C x H x W), keeping its memory format.

    Without autograd, the rows are gathered as 8-byte words of the dense (NCHW or NHWC)
    layout: about twice as fast as ``index_select`` on float32 elements on CPU; the bits are
    copied unchanged. Otherwise, for channels_last tensors the gather runs on the contiguous
    NHWC view, which is several times faster than ``index_select`` on the strided NCHW view.
    """
    words = None if _needs_graph(x) else _row_words(x)  # B x words
    if words is not None:
        rows = words.index_select(0, index).view(x.dtype)  # R x (C * H * W)
        if _channels_last(x):
            _, c, h, w = x.shape
            return rows.view(index.numel(), h, w, c).permute(0, 3, 1, 2)
        return rows.view(index.numel(), *x.shape[1:])
    if _channels_last(x):
        return x.permute(0, 2, 3, 1).index_select(0, index).permute(0, 3, 1, 2)
    return x.index_select(0, index)


def _row_words(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` (B x ...) as B rows of 8-byte words, a view sharing its memory; None when its
    layout (dense NCHW or NHWC) or row size does not allow one."""
    if x.is_contiguous():
        flat = x.view(x.shape[0], -1)
    elif _channels_last(x):
        flat = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # a view: NHWC is dense
    else:
        return None
    size = flat.element_size()
    if flat.shape[1] * size % 8 or size > 8 or flat.storage_offset() * size % 8:
        return None
    return flat.view(torch.float64)  # B x words


def put_rows(
    out: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, inplace: bool
) -> torch.Tensor:
    """``out`` with images ``index`` replaced by ``rows``; in place when ``inplace``.

    In place, the rows are copied as 8-byte words: CPU ``index_copy_`` moves one element at a
    time, so on the flat word view it does a quarter of the moves for bfloat16 (a half for
    float32). The bits are copied unchanged.
    """
    if (
        inplace
        and not _needs_graph(out, rows)  # a dtype view is not differentiable
        and rows.dtype == out.dtype
    ) and rows.is_contiguous(
        memory_format=torch.channels_last if _channels_last(out) else torch.contiguous_format
    ):
        out_words, row_words = _row_words(out), _row_words(rows)
        if out_words is not None and row_words is not None and rows.shape[0] == index.numel():
            out_words.index_copy_(0, index, row_words)
            return out
    if _channels_last(out):
        out_nhwc, rows_nhwc = out.permute(0, 2, 3, 1), rows.permute(0, 2, 3, 1)
        if inplace:
            out_nhwc.index_copy_(0, index, rows_nhwc)
            return out
        return out_nhwc.index_copy(0, index, rows_nhwc).permute(0, 3, 1, 2)
    return out.index_copy_(0, index, rows) if inplace else out.index_copy(0, index, rows)


def _needs_graph(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def split_rows(execute: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the images that execute (R) and of those that skip (B - R), each ascending.

    One stable sort and one count, so a CUDA device synchronises once per block, not twice.
    """
    count = int(execute.sum())  # R
    order = torch.argsort((~execute).to(torch.uint8), stable=True)  # B: executing images first
    return order[:count], order[count:]


def _rows_like(
    like: torch.Tensor, batch: int, dtype: torch.dtype, channels_last: bool
) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shape = (batch, *like.shape[1:])
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=fmt)


class _SplitRows(torch.autograd.Function):
    """``(x[run], x[rest])``; the backward writes both gradients into one fresh B-row tensor.

    Autograd's own ``index_select`` backward zero-fills a B-row tensor per gather and adds the
    two, three full passes over the activation where this makes one.
    """

    @staticmethod
    def forward(ctx, x, run, rest):  # type: ignore[override]
        ctx.save_for_backward(run, rest)
        ctx.layout = (x.shape[0], x.dtype, _channels_last(x))
        return take_rows(x, run), take_rows(x, rest)

    @staticmethod
    def backward(ctx, g_run, g_rest):  # type: ignore[override]
        run, rest = ctx.saved_tensors
        batch, dtype, channels_last = ctx.layout
        like = g_run if g_run is not None else g_rest
        grad = _rows_like(like, batch, dtype, channels_last)  # B x C x H x W
        for index, g in ((run, g_run), (rest, g_rest)):
            if g is None:
                grad.index_fill_(0, index, 0.0)
            elif index.numel():
                put_rows(grad, index, g.to(dtype), inplace=True)
        return grad, None, None


class _MergeRows(torch.autograd.Function):
    """The B-row tensor whose rows ``run`` are ``y`` and rows ``rest`` are ``s``.

    Every row is written once (no zero-filled or cloned B-row tensor); the backward is two
    gathers of the incoming gradient.
    """

    @staticmethod
    def forward(ctx, y, s, run, rest):  # type: ignore[override]
        ctx.save_for_backward(run, rest)
        ctx.dtypes = (y.dtype, s.dtype)
        out = _rows_like(y, run.numel() + rest.numel(), y.dtype, _channels_last(y))
        put_rows(out, run, y, inplace=True)
        return put_rows(out, rest, s.to(y.dtype), inplace=True)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        run, rest = ctx.saved_tensors
        y_dtype, s_dtype = ctx.dtypes
        g_y = take_rows(grad, run).to(y_dtype) if ctx.needs_input_grad[0] else None
        g_s = take_rows(grad, rest).to(s_dtype) if ctx.needs_input_grad[1] else None
        return g_y, g_s, None, None


# ---------------------------------------------------------------------------- block


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, skippable per image.

    The shortcut is the identity, or a 1x1 conv + batch norm projection where the stride or
    the width changes; a skipped block still applies it.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        #: run conv + eval-mode batch norm as one folded convolution (see :func:`conv_bn`)
        self.fold_bn = False
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
            )

    @property
    def projects(self) -> bool:
        """Whether the shortcut is a projection (the block changes resolution or width)."""
        return not isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(conv_bn(self.conv1, self.bn1, x, self.fold_bn))  # B x C' x H' x W'
        out = conv_bn(self.conv2, self.bn2, out, self.fold_bn)
        return self.relu(out + self.project(x))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The shortcut path: ``x`` itself, or its 1x1 conv + batch norm projection."""
        if not self.projects:
            return x
        return conv_bn(self.shortcut[0], self.shortcut[1], x, self.fold_bn)

    def forward_masked(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``g * block(x) + (1 - g) * shortcut(x)`` with ``gate``: B float."""
        g = gate.view(-1, 1, 1, 1).to(x.dtype)  # B x 1 x 1 x 1
        return g * self(x) + (1.0 - g) * self.project(x)

    def forward_skip(self, x: torch.Tensor, execute: torch.Tensor) -> torch.Tensor:
        """Run the block only on the images where ``execute`` (B bool) holds.

        The other images take the shortcut. Without autograd, the identity case writes the
        executed images into ``x`` in place: ``x`` must not be needed afterwards.
        """
        run, rest = split_rows(execute)  # R executing images, B - R skipping ones
        if rest.numel() == 0:
            return self(x)
        if run.numel() == 0:
            return self.project(x)
        if _needs_graph(x):  # one gradient pass per gather and scatter (see _SplitRows)
            x_run, x_rest = _SplitRows.apply(x, run, rest)
            return _MergeRows.apply(self(x_run), self.project(x_rest), run, rest)
        y = self(take_rows(x, run))  # R x C' x H' x W'
        if not self.projects:
            return put_rows(x, run, y, inplace=not _needs_graph(y))
        s = self.project(take_rows(x, rest))  # (B - R) x C' x H' x W'
        fmt = torch.channels_last if _channels_last(y) else torch.contiguous_format
        shape = (x.shape[0], *y.shape[1:])  # B x C' x H' x W'
        out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=fmt)
        put_rows(out, run, y, inplace=True)
        return put_rows(out, rest, s, inplace=True)

    def macs(self, in_hw: tuple[int, int]) -> tuple[int, int, tuple[int, int]]:
        """Per-image MACs when run and when skipped, and the output spatial size."""
        first, out_hw = conv_macs(self.conv1, in_hw)
        second, _ = conv_macs(self.conv2, out_hw)
        skip = conv_macs(self.shortcut[0], in_hw)[0] if self.projects else 0
        return first + second + skip, skip, out_hw


# ---------------------------------------------------------------------------- model


@dataclass
class Route:
    """A batch part-way through the network, between two blocks.

    Attributes:
        h: output of the last block (run or skipped): B x C x H x W.
        next_block: index of the block the next decision is about; ``num_blocks`` when done.
        executed: B x N bool, blocks run so far (block 0 always).
        macs: B int64, MACs spent so far (stem, blocks, projections, gate calls).
        macs_table: the table the MACs are counted with.
        gate_state: the gate's recurrent state, for callers that drive a gate step by step.
    """

    h: torch.Tensor
    next_block: int
    executed: torch.Tensor
    macs: torch.Tensor
    macs_table: MacsTable
    gate_state: Any = None

    @property
    def done(self) -> bool:
        """Whether every block has been decided (the head may run)."""
        return self.next_block >= self.macs_table.num_blocks


@dataclass
class GatedOutput:
    """What :meth:`SkipResNet.forward_gated` returns.

    Attributes:
        logits: B x num_classes.
        probs: B x K, p(execute) from the gate for each decision.
        gates: B x K, the gate values applied (0/1 except in ``soft`` mode).
        executed: B x N bool, which blocks ran (block 0 always).
        macs: B int64, MACs spent per image, gate calls included (``flops_fraction`` leaves
            them out: ``MacsTable.flops_fraction(executed)``).
    """

    logits: torch.Tensor
    probs: torch.Tensor
    gates: torch.Tensor
    executed: torch.Tensor
    macs: torch.Tensor


class SkipResNet(nn.Module):
    """CIFAR ResNet of ``len(widths)`` stages with ``blocks_per_stage`` BasicBlocks each.

    Args:
        blocks_per_stage: n, so that depth = 2 * len(widths) * n + 2 (6n + 2 for 3 stages).
        num_classes: outputs of the linear head.
        widths: channels of each stage; the first stage has stride 1, the others stride 2.
        in_channels: image channels.
    """

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        widths: tuple[int, ...] = (16, 32, 64),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
        self.blocks_per_stage, self.widths = blocks_per_stage, tuple(widths)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.fold_bn = False  # see fold_batch_norm
        self.stem = nn.Sequential(
            conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        blocks, channels = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- folded batch norm

    def fold_batch_norm(self, enabled: bool = True) -> SkipResNet:
        """Run every conv + eval-mode batch norm pair (stem, blocks, projections) as one
        convolution with folded weights (:func:`conv_bn`), or again as two layers; returns
        ``self``. Batch norms in train mode are never folded (they use batch statistics).
        The parameters and the state dict do not change."""
        self.fold_bn = enabled
        for block in self.blocks:
            block.fold_bn = enabled
        return self

    def run_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem (conv, batch norm, ReLU): B x 3 x H x W -> B x C x H x W."""
        return self.stem[2](conv_bn(self.stem[0], self.stem[1], x, self.fold_bn))

    # -- shape facts

    @property
    def depth(self) -> int:
        return 2 * len(self.widths) * self.blocks_per_stage + 2

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_decisions(self) -> int:
        """K: one decision per block after the first."""
        return self.num_blocks - 1

    @property
    def block_channels(self) -> tuple[int, ...]:
        """Output channels of each block."""
        return tuple(b.conv2.out_channels for b in self.blocks)

    def macs_table(
        self, image_size: tuple[int, int] = (32, 32), gate: Gate | None = None
    ) -> MacsTable:
        """Per-image MACs of every part for ``image_size`` inputs, with ``gate``'s calls."""
        stem, hw = conv_macs(self.stem[0], image_size)
        execute, skip, gate_macs = [], [], []
        for i, block in enumerate(self.blocks):
            run, skipped, hw = block.macs(hw)
            execute.append(run)
            skip.append(skipped)
            if gate is not None and i < self.num_decisions:
                gate_macs.append(gate.macs(i, (block.conv2.out_channels, *hw)))
        return MacsTable(
            stem, tuple(execute), tuple(skip), linear_macs(self.head[-1]), tuple(gate_macs)
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images B x {self.in_channels} x H x W, got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"expected float images (normalised), got dtype {x.dtype}; "
                "use skipenv.data.loader.normalize on uint8 images"
            )

    def _check_decisions(self, d: torch.Tensor, x: torch.Tensor, name: str) -> None:
        if d.shape != (x.shape[0], self.num_decisions):
            raise ValueError(
                f"{name} must be B x K = {x.shape[0]} x {self.num_decisions} (one column per "
                f"block after the first), got shape {tuple(d.shape)}"
            )

    # -- whole-batch forwards

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain network, every block run: B x 3 x H x W -> B x num_classes."""
        self._check_input(x)
        h = self.run_stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)

    def forward_masked(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Masked formulation with gate values ``gates`` (B x K float): every block computed."""
        self._check_input(x)
        self._check_decisions(gates, x, "gates")
        h = self.blocks[0](self.run_stem(x))
        for k in range(self.num_decisions):
            h = self.blocks[k + 1].forward_masked(h, gates[:, k])
        return self.head(h)

    def forward_skip(self, x: torch.Tensor, execute: torch.Tensor) -> torch.Tensor:
        """Real skipping for decisions ``execute`` (B x K bool): skipped blocks never run.

        In train mode, each block's batch norm normalises over the images that run it, not
        over the whole batch as in the masked formulation; in eval mode the two agree.
        """
        self._check_input(x)
        self._check_decisions(execute, x, "execute")
        execute = execute.bool()
        h = self.blocks[0](self.run_stem(x))
        for k in range(self.num_decisions):
            h = self.blocks[k + 1].forward_skip(h, execute[:, k])
        return self.head(h)

    # -- one block at a time

    def start(self, x: torch.Tensor, gate: Gate | None = None) -> Route:
        """Run the stem and block 0 (which always runs); the route awaits decision 0.

        ``gate``, when given, is only used to charge its calls in ``Route.macs`` (and to seed
        ``Route.gate_state``); callers that decide otherwise leave it out.
        """
        self._check_input(x)
        table = self.macs_table(tuple(x.shape[-2:]), gate)
        h = self.blocks[0](self.run_stem(x))  # B x C x H x W
        executed = torch.zeros(x.shape[0], self.num_blocks, dtype=torch.bool, device=x.device)
        executed[:, 0] = True
        macs = torch.full(
            (x.shape[0],), table.stem + table.block_execute[0], dtype=torch.int64, device=x.device
        )
        state = gate.initial_state(x.shape[0], x.device) if gate is not None else None
        return Route(h, 1, executed, macs, table, state)

    def _charge(self, route: Route, execute: torch.Tensor) -> None:
        i, table = route.next_block, route.macs_table
        route.executed[:, i] = execute
        cost = torch.where(execute, table.block_execute[i], table.block_skip[i])  # B
        route.macs += cost + table.gate_macs(i - 1)
        route.next_block += 1

    def _check_step(self, route: Route, decision: torch.Tensor) -> None:
        if route.done:
            raise RuntimeError("every block of this route has been decided; call finish()")
        if decision.shape != (route.h.shape[0],):
            raise ValueError(
                f"need one decision per image ({route.h.shape[0]}), got shape "
                f"{tuple(decision.shape)}"
            )

    def advance(self, route: Route, execute: torch.Tensor) -> Route:
        """Apply one decision per image (B bool) to block ``route.next_block``, really skipping.

        Updates and returns ``route``; without autograd, ``route.h`` may be overwritten in
        place, so keep copies (not references) of activations you need later.
        """
        self._check_step(route, execute)
        execute = execute.bool()
        route.h = self.blocks[route.next_block].forward_skip(route.h, execute)
        self._charge(route, execute)
        return route

    def advance_masked(self, route: Route, gate: torch.Tensor) -> Route:
        """Apply gate values (B float) to the next block in the masked formulation.

        ``Route.macs`` still counts what the decisions (gate > 0.5) cost with real skipping.
        """
        self._check_step(route, gate)
        route.h = self.blocks[route.next_block].forward_masked(route.h, gate)
        self._charge(route, gate.detach() > 0.5)
        return route

    def finish(self, route: Route) -> torch.Tensor:
        """Run the head on a route whose blocks are all decided: B x num_classes logits."""
        if not route.done:
            raise RuntimeError(
                f"block {route.next_block} of {self.num_blocks} is still undecided; "
                "call advance() until route.done"
            )
        route.macs += route.macs_table.head
        return self.head(route.h)

    def forward_gated(
        self,
        x: torch.Tensor,
        gate: Gate,
        mode: GateMode = "greedy",
        routing: Routing = "skip",
        generator: torch.Generator | None = None,
    ) -> GatedOutput:
        """Run with ``gate`` deciding each block from the previous block's output.

        Args:
            x: B x 3 x H x W float images.
            gate: the policy; called once per decision.
            mode: ``greedy``, ``sample``, ``hard`` or ``soft`` (see
                ``skipenv.models.gating.decide``).
            routing: ``skip`` (real skipping; needs 0/1 decisions, so ``greedy``/``sample``)
                or ``masked`` (every block computed; any mode).
            generator: randomness for ``sample``.
        """
        if routing not in ("skip", "masked"):
            raise ValueError(f"routing must be 'skip' or 'masked', got {routing!r}")
        if routing == "skip" and mode in ("hard", "soft"):
            raise ValueError(
                f"mode {mode!r} passes gradients through the outputs of skipped blocks, which "
                "real skipping never computes; use routing='masked' with it"
            )
        route = self.start(x, gate)
        probs, gates = [], []
        while not route.done:
            p, route.gate_state = gate(route.h, route.next_block - 1, route.gate_state)  # B
            g, execute = decide(p, mode, generator)  # B, B
            if routing == "skip":
                self.advance(route, execute)
            else:
                self.advance_masked(route, g)
            probs.append(p)
            gates.append(g)
        logits = self.head(route.h)  # B x num_classes
        route.macs += route.macs_table.head
        probs_t = torch.stack(probs, dim=1) if probs else x.new_zeros(x.shape[0], 0)  # B x K
        gates_t = torch.stack(gates, dim=1) if gates else x.new_zeros(x.shape[0], 0)  # B x K
        return GatedOutput(logits, probs_t, gates_t, route.executed, route.macs)


@contextmanager
def batch_norm_folded(model: SkipResNet, enabled: bool = True) -> Iterator[SkipResNet]:
    """Within the block, ``model`` runs with batch norm folded (``enabled``) or not
    (:meth:`SkipResNet.fold_batch_norm`); afterwards as before. A backward pass after the
    block follows the graph recorded inside it."""
    before = model.fold_bn
    model.fold_batch_norm(enabled)
    try:
        yield model
    finally:
        model.fold_batch_norm(before)


# ---------------------------------------------------------------------------- depths and builder

#: Depth -> blocks per stage (n) of the CIFAR ResNet family, depth = 6n + 2. 38, 74 and 110
#: are the paper's; 8 and 14 are tiny ones for tests.
DEPTHS: dict[int, int] = {8: 1, 14: 2, 20: 3, 32: 5, 38: 6, 44: 7, 56: 9, 74: 12, 110: 18, 152: 25}


def build_resnet(
    depth: int, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64)
) -> SkipResNet:
    """The CIFAR ResNet of ``depth`` (a key of :data:`DEPTHS`)."""
    if depth not in DEPTHS:
        raise ValueError(f"unsupported depth {depth!r}; choose one of {sorted(DEPTHS)}")
    if len(widths) != 3:
        raise ValueError(f"the CIFAR family has 3 stages, got widths {widths}")
    return SkipResNet(DEPTHS[depth], num_classes=num_classes, widths=widths)
