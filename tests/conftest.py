"""Shared fixtures and helpers: tiny networks (fast on 2 CPU cores), synthetic splits, the env
id, and loading the entry-point scripts."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

import skipenv
from skipenv.data.splits import CifarSplit
from skipenv.models.resnet import SkipResNet, build_resnet
from skipenv.utils import import_script

REPO = Path(__file__).resolve().parents[1]
ENV_ID = skipenv.ENV_ID

# ---------------------------------------------------------------------------- the sandbox
# The suite writes only inside temporary folders: HOME, XDG_CACHE_HOME and SKIPNET_CACHE point
# into one for the whole session, set when pytest starts (pytest_configure, before any test
# module is imported, so environments copied from os.environ for subprocesses at import time
# get them too) and checked by an autouse session fixture.

SANDBOX_VARS = ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "SKIPNET_CACHE")
#: The user's values of SANDBOX_VARS before the session (None: unset), for the test that
#: proves nothing is written under the real ones.
REAL_ENV: dict[str, str | None] = {}
_SANDBOX: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    if _SANDBOX:
        return
    sandbox = Path(tempfile.mkdtemp(prefix="skipnet-gym-tests-"))
    _SANDBOX.append(sandbox)
    for var in SANDBOX_VARS:
        REAL_ENV[var] = os.environ.get(var)
    os.environ["HOME"] = str(sandbox / "home")
    os.environ["XDG_CACHE_HOME"] = str(sandbox / "home" / ".cache")
    os.environ["XDG_CONFIG_HOME"] = str(sandbox / "home" / ".config")
    os.environ["XDG_DATA_HOME"] = str(sandbox / "home" / ".local" / "share")
    os.environ["SKIPNET_CACHE"] = str(sandbox / "skipnet-cache")
    (sandbox / "home").mkdir()


def pytest_unconfigure(config: pytest.Config) -> None:
    for var, value in REAL_ENV.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    while _SANDBOX:
        shutil.rmtree(_SANDBOX.pop(), ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def sandbox() -> Iterator[Path]:
    """The session's temporary folder that HOME, the XDG folders and SKIPNET_CACHE point into
    (set by pytest_configure, before any test module was imported)."""
    root = _SANDBOX[0]
    for var in SANDBOX_VARS:
        assert Path(os.environ[var]).is_relative_to(root), (var, os.environ[var])
    yield root


def synthetic_split(n: int = 20, seed: int = 0) -> CifarSplit:
    """``n`` random uint8 images (a fixed seed), labels cycling over the 10 classes."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return CifarSplit(images, torch.arange(n) % 10, split="synthetic")


def load_script(path: str) -> ModuleType:
    """The script ``REPO/path`` (e.g. ``train/base.py``) as a module, imported once."""
    return import_script(REPO / path)


@pytest.fixture
def tiny_model() -> SkipResNet:
    """ResNet-14 with narrow stages: 6 blocks, 5 decisions, two projecting blocks."""
    torch.manual_seed(0)
    return build_resnet(14, widths=(4, 8, 16))


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tiny networks gain nothing from threads, and spin-waiting threads stall when the CPU is
    shared (CI runs on 2 cores): one intra-op thread keeps the suite fast and steady."""
    torch.set_num_threads(1)
