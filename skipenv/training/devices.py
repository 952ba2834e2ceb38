"""Where computation runs: choosing the torch device, CPU threads, and tuning the CPU memory
allocator."""

from __future__ import annotations

import ctypes
import os

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


def tune_cpu_allocator(pad_bytes: int = 256 * 2**20) -> bool:
    """Stop glibc from handing freed memory back to the OS after every forward pass.

    A CIFAR ResNet at batch 256 allocates and frees activations of up to 17 MB per layer.
    glibc's defaults give such blocks back to the kernel (mmap / heap trimming) and fault them
    in again on the next call, a sizeable part of a forward pass on CPU (measured: README,
    "Performance notes"). This keeps them: freed memory stays in the
    process (it is reused, so peak memory is unchanged), blocks up to 32 MB come from the heap.

    Call it once, early, in CPU-bound programs (benchmarks, training). Returns whether the
    settings were applied (False off glibc, e.g. on macOS or musl); it never raises.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # from glibc's malloc.h
        return bool(
            libc.mallopt(m_trim_threshold, 2**30)
            and libc.mallopt(m_top_pad, pad_bytes)
            and libc.mallopt(m_mmap_threshold, 32 * 2**20)
        )
    except (OSError, AttributeError):
        return False


AMP_CHOICES = ("none", "bf16", "fp16")


def autocast(device: torch.device, amp: str = "none") -> torch.autocast:
    """Mixed-precision context for ``device``: ``none``, ``bf16`` or ``fp16`` (CUDA only).

    On CPUs with AVX-512 BF16, ``bf16`` makes training steps markedly faster (measured:
    README, "Performance notes"); batch norm and the loss stay in float32.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"unknown amp {amp!r}; choose one of {AMP_CHOICES}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp 'fp16' needs a CUDA device; use 'bf16' on the CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "none")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads and return the number in use.

    ``None`` (the entry points' default) leaves torch's own setting: every core available to
    the process, or ``$OMP_NUM_THREADS`` when that is set. Lower it
    when another job shares the machine: threads that wait on a busy core spin, which can make
    a run slower than with fewer threads (measured: README, "Performance notes").

    Raises:
        ValueError: ``threads`` < 1.
    """
    if threads is None:
        return torch.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads must be a whole number >= 1, got {threads!r}")
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def prepare_device(device: str | torch.device = "auto", threads: int | None = None) -> torch.device:
    """What every entry point does first: :func:`set_threads`, :func:`resolve_device` and, on
    CPU, :func:`tune_cpu_allocator`. Returns the device.

    Raises:
        ValueError: ``threads`` < 1 or an unknown ``device``.
    """
    set_threads(threads)
    resolved = resolve_device(device)
    if resolved.type == "cpu":
        tune_cpu_allocator()
    return resolved
