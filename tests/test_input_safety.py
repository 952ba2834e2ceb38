"""Issue 11, case 2: no public function changes its inputs (unless its name says so), and input
on an ambiguous scale is refused with an error that says what is expected."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from conftest import synthetic_split
from gymnasium import spaces

from agents.baselines import AlwaysExecute, FixedPattern, RandomSkip
from agents.gate_agent import GateAgent
from agents.gates import RNNGate
from agents.reinforce import hybrid_loss, reinforce_loss, returns_to_go, skip_rewards
from skipenv.data.loader import augment, normalize
from skipenv.data.splits import split_indices, val_indices
from skipenv.envs.episode import info_row, row
from skipenv.envs.sb3 import unbatch_info
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models.gating import decide, log_prob
from skipenv.models.resnet import build_resnet

# ---------------------------------------------------------------------------- the case


def test_normalize_refuses_float_input_and_leaves_it_alone():
    images = synthetic_split(4).images  # 4 x 3 x 32 x 32 uint8
    f = images.float() / 255
    before = f.clone()
    with pytest.raises(TypeError, match=r"uint8.*float32.*\(x \* 255\)\.round\(\)"):
        normalize(f)
    with pytest.raises(TypeError, match="uint8"):
        normalize(images.float())  # 0..255 floats: refused too, not overwritten
    assert torch.equal(f, before)
    with pytest.raises(TypeError, match="ndarray"):
        normalize(images.numpy())
    out = normalize(images)
    assert out.dtype == torch.float32 and out.data_ptr() != images.data_ptr()
    assert abs(float(out.mean())) < 0.5  # centred, not near -1.9


# ---------------------------------------------------------------------------- the kind


def _snapshot(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v) for v in value)
    return copy.deepcopy(value)


def _assert_unchanged(before: Any, after: Any, where: str) -> None:
    if isinstance(before, torch.Tensor):
        assert torch.equal(before, after), f"{where} was changed"
    elif isinstance(before, np.ndarray):
        assert np.array_equal(before, after), f"{where} was changed"
    elif isinstance(before, dict):
        assert before.keys() == after.keys(), f"{where}: keys changed"
        for key in before:
            _assert_unchanged(before[key], after[key], f"{where}[{key!r}]")
    elif isinstance(before, (list, tuple)):
        for i, (a, b) in enumerate(zip(before, after, strict=True)):
            _assert_unchanged(a, b, f"{where}[{i}]")
    else:
        assert before == after, f"{where} was changed"


def _rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


B, K = 4, 5  # batch; decisions of ResNet-14
NET = build_resnet(14, widths=(4, 8, 16)).eval()
TABLE = NET.macs_table()
GATE = RNNGate(NET.block_channels)
OBS_SPACE = spaces.Box(-1e9, 1e9, (18,), np.float32)


def _obs() -> np.ndarray:
    obs = np.random.default_rng(0).random((B, 18), dtype=np.float32)  # B x (C_max + 2)
    obs[:, 16], obs[:, 17] = 1 / 6, 0.2
    return obs


def _executed() -> torch.Tensor:
    executed = torch.rand(B, 6, generator=_rng()) > 0.5  # B x N
    executed[:, 0] = True
    return executed


#: name -> (function, a builder of its arguments). Each is called on fresh arguments, which
#: must be the same afterwards.
CASES: dict[str, tuple[Callable[..., Any], Callable[[], tuple]]] = {
    "normalize": (normalize, lambda: (synthetic_split(B).images,)),
    "augment": (lambda x: augment(x, _rng()), lambda: (synthetic_split(B).images,)),
    "val_indices": (val_indices, lambda: (torch.arange(40) % 10,)),
    "split_indices": (split_indices, lambda: (torch.arange(40) % 10,)),
    "MacsTable.backbone_macs": (TABLE.backbone_macs, lambda: (_executed(),)),
    "MacsTable.flops_fraction": (TABLE.flops_fraction, lambda: (_executed(),)),
    "SkipResNet.forward": (NET, lambda: (torch.randn(B, 3, 32, 32, generator=_rng()),)),
    "SkipResNet.forward_skip": (
        NET.forward_skip,
        lambda: (torch.randn(B, 3, 32, 32, generator=_rng()), _executed()[:, 1:]),
    ),
    "SkipResNet.forward_gated": (
        lambda x: NET.forward_gated(x, GATE, mode="greedy"),
        lambda: (torch.randn(B, 3, 32, 32, generator=_rng()),),
    ),
    "decide": (lambda p: decide(p, "sample", _rng()), lambda: (torch.rand(B, generator=_rng()),)),
    "log_prob": (log_prob, lambda: (torch.rand(B, generator=_rng()), torch.ones(B, dtype=bool))),
    "skip_rewards": (
        lambda e, lo, la: skip_rewards(e, lo, la, alpha=0.1),
        lambda: (_executed()[:, 1:], torch.randn(B, 10), torch.arange(B)),
    ),
    "returns_to_go": (returns_to_go, lambda: (torch.randn(B, K, generator=_rng()),)),
    "reinforce_loss": (
        reinforce_loss,
        lambda: (torch.rand(B, K), _executed()[:, 1:], torch.randn(B, K)),
    ),
    "hybrid_loss": (
        lambda lo, p, e, la: hybrid_loss(lo, p, e, la, alpha=0.1),
        lambda: (torch.randn(B, 10), torch.rand(B, K), _executed(), torch.arange(B)),
    ),
    "row": (lambda b: row(b, 1, copy=True), lambda: ({"a": np.ones((B, 3)), "b": np.zeros(B)},)),
    "info_row": (info_row, lambda: ({"a": np.arange(B), "b": np.ones((B, 6), dtype=bool)},)),
    "unbatch_info": (
        lambda info: unbatch_info(info, B),
        lambda: (
            {
                "x": np.arange(B),
                "_x": np.array([True, False, True, True]),
                "final_info": {"y": np.ones((B, 2)), "_y": np.ones(B, dtype=bool)},
            },
        ),
    ),
    "GateAgent.act": (
        lambda obs: GateAgent(GATE, OBS_SPACE, NET.block_channels).act(obs),
        lambda: (_obs(),),
    ),
    "AlwaysExecute.act": (
        lambda obs: AlwaysExecute(OBS_SPACE, NET.block_channels).act(obs),
        lambda: (_obs(),),
    ),
    "RandomSkip.act": (
        lambda obs: RandomSkip(OBS_SPACE, NET.block_channels, p_execute=0.5, seed=0).act(obs),
        lambda: (_obs(),),
    ),
    "FixedPattern.act": (
        lambda obs: FixedPattern.skip_last(OBS_SPACE, NET.block_channels, 1).act(obs),
        lambda: (_obs(),),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_public_function_leaves_its_inputs_alone(name):
    function, build = CASES[name]
    args = build()
    before = _snapshot(args)
    with torch.no_grad():
        function(*args)
    _assert_unchanged(before, args, f"{name}: argument")


def test_env_leaves_actions_and_reset_options_alone(tiny_model):
    env = SkipNetVectorEnv(B, backbone=tiny_model, data=synthetic_split(), device="cpu")
    options = {"indices": np.array([1, 2, 3, 4])}
    before = _snapshot(options)
    env.reset(seed=0, options=options)
    actions = np.array([1, 0, 1, 0])
    for _ in range(K):
        env.step(actions)
    _assert_unchanged(before, options, "reset options")
    np.testing.assert_array_equal(actions, [1, 0, 1, 0])
