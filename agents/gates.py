"""SkipNet's gates: the recurrent gate (RNNGate) and the feedforward gates FFGate-I and FFGate-II.

Each is a :class:`skipenv.models.gating.Gate`: after block ``i`` it maps that block's output
(B x C_i x H x W) to p(execute block i + 1). One gate object holds the parameters for all
K = num_blocks - 1 decisions. Layers follow the authors' code (ucbdrive/skipnet,
``cifar/models.py``: ``RNNGate`` with its ``group*_gate*`` embeddings in
``ResNetRecurrentGateSP``, ``FeedforwardGateI``, ``FeedforwardGateII``).

Initialisation. The authors train SP from scratch with default-ish initialisation (their
gates start near p = 0.5, skipping about half the blocks at random). Here gates are usually
put on a *pretrained* backbone, where a gate that starts by skipping blocks destroys the
backbone's accuracy before it has learnt anything. So by default (``init_execute_prob=0.9``)
the layer producing the gate's logit starts with zero weights and a bias giving p(execute)
= 0.9 for every input: a fresh gate executes every block (greedy and hard decisions equal
the plain network) and learns to skip from there; the zero weights get gradients at once and
pass them on from the next step. ``init_execute_prob=None`` keeps the authors' initialisation.

:func:`build_gate` rebuilds a gate from its :meth:`spec` (for checkpoints and configs).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from skipenv.models.flops import conv_macs, linear_macs
from skipenv.models.gating import Gate, global_avg_pool

GATE_TYPES: tuple[str, ...] = ("rnn", "ffgate1", "ffgate2")

DEFAULT_INIT_EXECUTE_PROB = 0.9


def _check_channels(block_channels: tuple[int, ...]) -> tuple[int, ...]:
    channels = tuple(int(c) for c in block_channels)
    if len(channels) < 2 or any(c < 1 for c in channels):
        raise ValueError(
            "block_channels must list the output channels of every block (at least 2 blocks, "
            f"each >= 1), got {block_channels!r}; pass backbone.block_channels"
        )
    return channels


def _check_init_prob(p: float | None) -> float | None:
    if p is not None and not 0.0 < p < 1.0:
        raise ValueError(f"init_execute_prob must be in (0, 1) or None, got {p!r}")
    return p


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _conv3x3(channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)


class _BlockGate(Gate):
    """Shared checks of gates with one set of input layers per decision block."""

    block_channels: tuple[int, ...]

    @property
    def num_decisions(self) -> int:
        """K: decisions per image (one per block but the last)."""
        return len(self.block_channels) - 1

    def _check_block(self, block: int) -> None:
        if not 0 <= block < self.num_decisions:
            raise ValueError(
                f"block must be in 0..{self.num_decisions - 1} (a block followed by another), "
                f"got {block!r}"
            )

    def _check_input(self, x: torch.Tensor, block: int, ndim: int) -> None:
        self._check_block(block)
        c = self.block_channels[block]
        if x.ndim != ndim or x.shape[1] != c:
            want = f"B x {c}" + (" x H x W" if ndim == 4 else "")
            raise ValueError(
                f"block {block} outputs {c} channels: expected {want}, got shape {tuple(x.shape)}"
            )


# ---------------------------------------------------------------------------- recurrent gate


class RNNGate(_BlockGate):
    """The recurrent gate: per-block projection of the pooled activation, one shared LSTM.

    After block ``i``: global average pooling (B x C_i), a per-block linear projection to
    ``embed_dim`` (the authors' 1x1 conv after ``AvgPool2d``), one step of an LSTM cell shared
    by all blocks, a linear layer to one logit, sigmoid: p(execute block i + 1).

    Since the gate only ever sees the pooled activation, :meth:`forward_pooled` takes that
    vector directly; an agent acting on the environment's pooled observations uses it.

    Args:
        block_channels: output channels of every block (``backbone.block_channels``).
        embed_dim: size of the per-block embedding (10 in the paper).
        hidden_dim: LSTM hidden size (10 in the paper).
        init_execute_prob: p(execute) of a fresh gate for every input (see the module doc);
            None for the authors' initialisation.
    """

    def __init__(
        self,
        block_channels: tuple[int, ...],
        embed_dim: int = 10,
        hidden_dim: int = 10,
        init_execute_prob: float | None = DEFAULT_INIT_EXECUTE_PROB,
    ) -> None:
        super().__init__()
        if embed_dim < 1 or hidden_dim < 1:
            raise ValueError(
                f"embed_dim and hidden_dim must be >= 1, got {embed_dim!r}, {hidden_dim!r}"
            )
        self.block_channels = _check_channels(block_channels)
        self.embed_dim, self.hidden_dim = int(embed_dim), int(hidden_dim)
        self.init_execute_prob = _check_init_prob(init_execute_prob)
        self.embed = nn.ModuleList(nn.Linear(c, embed_dim) for c in self.block_channels[:-1])
        self.rnn = nn.LSTMCell(embed_dim, hidden_dim)
        self.proj = nn.Linear(hidden_dim, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # The authors' init (ResNetRecurrentGateSP): conv weights N(0, 2 / (k*k*out)) -- for the
        # 1x1 embedding conv that is kaiming fan_out -- and linear weights N(0, 2 / (out*in));
        # the LSTM and all biases keep PyTorch's defaults.
        for embed in self.embed:
            nn.init.kaiming_normal_(embed.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.proj.weight, 0.0, math.sqrt(2.0 / self.proj.weight.numel()))
        if self.init_execute_prob is not None:
            # our change: start executing every block (see the module docstring)
            nn.init.zeros_(self.proj.weight)
            nn.init.constant_(self.proj.bias, _logit(self.init_execute_prob))

    def spec(self) -> dict[str, Any]:
        """JSON-able description that :func:`build_gate` rebuilds this gate from."""
        return {
            "type": "rnn",
            "block_channels": list(self.block_channels),
            "embed_dim": self.embed_dim,
            "hidden_dim": self.hidden_dim,
        }

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero LSTM hidden and cell states: B x hidden each."""
        dtype = self.proj.weight.dtype
        h = torch.zeros(batch_size, self.hidden_dim, device=device, dtype=dtype)
        return h, h.clone()

    def forward_pooled(
        self, pooled: torch.Tensor, block: int, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """p(execute block ``block + 1``) from the pooled output of block ``block``.

        Args:
            pooled: B x C_block, the global average of block ``block``'s output.
            block: index of the block that produced it (0 .. K - 1).
            state: (h, c) from the previous call, or None for zeros (first decision).

        Returns:
            p(execute): B, and the new (h, c).
        """
        self._check_input(pooled, block, ndim=2)
        if state is None:
            state = self.initial_state(pooled.shape[0], pooled.device)
        e = self.embed[block](pooled.to(self.proj.weight.dtype))  # B x embed
        h, c = self.rnn(e, state)  # B x hidden each
        p = torch.sigmoid(self.proj(h)).squeeze(1)  # B
        return p, (h, c)

    def forward(
        self, h: torch.Tensor, block: int, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        self._check_input(h, block, ndim=4)
        return self.forward_pooled(global_avg_pool(h), block, state)  # pooled: B x C

    def macs(self, block: int, in_shape: tuple[int, int, int]) -> int:
        """Embedding, LSTM cell (input and hidden matmuls, 4 gates) and output layer."""
        self._check_block(block)
        lstm = 4 * self.hidden_dim * (self.embed_dim + self.hidden_dim)
        return linear_macs(self.embed[block]) + lstm + linear_macs(self.proj)


# ---------------------------------------------------------------------------- feedforward gates


class _FFGate(_BlockGate):
    """An independent small conv net per block, ending in 2 logits; p(execute) = softmax[:, 1].

    Subclasses give the conv part (``_features``); global average pooling and a 1x1 conv to
    2 logits (a linear layer on the pooled vector) follow. The authors pool with
    ``AvgPool2d(pool_size)`` sized so that it covers the whole map for CIFAR's 32/16/8
    resolutions; a global average is that, for any resolution.
    """

    gate_type: str = ""

    def __init__(
        self,
        block_channels: tuple[int, ...],
        init_execute_prob: float | None = DEFAULT_INIT_EXECUTE_PROB,
    ) -> None:
        super().__init__()
        self.block_channels = _check_channels(block_channels)
        self.init_execute_prob = _check_init_prob(init_execute_prob)
        channels = self.block_channels[:-1]
        self.features = nn.ModuleList(self._features(c) for c in channels)
        self.logits = nn.ModuleList(nn.Linear(c, 2) for c in channels)
        self._init_weights()

    def _features(self, channels: int) -> nn.Sequential:
        raise NotImplementedError

    def _init_weights(self) -> None:
        # The authors' init (ResNetFeedForwardSP): every conv weight N(0, 2 / (k*k*out)), i.e.
        # kaiming fan_out (their final 1x1 conv to 2 logits too, std 1); BN weight 1, bias 0;
        # conv biases PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for linear in self.logits:
            nn.init.normal_(linear.weight, 0.0, 1.0)
            if self.init_execute_prob is not None:
                # our change: start executing every block (see the module docstring)
                nn.init.zeros_(linear.weight)
                with torch.no_grad():
                    linear.bias.copy_(torch.tensor([0.0, _logit(self.init_execute_prob)]))

    def spec(self) -> dict[str, Any]:
        """JSON-able description that :func:`build_gate` rebuilds this gate from."""
        return {"type": self.gate_type, "block_channels": list(self.block_channels)}

    def forward(self, h: torch.Tensor, block: int, state: Any) -> tuple[torch.Tensor, Any]:
        self._check_input(h, block, ndim=4)
        z = self.features[block](h)  # B x C x H' x W'
        z = global_avg_pool(z)  # B x C
        logits = self.logits[block](z)  # B x 2
        return F.softmax(logits, dim=1)[:, 1], state  # B

    def macs(self, block: int, in_shape: tuple[int, int, int]) -> int:
        self._check_block(block)
        total, hw = 0, tuple(in_shape[1:])
        for m in self.features[block]:
            if isinstance(m, nn.Conv2d):
                macs, hw = conv_macs(m, hw)
                total += macs
            elif isinstance(m, nn.MaxPool2d):
                hw = (hw[0] // 2, hw[1] // 2)
        return total + linear_macs(self.logits[block])


class FFGateI(_FFGate):
    """FFGate-I: max pool 2, conv3x3 + BN + ReLU, conv3x3 stride 2 + BN + ReLU, global average
    pool, 1x1 conv to 2 logits; p(execute) = softmax[:, 1]. Convs keep the block's C channels
    (the authors' ``FeedforwardGateI(channel=planes)``).

    Args:
        block_channels: output channels of every block (``backbone.block_channels``).
        init_execute_prob: p(execute) of a fresh gate for every input (see the module doc);
            None for the authors' initialisation.
    """

    gate_type = "ffgate1"

    def _features(self, channels: int) -> nn.Sequential:
        return nn.Sequential(
            nn.MaxPool2d(2),
            _conv3x3(channels),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            _conv3x3(channels, stride=2),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )


class FFGateII(_FFGate):
    """FFGate-II: conv3x3 stride 2 + BN + ReLU, global average pool, 1x1 conv to 2 logits;
    p(execute) = softmax[:, 1] (the authors' ``FeedforwardGateII(channel=planes)``).

    Args:
        block_channels: output channels of every block (``backbone.block_channels``).
        init_execute_prob: p(execute) of a fresh gate for every input (see the module doc);
            None for the authors' initialisation.
    """

    gate_type = "ffgate2"

    def _features(self, channels: int) -> nn.Sequential:
        return nn.Sequential(
            _conv3x3(channels, stride=2), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )


# ---------------------------------------------------------------------------- specs

_CLASSES: dict[str, type[Gate]] = {"rnn": RNNGate, "ffgate1": FFGateI, "ffgate2": FFGateII}
_OPTIONS: dict[str, tuple[str, ...]] = {
    "rnn": ("embed_dim", "hidden_dim", "init_execute_prob"),
    "ffgate1": ("init_execute_prob",),
    "ffgate2": ("init_execute_prob",),
}


def build_gate(spec: dict[str, Any], block_channels: tuple[int, ...]) -> Gate:
    """Build the gate ``spec`` describes (a gate's :meth:`spec`, or e.g. ``{"type": "rnn"}``)
    for a backbone whose blocks output ``block_channels`` channels.

    ``spec`` may hold ``"block_channels"``; it must then equal ``block_channels``. Other keys
    are constructor arguments of the gate type (``embed_dim``, ``hidden_dim``,
    ``init_execute_prob``).
    """
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"a gate spec is a dict with a 'type' key, got {spec!r}")
    kind = spec["type"]
    if kind not in _CLASSES:
        raise ValueError(f"unknown gate type {kind!r}; choose one of {GATE_TYPES}")
    channels = _check_channels(block_channels)
    if "block_channels" in spec and tuple(spec["block_channels"]) != channels:
        raise ValueError(
            f"the gate spec was made for blocks with {tuple(spec['block_channels'])} channels, "
            f"but this backbone's blocks have {channels}"
        )
    kwargs = {k: v for k, v in spec.items() if k not in ("type", "block_channels")}
    unknown = sorted(set(kwargs) - set(_OPTIONS[kind]))
    if unknown:
        raise ValueError(
            f"unknown keys {unknown} in a {kind!r} gate spec; allowed: {list(_OPTIONS[kind])}"
        )
    return _CLASSES[kind](channels, **kwargs)


# ---------------------------------------------------------------------------- exploration


class ExploringGate(Gate):
    """``gate`` mixed with a fair coin: p' = explore / 2 + (1 - explore) * p.

    Used while sampling in HRL so that every decision is explored at least ``explore / 2`` of
    the time, however sure the gate has become (on a backbone that never skipped, REINFORCE
    at a small alpha drives p above 0.99 within an epoch and then hardly ever sees a skip).
    The mixture is the behaviour policy: its log-probabilities are differentiable in the
    gate's parameters, and p' > 0.5 exactly when p > 0.5, so greedy decisions are unchanged.
    ``explore = 0`` is the gate itself.
    """

    def __init__(self, gate: Gate, explore: float) -> None:
        super().__init__()
        if not 0.0 <= explore < 1.0:
            raise ValueError(f"explore must be in [0, 1), got {explore!r}")
        self.gate, self.explore = gate, explore

    def initial_state(self, batch_size: int, device: torch.device) -> Any:
        return self.gate.initial_state(batch_size, device)

    def forward(self, h: torch.Tensor, block: int, state: Any) -> tuple[torch.Tensor, Any]:
        p, state = self.gate(h, block, state)  # B
        return self.explore / 2 + (1.0 - self.explore) * p, state

    def macs(self, block: int, in_shape: tuple[int, int, int]) -> int:
        return self.gate.macs(block, in_shape)


# ---------------------------------------------------------------------------- Gumbel noise


class GumbelGate(Gate):
    """``gate`` with Gumbel-sigmoid noise in its relaxation: p' = sigmoid((logit p + L) / tau).

    ConvNet-AIG's training relaxation (Veit & Belongie, "Convolutional Networks with Adaptive
    Inference Graphs", ECCV 2018, sec. 3; their code: andreasveit/convnet-aig,
    ``gumbelmodule.py``, temperature fixed at 1): the Gumbel-Max trick for a two-way choice,
    where the difference of two Gumbel(0, 1) variables is a logistic one, L = log u - log(1 - u)
    with u ~ U(0, 1). Used with the ``hard`` gate mode (execute iff p' > 0.5, gradient of p':
    straight-through Gumbel), each hard decision is a sample of Bernoulli(p), so images that
    the gate cannot tell apart still take different routes in training, and the gradient flows
    through a noisy soft value; ``tau`` -> 0 makes p' a hard sample, a large ``tau`` flattens
    it towards 0.5. Evaluation here stays greedy (p > 0.5, no noise); ConvNet-AIG's released
    code draws the noise at test time as well (``gumbelmodule.py``: hard samples in eval mode).

    Args:
        gate: the gate whose p(execute) is perturbed.
        tau: temperature, > 0 (ConvNet-AIG: 1).
        generator: randomness of the noise (None: torch's global generator).

    Raises:
        ValueError: ``tau`` not > 0.
    """

    def __init__(self, gate: Gate, tau: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not tau > 0:
            raise ValueError(f"the Gumbel temperature tau must be > 0, got {tau!r}")
        self.gate, self.tau, self.generator = gate, float(tau), generator

    def initial_state(self, batch_size: int, device: torch.device) -> Any:
        return self.gate.initial_state(batch_size, device)

    def forward(self, h: torch.Tensor, block: int, state: Any) -> tuple[torch.Tensor, Any]:
        p, state = self.gate(h, block, state)  # B
        eps = 1e-6
        logit = torch.logit(p.float(), eps=eps)  # B, the gate's logit (float32)
        u = torch.rand(p.shape, generator=self.generator, device=p.device)  # B ~ U(0, 1)
        u = u.clamp(eps, 1.0 - eps)
        noise = u.log() - (1.0 - u).log()  # B ~ Logistic(0, 1) = Gumbel - Gumbel
        return torch.sigmoid((logit + noise) / self.tau).to(p.dtype), state  # B

    def macs(self, block: int, in_shape: tuple[int, int, int]) -> int:
        return self.gate.macs(block, in_shape)


def target_rate_loss(gates: torch.Tensor, target: float) -> torch.Tensor:
    """ConvNet-AIG's target-rate loss: each gated block's execute rate pulled towards ``target``.

    ``mean_k (mean_b gates[b, k] - target) ** 2``: the batch's mean gate value of each decision
    (with ``hard`` gates the execute rate, differentiable straight-through), squared error to
    the target, averaged over the K decisions. Veit & Belongie, ECCV 2018, sec. 3 (their
    L_target) sum over the layers; their code (andreasveit/convnet-aig, ``train.py``) divides
    the sum by the number of layers and weights it by 2 (``--lossfact``), which is this mean.

    Args:
        gates: B x K gate values (``GatedOutput.gates``).
        target: the execute rate t each block is pulled to, in [0, 1].

    Returns:
        A scalar tensor (float32).

    Raises:
        ValueError: ``gates`` not B x K with K >= 1, or ``target`` outside [0, 1].
    """
    if gates.ndim != 2 or gates.shape[1] == 0:
        raise ValueError(f"gates must be B x K with K >= 1, got shape {tuple(gates.shape)}")
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"the target execute rate must be in [0, 1], got {target!r}")
    rates = gates.float().mean(dim=0)  # K
    return ((rates - target) ** 2).mean()
