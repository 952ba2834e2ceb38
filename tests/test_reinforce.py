"""REINFORCE pieces: the paper's rewards, returns-to-go, baselines."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from agents.reinforce import hybrid_loss, reinforce_loss, returns_to_go, skip_rewards


def test_skip_rewards_and_returns_by_hand() -> None:
    execute = torch.tensor([[True, False, False], [False, True, True]])  # B x K
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    r = skip_rewards(execute, logits, labels, alpha=0.3)
    ce = F.cross_entropy(logits, labels, reduction="none")
    expected = torch.tensor([[0.0, 0.1, 0.1 - ce[0]], [0.1, 0.0, -ce[1]]])
    torch.testing.assert_close(r, expected)
    g = returns_to_go(r, gamma=0.5)
    torch.testing.assert_close(g[:, 2], r[:, 2])
    torch.testing.assert_close(g[:, 1], r[:, 1] + 0.5 * r[:, 2])
    torch.testing.assert_close(g[:, 0], r[:, 0] + 0.5 * r[:, 1] + 0.25 * r[:, 2])


def test_gradient_raises_the_probability_of_better_actions() -> None:
    logit = torch.zeros(4, 1, requires_grad=True)
    probs = torch.sigmoid(logit)  # B x 1
    execute = torch.tensor([[True], [True], [False], [False]])
    returns = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])  # executing paid off
    for baseline in ("none", "mean"):
        logit.grad = None
        reinforce_loss(probs, execute, returns, baseline).backward(retain_graph=True)
        assert (logit.grad[:2] < 0).all()  # descent raises p(execute) where it paid
    logit.grad = None
    reinforce_loss(probs, execute, returns, "greedy", returns).backward()
    assert torch.count_nonzero(logit.grad) == 0  # no better than greedy: no push


def test_greedy_baseline_needs_its_returns() -> None:
    probs = torch.full((2, 3), 0.5)
    execute = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="baseline_returns"):
        reinforce_loss(probs, execute, torch.zeros(2, 3), "greedy")
    with pytest.raises(ValueError, match="unknown baseline"):
        reinforce_loss(probs, execute, torch.zeros(2, 3), "median")


def test_hybrid_loss_is_ce_plus_weighted_pg() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 10)
    probs = torch.rand(8, 4)
    executed = torch.rand(8, 5) > 0.5
    labels = torch.randint(0, 10, (8,))
    loss, ce = hybrid_loss(logits, probs, executed, labels, alpha=0.1, rl_weight=0.0)
    assert math.isclose(float(loss), float(ce))
    assert math.isclose(float(ce), float(F.cross_entropy(logits, labels)), rel_tol=1e-6)


def test_accuracy_rewards_charge_executed_blocks_and_pay_correctness() -> None:
    from agents.reinforce import accuracy_rewards

    execute = torch.tensor([[True, False, True], [False, False, False]])  # B x K
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1])  # first correct, second wrong
    cost = torch.tensor([0.1, 0.2, 0.3])
    r = accuracy_rewards(execute, logits, labels, price=0.5, block_cost=cost)
    expected = torch.tensor([[-0.05, 0.0, -0.15 + 1.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(r, expected)
    with pytest.raises(ValueError, match="block_cost"):
        accuracy_rewards(execute, logits, labels, 0.5, torch.ones(2))


def test_entropy_bonus_pushes_a_sure_gate_back_towards_one_half() -> None:
    logit = torch.full((8, 2), 3.0, requires_grad=True)  # p(execute) ~ 0.95
    execute = torch.ones(8, 2, dtype=torch.bool)
    executed = torch.cat([torch.ones(8, 1, dtype=torch.bool), execute], dim=1)  # B x N
    logits, labels = torch.zeros(8, 10), torch.zeros(8, dtype=torch.long)
    kw = dict(alpha=0.0, baseline="mean")  # every return equal: no policy gradient
    loss, _ = hybrid_loss(logits, torch.sigmoid(logit), executed, labels, entropy=0.1, **kw)
    loss.backward()
    assert (logit.grad > 0).all()  # descending the loss lowers the logit: p moves towards 0.5
    logit.grad = None
    loss, _ = hybrid_loss(logits, torch.sigmoid(logit), executed, labels, **kw)
    loss.backward()
    assert torch.count_nonzero(logit.grad) == 0
    with pytest.raises(ValueError, match="reward"):
        hybrid_loss(logits, torch.sigmoid(logit), executed, labels, reward="correct", **kw)


@pytest.mark.parametrize("gate_type", ["rnn", "ffgate1"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_shared_greedy_pass_matches_the_two_plain_passes(
    gate_type: str, channels_last: bool
) -> None:
    """sample_with_greedy gives the plain sampled pass and greedy routes (same loss, same
    gradients) when batch norm is frozen, and hrl_step_loss falls back when it is not."""
    from agents.reinforce import (
        greedy_routes,
        hrl_step_loss,
        sample_with_greedy,
        shares_greedy_pass,
    )
    from agents.skipnet import build_skipnet, freeze_batch_norm

    torch.manual_seed(0)
    arch = {"depth": 14, "num_classes": 10, "widths": [4, 8, 16]}
    model = build_skipnet({**arch, "gate": {"type": gate_type}})
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    x = torch.randn(32, 3, 16, 16).to(memory_format=fmt)  # B x 3 x H x W
    labels = torch.randint(0, 10, (32,))
    assert not shares_greedy_pass(model)  # train-mode batch norm: not exact, falls back
    freeze_batch_norm(model)
    assert shares_greedy_pass(model)

    gen = torch.Generator().manual_seed(3)
    out, (g_logits, g_executed) = sample_with_greedy(model, x, generator=gen, explore=0.6)
    ref_logits, ref_executed = greedy_routes(model, x)
    assert torch.equal(g_executed, ref_executed)
    torch.testing.assert_close(g_logits, ref_logits)
    differs = (out.executed != g_executed).any(dim=1)  # B
    assert differs.any() and not differs.all()  # both forked and shared routes are covered
    assert not g_logits.requires_grad

    grads, losses = [], []
    for share in (True, False):
        model.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(5)
        loss, ce, out = hrl_step_loss(
            model,
            x,
            labels,
            generator=gen,
            alpha=0.5,
            baseline="greedy",
            explore=0.6,
            share_greedy=share,
        )
        loss.backward()
        losses.append((loss.detach(), ce.detach(), out.executed))
        grads.append([p.grad.clone() for p in model.parameters()])
    assert torch.equal(losses[0][2], losses[1][2])  # same sampled routes
    torch.testing.assert_close(losses[0][0], losses[1][0])
    torch.testing.assert_close(losses[0][1], losses[1][1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("share", [True, False])
def test_hrl_step_with_folded_batch_norm_matches_the_plain_step(share: bool) -> None:
    """fold_bn=True (frozen batch norm run as folded convs) gives the plain step's routes,
    loss and gradients, batch-norm affine parameters and gate included."""
    from agents.reinforce import hrl_step_loss
    from agents.skipnet import build_skipnet, freeze_batch_norm

    torch.manual_seed(0)
    arch = {"depth": 14, "num_classes": 10, "widths": [4, 8, 16], "gate": {"type": "rnn"}}
    model = build_skipnet(arch).double().to(memory_format=torch.channels_last).train()
    gen = torch.Generator().manual_seed(8)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # away from the 0/1 init
            m.running_mean.uniform_(-1.0, 1.0, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    freeze_batch_norm(model)
    x = torch.randn(24, 3, 16, 16, generator=gen, dtype=torch.float64)
    x = x.to(memory_format=torch.channels_last)  # B x 3 x H x W
    labels = torch.randint(0, 10, (24,), generator=gen)
    results = []
    for fold in (False, True):
        model.zero_grad(set_to_none=True)
        loss, ce, out = hrl_step_loss(
            model,
            x,
            labels,
            generator=torch.Generator().manual_seed(5),
            alpha=0.5,
            baseline="greedy",
            explore=0.5,
            share_greedy=share,
            fold_bn=fold,
        )
        loss.backward()
        assert model.backbone.fold_bn is False
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), ce.detach(), out.executed, grads))
    (l0, ce0, e0, g0), (l1, ce1, e1, g1) = results
    assert torch.equal(e0, e1)  # same sampled routes
    torch.testing.assert_close(l1, l0)
    torch.testing.assert_close(ce1, ce0)
    assert set(g0) == set(g1) and any(".bn" in n for n in g1) and any("gate" in n for n in g1)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], msg=name)
