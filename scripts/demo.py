"""The main job in one command, offline: the shipped SkipNet routes CIFAR-10 images as the env.

    python scripts/demo.py                                  # the shipped 1,000-image sample
    python scripts/demo.py --split val --out val-routes.png # the real val split (needs the data)

Loads the shipped SkipNet-38 HRL network (``--checkpoint``, default ``skipnet38-hrl-a0.6``) and
the images of ``--split`` (default ``sample``: 1,000 val images, 100 per class, shipped inside
the package, so nothing is downloaded), makes the natively batched environment
(:class:`~skipenv.envs.vector_env.SkipNetVectorEnv`) on that backbone, and lets the network's
own trained gate (:class:`~agents.gate_agent.GateAgent`, greedy) decide block by block for
every image. Prints top-1 accuracy, executed FLOPs (``flops_fraction``: backbone MACs over the
full network's), executed blocks, the routes taken (one character per block: 1 ran, 0
skipped, ``|`` between stages) and their counts, and writes the routing picture ``--out``:
for every class the share of its images that ran each block, and two routed images per
class as the environment renders them.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tyro
from PIL import Image, ImageDraw

from agents.gate_agent import GateAgent
from agents.protocol import AgentRun, evaluate_agent
from agents.skipnet import load_backbone_and_gate
from skipenv.data.splits import CifarSplit, load_cifar10
from skipenv.envs.config import EnvConfig
from skipenv.envs.render import BACKGROUND, EXECUTED, TEXT, rgb_frame
from skipenv.envs.vector_env import SkipNetVectorEnv
from skipenv.models.resnet import SkipResNet
from skipenv.training.devices import prepare_device
from skipenv.training.summary import images, print_summary


@dataclass
class Args:
    checkpoint: str = "skipnet38-hrl-a0.6"
    """an sp or hrl checkpoint whose gate routes the images: a shipped name or a path"""
    split: str = "sample"
    """sample (1,000 val images shipped in the package: no download), val, train, ..."""
    data_dir: str | None = None
    """CIFAR-10 data root for the other splits (default: $SKIPNET_DATA, else the user cache)"""
    num_envs: int = 500
    """B: images routed together, one vector-env round of K steps"""
    out: Path = Path("routes.png")
    """the routing picture to write (PNG)"""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda"""
    threads: int | None = None
    """torch CPU threads (default: all cores; lower it when another job shares the machine)"""
    progress: bool = True
    """progress bar (tqdm, on stderr)"""


def route_string(executed: np.ndarray, num_stages: int) -> str:
    """``1`` ran, ``0`` skipped, ``|`` between stages: ``111111|011011|...``."""
    marks = "".join("1" if e else "0" for e in executed)
    per = -(-len(marks) // num_stages)
    return "|".join(marks[i : i + per] for i in range(0, len(marks), per))


def routing_picture(
    run: AgentRun, data: CifarSplit, backbone: SkipResNet, title: str, per_class: int = 2
) -> Image.Image:
    """Per class the share of its images that ran each block (green: all, black: none), and
    ``per_class`` routed images per class as the env's ``rgb_array`` frames."""
    labels = data.labels.numpy()[: len(run.prediction)]  # M
    classes, stages, n_blocks = data.classes, len(backbone.widths), backbone.num_blocks
    table = backbone.macs_table()
    cell_w, cell_h, left, top = 22, 16, 90, 40
    rates = np.stack([run.executed[labels == c].mean(axis=0) for c in range(len(classes))])
    frames = []
    for c in range(len(classes)):
        for i in np.flatnonzero(labels == c)[:per_class]:
            frames.append(
                rgb_frame(
                    data.images[i].numpy(),
                    run.executed[i],
                    n_blocks,
                    stages,
                    label=classes[c],
                    prediction=classes[int(run.prediction[i])],
                    flops_fraction=float(table.flops_fraction(_t(run.executed[i : i + 1]))[0]),
                )
            )
    fh, fw = frames[0].shape[:2]
    cols = 10  # frames a row
    grid_top = top + len(classes) * cell_h + 40
    width = max(left + n_blocks * cell_w + 10, cols * (fw + 6))
    height = grid_top + -(-len(frames) // cols) * (fh + 6)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 6), title, fill=TEXT)
    draw.text((6, 20), "share of each class's images that ran each block (block 0 always runs)",
              fill=TEXT)  # fmt: skip
    for c, name in enumerate(classes):
        y = top + c * cell_h
        draw.text((6, y + 2), name, fill=TEXT)
        for b in range(n_blocks):
            share = float(rates[c, b])
            colour = tuple(int(share * v) for v in EXECUTED)
            x = left + b * cell_w + (b // -(-n_blocks // stages)) * 4
            draw.rectangle((x, y, x + cell_w - 2, y + cell_h - 2), fill=colour)
    for b in range(n_blocks):
        x = left + b * cell_w + (b // -(-n_blocks // stages)) * 4
        draw.text((x + 4, top + len(classes) * cell_h + 2), str(b), fill=TEXT)
    draw.text((6, grid_top - 18), f"{per_class} images per class, as the env renders them",
              fill=TEXT)  # fmt: skip
    for k, frame in enumerate(frames):
        row, col = divmod(k, cols)
        canvas.paste(Image.fromarray(frame), (col * (fw + 6), grid_top + row * (fh + 6)))
    return canvas


def _t(array: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))


def main(args: Args) -> dict[str, Any]:
    device = prepare_device(args.device, args.threads)
    payload, backbone, gate = load_backbone_and_gate(args.checkpoint, device)
    if gate is None:
        raise SystemExit(
            f"demo.py: error: {args.checkpoint} is a plain network without a gate; pass an sp or "
            "hrl checkpoint (python -m skipenv.models.pretrained list)"
        )
    data = load_cifar10(args.split, args.data_dir, progress=args.progress)
    n = len(data)
    batches = [np.arange(i, min(i + args.num_envs, n)) for i in range(0, n, args.num_envs)]
    config = EnvConfig(backbone=backbone, data=data, device=device)
    envs: dict[int, SkipNetVectorEnv] = {}

    def make_env(num_envs: int) -> SkipNetVectorEnv:
        if num_envs not in envs:
            envs[num_envs] = SkipNetVectorEnv(num_envs, config)
        return envs[num_envs]

    env = make_env(len(batches[0]))
    print_summary(
        f"scripts/demo.py: the gate of {args.checkpoint} ({payload['kind']}, "
        f"ResNet-{backbone.depth}) routes images through SkipNet-CIFAR10-v0 (vector env)",
        device=device,
        data=images(n, args.split) + (" (in the package)" if args.split == "sample" else ""),
        steps=f"{len(batches)} rounds of K = {env.num_decisions} steps, {len(batches[0])} envs",
        out=args.out,
    )
    agent = GateAgent(gate, env.single_observation_space, backbone.block_channels, device=device)
    run = evaluate_agent("gate", agent, make_env, batches, seed=0, progress=args.progress)
    row = run.row
    stages = len(backbone.widths)
    routes = collections.Counter(route_string(e, stages) for e in run.executed)
    labels = data.labels.numpy()
    print(
        f"accuracy {100 * row['accuracy']:.2f}%  FLOPs {100 * row['flops_fraction']:.1f}%  "
        f"blocks {100 * row['block_fraction']:.1f}%  ({n} images, {row['steps_per_s']:,.0f} "
        "env steps/s)"
    )
    print(f"{len(routes)} distinct routes (1 ran, 0 skipped, | between stages); the most used:")
    for route, count in routes.most_common(5):
        members = [route_string(e, stages) == route for e in run.executed]
        acc = float((run.prediction[members] == labels[members]).mean())
        print(f"  {route}  {count:5d} images ({100 * count / n:.1f}%), accuracy {100 * acc:.1f}%")
    title = (
        f"{args.checkpoint} on {args.split} ({n} images): accuracy {100 * row['accuracy']:.2f}%, "
        f"FLOPs {100 * row['flops_fraction']:.1f}%, {len(routes)} distinct routes"
    )
    picture = routing_picture(run, data, backbone, title)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    with Image.open(args.out) as check:  # read back by its own reader
        check.load()
    print(f"wrote {args.out} ({picture.width} x {picture.height})")
    return {**row, "routes": dict(routes), "num_images": n, "picture": str(args.out)}


if __name__ == "__main__":
    main(tyro.cli(Args))
