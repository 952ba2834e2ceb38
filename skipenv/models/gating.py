"""The gate interface: what decides, from a block's output, whether the next block runs.

A gate is called after every block but the last. It sees the activation ``h`` just produced
by block ``i`` (B x C x H x W) and returns p(execute block i + 1) for each image, plus an
optional recurrent state it carries to its next call. The same object serves three places:

- the network's batched forward (:meth:`skipenv.models.resnet.SkipResNet.forward_gated`),
- one block at a time (:meth:`~skipenv.models.resnet.SkipResNet.start` / ``advance``), which is how
  an environment or an agent drives the network, one decision per step,
- a checkpoint (it is an ``nn.Module``).

:func:`decide` turns probabilities into the gate values the network mixes with, in one of
four modes: ``greedy`` (evaluation), ``sample`` (Bernoulli, for REINFORCE), ``hard``
(straight-through: forward 0/1 at p > 0.5, backward through p) and ``soft`` (scale by p).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import nn

GateMode = Literal["greedy", "sample", "hard", "soft"]
GATE_MODES: tuple[str, ...] = get_args(GateMode)


class Gate(nn.Module):
    """Base class of gates. Subclasses implement :meth:`forward` and :meth:`macs`."""

    def initial_state(self, batch_size: int, device: torch.device) -> Any:
        """The recurrent state before the first call (None for feedforward gates)."""
        return None

    def forward(self, h: torch.Tensor, block: int, state: Any) -> tuple[torch.Tensor, Any]:
        """Probability of executing block ``block + 1``.

        Args:
            h: the output of block ``block``: B x C x H x W.
            block: index of the block that produced ``h`` (0 .. num_blocks - 2).
            state: what the previous call returned (``initial_state`` at block 0).

        Returns:
            p(execute): B float in [0, 1], and the new state.
        """
        raise NotImplementedError

    def macs(self, block: int, in_shape: tuple[int, int, int]) -> int:
        """MACs per image of one call after block ``block`` on a C x H x W activation."""
        raise NotImplementedError


class _GlobalAvgPool(torch.autograd.Function):
    """``h.mean(dim=(2, 3))`` whose backward writes a dense gradient in ``h``'s memory format."""

    @staticmethod
    def forward(ctx, h):  # type: ignore[override]
        b, c, height, width = h.shape
        channels_last = not h.is_contiguous() and h.is_contiguous(memory_format=torch.channels_last)
        ctx.layout = (h.shape, h.dtype, channels_last)
        # sum, then divide: on CPU the bfloat16 sum (float accumulation) is several times
        # faster than the bfloat16 mean, and for power-of-two H x W gives the same bits
        if channels_last:  # reduce the contiguous NHWC view: B x HW x C -> B x C
            total = h.permute(0, 2, 3, 1).reshape(b, height * width, c).sum(dim=1)
        else:
            total = h.sum(dim=(2, 3))
        return total.div_(height * width)  # B x C

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        shape, dtype, channels_last = ctx.layout
        b, c, height, width = shape
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty(shape, dtype=dtype, device=grad.device, memory_format=fmt)
        share = (grad / (height * width)).to(dtype)  # B x C
        if channels_last:  # fill the dense NHWC view: ~5x faster than the strided NCHW one
            nhwc = out.permute(0, 2, 3, 1).view(b, height * width, c)
            nhwc.copy_(share.view(b, 1, c).expand(b, height * width, c))
            return out
        return out.copy_(share.view(b, c, 1, 1).expand(shape))


def global_avg_pool(h: torch.Tensor) -> torch.Tensor:
    """Global average pooling: B x C x H x W -> B x C (same values as ``h.mean(dim=(2, 3))``).

    The gradient it passes back is a dense tensor laid out like ``h``. Autograd's own mean
    gives a broadcast one, and adding that to the block's gradient in bfloat16 takes a slow
    strided path on CPU (about 15 ms per 128 x 16 x 32 x 32 activation, against 0.4 ms).
    """
    if h.ndim != 4:
        raise ValueError(f"expected B x C x H x W activations, got shape {tuple(h.shape)}")
    return _GlobalAvgPool.apply(h)


def decide(
    probs: torch.Tensor, mode: GateMode, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn p(execute) into gate values and hard decisions.

    Args:
        probs: B, p(execute) per image.
        mode: one of ``GATE_MODES``.
        generator: randomness for ``sample``.

    Returns:
        ``gate``: B float, what multiplies the block output in the masked formulation
        (0/1 in every mode but ``soft``; in ``hard`` its gradient is that of p), and
        ``execute``: B bool, the decision (for ``soft``, p > 0.5, used for accounting only).
    """
    if mode == "sample":
        execute = torch.bernoulli(probs.detach(), generator=generator).bool()  # B
        return execute.to(probs.dtype), execute
    execute = probs.detach() > 0.5  # B
    if mode == "greedy":
        return execute.to(probs.dtype), execute
    if mode == "hard":
        hard = execute.to(probs.dtype)
        return hard + probs - probs.detach(), execute  # forward 0/1, backward d/dp
    if mode == "soft":
        return probs, execute
    raise ValueError(f"unknown gate mode {mode!r}; choose one of {GATE_MODES}")


def log_prob(probs: torch.Tensor, execute: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Log-probability of the decisions ``execute`` under Bernoulli(``probs``), same shape."""
    probs = probs.clamp(eps, 1.0 - eps)
    return torch.where(execute, probs.log(), (1.0 - probs).log())


class FixedGate(Gate):
    """Replays given decisions (B x num_decisions bool); costs nothing. For tests and baselines."""

    def __init__(self, decisions: torch.Tensor) -> None:
        super().__init__()
        if decisions.ndim != 2:
            raise ValueError(f"decisions must be B x K, got shape {tuple(decisions.shape)}")
        self.register_buffer("decisions", decisions.bool(), persistent=False)

    def forward(self, h: torch.Tensor, block: int, state: Any) -> tuple[torch.Tensor, Any]:
        if h.shape[0] != self.decisions.shape[0]:
            raise ValueError(
                f"FixedGate holds decisions for {self.decisions.shape[0]} images, got a batch of "
                f"{h.shape[0]}"
            )
        return self.decisions[:, block].to(h.dtype), state  # B

    def macs(self, block: int, in_shape: tuple[int, int, int]) -> int:
        return 0
