"""The options of SkipNet-CIFAR10-v0, in one frozen dataclass validated once.

:class:`~skipenv.envs.env.SkipNetEnv` and :class:`~skipenv.envs.vector_env.SkipNetVectorEnv`
take the same options, as keywords (what ``gymnasium.make`` passes) or as an
:class:`EnvConfig`; :func:`~skipenv.envs.episode.make_episodes` builds the episode core from it.
The meaning of every option is documented on :class:`~skipenv.envs.env.SkipNetEnv`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from skipenv.data.splits import SPLITS, CifarSplit
from skipenv.models.resnet import SkipResNet
from skipenv.utils import check_int, check_real

ObsMode = Literal["vector", "activation", "dict"]
Reward = Literal["paper", "accuracy"]
RenderMode = Literal["ansi", "rgb_array"]

OBS_MODES: tuple[str, ...] = ("vector", "activation", "dict")
REWARDS: tuple[str, ...] = ("paper", "accuracy")
RENDER_MODES: tuple[str, ...] = ("ansi", "rgb_array")

#: Keywords that reach the environment but belong elsewhere, with what to do instead.
MISPLACED: dict[str, str] = {
    "autoreset_mode": (
        "autoreset_mode is an argument of a vector env: gymnasium.make_vec(..., "
        "autoreset_mode=...) for the native one (vectorization_mode='vector_entry_point', the "
        "default), vector_kwargs={'autoreset_mode': ...} with vectorization_mode='sync' or "
        "'async'; a single env does not autoreset (wrap it in gymnasium.wrappers.Autoreset)"
    ),
    "autoreset": (
        "Gymnasium 1.x's make() has no autoreset argument: wrap the single env in "
        "gymnasium.wrappers.Autoreset, or use gymnasium.make_vec (vector envs autoreset; "
        "choose how with autoreset_mode)"
    ),
    "apply_api_compatibility": (
        "apply_api_compatibility is gone from Gymnasium 1.x, and SkipNet-CIFAR10-v0 "
        "implements the current API: leave it out"
    ),
    "num_envs": "num_envs is an argument of gymnasium.make_vec, not of gymnasium.make",
    "max_episode_steps": (
        "max_episode_steps is an argument of gymnasium.make / make_vec (a TimeLimit on the "
        "single env) and of SkipNetVectorEnv, not of SkipNetEnv: use gymnasium.make(..., "
        "max_episode_steps=T)"
    ),
}

#: What to use instead of render modes Gymnasium knows but the env does not draw itself.
OTHER_RENDER_MODES: dict[str, str] = {
    "human": (
        "gymnasium.make(..., render_mode='human') wraps the single env in HumanRendering (needs "
        "pygame); for a vector env pass render_mode='rgb_array' and wrap it in "
        "gymnasium.wrappers.vector.HumanRendering"
    ),
    "rgb_array_list": (
        "gymnasium.make(..., render_mode='rgb_array_list') wraps the single env in "
        "RenderCollection; for a vector env pass render_mode='rgb_array' and collect the frames "
        "of render() (or use gymnasium.wrappers.vector.RecordVideo)"
    ),
    "ansi_list": (
        "gymnasium.make(..., render_mode='ansi_list') wraps the single env in RenderCollection; "
        "for a vector env pass render_mode='ansi' and collect the lines of render()"
    ),
}


@dataclass(frozen=True, eq=False)
class EnvConfig:
    """Options of SkipNet-CIFAR10-v0 (see :class:`~skipenv.envs.env.SkipNetEnv`).

    Raises:
        ValueError: an option out of range (quoted, with the valid values).
        TypeError: ``backbone`` or ``data`` of the wrong type.
    """

    split: str = "train"
    """CIFAR-10 split to draw images from: train, val, train-full, test, sample (the 1,000
    val images shipped in the package), val-agent or val-eval (the 3,000 / 2,000 parts of
    val: agents train on the first and are compared on the second)"""
    depth: int = 38
    """ResNet depth; a checkpoint of another depth is a CheckpointError"""
    checkpoint: str | Path | None = None
    """base, sp, hrl or static checkpoint of the backbone: a shipped model's name or a file path"""
    backbone: SkipResNet | None = None
    """a network used as is instead of a checkpoint (its depth wins)"""
    pretrained: bool = True
    """with neither checkpoint nor backbone: the shipped default of ``depth``, else random"""
    data: CifarSplit | None = None
    """images used instead of loading ``split``"""
    data_root: str | Path | None = None
    """data root for loading (default: $SKIPNET_DATA, else the per-user cache folder)"""
    device: str | torch.device = "auto"
    """auto (CUDA if available), cpu, cuda, ..."""
    reward: Reward = "paper"
    """paper (alpha / K per skipped block, minus the cross-entropy) or accuracy"""
    alpha: float = 0.1
    """the paper reward's bonus for skipping every decided block"""
    lam: float = 1.0
    """the accuracy reward's price of the full network's MACs"""
    obs_mode: ObsMode = "vector"
    """vector, activation or dict"""
    render_mode: RenderMode | None = None
    """None, rgb_array or ansi"""
    channels_last: bool | None = None
    """NHWC memory format for the backbone (default: on CPU only)"""
    augment: bool = False
    """random 32 x 32 crop of the image padded by 4 zero pixels, and a horizontal flip with
    probability 1/2, drawn per episode (the backbones' training augmentation)"""

    def __post_init__(self) -> None:
        if self.obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {self.obs_mode!r}")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        if self.render_mode is not None and self.render_mode not in RENDER_MODES:
            hint = OTHER_RENDER_MODES.get(str(self.render_mode))
            raise ValueError(
                f"render_mode must be None or one of {RENDER_MODES}, got {self.render_mode!r}"
                + (f": {hint}" if hint else "")
            )
        if self.data is None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not isinstance(self.augment, bool):
            raise TypeError(f"augment must be True or False, got {self.augment!r}")
        check_int(self.depth, "depth", minimum=8)
        check_real(self.alpha, "alpha")
        check_real(self.lam, "lam")
        if self.backbone is not None:
            if self.checkpoint is not None:
                raise ValueError(
                    "pass either backbone= or checkpoint=, not both (got "
                    f"checkpoint={self.checkpoint!r})"
                )
            if not isinstance(self.backbone, SkipResNet):
                raise TypeError(
                    "backbone must be a skipenv.models.resnet.SkipResNet, got "
                    f"{type(self.backbone).__name__}"
                )
        if self.data is not None and not isinstance(self.data, CifarSplit):
            raise TypeError(
                f"data must be a skipenv.data.splits.CifarSplit, got {type(self.data).__name__}"
            )

    @classmethod
    def of(cls, config: EnvConfig | None = None, **options: Any) -> EnvConfig:
        """``config`` (default: all defaults) with ``options`` replacing its fields.

        Raises:
            TypeError: an option that is not a field (the message lists the fields).
        """
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(fields))
        if unknown:
            hints = "".join(f"; {MISPLACED[key]}" for key in unknown if key in MISPLACED)
            raise TypeError(
                f"unknown SkipNet-CIFAR10-v0 option(s) {unknown}; the options are {fields}{hints}"
            )
        return dataclasses.replace(config or cls(), **options)
