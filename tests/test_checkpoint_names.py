"""Issue 11, case 6: every option and function that takes a checkpoint accepts a shipped
model's name or a path, by one rule (skipenv.models.pretrained.resolve_checkpoint); no error
lists as valid the value it refused; a run that fails on its checkpoint leaves no folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from conftest import ENV_ID, REPO, load_script, synthetic_split
from synthetic import write_folder

from agents.gates import build_gate
from agents.skipnet import SkipNet, load_backbone_and_gate, load_skipnet
from skipenv.models.checkpoint import (
    CheckpointError,
    load_backbone,
    load_checkpoint,
    save_checkpoint,
)
from skipenv.models.pretrained import ENV_DIR, export_weights, resolve_checkpoint
from skipenv.models.resnet import build_resnet

BASE, SP = "tiny8-base", "tiny8-sp"

supervised = load_script("train/supervised.py")
hybrid = load_script("train/hybrid.py")
evaluate = load_script("train/evaluate.py")
compare = load_script("scripts/compare_agents.py")


def _entry(name: str, kind: str) -> dict:
    return {
        "name": name,
        "file": f"{name}.pt",
        "kind": kind,
        "depth": 8,
        "dataset": "cifar10",
        "default_for_depth": False,
        "val_accuracy": None,
        "flops_fraction": None,
        "flops_fraction_with_gate": None,
        "block_fraction": None,
        "description": "",
    }


@pytest.fixture(scope="module")
def shipped_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with a tiny ResNet-8 base model and a tiny SP model."""
    runs, folder = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    base = build_resnet(8)
    arch = {"name": "cifar_resnet", "dataset": "cifar10", "depth": 8, "num_classes": 10}
    save_checkpoint(
        runs / "base.pt",
        {"kind": "base", "arch": {**arch, "widths": [16, 32, 64]}, "model": base.state_dict()},
    )
    net = SkipNet(build_resnet(8), build_gate({"type": "rnn"}, base.block_channels))
    payload = {"kind": "sp", "arch": net.arch(), "model": net.backbone.state_dict()}
    save_checkpoint(runs / "sp.pt", payload | {"gate": net.gate.state_dict()})
    export_weights(runs / "base.pt", folder / f"{BASE}.pt", name=BASE)
    export_weights(runs / "sp.pt", folder / f"{SP}.pt", name=SP)
    (folder / "registry.json").write_text(json.dumps([_entry(BASE, "base"), _entry(SP, "sp")]))
    return folder


@pytest.fixture
def shipped(shipped_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(ENV_DIR, str(shipped_dir))
    return shipped_dir


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_folder(root / "train", per_class=10)  # val: 1 per class
    return root


# ---------------------------------------------------------------------------- the one rule


def test_resolve_names_and_paths_alike(shipped, tmp_path, monkeypatch):
    assert resolve_checkpoint(SP) == shipped / f"{SP}.pt"
    assert resolve_checkpoint(Path(SP)) == shipped / f"{SP}.pt"  # a Path is looked up too
    local = tmp_path / "mine.pt"
    local.write_bytes((shipped / f"{BASE}.pt").read_bytes())
    assert resolve_checkpoint(str(local)) == local == resolve_checkpoint(local)
    monkeypatch.chdir(tmp_path)
    (tmp_path / SP).write_bytes(b"x")  # a local file with a shipped name: give it a folder
    assert resolve_checkpoint(f"./{SP}") == Path(f"./{SP}")
    assert resolve_checkpoint(SP) == shipped / f"{SP}.pt"


@pytest.mark.parametrize("bad", ["skipnet99-nope", Path("nope.pt"), "runs/x/final.pt"])
def test_refusal_never_lists_the_refused_value(shipped, bad):
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(bad)
    message = str(info.value)
    assert f"shipped: {BASE}, {SP}" in message
    listed = message.split("shipped: ")[1].split(")")[0].split(", ")
    assert str(bad) not in listed


@pytest.mark.parametrize("as_path", [False, True], ids=["str", "Path"])
def test_every_loader_takes_a_name(shipped, as_path):
    sp = Path(SP) if as_path else SP
    base = Path(BASE) if as_path else BASE
    assert load_checkpoint(sp)["kind"] == "sp"
    assert load_backbone(base, depth=8).depth == 8
    assert load_skipnet(sp).backbone.depth == 8
    assert load_backbone_and_gate(sp)[2] is not None
    env = gym.make(ENV_ID, checkpoint=sp, depth=8, data=synthetic_split(), device="cpu")
    assert env.unwrapped.backbone.depth == 8


# ---------------------------------------------------------------------------- entry points


def test_checkpoint_options_are_typed_str():
    """tyro parses a Path-typed option into a Path; the options are str, so a name stays a
    name (resolve_checkpoint takes either)."""
    fields = {
        (supervised.Args, "init"): str | None,
        (hybrid.Args, "sp"): str | None,
        (evaluate.Args, "checkpoint"): str,
        (compare.Args, "checkpoint"): str | None,  # None: the --manifest's backbone
    }
    for (cls, name), expected in fields.items():
        assert typing.get_type_hints(cls)[name] == expected, (cls, name)


def _run_args(cls, root: Path, out: Path, **kw):
    return cls(out=out, batch_size=30, data_dir=str(root), progress=False, epochs=1, **kw)


def test_supervised_init_and_hybrid_sp_take_shipped_names(shipped, data_root, tmp_path):
    sp_metrics = supervised.main(
        _run_args(supervised.Args, data_root, tmp_path / "sp", init=BASE, depth=8)
    )
    assert (tmp_path / "sp" / "final.pt").is_file() and "val_accuracy" in sp_metrics
    hybrid.main(_run_args(hybrid.Args, data_root, tmp_path / "hrl", sp=SP))
    assert load_checkpoint(tmp_path / "hrl" / "final.pt")["config"]["sp"].endswith(f"{SP}.pt")


@pytest.mark.parametrize("script", ["supervised", "hybrid"])
def test_a_bad_checkpoint_leaves_no_run_folder(shipped, data_root, tmp_path, script):
    out = tmp_path / "run"
    if script == "supervised":
        args = _run_args(supervised.Args, data_root, out, init="resnet99", depth=8)
        main = supervised.main
    else:
        args = _run_args(hybrid.Args, data_root, out, sp="resnet99")
        main = hybrid.main
    with pytest.raises(CheckpointError, match=f"shipped: {BASE}, {SP}"):
        main(args)
    assert not out.exists()


def test_a_failing_start_leaves_no_run_folder(data_root, tmp_path):
    out = tmp_path / "run"
    args = _run_args(supervised.Args, tmp_path / "no-data", out, depth=8, from_scratch=True)
    with pytest.raises(Exception, match="no-data"):
        supervised.main(args)
    assert not out.exists()


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=REPO, env=env
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["benchmarks/hrl_step.py", "--checkpoint"],
        ["train/supervised.py", "--depth", "8", "--out", "{out}", "--init"],
        ["train/hybrid.py", "--out", "{out}", "--sp"],
        ["train/evaluate.py", "--checkpoint"],
        ["scripts/compare_agents.py", "--checkpoint"],
        ["train/static.py", "--out", "{out}", "--route", "111", "--checkpoint"],
        ["scripts/skip_tolerance.py", "--checkpoint"],
        ["scripts/routing_figure.py", "--out", "{out}", "--checkpoint"],
    ],
    ids=lambda argv: argv[0],
)
def test_command_lines_take_names(shipped, tmp_path, argv):
    """Each command line gets past its checkpoint with a shipped name (then fails on the
    missing data, which is not given), and refuses a bad one without listing it as valid."""
    out = tmp_path / "out"
    argv = [a.replace("{out}", str(out)) for a in argv]
    no_data = ["--data-dir", str(tmp_path / "no-data")]
    good = _cli(*argv, SP if "hybrid" in argv[0] or "hrl" in argv[0] else BASE, *no_data)
    assert good.returncode != 0
    assert "no checkpoint at" not in good.stderr and "no-data" in good.stderr, good.stderr
    bad = _cli(*argv, "skipnet99-nope", *no_data)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
    assert "skipnet99-nope" in bad.stderr and f"shipped: {BASE}, {SP})" in bad.stderr
    assert not out.exists()
