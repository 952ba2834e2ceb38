"""Batched tensor augmentation and batch iteration for CIFAR-10 held as uint8 tensors.

* :func:`augment` - random crop with zero padding and random horizontal flip for a whole batch
  in one gather, on whatever device the batch lives (no per-image Python loop).
* :func:`normalize` - uint8 to float32 ``(x / 255 - mean) / std`` per channel (uint8 only:
  float input is refused, its scale is ambiguous).
* :class:`BatchLoader` - moves a split to the device once, then yields shuffled, augmented,
  normalized ``(x, y)`` batches; each epoch's order and augmentation are a pure function of
  ``(seed, epoch)``, so a resumed run can replay any epoch with :meth:`BatchLoader.set_epoch`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from skipenv.data.sources import CIFAR10_MEAN, CIFAR10_STD
from skipenv.data.splits import CifarSplit
from skipenv.utils import check_int

__all__ = ["BatchLoader", "augment", "normalize"]


def augment(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    padding: int = 4,
    flip: bool = True,
) -> torch.Tensor:
    """Random ``H x W`` crop of each zero-padded image, and a random horizontal flip.

    Each image is padded with ``padding`` zero pixels on every side and an ``H x W`` window is
    taken at a uniformly random offset in ``0..2*padding`` per axis; with ``flip``, the window is
    mirrored left-right with probability 1/2. All images are done in one gather (the flip is
    folded into the column indices), on the device of ``images``.

    Args:
        images: ``B x C x H x W`` tensor (normally uint8).
        generator: source of randomness; for reproducible batches pass a seeded generator. A
            generator on another device than ``images`` is fine (the few random numbers are
            moved).
        padding: zero pixels added on each side before cropping (4 for CIFAR-10).
        flip: whether to flip horizontally with probability 1/2.

    Returns:
        ``B x C x H x W`` tensor of the same dtype and device.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be B x C x H x W, got shape {tuple(images.shape)}")
    check_int(padding, "padding", minimum=0)
    b, c, h, w = images.shape
    device = images.device
    rand_device = generator.device if generator is not None else device
    # Random draws, always in this order so a seeded generator gives the same batch.
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=rand_device)  # B
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=rand_device)  # B
    if flip:
        mirrored = torch.rand(b, generator=generator, device=rand_device) < 0.5  # B bool
    top, left = top.to(device), left.to(device)

    padded = F.pad(images, (padding, padding, padding, padding))  # B x C x H+2p x W+2p, zeros
    wp = w + 2 * padding
    rows = top[:, None] + torch.arange(h, device=device)  # B x H, rows in padded image
    cols = left[:, None] + torch.arange(w, device=device)  # B x W, cols in padded image
    if flip:
        cols = torch.where(mirrored.to(device)[:, None], cols.flip(1), cols)  # B x W
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)  # B x 1 x HW
    out = torch.gather(padded.reshape(b, c, -1), 2, flat.expand(b, c, h * w))  # B x C x HW
    return out.reshape(b, c, h, w)  # B x C x H x W


def _mean_std(
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    channels: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``255 * mean`` and ``255 * std`` as ``1 x C x 1 x 1`` float32 tensors on ``device``."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
    if mean_t.numel() != channels or std_t.numel() != channels:
        raise ValueError(
            f"mean and std need {channels} values (one per channel), got {mean_t.numel()} and "
            f"{std_t.numel()}"
        )
    if not bool((std_t > 0).all()):
        raise ValueError(f"std must be positive, got {std_t.tolist()}")
    shape = (1, channels, 1, 1)
    return (mean_t * 255).reshape(shape).to(device), (std_t * 255).reshape(shape).to(device)


def _normalize_with(
    images: torch.Tensor,
    mean255: torch.Tensor,
    std255: torch.Tensor,
    memory_format: torch.memory_format,
) -> torch.Tensor:
    # uint8 -> float32 is always a fresh tensor, so the in-place steps never touch ``images``
    x = images.to(dtype=torch.float32, memory_format=torch.contiguous_format)  # B x C x H x W
    x = x.sub_(mean255).div_(std255)  # (x / 255 - mean) / std
    if memory_format != torch.contiguous_format:
        # Re-striding afterwards is faster on CPU than broadcasting over NHWC strides.
        x = x.contiguous(memory_format=memory_format)  # B x C x H x W, e.g. NHWC strides
    return x


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor = CIFAR10_MEAN,
    std: Sequence[float] | torch.Tensor = CIFAR10_STD,
    *,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Per-channel ``(x / 255 - mean) / std`` of a ``B x C x H x W`` uint8 batch, as float32.

    ``mean`` and ``std`` are in 0..1 units (default: CIFAR-10's). Pass
    ``memory_format=torch.channels_last`` for NHWC-strided output. Returns a new tensor;
    ``images`` is never changed.

    Raises:
        TypeError: ``images`` is not uint8. A float batch may be on 0..1 or on 0..255, and
            guessing would silently give wrong inputs, so it is refused: convert it to uint8
            (``(x * 255).round().to(torch.uint8)`` for 0..1) or normalise it yourself.
        ValueError: not 4-d, or ``mean``/``std`` of the wrong length or a std <= 0.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(
            f"normalize takes uint8 images (values 0..255), got {got}: a float batch may be "
            "on 0..1 or on 0..255, so it is not guessed. Convert it to uint8 first (e.g. "
            "(x * 255).round().to(torch.uint8) for values in 0..1), or normalise it yourself "
            "with (x - mean) / std on its own scale"
        )
    if images.ndim != 4:
        raise ValueError(f"images must be B x C x H x W, got shape {tuple(images.shape)}")
    mean255, std255 = _mean_std(mean, std, images.shape[1], images.device)
    return _normalize_with(images, mean255, std255, memory_format)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for one epoch, a pure function of ``(seed, epoch)``."""
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class BatchLoader:
    """Iterate over a CIFAR split in ``(x, y)`` batches on one device.

    The uint8 images and labels are moved to ``device`` once, at construction. Each pass
    (``iter(loader)``) is one epoch: a generator on the device is seeded from ``(seed, epoch)``
    and draws the permutation (when ``shuffle``) and then, batch by batch, the crops and flips
    (when ``augment``). The same seed therefore gives the same batches, different epochs
    differ, and :meth:`set_epoch` replays any epoch when resuming. (Random streams differ
    between CPU and CUDA, so reproducibility is per device type.)

    Yields:
        ``x``: ``B x 3 x 32 x 32`` float32, normalized (channels_last strides if asked);
        ``y``: ``B`` int64 labels. Both on ``device``.

    Args:
        data: a :class:`~skipenv.data.CifarSplit`, or an ``M x C x H x W`` uint8 tensor with
            ``labels`` given separately.
        labels: ``M`` integer labels when ``data`` is a tensor.
        batch_size: images per batch (> 0).
        shuffle: a fresh permutation every epoch; otherwise the stored order.
        augment: random crop with ``padding`` zero pixels and random horizontal flip.
        drop_last: drop the last incomplete batch.
        device: where batches live; default the device the images are on.
        seed: seeds every epoch's randomness; None draws one from torch's global generator.
        channels_last: yield ``x`` in ``torch.channels_last`` memory format.
        mean, std: per-channel normalization constants in 0..1 units.
        padding, flip: passed to :func:`augment`.
    """

    def __init__(
        self,
        data: CifarSplit | torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        batch_size: int = 128,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        device: str | torch.device | None = None,
        seed: int | None = 0,
        channels_last: bool = False,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        padding: int = 4,
        flip: bool = True,
    ) -> None:
        if isinstance(data, CifarSplit):
            if labels is not None:
                raise ValueError("labels must not be given when data is a CifarSplit")
            images, labels = data.images, data.labels
        elif isinstance(data, torch.Tensor):
            if labels is None:
                raise ValueError("labels are required when data is an image tensor")
            images = data
        else:
            raise TypeError(f"data must be a CifarSplit or a tensor, got {type(data).__name__}")
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(
                f"images must be an M x C x H x W uint8 tensor, got {tuple(images.shape)} "
                f"{images.dtype}"
            )
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(
                f"labels must be a 1-d integer tensor, got {tuple(labels.shape)} {labels.dtype}"
            )
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if images.shape[0] == 0:
            raise ValueError("cannot iterate over an empty dataset")
        check_int(batch_size, "batch_size", minimum=1)
        if drop_last and batch_size > images.shape[0]:
            raise ValueError(
                f"drop_last=True with batch_size={batch_size} > {images.shape[0]} samples "
                "would yield no batches"
            )
        check_int(padding, "padding", minimum=0)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
        check_int(seed, "seed")

        self.device = torch.device(device) if device is not None else images.device
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.images = images.to(self.device).contiguous()  # M x C x H x W uint8
        self.labels = labels.to(self.device, torch.int64)  # M int64
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.seed = seed
        self.padding = padding
        self.flip = flip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._mean255, self._std255 = _mean_std(mean, std, images.shape[1], self.device)
        self._epoch = 0

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter(loader)`` will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` produce epoch ``epoch`` (e.g. when resuming)."""
        check_int(epoch, "epoch", minimum=0)
        self._epoch = epoch

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        self._epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(_epoch_seed(self.seed, epoch))
        n = self.num_samples
        if self.shuffle:
            order = torch.randperm(n, generator=generator, device=self.device)  # M int64
        else:
            order = torch.arange(n, device=self.device)  # M int64
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]  # B int64
            x = self.images.index_select(0, idx)  # B x C x H x W uint8
            if self.augment:
                x = augment(x, generator, padding=self.padding, flip=self.flip)
            x = _normalize_with(x, self._mean255, self._std255, self.memory_format)  # float32
            y = self.labels.index_select(0, idx)  # B int64
            yield x, y

    def __repr__(self) -> str:
        return (
            f"BatchLoader(n={self.num_samples}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, augment={self.augment}, drop_last={self.drop_last}, "
            f"device={self.device}, seed={self.seed}, epoch={self._epoch})"
        )
