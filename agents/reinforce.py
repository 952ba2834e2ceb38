"""REINFORCE for skip decisions, with the paper's rewards (SkipNet's hybrid RL stage).

Per image, decision k (k = 0 .. K-1) earns ``alpha / K`` if it skips its block and 0 if it
executes it; the last decision also earns minus the cross-entropy of the final prediction.
Returns-to-go with discount ``gamma`` (1 in the authors' code) weight the log-probabilities
of the sampled decisions. These are the same rewards as the environment's ``reward="paper"``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from skipenv.devices import autocast
from skipenv.gating import log_prob

BASELINES = ("none", "mean", "greedy")


def skip_rewards(
    execute: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Rewards of each decision: B x K float.

    Args:
        execute: B x K bool, the sampled decisions.
        logits: B x num_classes, the final prediction (not differentiated).
        labels: B int64.
        alpha: the compute reward; ``alpha / K`` per skipped block.
    """
    if execute.ndim != 2 or execute.shape[1] == 0:
        raise ValueError(f"execute must be B x K with K >= 1, got shape {tuple(execute.shape)}")
    k = execute.shape[1]
    rewards = (~execute.bool()).float() * (alpha / k)  # B x K
    final = -F.cross_entropy(logits.detach().float(), labels, reduction="none")  # B
    rewards[:, -1] += final
    return rewards


def returns_to_go(rewards: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``G_k = sum_{j >= k} gamma^(j - k) r_j``: B x K."""
    out = torch.empty_like(rewards)  # B x K
    running = torch.zeros_like(rewards[:, 0])  # B
    for k in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, k] + gamma * running
        out[:, k] = running
    return out


def reinforce_loss(
    probs: torch.Tensor,
    execute: torch.Tensor,
    returns: torch.Tensor,
    baseline: str = "mean",
    baseline_returns: torch.Tensor | None = None,
) -> torch.Tensor:
    """Policy-gradient loss ``-mean_b sum_k log pi(a_bk) (G_bk - b_bk)``: a scalar.

    Args:
        probs: B x K p(execute), differentiable w.r.t. the gate.
        execute: B x K bool, the sampled decisions.
        returns: B x K returns-to-go (no gradient).
        baseline: ``none`` (the authors' plain REINFORCE), ``mean`` (subtract the batch mean
            of each decision's return) or ``greedy`` (subtract ``baseline_returns``, the
            returns-to-go of the greedy route of the same image, as in self-critical
            sequence training: the image's own difficulty cancels out of the advantage).
            Each leaves the expected gradient unchanged and lowers its variance.
        baseline_returns: B x K, for ``greedy``.
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {BASELINES}")
    if (baseline == "greedy") != (baseline_returns is not None):
        raise ValueError("baseline_returns must be given exactly when baseline='greedy'")
    advantage = returns.detach()  # B x K
    if baseline == "mean":
        advantage = advantage - advantage.mean(dim=0, keepdim=True)
    elif baseline == "greedy":
        advantage = advantage - baseline_returns.detach()
    logp = log_prob(probs, execute.bool())  # B x K
    return -(logp * advantage).sum(dim=1).mean()


def hybrid_loss(
    logits: torch.Tensor,
    probs: torch.Tensor,
    executed: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    gamma: float = 1.0,
    rl_weight: float = 0.01,
    baseline: str = "mean",
    greedy: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SkipNet's hybrid objective: cross-entropy + ``rl_weight`` x REINFORCE on the gates.

    Args:
        logits: B x num_classes, from a forward with sampled gates and real skipping.
        probs: B x K, p(execute) of each decision (differentiable w.r.t. the gate).
        executed: B x N bool, the blocks that ran (block 0 always; the rest are the decisions).
        labels: B int64.
        greedy: for ``baseline="greedy"``, the logits and executed blocks of the greedy route
            of the same images (computed without gradient).

    Returns:
        The loss to minimise, and the cross-entropy alone (for logging).
    """
    ce = F.cross_entropy(logits.float(), labels)
    decisions = executed[:, 1:]  # B x K
    returns = returns_to_go(skip_rewards(decisions, logits, labels, alpha), gamma)  # B x K
    base = None
    if greedy is not None:
        g_logits, g_executed = greedy
        base = returns_to_go(skip_rewards(g_executed[:, 1:], g_logits, labels, alpha), gamma)
    pg = reinforce_loss(probs.float(), decisions, returns, baseline, base)
    return ce + rl_weight * pg, ce


def greedy_routes(
    model: nn.Module, x: torch.Tensor, amp: str = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy routes of images ``x`` for the self-critical baseline: logits (B x classes)
    and executed blocks (B x N bool). Run under ``inference_mode``: no autograd graph or
    saved activations; batch norm behaves as the model's mode says (frozen in HRL)."""
    with torch.inference_mode(), autocast(x.device, amp):
        g = model(x, mode="greedy", routing="skip")
    return g.logits, g.executed


def hrl_step_loss(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    generator: torch.Generator,
    alpha: float,
    gamma: float = 1.0,
    rl_weight: float = 0.01,
    baseline: str = "mean",
    explore: float = 0.0,
    amp: str = "none",
    net: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """The forward passes and loss of one HRL step on images ``x`` (B x 3 x H x W).

    For ``baseline="greedy"`` the same images' greedy routes run first, without gradient;
    then a forward with sampled gates (``explore`` as :class:`agents.gates.ExploringGate`) and
    skipped blocks really skipped, under ``autocast(amp)``; then :func:`hybrid_loss`.
    ``model`` is an :class:`agents.skipnet.SkipNet`; ``net`` runs the sampled forward when it
    is a wrapper of it (DistributedDataParallel), else ``model`` does.

    Returns:
        The loss, the cross-entropy alone, and the sampled forward's ``GatedOutput``.
    """
    device = x.device
    greedy = greedy_routes(model, x, amp) if baseline == "greedy" else None
    with autocast(device, amp):
        out = (net or model)(x, mode="sample", routing="skip", generator=generator, explore=explore)
    loss, ce = hybrid_loss(
        out.logits,
        out.probs,
        out.executed,
        labels,
        alpha=alpha,
        gamma=gamma,
        rl_weight=rl_weight,
        baseline=baseline,
        greedy=greedy,
    )
    return loss, ce, out
