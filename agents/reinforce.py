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

from skipenv.models.gating import log_prob
from skipenv.training.devices import autocast

BASELINES = ("none", "mean", "greedy")
#: Reward forms: the paper's (``alpha / K`` per skip, minus the final cross-entropy) and the
#: environment's ``accuracy`` form (+1 if correct, minus ``price`` times each block's share of
#: the full network's MACs), the same as SkipNetEnv's ``reward="paper"`` / ``"accuracy"``.
REWARDS = ("paper", "accuracy")


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


def accuracy_rewards(
    execute: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    price: float,
    block_cost: torch.Tensor,
) -> torch.Tensor:
    """Rewards of each decision in the ``accuracy`` form: B x K float.

    Decision k costs ``price * block_cost[k]`` when it executes its block (``block_cost``: K,
    the block's MACs when run minus when skipped, as a share of the full network's); the last
    decision also earns 1 for a correct prediction.
    """
    if execute.ndim != 2 or execute.shape[1] == 0:
        raise ValueError(f"execute must be B x K with K >= 1, got shape {tuple(execute.shape)}")
    if block_cost.shape != (execute.shape[1],):
        raise ValueError(
            f"block_cost must hold one share per decision ({execute.shape[1]}), got shape "
            f"{tuple(block_cost.shape)}"
        )
    rewards = -price * execute.float() * block_cost.to(execute.device).float()  # B x K
    rewards[:, -1] += (logits.detach().argmax(dim=1) == labels).float()
    return rewards


def bernoulli_entropy(probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Entropy (nats) of Bernoulli(``probs``), same shape."""
    p = probs.clamp(eps, 1.0 - eps)
    return -(p * p.log() + (1.0 - p) * (1.0 - p).log())


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
    reward: str = "paper",
    price: float = 0.0,
    block_cost: torch.Tensor | None = None,
    entropy: float = 0.0,
    supervised: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SkipNet's hybrid objective: cross-entropy + ``rl_weight`` x REINFORCE on the gates.

    ``reward`` picks the per-decision rewards (:data:`REWARDS`: ``paper`` uses ``alpha``,
    ``accuracy`` uses ``price`` and ``block_cost``, see :func:`accuracy_rewards`);
    ``entropy`` > 0 subtracts ``rl_weight * entropy`` x the mean Bernoulli entropy of the
    decisions (an exploration bonus; 0 in the paper). ``supervised=False`` leaves the
    cross-entropy out of the loss (REINFORCE alone, for a gate on a frozen backbone).

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
    if reward not in REWARDS:
        raise ValueError(f"unknown reward {reward!r}; choose one of {REWARDS}")
    if reward == "accuracy" and block_cost is None:
        raise ValueError("reward='accuracy' needs block_cost (K shares of the full MACs)")

    def rewards(decisions: torch.Tensor, out_logits: torch.Tensor) -> torch.Tensor:
        if reward == "paper":
            return skip_rewards(decisions, out_logits, labels, alpha)
        return accuracy_rewards(decisions, out_logits, labels, price, block_cost)

    ce = F.cross_entropy(logits.float(), labels)
    decisions = executed[:, 1:]  # B x K
    returns = returns_to_go(rewards(decisions, logits), gamma)  # B x K
    base = None
    if greedy is not None:
        g_logits, g_executed = greedy
        base = returns_to_go(rewards(g_executed[:, 1:], g_logits), gamma)  # B x K
    pg = reinforce_loss(probs.float(), decisions, returns, baseline, base)
    if entropy > 0:
        pg = pg - entropy * bernoulli_entropy(probs.float()).mean()
    return (ce + rl_weight * pg if supervised else rl_weight * pg), ce


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
    reward: str = "paper",
    price: float = 0.0,
    block_cost: torch.Tensor | None = None,
    entropy: float = 0.0,
    supervised: bool = True,
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
        reward=reward,
        price=price,
        block_cost=block_cost,
        entropy=entropy,
        supervised=supervised,
    )
    return loss, ce, out
