"""The recipe scripts (scripts/train_*.sh): shell syntax, and the shared resumable stage."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

RECIPES = sorted((REPO / "scripts").glob("train_*.sh"))


@pytest.mark.parametrize("script", RECIPES, ids=lambda p: p.name)
def test_recipe_is_valid_bash(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_stage_runs_once_and_resumes(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    fake = tmp_path / "fake_python"  # records its arguments; writes final.pt unless told not to
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {log}\n'
        'out=$3; mkdir -p "$out"; [[ -n ${FAIL:-} ]] && { touch "$out/last.pt"; exit 1; }\n'
        'touch "$out/final.pt"\n'
    )
    fake.chmod(0o755)

    def stage(out: str, fail: bool = False) -> subprocess.CompletedProcess:
        env = os.environ | {"PY": str(fake)} | ({"FAIL": "1"} if fail else {})
        cmd = f"source {REPO / 'scripts/lib/stage.sh'} && stage {out} base.py --epochs 2"
        return subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True,
                              text=True)  # fmt: skip

    assert stage("runs/a", fail=True).returncode == 1  # interrupted: last.pt only
    assert stage("runs/a").returncode == 0  # resumes
    done = stage("runs/a")
    assert done.returncode == 0 and "runs/a: done" in done.stdout
    assert log.read_text().splitlines() == [
        "train/base.py --out runs/a --epochs 2",
        "train/base.py --out runs/a --epochs 2 --resume",
    ]
