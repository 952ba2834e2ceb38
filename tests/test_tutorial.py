"""docs/tutorial.md runs top to bottom: its python blocks, in order, on a tiny SkipNet.

The tutorial reads three settings from the environment (checkpoint, batch of envs, PPO
steps); here they name a tiny ResNet-14 SP checkpoint and a few hundred PPO steps. The images
are the sample shipped in the package (split "sample"), as in the tutorial itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from conftest import REPO

from agents.gates import RNNGate
from agents.skipnet import SkipNet
from skipenv.models.checkpoint import save_checkpoint
from skipenv.models.resnet import build_resnet

TUTORIAL = REPO / "docs" / "tutorial.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_tutorial_runs_on_a_tiny_backbone(tmp_path: Path) -> None:
    blocks = python_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 6  # settings, env, episode, gate agent, PPO, comparison
    torch.manual_seed(0)
    backbone = build_resnet(14, widths=(4, 8, 16))
    net = SkipNet(backbone, RNNGate(backbone.block_channels))
    checkpoint = save_checkpoint(
        tmp_path / "tiny-sp.pt",
        {
            "kind": "sp",
            "arch": net.arch(),
            "model": net.backbone.state_dict(),
            "gate": net.gate.state_dict(),
        },
    )
    script = tmp_path / "tutorial.py"
    script.write_text("\n\n".join(blocks))
    (tmp_path / "scripts").symlink_to(REPO / "scripts")  # the tutorial runs from the repo root
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "TUTORIAL_CHECKPOINT": str(checkpoint),
        "TUTORIAL_NUM_ENVS": "100",
        "TUTORIAL_PPO_STEPS": "500",
        "MPLBACKEND": "Agg",
    }
    r = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    assert "gate: accuracy" in r.stdout and "prediction" in r.stdout
    for made in ("episode.png", "ppo_skipnet.zip", "compare.png", "compare.json"):
        assert (tmp_path / made).stat().st_size > 0, made


def test_readme_links_the_tutorial() -> None:
    assert "(docs/tutorial.md)" in (REPO / "README.md").read_text()
