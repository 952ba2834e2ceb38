"""Shipped pretrained weights: registry, name lookup, export, env default and evaluate.py names.

A tiny registry (ResNet-14, widths 4/8/16: a base and an SP model) lives in a tmp folder that
``$SKIPNET_PRETRAINED_DIR`` points to; the last tests read the package's real (empty) one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium
import pytest
import torch
from conftest import ENV_ID, load_script, synthetic_split
from synthetic import write_folder

import skipenv
from agents.gates import RNNGate
from agents.skipnet import SkipNet, load_skipnet
from skipenv.envs.env import SkipNetEnv
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models import pretrained
from skipenv.models.checkpoint import (
    CheckpointError,
    load_backbone,
    load_checkpoint,
    save_checkpoint,
)
from skipenv.models.pretrained import (
    ENV_DIR,
    FIELDS,
    default_pretrained,
    export_weights,
    list_pretrained,
    pretrained_info,
    pretrained_path,
    resolve_checkpoint,
)
from skipenv.models.resnet import SkipResNet, build_resnet

REPO = Path(__file__).resolve().parents[1]
BASE, SP = "tiny14-base", "tiny14-sp"
ARCH = {"name": "cifar_resnet", "dataset": "cifar10", "depth": 14, "num_classes": 10}
TRAINING_ONLY = ("optimizer", "scheduler", "rng")


def tiny_backbone(seed: int) -> SkipResNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_resnet(14, widths=(4, 8, 16))


def training_state(module: torch.nn.Module) -> dict:
    """What a training run saves besides the weights: optimizer (with momentum), etc."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    sum(p.square().sum() for p in module.parameters()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": {"last_epoch": 1},
        "rng": {"torch": torch.get_rng_state()},
        "config": {"epochs": 1, "lr": 0.1},
        "step": 1,
        "epoch": 1.0,
        "metrics": {"step": 1, "val_accuracy": 0.1},
        "wall_s": 2.5,
    }


def entry(name: str, kind: str, default: bool, **changes) -> dict:
    return {
        "name": name,
        "file": f"{name}.pt",
        "kind": kind,
        "depth": 14,
        "dataset": "cifar10",
        "default_for_depth": default,
        "val_accuracy": 0.1,
        "flops_fraction": 1.0 if kind == "base" else 0.8,
        "flops_fraction_with_gate": 1.0 if kind == "base" else 0.81,
        "block_fraction": 1.0 if kind == "base" else 0.75,
        "description": f"tiny {kind} model for tests",
        **changes,
    }


def write_registry(folder: Path, entries) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "registry.json").write_text(json.dumps(entries))
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Training checkpoints (with optimizer state) of a tiny base and a tiny SP model."""
    folder = tmp_path_factory.mktemp("runs")
    base = tiny_backbone(1)
    base_state = training_state(base)
    base_path = save_checkpoint(
        folder / "base.pt",
        {"kind": "base", "arch": {**ARCH, "widths": [4, 8, 16]}, "model": base.state_dict()}
        | base_state,
    )
    net = SkipNet(tiny_backbone(2), RNNGate(tiny_backbone(2).block_channels))
    with torch.no_grad():  # away from the default init, so copying it is seen
        for p in net.gate.parameters():
            p.add_(torch.linspace(-1, 1, p.numel()).view_as(p))
    sp_state = training_state(net)
    sp_path = save_checkpoint(
        folder / "sp.pt",
        {
            "kind": "sp",
            "arch": net.arch(),
            "model": net.backbone.state_dict(),
            "gate": net.gate.state_dict(),
        }
        | sp_state,
    )
    return {"base": base, "base_path": base_path, "sp": net, "sp_path": sp_path}


@pytest.fixture(scope="module")
def shipped_dir(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry folder: the two models exported, the SP one default for depth 14."""
    folder = tmp_path_factory.mktemp("weights")
    export_weights(trained["base_path"], folder / f"{BASE}.pt", name=BASE)
    export_weights(trained["sp_path"], folder / f"{SP}.pt", name=SP)
    return write_registry(folder, [entry(BASE, "base", False), entry(SP, "sp", True)])


@pytest.fixture
def shipped(shipped_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(ENV_DIR, str(shipped_dir))
    return shipped_dir


def assert_same_weights(a: SkipResNet, b: SkipResNet) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key].cpu(), sb[key].cpu()), key


# ---------------------------------------------------------------------------- registry


def test_registry_lists_names_entries_and_default(shipped: Path) -> None:
    assert list_pretrained() == [BASE, SP]
    assert skipenv.list_pretrained() == [BASE, SP]
    info = pretrained_info(SP)
    assert info == entry(SP, "sp", True)
    info["name"] = "changed"  # a copy: the registry is untouched
    assert pretrained_info(SP)["name"] == SP
    assert pretrained_path(BASE) == shipped / f"{BASE}.pt"
    assert default_pretrained(14) == SP
    assert default_pretrained(38) is None
    assert default_pretrained(14, dataset="cifar100") is None


def test_resolve_checkpoint_names_and_paths(shipped: Path, trained: dict) -> None:
    assert resolve_checkpoint(SP) == shipped / f"{SP}.pt"
    assert resolve_checkpoint(trained["base_path"]) == trained["base_path"]
    assert resolve_checkpoint(str(trained["base_path"])) == trained["base_path"]
    # a Path that is a shipped name is that model (issue 11: it was refused while the message
    # listed it as shipped)
    assert resolve_checkpoint(Path(BASE)) == shipped / f"{BASE}.pt"
    for bad in ("tiny14-hrl", shipped / "nowhere.pt", str(shipped)):
        with pytest.raises(CheckpointError) as caught:
            resolve_checkpoint(bad)
        message = str(caught.value)
        assert f"shipped: {BASE}, {SP}" in message and "path" in message, message
    with pytest.raises(CheckpointError, match=f"{BASE}, {SP}"):
        pretrained_info("tiny14-hrl")


def test_registered_file_missing_from_the_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_DIR, str(write_registry(tmp_path, [entry(BASE, "base", True)])))
    assert list_pretrained() == [BASE]
    with pytest.raises(CheckpointError, match=f"{BASE}.pt is missing"):
        pretrained_path(BASE)
    with pytest.raises(CheckpointError, match="missing"):
        SkipNetEnv(depth=14, data=synthetic_split(10), device="cpu")


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ({"name": BASE}, "must hold a JSON list"),
        ([entry(BASE, "base", False, licence="MIT")], r"unknown fields \['licence'\]"),
        ([{k: v for k, v in entry(BASE, "base", False).items() if k != "depth"}], "'depth'"),
        ([entry(BASE, "gate", False)], "kind must be one of"),
        ([entry(BASE, "base", False, depth=15)], "depth must be"),
        ([entry(BASE, "base", False, file="sub/x.pt")], "file must be"),
        ([entry("bad name", "base", False)], "name must be"),
        ([entry(BASE, "base", False, val_accuracy=91.5)], "val_accuracy must be a fraction"),
        ([entry(BASE, "base", False, flops_fraction=70.3)], r"flops_fraction .* in \[0, 1\]"),
        ([entry(SP, "sp", False, flops_fraction=1.01)], r"flops_fraction .* in \[0, 1\]"),
        (
            [entry(BASE, "base", False, flops_fraction_with_gate=2.5)],
            r"flops_fraction_with_gate .* in \[0, 2\]",
        ),
        ([entry(BASE, "base", False, default_for_depth="yes")], "default_for_depth"),
        ([entry(BASE, "base", False), entry(BASE, "sp", False)], "more than once"),
        ([entry(BASE, "base", True), entry(SP, "sp", True)], "keep one"),
    ],
)
def test_malformed_registry_is_a_clear_error(tmp_path: Path, monkeypatch, entries, match) -> None:
    monkeypatch.setenv(ENV_DIR, str(write_registry(tmp_path, entries)))
    with pytest.raises(CheckpointError, match=match) as caught:
        list_pretrained()
    assert str(tmp_path / "registry.json") in str(caught.value)


def test_registry_without_file_or_json(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    with pytest.raises(CheckpointError, match="no pretrained-model registry"):
        list_pretrained()
    (tmp_path / "registry.json").write_text("[{")
    with pytest.raises(CheckpointError, match="could not read"):
        list_pretrained()


def test_registry_cache_follows_folder_and_edits(tmp_path: Path, monkeypatch) -> None:
    first = write_registry(tmp_path / "a", [entry(BASE, "base", False)])
    second = write_registry(tmp_path / "b", [entry(SP, "sp", False)])
    monkeypatch.setenv(ENV_DIR, str(first))
    assert list_pretrained() == [BASE]
    monkeypatch.setenv(ENV_DIR, str(second))
    assert list_pretrained() == [SP]
    write_registry(first, [entry(BASE, "base", False), entry(SP, "sp", False)])
    monkeypatch.setenv(ENV_DIR, str(first))
    assert list_pretrained() == [BASE, SP]


# ---------------------------------------------------------------------------- export


def test_export_keeps_weights_and_gate_drops_training_state(shipped: Path, trained: dict) -> None:
    sp = load_checkpoint(shipped / f"{SP}.pt")
    original = load_checkpoint(trained["sp_path"])
    assert all(key in original for key in TRAINING_ONLY)
    assert not any(key in sp for key in TRAINING_ONLY)
    assert set(sp) == {"format", "name", *pretrained.EXPORT_KEYS} - {"route"}  # route: static
    assert sp["name"] == SP and sp["kind"] == "sp" and sp["arch"] == trained["sp"].arch()
    assert sp["metrics"] == original["metrics"] and sp["wall_s"] == original["wall_s"]
    for key, value in trained["sp"].gate.state_dict().items():
        assert torch.equal(sp["gate"][key], value), key
    net = load_skipnet(shipped / f"{SP}.pt", depth=14)
    assert_same_weights(net.backbone, trained["sp"].backbone)
    base = load_checkpoint(shipped / f"{BASE}.pt")
    assert "gate" not in base and base["kind"] == "base" and base["name"] == BASE
    size = (shipped / f"{SP}.pt").stat().st_size
    assert size < trained["sp_path"].stat().st_size


def test_export_refuses_what_would_not_load(trained: dict, tmp_path: Path) -> None:
    payload = load_checkpoint(trained["sp_path"])
    del payload["gate"]
    no_gate = save_checkpoint(tmp_path / "no_gate.pt", payload)
    with pytest.raises(CheckpointError, match="without its gate"):
        export_weights(no_gate, tmp_path / "out.pt", name="x")
    payload = load_checkpoint(trained["base_path"])
    payload["arch"] = {**payload["arch"], "widths": [8, 16, 32]}
    misfit = save_checkpoint(tmp_path / "misfit.pt", payload)
    with pytest.raises(CheckpointError, match="do not fit"):
        export_weights(misfit, tmp_path / "out.pt", name="x")
    with pytest.raises(ValueError, match="name must be"):
        export_weights(trained["base_path"], tmp_path / "out.pt", name="../x")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        export_weights(tmp_path / "nowhere.pt", tmp_path / "out.pt", name="x")
    assert not (tmp_path / "out.pt").exists()


def test_cli_export_then_list(trained: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "w" / "cli-sp.pt"
    pretrained.main(["export", str(trained["sp_path"]), str(out), "--name", "cli-sp"])
    printed = capsys.readouterr().out
    suggested = json.loads(printed[printed.index("{") :])
    assert suggested["name"] == "cli-sp" and suggested["file"] == "cli-sp.pt"
    assert suggested["kind"] == "sp" and suggested["depth"] == 14
    assert list(suggested) == list(FIELDS)
    assert "optimizer" not in load_checkpoint(out)
    write_registry(out.parent, [suggested | {"val_accuracy": 0.5, "default_for_depth": True}])
    monkeypatch.setenv(ENV_DIR, str(out.parent))
    pretrained.main(["list"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["name", "kind"]
    assert table[1].split()[:6] == ["cli-sp", "sp", "14", "cifar10", "yes", "50.00"]
    with pytest.raises(SystemExit) as caught:
        pretrained.main(["export", str(tmp_path / "nowhere.pt"), str(out), "--name", "x"])
    assert caught.value.code == 2 and "no checkpoint" in capsys.readouterr().err


def test_module_cli_runs_without_importing_torch(shipped: Path) -> None:
    script = (
        "import runpy, sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "sys.argv = ['pretrained', 'list']\n"
        "runpy.run_module('skipenv.models.pretrained', run_name='__main__')\n"
        "assert 'torch' not in sys.modules, 'listing imported torch'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=os.environ | {ENV_DIR: str(shipped)},
    )
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[1:3]] == [BASE, SP]


# ---------------------------------------------------------------------------- environment


def test_env_default_backbone_is_the_default_for_depth(shipped: Path, trained: dict) -> None:
    env = gymnasium.make(ENV_ID, depth=14, data=synthetic_split(10), device="cpu")
    assert_same_weights(env.unwrapped.backbone, trained["sp"].backbone)
    env.reset(seed=0)
    env.step(1)
    env.close()
    venv = SkipNetVectorEnv(2, depth=14, data=synthetic_split(10), device="cpu")
    assert_same_weights(venv.backbone, trained["sp"].backbone)
    venv.close()
    with pytest.raises(ValueError, match=f"no pretrained ResNet-38 .*{BASE}, {SP}"):
        SkipNetEnv(data=synthetic_split(10), device="cpu")


def test_load_skipnet_takes_a_shipped_name(shipped: Path, trained: dict) -> None:
    net = load_skipnet(SP)
    assert_same_weights(net.backbone, trained["sp"].backbone)
    for key, value in trained["sp"].gate.state_dict().items():
        assert torch.equal(net.gate.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match=f"shipped: {BASE}, {SP}"):
        load_skipnet("tiny14-hrl")
    with pytest.raises(CheckpointError, match=r"holds a 'base' checkpoint; this needs one of"):
        load_skipnet(BASE)


def test_env_checkpoint_by_name_or_path(shipped: Path, trained: dict) -> None:
    env = SkipNetEnv(checkpoint=BASE, depth=14, data=synthetic_split(10), device="cpu")
    assert_same_weights(env.backbone, trained["base"])
    env = SkipNetEnv(
        checkpoint=trained["base_path"], depth=14, data=synthetic_split(10), device="cpu"
    )
    assert_same_weights(env.backbone, trained["base"])
    with pytest.raises(CheckpointError, match=r"ResNet-14, but depth=38"):
        SkipNetEnv(checkpoint=SP, data=synthetic_split(10), device="cpu")
    with pytest.raises(CheckpointError, match=f"shipped: {BASE}, {SP}"):
        SkipNetEnv(checkpoint="tiny14-hrl", depth=14, data=synthetic_split(10), device="cpu")


# ---------------------------------------------------------------------------- evaluate.py


def test_evaluate_accepts_a_shipped_name(shipped: Path, trained: dict, tmp_path, monkeypatch):
    write_folder(tmp_path / "data" / "cifar10-jpeg" / "train", per_class=10)  # 10 val
    monkeypatch.setenv("SKIPNET_CACHE", str(tmp_path / "cache"))
    evaluate = load_script("train/evaluate.py")

    def run(checkpoint):
        args = evaluate.Args(
            checkpoint=checkpoint,
            split="val",
            data_dir=str(tmp_path / "data"),
            device="cpu",
            batch_size=8,
        )
        return evaluate.main(args)

    by_name = run(SP)
    by_path = run(str(trained["sp_path"]))
    assert by_name["checkpoint"] == SP and by_name["kind"] == "sp" and by_name["depth"] == 14
    keys = ("num_images", "accuracy", "flops_fraction", "flops_fraction_with_gate")
    for key in (*keys, "block_fraction", "skip_rates"):
        assert by_name[key] == by_path[key], key
    with pytest.raises(CheckpointError, match=f"shipped: {BASE}, {SP}"):
        run("tiny14-hrl")
    assert by_path["card_match"] is None  # a path has no card
    assert by_name["card_match"] is False  # the fixture's entry holds made-up numbers

    # an entry holding the measured numbers is reproduced; one off by 0.0001 is not
    measured = {"val_accuracy": by_name["accuracy"]} | {
        k: by_name[k] for k in ("flops_fraction", "flops_fraction_with_gate", "block_fraction")
    }
    folder = write_registry(tmp_path / "card", [entry(SP, "sp", True, **measured)])
    (folder / f"{SP}.pt").write_bytes((shipped / f"{SP}.pt").read_bytes())
    monkeypatch.setenv(ENV_DIR, str(folder))
    assert run(SP)["card_match"] is True
    off = measured | {"flops_fraction": measured["flops_fraction"] - 1e-4}
    write_registry(folder, [entry(SP, "sp", True, **off)])
    assert run(SP)["card_match"] is False


# ---------------------------------------------------------------------------- the real registry

SHIPPED = (
    "resnet38",
    "resnet38-ld",
    "skipnet38-ld-sp",
    "skipnet38-ld-hrl-a0.25",
    "skipnet38-hrl-a0.6",
    "skipnet38-ld-hrl-a0.5",
    "skipnet38-ld-hrl-a0.75",
    "skipnet38-ld-hrl-a1",
)
DEFAULT = "skipnet38-hrl-a0.6"  # the env's default backbone


@pytest.fixture
def real_registry(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(ENV_DIR, raising=False)
    folder = Path(skipenv.__file__).parent / "models" / "weights"
    assert pretrained.weights_dir() == folder
    return folder


def test_the_package_ships_resnet38_sp_and_hrl_points(real_registry: Path) -> None:
    assert list_pretrained() == list(SHIPPED) == skipenv.list_pretrained()
    assert default_pretrained(38) == DEFAULT and pretrained_info(DEFAULT)["kind"] == "hrl"
    hrl = [pretrained_info(n) for n in SHIPPED if pretrained_info(n)["kind"] == "hrl"]
    assert len(hrl) >= 2  # two operating points, at different compute
    assert len({round(e["flops_fraction"], 2) for e in hrl}) == len(hrl)
    for name in SHIPPED:
        info = pretrained_info(name)
        path = pretrained_path(name)
        assert path.parent == real_registry and path.stat().st_size < 8 * 2**20
        payload = load_checkpoint(path)  # weights_only=True inside
        assert payload["name"] == name and payload["kind"] == info["kind"]
        assert payload["arch"]["depth"] == info["depth"] == 38
        assert not set(TRAINING_ONLY) & set(payload)
        metrics = ("val_accuracy", "flops_fraction", "flops_fraction_with_gate")
        assert all(info[k] is not None for k in metrics)
        assert info["flops_fraction"] <= info["flops_fraction_with_gate"]
        load_backbone(payload)
        if info["kind"] != "base":
            load_skipnet(payload)


def test_the_model_card_quotes_the_registry(real_registry: Path) -> None:
    card = (real_registry / "MODEL_CARD.md").read_text()
    for name in SHIPPED:
        info = pretrained_info(name)
        section = card[card.index(f"### {name} (") :].split("\n### ", 1)[0]
        row = (
            f"| {100 * info['val_accuracy']:.2f}% | {100 * info['flops_fraction']:.2f}% "
            f"| {100 * info['flops_fraction_with_gate']:.2f}% "
            f"| {100 * info['block_fraction']:.2f}% |"
        )
        assert row in section, (name, row)
        assert f"--checkpoint {name} --split val" in section


def test_env_default_is_the_shipped_hrl_backbone(real_registry: Path) -> None:
    env = gymnasium.make(ENV_ID, data=synthetic_split(10), device="cpu")  # no checkpoint given
    hrl = load_skipnet(DEFAULT)
    assert_same_weights(env.unwrapped.backbone, hrl.backbone)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    env.close()
    lean = SkipNetEnv(checkpoint="skipnet38-ld-hrl-a1", data=synthetic_split(10), device="cpu")
    assert_same_weights(lean.backbone, load_skipnet("skipnet38-ld-hrl-a1").backbone)


def test_env_default_without_images_says_how_to_get_them(real_registry: Path, tmp_path) -> None:
    from skipenv.data.sources import DataError

    with pytest.raises(DataError, match="To get the data"):  # weights load; images are missing
        gymnasium.make(ENV_ID, data_root=tmp_path / "no-data", device="cpu")


def test_package_data_ships_the_weights_folder() -> None:
    text = (REPO / "pyproject.toml").read_text()  # tomllib is 3.11+; the project supports 3.10
    section = text[text.index("[tool.setuptools.package-data]") :].split("\n[", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith('"skipenv.models" ='))
    globs = json.loads(line.split("=", 1)[1])
    assert {"weights/*.pt", "weights/*.json", "weights/*.md"} <= set(globs)
