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

from agents.gates import ExploringGate
from skipenv.models.gating import decide, log_prob
from skipenv.models.resnet import GatedOutput, batch_norm_folded, take_rows
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


def _rows_of_state(state: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` of a gate's recurrent state (None, a B-row tensor or tuples of them),
    detached."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach().index_select(0, index)
    return type(state)(_rows_of_state(s, index) for s in state)


def _cat_states(a: Any, b: Any) -> Any:
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return torch.cat((a, b))
    return type(a)(_cat_states(x, y) for x, y in zip(a, b, strict=True))


def shares_greedy_pass(model: nn.Module) -> bool:
    """Whether :func:`sample_with_greedy` is exact for ``model``: every batch-norm and dropout
    layer is in eval mode, so a block's output for an image depends on that image alone."""
    stochastic = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return not any(m.training for m in model.modules() if isinstance(m, stochastic))


def sample_with_greedy(
    model: nn.Module,
    x: torch.Tensor,
    *,
    generator: torch.Generator,
    explore: float = 0.0,
) -> tuple[GatedOutput, tuple[torch.Tensor, torch.Tensor]]:
    """The sampled forward of an HRL step and the greedy routes of the same images, sharing
    work: what ``model(x, mode="sample", explore=explore)`` and :func:`greedy_routes` give
    (up to float noise), in one pass where the routes coincide.

    While an image's sampled decisions equal its greedy ones, both routes hold the same
    activations (batch norm frozen: check :func:`shares_greedy_pass`), and the sampled pass's
    gate call also gives the greedy decision (p' > 0.5 exactly when p > 0.5). At the first
    decision where they differ, the image's greedy copy forks off the sampled pass (its
    activation and gate state, detached) and continues alone, without gradient, batched with
    the other forked images. The sampled pass is the one of ``forward_gated`` (same generator
    draws, same autograd graph). Run it under the caller's autocast.

    Args:
        model: an :class:`agents.skipnet.SkipNet`.
        x: B x 3 x H x W images.

    Returns:
        The sampled forward's ``GatedOutput``, and the greedy routes' logits (B x classes,
        no gradient) and executed blocks (B x N bool).
    """
    backbone, base = model.backbone, model.gate
    gate = ExploringGate(base, explore) if explore > 0 else base
    route = backbone.start(x, gate)  # sampled pass, B rows
    batch = x.shape[0]
    forked = torch.zeros(batch, dtype=torch.bool, device=x.device)  # B: greedy copy split off
    g_index = torch.empty(0, dtype=torch.long, device=x.device)  # F: image of each forked row
    g_h: torch.Tensor | None = None  # F x C x H x W, the forked greedy activations
    g_state: Any = None
    g_executed = torch.empty(0, backbone.num_blocks, dtype=torch.bool, device=x.device)
    probs, gates = [], []
    while not route.done:
        k = route.next_block - 1  # decision k is about block k + 1
        p, state = gate(route.h, k, route.gate_state)  # B
        g, execute = decide(p, "sample", generator)  # B, B
        greedy = p.detach() > 0.5  # B: the greedy decision of the shared routes
        with torch.no_grad():
            new = torch.nonzero(~forked & (greedy != execute)).squeeze(1)  # images forking now
            old_decision = None
            if g_h is not None:  # forked greedy copies decide with their own gate call
                q, g_state = base(g_h, k, g_state)  # F
                old_decision = q > 0.5
            if new.numel():
                h_new = take_rows(route.h.detach(), new)  # new x C x H x W (a copy)
                s_new = _rows_of_state(state, new)
                e_new = route.executed.index_select(0, new)  # new x N
                if g_h is None:
                    g_h, g_state, g_executed = h_new, s_new, e_new
                    old_decision = greedy[new]
                else:
                    g_h = torch.cat((g_h, h_new))
                    g_state = _cat_states(g_state, s_new)
                    g_executed = torch.cat((g_executed, e_new))
                    old_decision = torch.cat((old_decision, greedy[new]))
                g_index = torch.cat((g_index, new))
                forked[new] = True
            if g_h is not None:
                g_executed[:, route.next_block] = old_decision
                g_h = backbone.blocks[route.next_block].forward_skip(g_h, old_decision)
        route.gate_state = state
        backbone.advance(route, execute)
        probs.append(p)
        gates.append(g)
    logits = backbone.head(route.h)  # B x num_classes
    route.macs += route.macs_table.head
    out = GatedOutput(
        logits, torch.stack(probs, dim=1), torch.stack(gates, dim=1), route.executed, route.macs
    )
    with torch.no_grad():
        greedy_logits = logits.detach().clone()  # B x num_classes
        greedy_executed = route.executed.clone()  # B x N
        if g_h is not None:
            greedy_logits[g_index] = backbone.head(g_h).to(greedy_logits.dtype)
            greedy_executed[g_index] = g_executed
    return out, (greedy_logits, greedy_executed)


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
    share_greedy: bool = True,
    fold_bn: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """The forward passes and loss of one HRL step on images ``x`` (B x 3 x H x W).

    For ``baseline="greedy"`` the same images' greedy routes run first, without gradient;
    then a forward with sampled gates (``explore`` as :class:`agents.gates.ExploringGate`) and
    skipped blocks really skipped, under ``autocast(amp)``; then :func:`hybrid_loss`.
    ``model`` is an :class:`agents.skipnet.SkipNet`; ``net`` runs the sampled forward when it
    is a wrapper of it (DistributedDataParallel), else ``model`` does.

    With ``share_greedy`` (the default), the greedy baseline shares the sampled pass where
    the routes coincide (:func:`sample_with_greedy`), when that is exact (batch norm frozen,
    :func:`shares_greedy_pass`) and no wrapper ``net`` must run the forward; otherwise the
    two passes run one after the other.

    With ``fold_bn``, every conv + batch-norm pair whose batch norm is in eval mode (frozen,
    as in HRL) runs as one convolution with folded weights, recomputed from the parameters
    at each call (``skipenv.models.resnet.conv_bn``): gradients reach the same parameters,
    the separate batch-norm passes forward and backward go away; losses and gradients equal
    the unfolded step's up to float rounding. Batch norms in train mode are left as they are.

    Returns:
        The loss, the cross-entropy alone, and the sampled forward's ``GatedOutput``.
    """
    device = x.device
    shared = (
        baseline == "greedy"
        and share_greedy
        and (net is None or net is model)
        and shares_greedy_pass(model)
    )
    with batch_norm_folded(model.backbone, fold_bn):
        if shared:
            with autocast(device, amp):
                out, greedy = sample_with_greedy(model, x, generator=generator, explore=explore)
        else:
            greedy = greedy_routes(model, x, amp) if baseline == "greedy" else None
            with autocast(device, amp):
                out = (net or model)(
                    x, mode="sample", routing="skip", generator=generator, explore=explore
                )
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
