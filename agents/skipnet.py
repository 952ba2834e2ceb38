"""SkipNet = a CIFAR ResNet backbone + a gate, as one module that trains, evaluates and saves.

The backbone (:class:`skipenv.models.resnet.SkipResNet`) does the routing; the gate
(:mod:`agents.gates`) decides. Checkpoints of kind ``sp`` / ``hrl`` keep the backbone's state
in ``model`` (so any backbone loader, e.g. the environment's, reads them) and the gate's in
``gate``; ``arch["gate"]`` is the gate's spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from agents.gates import ExploringGate, GumbelGate, build_gate
from agents.static import RouteGate
from skipenv.models.checkpoint import (
    BACKBONE_KINDS,
    CheckpointError,
    checkpoint_arch,
    load_backbone,
    load_checkpoint,
)
from skipenv.models.gating import Gate, GateMode
from skipenv.models.pretrained import resolve_checkpoint
from skipenv.models.resnet import GatedOutput, Routing, SkipResNet

#: Checkpoint kinds that hold a gate as well as a backbone.
SKIPNET_KINDS = ("sp", "hrl")


class SkipNet(nn.Module):
    """A backbone whose blocks after the first are each executed or skipped by ``gate``.

    Args:
        backbone: the residual network.
        gate: the policy, called once per decision (``backbone.num_decisions`` per image).
    """

    def __init__(self, backbone: SkipResNet, gate: Gate) -> None:
        super().__init__()
        self.backbone, self.gate = backbone, gate

    def forward(
        self,
        x: torch.Tensor,
        mode: GateMode = "greedy",
        routing: Routing = "skip",
        generator: torch.Generator | None = None,
        explore: float = 0.0,
        gumbel_tau: float | None = None,
    ) -> GatedOutput:
        """Gated forward: see :meth:`skipenv.models.resnet.SkipResNet.forward_gated`.

        ``explore`` > 0 mixes the gate with a fair coin (:class:`agents.gates.ExploringGate`);
        the returned ``probs`` are then the mixture's. ``gumbel_tau`` adds Gumbel-sigmoid noise
        at that temperature to the gate's relaxation (:class:`agents.gates.GumbelGate`, drawn
        from ``generator``); the returned ``probs`` are then the noisy ones.
        """
        gate = ExploringGate(self.gate, explore) if explore > 0 else self.gate
        if gumbel_tau is not None:
            gate = GumbelGate(gate, gumbel_tau, generator)
        return self.backbone.forward_gated(x, gate, mode, routing, generator)

    def arch(self, dataset: str = "cifar10") -> dict[str, Any]:
        """What :func:`build_skipnet` needs to rebuild this network."""
        b = self.backbone
        return {
            "name": "cifar_resnet",
            "dataset": dataset,
            "depth": b.depth,
            "num_classes": b.num_classes,
            "widths": list(b.widths),
            "gate": self.gate.spec(),
        }


def freeze_batch_norm(model: nn.Module) -> None:
    """Put every batch-norm layer in eval mode: running statistics used, never updated."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def build_skipnet(arch: dict[str, Any]) -> SkipNet:
    """An untrained SkipNet of the backbone and gate that ``arch`` describes."""
    from skipenv.models.resnet import build_resnet

    backbone = build_resnet(arch["depth"], arch["num_classes"], tuple(arch["widths"]))
    return SkipNet(backbone, build_gate(arch["gate"], backbone.block_channels))


def load_skipnet(
    source: str | Path | dict[str, Any],
    *,
    depth: int | None = None,
    map_location: str | torch.device = "cpu",
) -> SkipNet:
    """A trained SkipNet from an ``sp`` or ``hrl`` checkpoint: a path, the name of a shipped
    model (``skipenv.list_pretrained()``, e.g. ``"skipnet38-hrl-a0.6"``) or a loaded payload."""
    name = "the given checkpoint" if isinstance(source, dict) else str(source)
    payload = (
        source
        if isinstance(source, dict)
        else load_checkpoint(resolve_checkpoint(source), SKIPNET_KINDS, map_location=map_location)
    )
    if payload.get("kind") not in SKIPNET_KINDS or "gate" not in payload:
        raise CheckpointError(
            f"{name} holds a {payload.get('kind')!r} checkpoint without a gate; a SkipNet needs "
            f"one of {SKIPNET_KINDS} (train one with train/supervised.py or train/hybrid.py)"
        )
    backbone = load_backbone(payload, depth=depth, map_location=map_location)
    gate = build_gate(checkpoint_arch(payload)["gate"], backbone.block_channels)
    try:
        gate.load_state_dict(payload["gate"])
    except RuntimeError as err:
        raise CheckpointError(f"{name}: gate weights do not fit its spec: {err}") from err
    return SkipNet(backbone, gate.to(map_location))


def load_backbone_and_gate(
    source: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], SkipResNet, Gate | None]:
    """The payload, backbone and gate (in eval mode; None for a ``base`` checkpoint, the
    route's :class:`agents.static.RouteGate` for a ``static`` one) of any base, sp, hrl or
    static checkpoint: a path or the name of a shipped model."""
    payload = load_checkpoint(resolve_checkpoint(source), BACKBONE_KINDS, map_location=map_location)
    if payload["kind"] in SKIPNET_KINDS:
        model = load_skipnet(payload, map_location=map_location)
        return payload, model.backbone, model.gate.eval()
    if payload["kind"] == "static":  # one fixed route for every image (agents/static.py)
        gate = RouteGate(payload["route"]).to(map_location)
        return payload, load_backbone(payload, map_location=map_location), gate.eval()
    return payload, load_backbone(payload, map_location=map_location), None
