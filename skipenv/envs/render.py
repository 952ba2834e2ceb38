"""Pictures and one-line traces of a routed image, for ``render_mode`` ``rgb_array`` and ``ansi``.

``rgb_frame`` draws the image, upscaled, beside one column of cells per stage: a cell per
block, green when the block ran, dark grey when it was skipped, light grey while undecided;
below them a panel writes the label, the prediction (once made) and the FLOPs spent, and a
legend of the three colours (PIL's default bitmap font).
``ansi_line`` writes the same trace as text: ``1`` ran, ``0`` skipped, ``.`` undecided, with
``|`` between stages. :func:`render_episode` draws either for one episode of an
:class:`~skipenv.envs.episode.Episodes` batch (what both environments' ``render`` call).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from skipenv.envs.episode import Episodes

SCALE = 4  # image upscaling factor
MARGIN = 4  # pixels between the image and the strip, and between stage columns
COLUMN_WIDTH = 12  # pixels per stage column

BACKGROUND = (24, 24, 24)
EXECUTED = (60, 180, 75)
SKIPPED = (90, 90, 90)
PENDING = (200, 200, 200)
TEXT = (235, 235, 235)
CORRECT = (120, 220, 120)
WRONG = (240, 110, 100)
LINE_HEIGHT = 12  # pixels per line of text in the panel
PANEL_HEIGHT = 4 * LINE_HEIGHT + 4  # label, prediction, FLOPs, legend


def block_states(executed: np.ndarray, next_block: int) -> np.ndarray:
    """Per block: 1 ran, 0 skipped, -1 undecided (``next_block`` and later)."""
    states = executed.astype(np.int8)  # N
    states[next_block:] = -1
    return states


def rgb_frame(
    image: np.ndarray,
    executed: np.ndarray,
    next_block: int,
    num_stages: int,
    scale: int = SCALE,
    *,
    label: str | None = None,
    prediction: str | None = None,
    flops_fraction: float | None = None,
    panel: bool = True,
) -> np.ndarray:
    """The image beside its block strip, with a text panel below: ``H x W x 3`` uint8.

    ``H = h * scale + PANEL_HEIGHT`` (``h * scale`` with ``panel=False``) and
    ``W = w * scale + num_stages * (MARGIN + COLUMN_WIDTH)``; the image is at the top left.

    Args:
        image: ``3 x h x w`` uint8 (CHW, as stored in a CifarSplit).
        executed: N bool, blocks run so far.
        next_block: the block the next decision is about (N when done).
        num_stages: stages of the network; blocks are split evenly into that many columns.
        scale: upscaling factor of the image.
        label: the true class name, written in the panel.
        prediction: the predicted class name (None until the head has run), written in
            green when it equals ``label``, else red.
        flops_fraction: MACs spent so far over the full network's, written as a percentage.
        panel: draw the text panel and legend (False: the image and strip only).
    """
    picture = np.repeat(np.repeat(image.transpose(1, 2, 0), scale, 0), scale, 1)  # H x W x 3
    height = picture.shape[0]
    per_column = -(-len(executed) // num_stages)
    pitch = max(1, height // per_column)
    cell = pitch - 1 if pitch >= 3 else pitch
    width = picture.shape[1] + num_stages * (MARGIN + COLUMN_WIDTH)
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = BACKGROUND
    frame[:, : picture.shape[1]] = picture
    colours = {1: EXECUTED, 0: SKIPPED, -1: PENDING}
    for block, state in enumerate(block_states(executed, next_block)):
        column, row = divmod(block, per_column)
        left = picture.shape[1] + MARGIN + column * (MARGIN + COLUMN_WIDTH)
        frame[row * pitch : row * pitch + cell, left : left + COLUMN_WIDTH] = colours[int(state)]
    if not panel:
        return frame
    return _with_panel(frame, label, prediction, flops_fraction, done=next_block >= len(executed))


def _with_panel(
    frame: np.ndarray,
    label: str | None,
    prediction: str | None,
    flops_fraction: float | None,
    done: bool,
) -> np.ndarray:
    """``frame`` with :data:`PANEL_HEIGHT` rows below it: label, prediction, FLOPs, legend."""
    from PIL import Image, ImageDraw

    height, width = frame.shape[:2]
    canvas = Image.new("RGB", (width, height + PANEL_HEIGHT), BACKGROUND)
    canvas.paste(Image.fromarray(frame), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = height + 2
    draw.text((2, y), f"label: {label if label is not None else '?'}", fill=TEXT)
    if prediction is None:
        guess, colour = "pred:  (pending)" if not done else "pred:  ?", TEXT
    else:
        right = label is not None and prediction == label
        guess, colour = f"pred:  {prediction}", CORRECT if right else WRONG
    draw.text((2, y + LINE_HEIGHT), guess, fill=colour)
    spent = "?" if flops_fraction is None else f"{100 * flops_fraction:.1f}%"
    draw.text((2, y + 2 * LINE_HEIGHT), f"FLOPs: {spent}", fill=TEXT)
    x, top = 2, y + 3 * LINE_HEIGHT + 2
    for colour, word in ((EXECUTED, "ran"), (SKIPPED, "skipped"), (PENDING, "undecided")):
        draw.rectangle((x, top, x + 6, top + 6), fill=colour)
        draw.text((x + 9, top - 2), word, fill=TEXT)
        x += 9 + int(draw.textlength(word)) + 8
    return np.asarray(canvas, dtype=np.uint8).copy()


def ansi_line(
    index: int,
    label: str,
    executed: np.ndarray,
    next_block: int,
    num_stages: int,
    flops_fraction: float,
    prediction: str | None = None,
) -> str:
    """One line: image, label, block trace, FLOPs spent and, when done, the prediction."""
    marks = "".join({1: "1", 0: "0", -1: "."}[int(s)] for s in block_states(executed, next_block))
    per_column = -(-len(marks) // num_stages)
    trace = "|".join(marks[i : i + per_column] for i in range(0, len(marks), per_column))
    line = f"image {index} ({label}) blocks {trace} flops {flops_fraction:.1%}"
    if prediction is not None:
        verdict = "correct" if prediction == label else "wrong"
        line += f" -> {prediction} ({verdict})"
    return line


def render_episode(episodes: Episodes, i: int, mode: str) -> np.ndarray | str:
    """Frame (``rgb_array``) or text line (``ansi``) of episode ``i`` of ``episodes``."""
    index = int(episodes.indices[i])
    stages = len(episodes.backbone.widths)
    classes = episodes.data.classes
    prediction = None if episodes.prediction is None else classes[int(episodes.prediction[i])]
    if mode == "rgb_array":
        shown = episodes.shown if episodes.augment else None  # the augmented images, if any
        picture = shown[i] if shown is not None else episodes.data.images[index]
        image = picture.cpu().numpy()  # 3 x H x W uint8
        return rgb_frame(
            image,
            episodes.executed[i],
            episodes.next_block,
            stages,
            label=classes[int(episodes.labels_np[index])],
            prediction=prediction,
            flops_fraction=float(episodes.macs[i] / episodes.full_macs),
        )
    return ansi_line(
        index,
        classes[int(episodes.labels_np[index])],
        episodes.executed[i],
        episodes.next_block,
        stages,
        float(episodes.macs[i] / episodes.full_macs),
        prediction,
    )
