"""Gate policies and agents that act on the SkipNet environment."""

from agents.baselines import AlwaysExecute, FixedPattern, FlopsBudget, RandomSkip
from agents.gate_agent import GateAgent, ObservationAgent
from agents.gates import GATE_TYPES, FFGateI, FFGateII, RNNGate, build_gate

__all__ = [
    "GATE_TYPES",
    "AlwaysExecute",
    "FFGateI",
    "FFGateII",
    "FixedPattern",
    "FlopsBudget",
    "GateAgent",
    "ObservationAgent",
    "RNNGate",
    "RandomSkip",
    "build_gate",
]
