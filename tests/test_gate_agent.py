"""A gate acting as an agent on the env's observations equals the gate inside the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from agents.baselines import AlwaysExecute, FixedPattern, FlopsBudget, RandomSkip, stages
from agents.gate_agent import GateAgent
from agents.gates import FFGateI, FFGateII, RNNGate
from skipenv.data.loader import normalize
from skipenv.data.splits import CifarSplit
from skipenv.envs.env import SkipNetEnv
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models.gating import FixedGate
from skipenv.models.resnet import Route, SkipResNet, build_resnet


def vector_space(model: SkipResNet) -> spaces.Box:
    c_max = max(model.block_channels)
    high = np.full(c_max + 2, np.inf, dtype=np.float32)
    high[-2:] = 1.0
    return spaces.Box(0.0, high, dtype=np.float32)


def dict_space(model: SkipResNet) -> spaces.Dict:
    c_max = max(model.block_channels)
    return spaces.Dict(
        {
            "activation": spaces.Box(0.0, np.inf, (c_max, 8, 8), np.float32),
            "pooled": spaces.Box(0.0, np.inf, (c_max,), np.float32),
            "block": spaces.Discrete(model.num_blocks + 1),
            "flops_fraction": spaces.Box(0.0, 1.0, (1,), np.float32),
        }
    )


def vector_obs(model: SkipResNet, route: Route) -> np.ndarray:
    """The env's obs_mode='vector' observations of a route, by the layout in env-spec.md."""
    c_max = max(model.block_channels)
    pooled = route.h.mean(dim=(2, 3))  # B x C_i
    obs = np.zeros((route.h.shape[0], c_max + 2), dtype=np.float32)
    obs[:, : pooled.shape[1]] = pooled.detach().numpy()
    obs[:, c_max] = route.next_block / model.num_blocks
    obs[:, c_max + 1] = route.macs.double().numpy() / route.macs_table.full
    return obs


def dict_obs(model: SkipResNet, route: Route) -> dict[str, np.ndarray]:
    obs = vector_obs(model, route)
    c_max = max(model.block_channels)
    return {
        "activation": np.zeros((len(obs), c_max, 8, 8), np.float32),
        "pooled": obs[:, :c_max],
        "block": np.full(len(obs), route.next_block, dtype=np.int64),
        "flops_fraction": obs[:, c_max + 1 :],
    }


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(4)
    return torch.randn(8, 3, 32, 32)


@pytest.fixture
def gate(tiny_model: SkipResNet, images: torch.Tensor) -> RNNGate:
    """A random recurrent gate whose greedy decisions differ between images and blocks."""
    torch.manual_seed(3)
    gate = RNNGate(tiny_model.block_channels, init_execute_prob=None)
    with torch.no_grad():
        gate.proj.weight.mul_(20.0)  # spread p(execute) out, centred on 0.5
        probs = tiny_model.eval().forward_gated(images, gate, routing="masked").probs  # B x K
        gate.proj.bias.sub_(torch.logit(probs).mean())
    return gate


def drive(model: SkipResNet, x: torch.Tensor, choose) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``x`` block by block, ``choose(obs route)`` giving the actions; (executed, logits)."""
    with torch.no_grad():
        route = model.start(x)
        while not route.done:
            actions = np.asarray(choose(route))
            assert actions.dtype == np.int64 and set(actions.tolist()) <= {0, 1}
            model.advance(route, torch.as_tensor(actions).bool())
        return route.executed.clone(), model.finish(route)


def test_batched_agent_equals_forward_gated(
    tiny_model: SkipResNet, gate: RNNGate, images: torch.Tensor
) -> None:
    tiny_model.eval()
    with torch.no_grad():
        ref = tiny_model.forward_gated(images, gate, mode="greedy")
    executed = ref.executed[:, 1:]
    assert executed.any() and not executed.all()  # the gate really decides
    agent = GateAgent(gate, vector_space(tiny_model), tiny_model.block_channels)
    for _ in range(2):  # a second round of episodes starts from a fresh state
        agent.reset(num_envs=len(images))
        got, logits = drive(tiny_model, images, lambda r: agent.act(vector_obs(tiny_model, r)))
        assert torch.equal(got, ref.executed)
        torch.testing.assert_close(logits, ref.logits)
        assert torch.equal(logits.argmax(1), ref.logits.argmax(1))


def test_single_obs_agent_equals_forward_gated(
    tiny_model: SkipResNet, gate: RNNGate, images: torch.Tensor
) -> None:
    tiny_model.eval()
    with torch.no_grad():
        ref = tiny_model.forward_gated(images, gate, mode="greedy")
    agent = GateAgent(gate, vector_space(tiny_model), tiny_model.block_channels)
    for i in range(len(images)):  # no reset between episodes: block 0 restarts the state

        def one(route: Route) -> np.ndarray:
            action = agent.act(vector_obs(tiny_model, route)[0])
            assert isinstance(action, int)
            return np.array([action])

        got, logits = drive(tiny_model, images[i : i + 1], one)
        assert torch.equal(got[0], ref.executed[i])
        torch.testing.assert_close(logits[0], ref.logits[i])


def test_predict_threads_state_like_sb3(
    tiny_model: SkipResNet, gate: RNNGate, images: torch.Tensor
) -> None:
    tiny_model.eval()
    with torch.no_grad():
        ref = tiny_model.forward_gated(images, gate, mode="greedy")
    agent = GateAgent(gate, dict_space(tiny_model), tiny_model.block_channels)
    state, starts = None, np.ones(len(images), bool)

    def choose(route: Route) -> np.ndarray:
        nonlocal state, starts
        actions, state = agent.predict(dict_obs(tiny_model, route), state, starts)
        starts = np.zeros(len(images), bool)
        assert isinstance(state, tuple) and state[0].shape == (len(images), gate.hidden_dim)
        return actions

    got, _ = drive(tiny_model, images, choose)
    assert torch.equal(got, ref.executed)
    # a state from elsewhere is replaced for rows flagged as episode starts only
    with torch.no_grad():
        route = tiny_model.start(images)
        tiny_model.advance(route, ref.executed[:, 1])
    obs = vector_obs(tiny_model, route)
    vec_agent = GateAgent(gate, vector_space(tiny_model), tiny_model.block_channels)
    _, s0 = vec_agent.predict(vector_obs(tiny_model, tiny_model.start(images)))
    a_good, _ = vec_agent.predict(obs, s0)
    assert np.array_equal(a_good, ref.executed[:, 2].numpy())
    with pytest.raises(ValueError, match="no recurrent state was given"):
        vec_agent.predict(obs)
    single, _ = vec_agent.predict(obs[0], tuple(s[:1] for s in s0))
    assert single.shape == () and single == a_good[0]


def test_sampled_actions_follow_p_and_seed(tiny_model: SkipResNet) -> None:
    gate = RNNGate(tiny_model.block_channels)  # fresh: p(execute) = 0.9 for every input
    with torch.no_grad():
        obs = vector_obs(tiny_model.eval(), tiny_model.start(torch.randn(4, 3, 32, 32)))
    obs = np.repeat(obs, 1000, axis=0)
    space, channels = vector_space(tiny_model), tiny_model.block_channels
    a1 = GateAgent(gate, space, channels, deterministic=False, seed=0).act(obs)
    a2 = GateAgent(gate, space, channels, deterministic=False, seed=0).act(obs)
    assert np.array_equal(a1, a2)
    assert abs(a1.mean() - 0.9) < 0.03
    greedy, _ = GateAgent(gate, space, channels, seed=0).predict(obs, deterministic=True)
    assert greedy.all()


def test_feedforward_gates_are_refused(tiny_model: SkipResNet) -> None:
    for gate in (FFGateI(tiny_model.block_channels), FFGateII(tiny_model.block_channels)):
        with pytest.raises(TypeError, match=r"full activation map.*RNNGate"):
            GateAgent(gate, vector_space(tiny_model), tiny_model.block_channels)
    with pytest.raises(TypeError, match="FixedGate"):
        GateAgent(FixedGate(torch.ones(1, 5)), vector_space(tiny_model), (4, 4, 8, 8, 16, 16))


def test_bad_spaces_and_observations(tiny_model: SkipResNet, gate: RNNGate) -> None:
    channels = tiny_model.block_channels
    with pytest.raises(TypeError, match="obs_mode='activation'"):
        GateAgent(gate, spaces.Box(0, np.inf, (16, 8, 8), np.float32), channels)
    with pytest.raises(ValueError, match=r"shape \(66,\) do not fit"):
        GateAgent(gate, spaces.Box(0, np.inf, (66,), np.float32), channels)
    with pytest.raises(ValueError, match="the gate was built for blocks"):
        GateAgent(RNNGate((16, 16, 32)), vector_space(tiny_model), channels)
    agent = GateAgent(gate, vector_space(tiny_model), channels)
    with pytest.raises(ValueError, match=r"shape \(18,\) or \(B, 18\), got shape \(3, 17\)"):
        agent.act(np.zeros((3, 17), np.float32))
    terminal = np.zeros(18, np.float32)
    terminal[16] = 1.0
    with pytest.raises(ValueError, match="terminal"):
        agent.act(terminal)
    first = np.zeros((2, 18), np.float32)
    first[:, 16] = 1 / 6
    agent.reset(num_envs=3)
    with pytest.raises(ValueError, match=r"call reset\(num_envs=2\)"):
        agent.act(first)
    agent.reset(num_envs=2)
    assert agent.act(first).shape == (2,)


# ---------------------------------------------------------------------------- through the env


@pytest.fixture
def env_setup() -> tuple[SkipResNet, CifarSplit, RNNGate]:
    """A tiny backbone, 6 random images and a recurrent gate that decides differently on them."""
    torch.manual_seed(5)
    backbone = build_resnet(14, widths=(4, 8, 16)).eval()
    # noise of differing contrast and brightness, so that the gate tells the images apart
    scale = torch.linspace(0.2, 1.0, 6).view(6, 1, 1, 1)
    offset = torch.linspace(0.6, 0.0, 6).view(6, 1, 1, 1)
    noise = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images = ((noise * scale + offset).clamp(0, 1) * 255).to(torch.uint8)
    data = CifarSplit(images, torch.arange(6) % 10)
    gate = RNNGate(backbone.block_channels, init_execute_prob=None)
    with torch.no_grad():
        gate.proj.weight.mul_(20.0)
        probs = backbone.forward_gated(normalize(images), gate, routing="masked").probs
        gate.proj.bias.sub_(torch.logit(probs).mean())
    return backbone, data, gate


def reference(backbone: SkipResNet, data: CifarSplit, gate: RNNGate):
    with torch.no_grad():
        out = backbone.forward_gated(normalize(data.images), gate, mode="greedy")
    assert out.executed[:, 1:].any() and not out.executed[:, 1:].all()
    return out


@pytest.mark.parametrize("obs_mode", ["vector", "dict"])
def test_agent_drives_env_like_forward_gated(
    obs_mode: str, env_setup: tuple[SkipResNet, CifarSplit, RNNGate]
) -> None:
    backbone, data, gate = env_setup
    env = SkipNetEnv(backbone=backbone, data=data, device="cpu", obs_mode=obs_mode)
    ref = reference(env.backbone, data, gate)
    agent = GateAgent(gate, env.observation_space, env.backbone.block_channels)
    for i in range(len(data)):
        obs, info = env.reset(options={"index": i})
        actions, terminated = [], False
        while not terminated:
            actions.append(agent.act(obs))
            obs, _, terminated, truncated, info = env.step(actions[-1])
            assert not truncated
        assert actions == ref.executed[i, 1:].long().tolist()
        assert info["executed"].tolist() == ref.executed[i].tolist()
        assert info["prediction"] == int(ref.logits[i].argmax())
        assert info["macs"] == int(ref.macs[i]) - sum(env.backbone.macs_table(gate=gate).gate)


@pytest.mark.parametrize("obs_mode", ["vector", "dict"])
def test_agent_drives_vector_env_like_forward_gated(
    obs_mode: str, env_setup: tuple[SkipResNet, CifarSplit, RNNGate]
) -> None:
    backbone, data, gate = env_setup
    n = len(data)
    venv = SkipNetVectorEnv(
        n,
        backbone=backbone,
        data=data,
        device="cpu",
        obs_mode=obs_mode,
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    ref = reference(venv.backbone, data, gate)
    agent = GateAgent(gate, venv.single_observation_space, venv.backbone.block_channels)
    agent.reset(num_envs=n)
    obs, _ = venv.reset(seed=0, options={"indices": np.arange(n)})
    for episode in range(2):  # autoreset: the second round starts without agent.reset()
        actions = []
        for _ in range(venv.num_decisions):
            actions.append(agent.act(obs))
            obs, _, terminated, truncated, info = venv.step(actions[-1])
        assert terminated.all() and not truncated.any()
        final = info["final_info"]
        if episode == 0:
            assert np.array_equal(np.stack(actions, axis=1), ref.executed[:, 1:].long().numpy())
            assert np.array_equal(final["executed"], ref.executed.numpy())
            assert np.array_equal(final["prediction"], ref.logits.argmax(1).numpy())
        else:  # images drawn by the env: compare with the batched forward on them
            x = normalize(data.images[torch.as_tensor(final["index"])])
            with torch.no_grad():
                again = venv.backbone.forward_gated(x, gate, mode="greedy")
            assert np.array_equal(final["executed"], again.executed.numpy())
            assert np.array_equal(final["prediction"], again.logits.argmax(1).numpy())


# ---------------------------------------------------------------------------- baselines


def test_always_execute_is_the_plain_network(tiny_model: SkipResNet, images: torch.Tensor) -> None:
    tiny_model.eval()
    agent = AlwaysExecute(vector_space(tiny_model), tiny_model.block_channels)
    executed, logits = drive(tiny_model, images, lambda r: agent.act(vector_obs(tiny_model, r)))
    assert executed.all()
    with torch.no_grad():
        torch.testing.assert_close(logits, tiny_model(images))
    action, state = agent.predict(vector_obs(tiny_model, tiny_model.start(images[:1]))[0])
    assert action.shape == () and action == 1 and state is None


def test_random_skip_rate_and_seed(tiny_model: SkipResNet) -> None:
    with torch.no_grad():
        obs = vector_obs(tiny_model.eval(), tiny_model.start(torch.randn(2, 3, 32, 32)))
    obs = np.repeat(obs, 2000, axis=0)
    space, channels = vector_space(tiny_model), tiny_model.block_channels
    a1 = RandomSkip(space, channels, p_execute=0.3, seed=1).act(obs)
    a2, _ = RandomSkip(space, channels, p_execute=0.3, seed=1).predict(obs, deterministic=True)
    assert np.array_equal(a1, a2) and abs(a1.mean() - 0.3) < 0.03
    assert not RandomSkip(space, channels, p_execute=0.0).act(obs).any()
    with pytest.raises(ValueError, match="p_execute must be in"):
        RandomSkip(space, channels, p_execute=1.5)


def test_fixed_patterns(tiny_model: SkipResNet, images: torch.Tensor) -> None:
    tiny_model.eval()
    space, channels = dict_space(tiny_model), tiny_model.block_channels
    assert stages(channels) == [[0, 1], [2, 3], [4, 5]]
    skip_last = FixedPattern.skip_last(space, channels, 1)
    assert skip_last.execute.tolist() == [True, False, True, False, True, False]
    assert FixedPattern.skip_last(space, channels, 2).execute.tolist() == [True] + [False] * 5
    chosen = FixedPattern.from_blocks(space, channels, [2, 5])
    assert chosen.execute.tolist() == [True, False, True, False, False, True]
    for agent in (skip_last, chosen):
        executed, logits = drive(
            tiny_model, images, lambda r, a=agent: a.act(dict_obs(tiny_model, r))
        )
        assert torch.equal(executed, torch.as_tensor(agent.execute).expand(len(images), -1))
        with torch.no_grad():
            expected = tiny_model.forward_skip(images, executed[:, 1:])
        torch.testing.assert_close(logits, expected)
    with pytest.raises(ValueError, match="block 0 always runs"):
        FixedPattern(space, channels, [False] * 6)
    with pytest.raises(ValueError, match=r"one flag per block \(6\)"):
        FixedPattern(space, channels, [True] * 5)
    with pytest.raises(ValueError, match="block 6 is out of range"):
        FixedPattern.from_blocks(space, channels, [6])


@pytest.mark.parametrize("budget", [0.4, 0.7, 1.0])
def test_flops_budget(budget: float, tiny_model: SkipResNet, images: torch.Tensor) -> None:
    tiny_model.eval()
    agent = FlopsBudget(vector_space(tiny_model), tiny_model.block_channels, budget)
    spent = []

    def choose(route: Route) -> np.ndarray:
        obs = vector_obs(tiny_model, route)
        spent.append(obs[:, -1])
        return agent.act(obs)

    executed, _ = drive(tiny_model, images, choose)
    row = executed[0]
    assert torch.equal(executed, row.expand(len(images), -1))  # same for every image
    n_run = int(row.sum())
    assert row[:n_run].all() and not row[n_run:].any()  # a prefix of the blocks
    if budget == 1.0:
        assert n_run == tiny_model.num_blocks
    else:
        assert 2 <= n_run < tiny_model.num_blocks
        assert spent[n_run - 1][0] >= budget > spent[n_run - 2][0]
    with pytest.raises(ValueError, match="budget must be a fraction"):
        FlopsBudget(vector_space(tiny_model), tiny_model.block_channels, 0.0)
