"""Device choice and the CPU allocator settings."""

from __future__ import annotations

import platform

import pytest
import torch

from skipenv.training.devices import resolve_device, tune_cpu_allocator


def test_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"no CUDA GPU.*--device cpu"):
        resolve_device("cuda")


def test_unknown_device() -> None:
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_allocator_tuning_applies_on_glibc() -> None:
    applied = tune_cpu_allocator()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
