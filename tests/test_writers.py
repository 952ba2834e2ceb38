"""Issue 11, case 3: every file the project writes is written only in a form its reader
accepts, checked when written (the error names the offending key), and a reader's error names
the real cause (a refused type is not truncation)."""

from __future__ import annotations

import json
import pathlib
from collections import OrderedDict
from enum import IntEnum
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import write_folder

from skipenv.data import cache as data_cache
from skipenv.data.splits import load_cifar10
from skipenv.models import pretrained
from skipenv.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from skipenv.models.resnet import build_resnet
from skipenv.training.runs import RunDir
from skipenv.utils import PayloadError, atomic_write, check_payload, write_json


def _payload(**metrics) -> dict:
    model = build_resnet(8, widths=(4, 8, 16))
    arch = {"name": "cifar_resnet", "depth": 8, "num_classes": 10, "widths": [4, 8, 16]}
    return {"kind": "base", "config": {}, "arch": arch, "model": model.state_dict(), **metrics}


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"metrics": {"val_accuracy": np.float64(0.9)}}, r"metrics\.val_accuracy: numpy\.float64"),
        ({"metrics": {"rates": np.zeros(3)}}, r"metrics\.rates: numpy\.ndarray"),
        ({"config": {"out": pathlib.Path("runs/x")}}, r"config\.out: pathlib\.PosixPath"),
        ({"metrics": {"steps": [1, np.int64(2)]}}, r"metrics\.steps\[1\]: numpy\.int64"),
        ({"config": {"mode": IntEnum("Mode", "A B").A}}, r"config\.mode: .*Mode"),
        ({"config": {np.int64(3): 1}}, r"config\[np\.int64\(3\)\] \(a key\): numpy\.int64"),
    ],
)
def test_save_checkpoint_refuses_what_safe_loading_refuses(tmp_path, extra, where):
    path = save_checkpoint(tmp_path / "m.pt", _payload())  # a good one already there
    before = path.read_bytes()
    with pytest.raises(PayloadError, match=rf"{where} is not read back.*convert it first"):
        save_checkpoint(path, _payload(**extra))
    assert path.read_bytes() == before  # not replaced
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left
    with pytest.raises(PayloadError, match=where):
        save_checkpoint(tmp_path / "new.pt", _payload(**extra))
    assert not (tmp_path / "new.pt").exists()


def test_save_checkpoint_takes_what_training_writes(tmp_path):
    """Optimizer and scheduler states, RNG states, OrderedDicts, tuples, sets, NaN: all read
    back with weights_only=True."""
    model = build_resnet(8, widths=(4, 8, 16))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    scheduler.step()
    payload = _payload(
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        rng={"torch": torch.get_rng_state()},
        metrics={"loss": float("nan"), "pair": (1, 2.0), "set": {1, 2}},
        extra=OrderedDict(a=torch.Size([2]), b=torch.float32, c=torch.device("cpu")),
    )
    back = load_checkpoint(save_checkpoint(tmp_path / "m.pt", payload))
    assert back["scheduler"]["last_epoch"] == 1 and back["metrics"]["pair"] == (1, 2.0)


def test_a_write_that_does_not_read_back_replaces_nothing(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def refuse(tmp: Path) -> None:
        raise ValueError("does not read back")

    with pytest.raises(ValueError, match="does not read back"):
        atomic_write(path, lambda f: f.write(b"new"), refuse)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_load_checkpoint_names_the_real_cause(tmp_path):
    refused = tmp_path / "numpy.pt"
    torch.save({"format": "skipnet-gym/1", "metrics": {"acc": np.float64(0.9)}}, refused)
    with pytest.raises(CheckpointError, match=r"safe \(weights_only=True\) loading refuses") as e:
        load_checkpoint(refused)
    assert "numpy" in str(e.value) and "truncated" not in str(e.value)
    good = save_checkpoint(tmp_path / "good.pt", _payload())
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_checkpoint(torn)
    assert "refuses" not in str(e.value)


# ---------------------------------------------------------------------------- exported weights


def test_exported_weights_are_checked_and_read_back(tmp_path, monkeypatch):
    ckpt = save_checkpoint(tmp_path / "final.pt", _payload(metrics={"val_accuracy": 0.5}))
    out = pretrained.export_weights(ckpt, tmp_path / "w.pt", name="tiny")
    assert load_checkpoint(out)["name"] == "tiny"
    # the registry entry printed for it is what the registry reader accepts
    entry = pretrained.registry_entry(out)
    assert entry["name"] == "tiny" and entry["depth"] == 8
    json.loads(json.dumps(entry))
    # a value the reader would refuse never reaches the file
    monkeypatch.setattr(pretrained, "EXPORT_KEYS", (*pretrained.EXPORT_KEYS, "bad"))
    payload = _payload(bad={"x": np.float32(1)})
    torch.save({"format": "skipnet-gym/1", **payload}, tmp_path / "raw.pt")
    with pytest.raises(CheckpointError, match="refuses"):
        pretrained.export_weights(tmp_path / "raw.pt", tmp_path / "w2.pt", name="t2")
    assert not (tmp_path / "w2.pt").exists()


def test_registry_entry_is_checked(tmp_path, monkeypatch):
    ckpt = save_checkpoint(tmp_path / "m.pt", _payload(name="not a valid name!"))
    with pytest.raises(CheckpointError, match="name must be"):
        pretrained.registry_entry(ckpt)


# ---------------------------------------------------------------------------- data cache


def test_data_cache_is_read_back_when_written(tmp_path, monkeypatch):
    root, cache = tmp_path / "data", tmp_path / "cache"
    write_folder(root / "train", per_class=2)
    first = load_cifar10("train-full", root, cache_dir=cache, progress=False)
    (cache_file,) = cache.iterdir()
    assert torch.load(cache_file, weights_only=True)["images"].shape == (20, 3, 32, 32)
    # a cache write that would not read back (here: garbage) warns and replaces nothing
    good = cache_file.read_bytes()
    monkeypatch.setattr(data_cache.torch, "save", lambda obj, f: f.write(b"garbage"))
    with pytest.warns(data_cache.DataCacheWarning, match="does not read back|Could not write"):
        again = load_cifar10("train-full", root, cache_dir=cache, progress=False, rebuild=True)
    assert torch.equal(again.images, first.images)
    assert cache_file.read_bytes() == good and len(list(cache.iterdir())) == 1


# ---------------------------------------------------------------------------- metrics.jsonl


@pytest.mark.parametrize(
    ("metrics", "where"),
    [
        ({"step": 1, "val_accuracy": np.float64(0.9)}, r"val_accuracy: numpy\.float64"),
        ({"step": 1, "rates": (0.1, 0.2)}, r"rates: tuple"),
        ({"step": 1, "acc": torch.tensor(0.5)}, r"acc: torch\.Tensor"),
        ({"step": 1, 3: 0.5}, r"\[3\] \(a key\)"),
    ],
)
def test_metrics_line_is_checked(tmp_path, metrics, where):
    run = RunDir(tmp_path / "run", resume=False)
    run.log({"step": 0, "val_accuracy": 0.5, "loss": float("nan")})
    with pytest.raises(PayloadError, match=where):
        run.log(metrics)
    lines = run.metrics.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["val_accuracy"] == 0.5


# ---------------------------------------------------------------------------- JSON results


def test_json_results_are_checked_and_read_back(tmp_path):
    rows = [{"agent": "a", "accuracy": 0.5}, {"agent": "b", "accuracy": np.float32(0.4)}]
    with pytest.raises(PayloadError, match=r"rows?\[1\]\.accuracy: numpy\.float32|\[1\]"):
        write_json(tmp_path / "r.json", rows)
    assert not (tmp_path / "r.json").exists()
    rows[1]["accuracy"] = 0.4
    assert json.loads(write_json(tmp_path / "r.json", rows).read_text()) == rows


def test_check_payload_formats():
    check_payload({"a": [1, 2.0, "x", None, True]}, "json")
    with pytest.raises(ValueError, match="fmt"):
        check_payload({}, "yaml")  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match=r"\(the whole payload\)"):
        check_payload(np.zeros(2), "torch")
