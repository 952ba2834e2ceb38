"""SkipNet-CIFAR10-v0: one episode routes one CIFAR-10 image through a frozen SkipNet backbone."""

from __future__ import annotations

from typing import Any, ClassVar, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from skipenv.envs.config import RENDER_MODES, EnvConfig
from skipenv.envs.episode import EpisodeFacts, Episodes, Obs, info_row, make_episodes, row
from skipenv.envs.render import render_episode


class SkipNetEnv(EpisodeFacts, gym.Env):
    """Route one CIFAR-10 image through a frozen ResNet, deciding block by block whether to run it.

    ## Description

    SkipNet (Wang et al., ECCV 2018) places a gate before every residual block of a ResNet; per
    image, the gate decides from the activation computed so far whether the next block runs.
    Here the gate is the agent. The backbone, a CIFAR ResNet of depth 6n + 2 with
    N = 3n blocks, is frozen (eval mode, no gradients). A skipped block is never computed for
    the image (real skipping): its input passes on through the shortcut, the identity or, for
    the first block of stages 2 and 3, the 1x1 projection (conv + batch norm). Block 0 always
    runs, so an episode has K = N - 1 decisions (17 for ResNet-38).

    ## Action Space

    ``Discrete(2)``: 1 executes the next block, 0 skips it.

    ## Observation Space

    ``C_max`` is the widest stage (``max(backbone.block_channels)``: 64 for the standard
    widths) and ``C_i`` the channels of block ``i``. After a step, ``next_block`` is the block
    the next decision is about and block ``next_block - 1`` has just been computed (run or
    skipped). ``obs_mode="vector"`` (default, for ``MlpPolicy``) gives a ``Box`` of float32 of
    shape ``(C_max + 2,)``:

    | Index               | Observation                                                    |
    |---------------------|----------------------------------------------------------------|
    | 0 .. C_i - 1        | global-average-pooled output of block ``i = next_block - 1``    |
    | C_i .. C_max - 1    | zeros (padding)                                                |
    | C_max               | ``next_block / N``: 1/N at reset, 1.0 in the terminal obs      |
    | C_max + 1           | MACs spent so far / MACs of the full network (head included    |
    |                     | once it has run; gates are not counted), in (0, 1]             |

    The block that produced the activation is ``round(obs[C_max] * N) - 1``, and its channel
    count ``backbone.block_channels`` of it. ``obs_mode="activation"`` (for CNN policies) is
    that block's output adaptively average-pooled to ``C_max x 8 x 8`` (channels ``C_i`` and
    up zero): ``Box`` float32 ``(C_max, 8, 8)``; in SB3 it needs a features extractor of
    one's own (the default ``NatureCNN`` takes uint8 images of at least 36 x 36, and SB3's
    checker warns that this Box is no such image). ``obs_mode="dict"`` (for
    ``MultiInputPolicy``) is a ``Dict`` with ``"activation"`` (as above), ``"pooled"``
    (``Box (C_max,)``, the first ``C_max`` entries of the vector form), ``"block"``
    (``Discrete(N + 1)``, ``next_block``) and ``"flops_fraction"`` (``Box(0, 1, (1,))``).

    Activations have no finite bound: block outputs are >= 0 (ReLU), but a skipped projecting
    block outputs its 1x1 projection + batch norm, which can be negative. Their ``Box``
    bounds are +-(largest float32), since Gymnasium's checker rejects infinite ones. Every
    call returns fresh arrays.

    ## Rewards

    ``reward="paper"`` (default; the paper's hybrid-RL reward): ``alpha / K`` for a skipped
    block and 0 for an executed one; the last step adds minus the cross-entropy of the
    final prediction with respect to the label. An episode's return is
    ``alpha * (fraction of the K blocks skipped) - cross_entropy``.

    ``reward="accuracy"``: every step costs ``-lam * m / M``, where ``m`` is what the step
    spent (the block's MACs if executed; its projection's if it is a skipped projecting
    block; else 0) and ``M`` the MACs of the full network; the last step adds +1 if the
    prediction is correct. The return is ``[correct] - lam * (MACs of blocks 1..N-1 spent) /
    M``.

    ## Starting State

    An image index drawn uniformly from the split with ``self.np_random`` (or
    ``options={"index": i}`` in :meth:`reset`); the image is normalised with the CIFAR-10
    mean and std (with ``augment=True`` first randomly cropped and flipped, drawn with
    ``self.np_random``) and the stem and block 0 run.

    Which images: by default ``split="train"``, the 45,000 images every shipped backbone was
    trained on (and classifies better than new ones). It stays the default because agents
    trained there generalise at least as well as the alternatives: scored on ``val-eval``,
    they run the same FLOPs on new images as on ``train`` ones (no over-skipping), and
    agents trained on ``val-agent`` (the 3,000 val images no shipped backbone was trained on)
    or with ``augment=True`` were not better (results/agent-images/README.md).
    ``split="val-agent"`` remains for training agents on images no backbone saw.

    ## Episode End

    The episode terminates after K steps: the step that decides block N - 1 also runs the
    classifier head, and its info holds the prediction. The environment never truncates.
    Stepping before :meth:`reset`, or after termination without a new reset, raises
    ``gymnasium.error.ResetNeeded``; an action outside the space raises ``ValueError``. The
    environment stays usable after either.

    ## Info

    Every reset and step: ``index`` (image index in the split), ``label``, ``macs`` (MACs
    spent so far), ``flops_fraction`` (their fraction of the full network's), ``executed``
    (bool array of N, blocks run so far; undecided ones False) and ``next_block``. The last
    step adds ``prediction``, ``correct`` and ``loss`` (cross-entropy of the prediction).

    ## Arguments

    ```python
    import gymnasium as gym
    import skipenv  # registers SkipNet-CIFAR10-v0 (or make "skipenv:SkipNet-CIFAR10-v0")

    env = gym.make("SkipNet-CIFAR10-v0", checkpoint="runs/base38/final.pt")
    env = gym.make("SkipNet-CIFAR10-v0", checkpoint="skipnet38-ld-hrl-a1")  # a shipped model
    ```

    Options, as keywords (what ``gym.make`` passes on) or as an
    :class:`~skipenv.envs.config.EnvConfig` (``SkipNetEnv(config, **overrides)``), validated
    once there:

    - ``split``: CIFAR-10 split to draw images from (``train``, ``val``, ``train-full``,
      ``test``, ``sample``, and ``val-agent`` / ``val-eval``: the 3,000 val images to train
      agents on and the stratified 2,000 to compare them on, see
      :func:`skipenv.data.splits.val_parts`), read with
      :func:`skipenv.data.splits.load_cifar10` from ``data_root``.
    - ``depth``: ResNet depth; a checkpoint of another depth is a ``CheckpointError``.
    - ``checkpoint``: the backbone's base, sp, hrl or static checkpoint: the name of a shipped
      pretrained model (``skipenv.list_pretrained()``) or a file path.
    - ``backbone``: a :class:`~skipenv.models.resnet.SkipResNet` used as is (its depth wins); the
      environment moves it to ``device``, puts it in eval mode and freezes it.
    - ``pretrained``: with neither of the two, load the shipped pretrained backbone of
      ``depth`` (the registry's ``default_for_depth`` entry, see :mod:`skipenv.models.pretrained`:
      ``skipnet38-hrl-a0.6`` for depth 38, the SkipNet-38 HRL backbone; where none ships, a
      ``ValueError`` says what to pass) or, if False, use random weights
      from a fixed seed.
    - ``data``: a :class:`~skipenv.data.splits.CifarSplit` used instead of loading ``split``.
    - ``data_root``: data root for loading (default ``$SKIPNET_DATA`` or the user cache).
    - ``device``: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ...
    - ``reward``: ``"paper"`` or ``"accuracy"``; ``alpha`` and ``lam`` their constants.
    - ``obs_mode``: ``"vector"``, ``"activation"`` or ``"dict"``.
    - ``render_mode``: ``None``, ``"rgb_array"`` (the image upscaled 4x beside a strip with
      one cell per block: green ran, dark grey skipped, light grey undecided) or ``"ansi"``
      (a one-line trace).
    - ``channels_last``: NHWC memory format for the backbone (default: on CPU only).
    - ``augment``: randomly crop (4 pixels of zero padding) and horizontally flip each
      episode's image, as the backbones were trained (default False); the ``rgb_array``
      frame shows the augmented image.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": list(RENDER_MODES), "render_fps": 4}

    def __init__(self, config: EnvConfig | None = None, **options: Any) -> None:
        self.config = EnvConfig.of(config, **options)
        self.render_mode = self.config.render_mode
        self.episodes: Episodes = make_episodes(self.config)
        self.action_space = spaces.Discrete(2)
        self.observation_space = self.episodes.observation_space
        self._started = False

    # -- facts

    def action_masks(self) -> np.ndarray:
        """Both actions are always valid (for MaskablePPO): ``[True, True]``."""
        return np.ones(2, dtype=bool)

    # -- the API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"index"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; the only one is 'index'")
        if options.get("index") is not None:
            index = self.episodes.check_indices([options["index"]])
        else:
            index = self.np_random.integers(len(self.data), size=1).astype(np.int64)
        obs, info = self.episodes.start(index, self.np_random)
        self._started = True
        return row(obs), info_row(info)

    def step(self, action: Any) -> tuple[Obs, SupportsFloat, bool, bool, dict[str, Any]]:
        if not self.episodes.running:
            when = "the episode has terminated" if self._started else "no episode has started"
            raise ResetNeeded(f"{when}: call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(
                f"action {action!r} is not in {self.action_space}: pass 1 to execute block "
                f"{self.episodes.next_block} or 0 to skip it"
            )
        execute = np.array([int(action) == 1])
        obs, rewards, terminated, info = self.episodes.step(execute)
        return row(obs), float(rewards[0]), terminated, False, info_row(info)

    def render(self) -> np.ndarray | str | None:
        if self.render_mode is None:
            gym.logger.warn(
                "render() was called without a render mode; make the environment with "
                'render_mode="rgb_array" or "ansi"'
            )
            return None
        if not self._started:
            raise ResetNeeded("nothing to render yet: call reset() first")
        return render_episode(self.episodes, 0, self.render_mode)
