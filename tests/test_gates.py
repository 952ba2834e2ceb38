"""The recurrent and feedforward gates: shapes, the gated forward in every mode, MACs, specs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from agents.gates import (
    GATE_TYPES,
    ExploringGate,
    FFGateI,
    FFGateII,
    GumbelGate,
    RNNGate,
    build_gate,
    target_rate_loss,
)
from agents.skipnet import SkipNet
from skipenv.models.gating import Gate
from skipenv.models.resnet import SkipResNet


def counted_macs(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    total = counter.get_total_flops()
    assert total % 2 == 0
    return total // 2


def make_gate(kind: str, model: SkipResNet, **kwargs) -> Gate:
    torch.manual_seed(1)
    return build_gate({"type": kind, **kwargs}, model.block_channels)


def block_outputs(model: SkipResNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Output of every block of the plain network (all blocks run)."""
    h, outs = model.stem(x), []
    for block in model.blocks:
        h = block(h)
        outs.append(h)
    return outs


@pytest.mark.parametrize("kind", GATE_TYPES)
def test_probabilities_and_state(kind: str, tiny_model: SkipResNet) -> None:
    tiny_model.eval()
    gate = make_gate(kind, tiny_model, init_execute_prob=None)
    outs = block_outputs(tiny_model, torch.randn(3, 3, 32, 32))
    state = gate.initial_state(3, torch.device("cpu"))
    for i in range(tiny_model.num_decisions):
        p, state = gate(outs[i], i, state)
        assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()
    if kind == "rnn":
        h, c = state
        assert h.shape == c.shape == (3, 10) and h.abs().sum() > 0
    else:
        assert state is None
    with pytest.raises(ValueError, match=r"block must be in 0\.\.4"):
        gate(outs[-1], tiny_model.num_decisions, state)
    with pytest.raises(ValueError, match="block 2 outputs 8 channels"):
        gate(outs[0], 2, state)


@pytest.mark.parametrize("kind", GATE_TYPES)
def test_fresh_gate_executes_everything(kind: str, tiny_model: SkipResNet) -> None:
    """Default init: p(execute) = 0.9 for any input, so a pretrained backbone is unchanged."""
    tiny_model.eval()
    gate = make_gate(kind, tiny_model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = tiny_model.forward_gated(x, gate, mode="greedy")
        torch.testing.assert_close(out.probs, torch.full_like(out.probs, 0.9))
        assert out.executed.all()
        torch.testing.assert_close(out.logits, tiny_model(x))


def test_rnn_forward_is_forward_pooled(tiny_model: SkipResNet) -> None:
    gate = make_gate("rnn", tiny_model, init_execute_prob=None)
    outs = block_outputs(tiny_model.eval(), torch.randn(2, 3, 32, 32))
    p1, s1 = gate(outs[1], 1, None)
    p2, s2 = gate.forward_pooled(outs[1].mean(dim=(2, 3)), 1, None)
    torch.testing.assert_close(p1, p2)
    torch.testing.assert_close(s1[1], s2[1])
    with pytest.raises(ValueError, match=r"expected B x 4, got shape \(2, 8\)"):
        gate.forward_pooled(torch.zeros(2, 8), 0, None)


@pytest.mark.parametrize("kind", GATE_TYPES)
@pytest.mark.parametrize(
    ("mode", "routing"),
    [
        ("greedy", "skip"),
        ("sample", "skip"),
        ("greedy", "masked"),
        ("hard", "masked"),
        ("soft", "masked"),
    ],
)
def test_forward_gated_modes(kind: str, mode: str, routing: str, tiny_model: SkipResNet) -> None:
    tiny_model.eval()
    gate = make_gate(kind, tiny_model, init_execute_prob=None).eval()
    x = torch.randn(6, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = tiny_model.forward_gated(x, gate, mode=mode, routing=routing, generator=gen)
        ref = tiny_model.forward_gated(x, gate, mode="greedy", routing="skip")
    k = tiny_model.num_decisions
    assert out.logits.shape == (6, 10) and out.probs.shape == out.gates.shape == (6, k)
    assert out.executed[:, 0].all()
    if mode == "sample":
        assert torch.equal(out.executed[:, 1:], out.gates.bool())
    elif mode != "soft":
        # same probabilities and decisions, however the blocks are routed
        torch.testing.assert_close(out.probs, ref.probs)
        assert torch.equal(out.executed, ref.executed)
        torch.testing.assert_close(out.logits, ref.logits)


@pytest.mark.parametrize("kind", GATE_TYPES)
def test_channels_last(kind: str, tiny_model: SkipResNet) -> None:
    tiny_model.eval()
    gate = make_gate(kind, tiny_model, init_execute_prob=None).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = tiny_model.forward_gated(x, gate)
        model_cl = tiny_model.to(memory_format=torch.channels_last)
        gate_cl = gate.to(memory_format=torch.channels_last)
        out = model_cl.forward_gated(x.contiguous(memory_format=torch.channels_last), gate_cl)
    torch.testing.assert_close(out.probs, ref.probs, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.executed, ref.executed)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", GATE_TYPES)
@pytest.mark.parametrize("init", [None, 0.9])
def test_hard_mode_trains_the_gate(kind: str, init: float | None, tiny_model: SkipResNet) -> None:
    tiny_model.train()
    gate = make_gate(kind, tiny_model, init_execute_prob=init).train()
    x = torch.randn(8, 3, 32, 32)
    out = tiny_model.forward_gated(x, gate, mode="hard", routing="masked")
    nn.functional.cross_entropy(out.logits, torch.arange(8) % 10).backward()
    grads = {name: p.grad for name, p in gate.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the layer producing the logit gets gradients at once (also from zero weights) ...
    out_layer = "proj" if kind == "rnn" else "logits"
    assert all(g.abs().sum() > 0 for n, g in grads.items() if n.startswith(out_layer))
    if init is None:  # ... and with non-zero weights every layer does
        assert sum(g.abs().sum() > 0 for g in grads.values()) == len(grads)


@pytest.mark.parametrize("kind", GATE_TYPES)
def test_macs_equal_flop_counter(kind: str, tiny_model: SkipResNet) -> None:
    tiny_model.eval()
    gate = make_gate(kind, tiny_model, init_execute_prob=None).eval()
    x = torch.randn(3, 3, 32, 32)
    outs = block_outputs(tiny_model, x)
    state = gate.initial_state(3, torch.device("cpu"))
    for i in range(tiny_model.num_decisions):
        expected = gate.macs(i, tuple(outs[i].shape[1:]))
        assert counted_macs(lambda i=i: gate(outs[i], i, state)) == 3 * expected > 0
    with torch.no_grad():
        out = tiny_model.forward_gated(x, gate)
    assert int(out.macs.sum()) == counted_macs(lambda: tiny_model.forward_gated(x, gate))


def test_macs_by_hand() -> None:
    channels = (16, 16, 32, 64)
    rnn = RNNGate(channels)
    assert rnn.macs(2, (32, 16, 16)) == 32 * 10 + 4 * 10 * (10 + 10) + 10
    ff1 = FFGateI(channels)
    assert ff1.macs(0, (16, 32, 32)) == 16 * 16 * 9 * (16 * 16 + 8 * 8) + 16 * 2
    ff2 = FFGateII(channels)
    assert ff2.macs(2, (32, 8, 8)) == 32 * 32 * 9 * 4 * 4 + 32 * 2


@pytest.mark.parametrize("kind", GATE_TYPES)
def test_spec_round_trip(kind: str, tiny_model: SkipResNet) -> None:
    gate = make_gate(kind, tiny_model, init_execute_prob=None)
    spec = json.loads(json.dumps(gate.spec()))
    assert spec["type"] == kind
    rebuilt = build_gate(spec, tiny_model.block_channels)
    assert type(rebuilt) is type(gate)
    rebuilt.load_state_dict(gate.state_dict())  # same architecture, strict
    assert rebuilt.spec() == gate.spec()


def test_rnn_spec_sizes() -> None:
    gate = build_gate({"type": "rnn", "embed_dim": 6, "hidden_dim": 5}, (4, 4, 8))
    assert gate.spec() == {
        "type": "rnn",
        "block_channels": [4, 4, 8],
        "embed_dim": 6,
        "hidden_dim": 5,
    }
    assert gate.initial_state(2)[0].shape == (2, 5)


def test_build_gate_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown gate type 'lstm'; choose one of \('rnn'"):
        build_gate({"type": "lstm"}, (4, 8))
    with pytest.raises(ValueError, match="'type' key"):
        build_gate({"kind": "rnn"}, (4, 8))
    with pytest.raises(ValueError, match=r"made for blocks with \(4, 8\) channels"):
        build_gate({"type": "ffgate1", "block_channels": [4, 8]}, (4, 4, 8))
    with pytest.raises(ValueError, match=r"unknown keys \['embed_dim'\]"):
        build_gate({"type": "ffgate2", "embed_dim": 3}, (4, 8))
    with pytest.raises(ValueError, match="init_execute_prob must be in"):
        RNNGate((4, 8), init_execute_prob=1.0)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        FFGateI((4,))


def test_exploring_gate_mixes_with_a_coin_and_keeps_greedy_decisions(
    tiny_model: SkipResNet,
) -> None:
    torch.manual_seed(0)
    gate = RNNGate(tiny_model.block_channels, init_execute_prob=None)
    explorer = ExploringGate(gate, 0.2)
    x = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        plain = tiny_model.eval().forward_gated(x, gate, mode="greedy")
        mixed = tiny_model.forward_gated(x, explorer, mode="greedy")
    torch.testing.assert_close(mixed.probs, 0.1 + 0.8 * plain.probs)
    assert torch.equal(mixed.executed, plain.executed)
    assert 0.1 <= float(mixed.probs.min()) and float(mixed.probs.max()) <= 0.9
    saturated = RNNGate(tiny_model.block_channels, init_execute_prob=0.999)
    out = tiny_model.forward_gated(
        x.repeat(8, 1, 1, 1),
        ExploringGate(saturated, 0.2),
        mode="sample",
        generator=torch.Generator().manual_seed(0),
    )
    skipped = 1.0 - out.executed[:, 1:].float().mean()
    assert 0.05 < float(skipped) < 0.2  # ~ 0.1 + 0.8 * 0.001 of the decisions skip
    with pytest.raises(ValueError, match="explore"):
        ExploringGate(gate, 1.0)


def test_gumbel_noise_makes_hard_decisions_vary_per_image(tiny_model: SkipResNet) -> None:
    """Straight-through Gumbel (ConvNet-AIG): on one image repeated, a noiseless gate takes one
    route; with the noise each hard decision is a Bernoulli(p) sample, so routes differ."""
    gate = RNNGate(tiny_model.block_channels, init_execute_prob=0.7)
    net = SkipNet(tiny_model.eval(), gate)
    x = torch.randn(1, 3, 32, 32).repeat(2000, 1, 1, 1)  # one image, 2000 times
    plain = net(x, mode="hard", routing="masked")
    assert plain.executed.unique(dim=0).shape[0] == 1  # no noise: one route
    noisy = net(x, mode="hard", routing="masked", gumbel_tau=1.0)
    assert noisy.executed.unique(dim=0).shape[0] > 10  # 2^5 routes possible
    rate = noisy.executed[:, 1:].float().mean(dim=0)  # K: execute rate of each decision
    torch.testing.assert_close(rate, torch.full_like(rate, 0.7), atol=0.05, rtol=0)
    # straight-through: forward 0/1, gradient through the noisy relaxation
    torch.testing.assert_close(noisy.gates, noisy.executed[:, 1:].float(), atol=1e-6, rtol=0)
    noisy.gates.sum().backward()
    assert gate.proj.bias.grad is not None and float(gate.proj.bias.grad.abs()) > 0
    # the temperature: small tau -> noisy p' near 0/1, large tau -> near 0.5
    with torch.no_grad():
        cold = net(x[:200], mode="soft", routing="masked", gumbel_tau=0.05).probs
        hot = net(x[:200], mode="soft", routing="masked", gumbel_tau=50.0).probs
    assert float((cold - 0.5).abs().mean()) > 0.45 and float((hot - 0.5).abs().max()) < 0.1

    # seeded by its generator
    def noisy(seed: int):
        g = torch.Generator().manual_seed(seed)
        return net(x[:64], mode="hard", routing="masked", gumbel_tau=1.0, generator=g)

    a, b = noisy(3), noisy(3)
    assert torch.equal(a.executed, b.executed)
    with pytest.raises(ValueError, match="tau must be > 0"):
        GumbelGate(gate, 0.0)


@pytest.mark.parametrize("noise", [None, 1.0])
def test_target_rate_loss_pulls_every_block_to_the_target(
    noise: float | None, tiny_model: SkipResNet
) -> None:
    """Minimising ConvNet-AIG's target-rate loss moves each block's execute rate from 0.9 to t
    (soft gates without noise; hard straight-through gates with Gumbel noise)."""
    torch.manual_seed(0)
    gate = RNNGate(tiny_model.block_channels)  # p(execute) = 0.9 everywhere
    net = SkipNet(tiny_model.eval().requires_grad_(False), gate)
    x = torch.randn(64, 3, 32, 32)
    mode = "soft" if noise is None else "hard"
    opt = torch.optim.Adam(gate.parameters(), lr=0.05)
    with torch.no_grad():
        start = target_rate_loss(net(x, mode=mode, routing="masked").gates, 0.3)
    # t = 0.3; every block at p = 0.9 (soft) or executed by every image (hard, no noise)
    assert float(start) == pytest.approx(0.6**2 if noise is None else 0.7**2, abs=1e-4)
    for _ in range(150):
        out = net(x, mode=mode, routing="masked", gumbel_tau=noise)
        loss = target_rate_loss(out.gates, 0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        probs = net(x, mode="soft", routing="masked").probs  # B x K, no noise
    rate = probs.mean(dim=0)  # K: expected execute rate of each decision
    # every block moved from 0.9 to near t (the first, whose gate input has no LSTM history,
    # moves slowest), and on average they sit at t
    torch.testing.assert_close(rate, torch.full_like(rate, 0.3), atol=0.12, rtol=0)
    assert float(rate.mean()) == pytest.approx(0.3, abs=0.04)
    # the loss itself: mean over blocks of the squared gap of the batch mean
    gates = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # B=2 x K=3
    assert float(target_rate_loss(gates, 0.5)) == pytest.approx((0 + 0.25 + 0.25) / 3)
    with pytest.raises(ValueError, match="target execute rate"):
        target_rate_loss(gates, 1.5)
    with pytest.raises(ValueError, match="B x K"):
        target_rate_loss(gates[0], 0.5)
