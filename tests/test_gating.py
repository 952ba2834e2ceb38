"""Gate decision modes and the gated forward's rules."""

from __future__ import annotations

import pytest
import torch

from skipenv.models.gating import FixedGate, decide, global_avg_pool, log_prob
from skipenv.models.resnet import SkipResNet


def test_greedy_thresholds_at_half() -> None:
    p = torch.tensor([0.1, 0.5, 0.51, 0.9])
    g, execute = decide(p, "greedy")
    assert execute.tolist() == [False, False, True, True]
    assert g.tolist() == [0.0, 0.0, 1.0, 1.0]


def test_hard_is_straight_through() -> None:
    p = torch.tensor([0.2, 0.7], requires_grad=True)
    g, execute = decide(p, "hard")
    assert g.tolist() == [0.0, 1.0] and execute.tolist() == [False, True]
    (g * torch.tensor([3.0, 5.0])).sum().backward()
    assert p.grad.tolist() == [3.0, 5.0]


def test_soft_scales_by_p() -> None:
    p = torch.tensor([0.2, 0.7])
    g, _ = decide(p, "soft")
    assert torch.equal(g, p)


def test_sample_follows_bernoulli_and_seed() -> None:
    p = torch.full((20000,), 0.3)
    g1, e1 = decide(p, "sample", torch.Generator().manual_seed(0))
    _, e2 = decide(p, "sample", torch.Generator().manual_seed(0))
    assert torch.equal(e1, e2) and torch.equal(g1, e1.float())
    assert abs(e1.float().mean().item() - 0.3) < 0.02


def test_log_prob() -> None:
    p = torch.tensor([0.25, 0.25])
    lp = log_prob(p, torch.tensor([True, False]))
    torch.testing.assert_close(lp, torch.log(torch.tensor([0.25, 0.75])))


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown gate mode 'argmax'"):
        decide(torch.tensor([0.5]), "argmax")


def test_forward_gated_rules(tiny_model: SkipResNet) -> None:
    x = torch.randn(3, 3, 32, 32)
    gate = FixedGate(torch.ones(3, tiny_model.num_decisions, dtype=torch.bool))
    with pytest.raises(ValueError, match="routing='masked'"):
        tiny_model.forward_gated(x, gate, mode="hard", routing="skip")
    with pytest.raises(ValueError, match="routing must be"):
        tiny_model.forward_gated(x, gate, routing="sparse")
    out = tiny_model.eval().forward_gated(x, gate, mode="hard", routing="masked")
    torch.testing.assert_close(out.logits, tiny_model(x))
    assert out.probs.shape == out.gates.shape == (3, tiny_model.num_decisions)
    assert out.executed.all()
    assert torch.equal(out.macs, torch.full((3,), tiny_model.macs_table().full))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_global_avg_pool_matches_mean(dtype: torch.dtype, channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    h = torch.randn(5, 4, 6, 6, generator=torch.Generator().manual_seed(0)).to(dtype)
    h = h.to(memory_format=fmt)
    w = torch.randn(5, 4).to(dtype)
    grads, outs = [], []
    for pool in (global_avg_pool, lambda t: t.mean(dim=(2, 3))):
        hi = h.clone().requires_grad_()
        out = pool(hi)
        (out * w).sum().backward()
        outs.append(out)
        grads.append(hi.grad)
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(outs[0], outs[1], **tol)
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].is_contiguous(memory_format=fmt)
    with pytest.raises(ValueError, match="B x C x H x W"):
        global_avg_pool(h[0])


@pytest.mark.parametrize("channels_last", [False, True])
def test_global_avg_pool_is_bit_exact_on_cifar_sizes(channels_last: bool) -> None:
    """Sum-then-divide gives the bits of ``mean`` for power-of-two H x W (32, 16, 8 on
    CIFAR), in bfloat16 too (the division by a power of two is exact)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(1)
    for c, size in ((16, 32), (32, 16), (64, 8)):
        for dtype in (torch.float32, torch.bfloat16):
            h = torch.randn(9, c, size, size, generator=gen).to(dtype).to(memory_format=fmt)
            assert torch.equal(global_avg_pool(h), h.mean(dim=(2, 3)))
