"""Choosing the torch device: ``auto`` means CUDA when present, else the CPU."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> ``cuda`` if available else ``cpu``; ``cuda`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} was asked for but torch sees no CUDA GPU here; "
            "use --device cpu (or auto)"
        )
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(
            f"unknown device {device!r}; use one of {DEVICE_CHOICES} (or e.g. 'cuda:1')"
        ) from err
