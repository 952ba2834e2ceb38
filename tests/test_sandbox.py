"""Issue 11, case 8: the test suite writes only inside its temporary folders (conftest points
HOME, the XDG folders and SKIPNET_CACHE into one for the whole session)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAL_ENV, REPO, SANDBOX_VARS
from synthetic import write_folder

CHILD = """
import sys
from skipenv.data.cache import default_cache_dir
from skipenv.data.splits import load_cifar10
load_cifar10("train-full", sys.argv[1], progress=False)
print(default_cache_dir())
"""


def _real_cache_dirs() -> list[Path]:
    """Where the user's tensor cache would be outside the suite."""
    dirs = []
    if REAL_ENV.get("SKIPNET_CACHE"):
        dirs.append(Path(REAL_ENV["SKIPNET_CACHE"]).expanduser())
    home = Path(REAL_ENV["HOME"]) if REAL_ENV.get("HOME") else None
    xdg = REAL_ENV.get("XDG_CACHE_HOME") or (str(home / ".cache") if home else None)
    if xdg:
        dirs.append(Path(xdg) / "skipnet-gym" / "tensors")
    return dirs


def test_the_session_is_sandboxed(sandbox: Path):
    for var in SANDBOX_VARS:
        assert Path(os.environ[var]).is_relative_to(sandbox), var
    assert Path.home().is_relative_to(sandbox)


@pytest.mark.parametrize("skipnet_cache", ["set", "unset"])
def test_a_subprocess_writes_nothing_under_the_real_cache(sandbox, tmp_path, skipnet_cache):
    """A child process started with the suite's environment (as the training-script tests
    start theirs) caches its data inside the sandbox, and nothing appears under the user's
    real cache folders, with SKIPNET_CACHE set or left to the platform default."""
    root = tmp_path / "data"
    write_folder(root / "train", per_class=1)
    real = _real_cache_dirs()
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if skipnet_cache == "unset":
        env.pop("SKIPNET_CACHE")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(root)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    used = Path(result.stdout.strip().splitlines()[-1])
    assert used.is_relative_to(sandbox), used
    (written,) = [p.name for p in used.iterdir() if str(root.resolve()) in _source(p)]
    # that cache file (named after this test's data folder) is nowhere in the real cache
    assert not any((folder / written).exists() for folder in real), real
    assert not any(used.is_relative_to(folder) for folder in real)


def _source(path: Path) -> str:
    import torch

    return torch.load(path, weights_only=True)["source_path"]
