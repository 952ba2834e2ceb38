"""What the single and the vector environment share: B episodes routed in lockstep (B >= 1).

:class:`Episodes` holds a frozen backbone, a data split on the device and the state of B
episodes that all decide the same block at the same time. ``start(indices)`` runs the stem
and block 0 on those images; ``step(execute)`` applies one decision per image to the next
block (one batched :meth:`~skipenv.models.resnet.SkipResNet.advance`, real skipping) and,
after the last block, runs the head. Both return batched numpy observations and infos (arrays
with a leading B axis); ``step`` also returns the B rewards.
:class:`~skipenv.envs.env.SkipNetEnv` uses it with B = 1,
:class:`~skipenv.envs.vector_env.SkipNetVectorEnv` with B = num_envs, so the two agree by
construction. The observation layout and the rewards are documented on SkipNetEnv.
:func:`make_episodes` builds it from an :class:`~skipenv.envs.config.EnvConfig`; :func:`row`
and :func:`info_row` take one episode out of a batch.

Per step, all compute stays on the device and one tensor crosses to the host (the
observation; the last step adds one for the loss and prediction). The executed mask and the
MACs are mirrored on the host from the actions and the MACs table, so reading them costs no
transfer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from skipenv.data.loader import augment, normalize
from skipenv.data.splits import CifarSplit, load_cifar10
from skipenv.envs.config import EnvConfig
from skipenv.models.checkpoint import load_backbone
from skipenv.models.pretrained import (
    default_pretrained,
    list_pretrained,
    pretrained_path,
    resolve_checkpoint,
)
from skipenv.models.resnet import Route, SkipResNet, build_resnet
from skipenv.training.devices import resolve_device

POOL = 8  # spatial size of the "activation" observation
BACKBONE_SEED = 0  # seed of the random weights of pretrained=False
FLOAT32_MAX = float(np.finfo(np.float32).max)

Obs = np.ndarray | dict[str, np.ndarray]


def row(batch: Any, i: int = 0, copy: bool = False) -> Any:
    """Entry ``i`` of a batched observation (array, dict or tuple of arrays, object array);
    with ``copy``, arrays are copied (no memory shared with the batch)."""
    if isinstance(batch, dict):
        return {key: row(value, i, copy) for key, value in batch.items()}
    if isinstance(batch, tuple):
        return tuple(row(value, i, copy) for value in batch)
    item = batch[i]
    return item.copy() if copy and isinstance(item, np.ndarray) else item


def info_row(info: dict[str, np.ndarray], i: int = 0) -> dict[str, Any]:
    """Entry ``i`` of a batched info: Python scalars, and arrays for per-block entries."""
    return {key: value[i].item() if value.ndim == 1 else value[i] for key, value in info.items()}


# ---------------------------------------------------------------------------- construction


def _default_checkpoint(depth: int) -> Path:
    """The shipped pretrained backbone of ``depth``: the registry's ``default_for_depth``
    entry (:func:`skipenv.models.pretrained.default_pretrained`); a ValueError says what to
    pass if none."""
    name = default_pretrained(depth)
    if name is not None:
        return pretrained_path(name)
    shipped = list_pretrained()
    listed = f"; shipped models (checkpoint=NAME): {', '.join(shipped)}" if shipped else " yet"
    raise ValueError(
        f"no pretrained ResNet-{depth} backbone ships with skipnet-gym{listed}. Pass "
        "checkpoint=PATH (a base, sp, hrl or static checkpoint, e.g. one written by train/base.py) "
        "or backbone=MODEL, or pretrained=False for random weights"
    )


def random_backbone(depth: int) -> SkipResNet:
    """``build_resnet(depth)`` with weights drawn from a fixed seed (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BACKBONE_SEED)
        return build_resnet(depth)


def resolve_backbone(config: EnvConfig) -> SkipResNet:
    """The backbone an environment routes through: ``config.backbone`` as is, else
    ``config.checkpoint`` (a path, or the name of a shipped model), else the shipped default
    for ``config.depth`` (``pretrained=True``) or random weights."""
    if config.backbone is not None:
        return config.backbone
    if config.checkpoint is not None:
        return load_backbone(resolve_checkpoint(config.checkpoint), depth=config.depth)
    if config.pretrained:
        return load_backbone(_default_checkpoint(config.depth), depth=config.depth)
    return random_backbone(config.depth)


def observation_space(obs_mode: str, c_max: int, num_blocks: int) -> spaces.Space:
    """The single-episode observation space of ``obs_mode`` (layout: see SkipNetEnv).

    Activations have no finite bound (block outputs are >= 0, but a skipped projecting
    block outputs its 1x1 projection + batch norm, which can be negative); the largest
    float32 stands in for infinity, which Gymnasium's checker rejects.
    """
    if obs_mode == "vector":
        low = np.full(c_max + 2, -FLOAT32_MAX, dtype=np.float32)
        high = np.full(c_max + 2, FLOAT32_MAX, dtype=np.float32)
        low[c_max:], high[c_max:] = 0.0, 1.0
        return spaces.Box(low, high, dtype=np.float32)
    activation = spaces.Box(-FLOAT32_MAX, FLOAT32_MAX, (c_max, POOL, POOL), np.float32)
    if obs_mode == "activation":
        return activation
    return spaces.Dict(
        {
            "activation": activation,
            "pooled": spaces.Box(-FLOAT32_MAX, FLOAT32_MAX, (c_max,), np.float32),
            "block": spaces.Discrete(num_blocks + 1),
            "flops_fraction": spaces.Box(0.0, 1.0, (1,), np.float32),
        }
    )


def pool_to_grid(h: torch.Tensor) -> torch.Tensor:
    """Adaptive average pooling to ``POOL x POOL``: B x C x H x W -> B x C x 8 x 8.

    Where 8 divides H and W this is a plain average pooling, which computes the same and is
    faster on CPU for channels_last batches (README, Performance notes).
    """
    height, width = h.shape[-2:]
    if height % POOL == 0 and width % POOL == 0:
        return F.avg_pool2d(h, (height // POOL, width // POOL))
    return F.adaptive_avg_pool2d(h, POOL)


# ---------------------------------------------------------------------------- episodes


class Episodes:
    """B SkipNet episodes in lockstep on one device.

    Args:
        backbone: the network; it is moved to ``device``, put in eval mode and frozen.
        data: the images to route (uint8, normalised with CIFAR-10 statistics at start).
        device: where everything is computed.
        config: the environment options (validated); ``obs_mode``, ``reward``, ``alpha``,
            ``lam``, ``augment`` and ``channels_last`` (default: on CPU only) are used here.
    """

    def __init__(
        self, backbone: SkipResNet, data: CifarSplit, device: torch.device, config: EnvConfig
    ) -> None:
        self.config = config
        self.alpha, self.lam = float(config.alpha), float(config.lam)
        self.obs_mode, self.reward = config.obs_mode, config.reward
        self.augment = config.augment
        obs_mode, channels_last = config.obs_mode, config.channels_last
        if backbone.num_decisions < 1:
            raise ValueError("the backbone needs at least two blocks (one decision)")
        images, labels = data.images, data.labels
        if len(data) == 0:
            raise ValueError("data holds no images")
        if images.shape[1] != backbone.in_channels:
            raise ValueError(
                f"data images have {images.shape[1]} channels, the backbone takes "
                f"{backbone.in_channels}"
            )
        if int(labels.min()) < 0 or int(labels.max()) >= backbone.num_classes:
            raise ValueError(
                f"labels must lie in 0..{backbone.num_classes - 1} (the backbone's classes), "
                f"got {int(labels.min())}..{int(labels.max())}"
            )

        self.device = device
        self.channels_last = device.type == "cpu" if channels_last is None else channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.backbone = backbone.to(device, memory_format=self.memory_format).eval()
        self.backbone.requires_grad_(False)
        self.data = data
        self.images = images.to(device)  # M x 3 x H x W uint8
        self.labels = labels.to(device)  # M int64
        self.labels_np = labels.cpu().numpy()  # M int64

        self.macs_table = backbone.macs_table(tuple(images.shape[-2:]))
        self.full_macs = self.macs_table.full
        self._execute_cost = np.array(self.macs_table.block_execute, dtype=np.int64)  # N
        self._skip_cost = np.array(self.macs_table.block_skip, dtype=np.int64)  # N
        self.c_max = max(backbone.block_channels)
        self.observation_space = observation_space(obs_mode, self.c_max, self.num_blocks)

        self._route: Route | None = None
        self._pooled: torch.Tensor | None = None  # B x width, the last observation's rows
        self.batch_size = 0
        self.next_block = 0
        self.indices = np.zeros(0, dtype=np.int64)  # B
        self.shown: torch.Tensor | None = None  # B x 3 x H x W uint8, the augmented images
        self.executed = np.zeros((0, self.num_blocks), dtype=bool)  # B x N
        self.macs = np.zeros(0, dtype=np.int64)  # B
        self.prediction: np.ndarray | None = None  # B int64, after the last step
        self.loss: np.ndarray | None = None  # B float64 cross-entropy, after the last step

    @property
    def num_blocks(self) -> int:
        return self.backbone.num_blocks

    @property
    def num_decisions(self) -> int:
        """K: decisions (steps) per episode."""
        return self.backbone.num_decisions

    @property
    def running(self) -> bool:
        """Whether an episode is under way (started and not yet at its last block)."""
        return self._route is not None

    def check_indices(self, indices: Any) -> np.ndarray:
        """``indices`` as an int64 array, each in ``0..len(data) - 1``."""
        array = np.asarray(indices)
        if array.ndim != 1 or not (array.dtype.kind in "iu" or array.size == 0):
            raise ValueError(f"image indices must be a 1-d integer sequence, got {indices!r}")
        n = len(self.data)
        if array.size and (int(array.min()) < 0 or int(array.max()) >= n):
            raise ValueError(f"image indices must lie in 0..{n - 1}, got {indices!r}")
        return array.astype(np.int64)

    def inputs(self, indices: np.ndarray) -> torch.Tensor:
        """What the backbone sees of images ``indices`` (B int64) without augmentation:
        normalised float32, B x 3 x H x W on the device in the episodes' memory format."""
        index_t = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(self.device)  # B
        return normalize(self.images.index_select(0, index_t), memory_format=self.memory_format)

    # -- one episode batch

    def start(
        self, indices: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[Obs, dict[str, np.ndarray]]:
        """Begin B episodes on images ``indices`` (B int64, checked): stem and block 0 run.

        With ``augment``, each image is randomly cropped and flipped first
        (:func:`skipenv.data.loader.augment`), drawn from a torch generator seeded by ``rng``
        (the env's ``np_random``; required then), and :attr:`shown` holds the B images as
        the backbone saw them (uint8).
        """
        if self.augment and rng is None:
            raise ValueError("augment=True draws crops and flips from rng: pass the env's rng")
        index_t = torch.from_numpy(indices).to(self.device)  # B int64
        b = len(indices)
        with torch.inference_mode():
            if self.augment:
                assert rng is not None
                g = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
                self.shown = augment(self.images.index_select(0, index_t), g)  # B x 3 x H x W
                x = normalize(self.shown, memory_format=self.memory_format)  # B x 3 x H x W
            else:
                x = self.inputs(indices)  # B x 3 x H x W
            self._route = self.backbone.start(x)  # B x 3 x H x W -> route at block 1
            self._labels_t = self.labels.index_select(0, index_t)  # B int64
            self.batch_size, self.next_block = b, 1
            self.indices = indices.copy()
            self.executed = np.zeros((b, self.num_blocks), dtype=bool)
            self.executed[:, 0] = True
            first = self.macs_table.stem + self.macs_table.block_execute[0]
            self.macs = np.full(b, first, dtype=np.int64)
            self.prediction = self.loss = None
            obs = self._observe(self._route.h, None)
        return obs, self._info()

    def step(self, execute: np.ndarray) -> tuple[Obs, np.ndarray, bool, dict[str, np.ndarray]]:
        """Decide block ``next_block`` for every image (``execute``: B bool, checked).

        Returns observations, rewards (B float64), whether the episodes ended (after the last
        block; then the head has run) and infos.
        """
        route = self._route
        if route is None:
            raise RuntimeError("no episode is running; call start() first")
        block = route.next_block
        with torch.inference_mode():
            execute_t = torch.from_numpy(execute).to(self.device)  # B bool
            outputs: list[torch.Tensor] = []  # what the block computed: R executing images
            module = self.backbone.blocks[block]
            hook = None
            if not module.projects:  # the skipping images' activations stay as they were
                hook = module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
            try:
                self.backbone.advance(route, execute_t)
            finally:
                if hook is not None:
                    hook.remove()
            changed = None  # None: every row may have changed
            if hook is not None and len(outputs) <= 1:
                run = torch.nonzero(execute_t).squeeze(1)  # R, ascending as in split_rows
                if run.numel() == 0 or (outputs and outputs[0].shape[0] == run.numel()):
                    changed = (run, outputs[0] if outputs else None)
            done = route.done
            if done:
                logits = self.backbone.finish(route)  # B x num_classes
                loss = F.cross_entropy(logits.float(), self._labels_t, reduction="none")  # B
                prediction = logits.argmax(dim=1).to(loss.dtype)  # B
                final = torch.stack([loss, prediction], dim=1).cpu().numpy()  # B x 2
            cost = np.where(execute, self._execute_cost[block], self._skip_cost[block])  # B
            self.executed[:, block] = execute
            self.macs += cost
            self.next_block = block + 1
            if done:
                self._route = None
                self.macs += self.macs_table.head
                self.prediction = final[:, 1].astype(np.int64)
                self.loss = final[:, 0].astype(np.float64)
            obs = self._observe(route.h, changed)

        if self.reward == "paper":
            rewards = np.where(execute, 0.0, self.alpha / self.num_decisions)  # B
            if done:
                rewards = rewards - final[:, 0]
        else:
            rewards = -self.lam * cost / self.full_macs  # B
            if done:
                rewards = rewards + (self.prediction == self.labels_np[self.indices])
        return obs, rewards.astype(np.float64), done, self._info()

    def abandon(self) -> None:
        """Drop the episodes under way (a truncation): ``running`` is False until ``start``."""
        self._route = None

    # -- observations and infos

    def _observe(
        self, h: torch.Tensor, changed: tuple[torch.Tensor, torch.Tensor | None] | None
    ) -> Obs:
        """Observation of activations ``h`` (B x C x H x W) after block ``next_block - 1``.

        Pooled on the device into a zeroed buffer (the zeros are the channel padding) laid out
        as the host arrays: [activation C_max x 8 x 8 | pooled C_max | 2 slots], each part
        present for its modes; then one transfer. ``changed`` = (``run``: R ascending image
        indices, ``y``: their new activations, R x C x H x W, or None when R = 0) says that
        only those rows of ``h`` differ from the last observation's (an identity-shortcut
        block): only they are pooled again, into the kept buffer.
        """
        if changed is not None and self._pooled is not None:
            run, y = changed
            if y is not None:
                self._pooled.index_copy_(0, run, self._pool_rows(y))  # R rows pooled again
            flat = self._pooled
        else:
            flat = self._pool_rows(h)  # B x width
            self._pooled = flat
        b, size = h.shape[0], self._activation_size
        host = flat.cpu().numpy()  # the step's one transfer
        if flat.device.type == "cpu":  # the same memory: the kept buffer changes next step
            host = host.copy()
        if self.obs_mode == "vector":
            return self._finish_obs(host)
        activation_np = host[:, :size].reshape(b, self.c_max, POOL, POOL)
        if self.obs_mode == "activation":
            return activation_np
        return self._finish_obs({"activation": activation_np, "pooled": host[:, size:]})

    @property
    def _activation_size(self) -> int:
        return 0 if self.obs_mode == "vector" else self.c_max * POOL * POOL

    def _pool_rows(self, h: torch.Tensor) -> torch.Tensor:
        """The device part of the observation rows of activations ``h``: B x width."""
        b, c = h.shape[:2]
        size = self._activation_size
        width = {"vector": self.c_max + 2, "activation": size, "dict": size + self.c_max}
        flat = h.new_zeros(b, width[self.obs_mode])  # B x width
        if self.obs_mode != "vector":
            activation = flat[:, :size].view(b, self.c_max, POOL, POOL)  # B x C_max x 8 x 8
            activation[:, :c] = pool_to_grid(h)
        if self.obs_mode != "activation":
            flat[:, size : size + c] = h.mean(dim=(2, 3))  # B x C
        return flat

    def _finish_obs(self, obs: Obs) -> Obs:
        """Write the block and FLOPs entries (host-side counters) into ``obs``."""
        fraction = self.macs / self.full_macs  # B float64
        if isinstance(obs, dict):
            obs["block"] = np.full(self.batch_size, self.next_block, dtype=np.int64)
            obs["flops_fraction"] = fraction.astype(np.float32)[:, None]
        elif self.obs_mode == "vector":
            obs[:, self.c_max] = self.next_block / self.num_blocks
            obs[:, self.c_max + 1] = fraction
        return obs

    def _info(self) -> dict[str, np.ndarray]:
        info = {
            "index": self.indices.copy(),
            "label": self.labels_np[self.indices],
            "macs": self.macs.copy(),
            "flops_fraction": self.macs / self.full_macs,
            "executed": self.executed.copy(),
            "next_block": np.full(self.batch_size, self.next_block, dtype=np.int64),
        }
        if self.prediction is not None:
            info["prediction"] = self.prediction.copy()
            info["correct"] = self.prediction == info["label"]
            info["loss"] = self.loss.copy()
        return info


def make_episodes(config: EnvConfig) -> Episodes:
    """The :class:`Episodes` of an environment with options ``config`` (already validated):
    device, backbone and data resolved, cheapest first."""
    device = resolve_device(config.device)
    backbone = resolve_backbone(config)
    data = config.data
    if data is None:
        data = load_cifar10(config.split, config.data_root, progress=False)
    return Episodes(backbone, data, device, config)


class EpisodeFacts:
    """Read-only facts of an env that runs its episodes through ``self.episodes``."""

    episodes: Episodes

    @property
    def backbone(self) -> SkipResNet:
        return self.episodes.backbone

    @property
    def data(self) -> CifarSplit:
        return self.episodes.data

    @property
    def device(self) -> torch.device:
        return self.episodes.device

    @property
    def num_blocks(self) -> int:
        """N: blocks of the backbone."""
        return self.episodes.num_blocks

    @property
    def num_decisions(self) -> int:
        """K = N - 1: steps per episode."""
        return self.episodes.num_decisions
