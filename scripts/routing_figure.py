"""The SkipNet paper's qualitative figure: images grouped by the number of blocks they run.

    python scripts/routing_figure.py --checkpoint skipnet38-hrl-a0.6 --split val \\
        --out results/routing/

Runs the gated network greedily (real skipping) over ``--split`` and writes to ``--out``:

- ``routing-<name>-by-blocks.png``: one row per number of blocks run that occurs, with up to
  ``--per-row`` images of that row (a seeded random pick), upscaled, each labelled with its
  true class (in red, with the predicted one, when wrong); the row label gives the blocks run, the
  number of images and their accuracy;
- ``routing-<name>-per-class.png``: mean blocks run per class (bars from 0, labelled with
  their value, the standard deviation as error bars) against the overall mean;
- ``routing-<name>.json``: the numbers behind both.

``<name>`` is the shipped model's name or the checkpoint file's stem. Needs matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from agents.skipnet import load_backbone_and_gate
from skipenv.data.loader import normalize
from skipenv.data.splits import load_cifar10
from skipenv.models.checkpoint import CheckpointError
from skipenv.training.devices import prepare_device
from skipenv.training.summary import images, print_summary
from skipenv.utils import write_json


@dataclass
class Args:
    checkpoint: str
    """a shipped model's name or an sp/hrl/static/base checkpoint"""
    split: str = "val"
    """split whose images are routed"""
    out: Path = Path("results/routing")
    """folder for the PNGs and the JSON"""
    per_row: int = 8
    """images shown per number of blocks run"""
    scale: int = 3
    """upscaling of the 32x32 images (nearest neighbour)"""
    seed: int = 0
    """seeds which images of a row are shown"""
    data_dir: str | None = None
    """CIFAR-10 data root (default: $SKIPNET_DATA, else the per-user cache folder)"""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda"""
    threads: int | None = None
    """torch CPU threads (default: all cores; lower it when another job shares the machine)"""


def route_all(backbone, gate, images: torch.Tensor, device: torch.device, batch: int = 500):
    """Executed masks (n x N bool) and predictions (n) of the greedy gated network."""
    executed, predictions = [], []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = normalize(images[i : i + batch], memory_format=torch.channels_last).to(device)
            if gate is None:
                logits = backbone(x)  # B x classes
                ran = torch.ones(len(x), backbone.num_blocks, dtype=torch.bool)
            else:
                out = backbone.forward_gated(x, gate, mode="greedy", routing="skip")
                logits, ran = out.logits, out.executed  # B x classes, B x N
            executed.append(ran.cpu())
            predictions.append(logits.argmax(dim=1).cpu())
    return torch.cat(executed), torch.cat(predictions)


def main(args: Args) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = prepare_device(args.device, args.threads)
    payload, backbone, gate = load_backbone_and_gate(args.checkpoint, map_location=device)
    backbone = backbone.to(memory_format=torch.channels_last).eval()
    data = load_cifar10(args.split, args.data_dir, progress=False)
    print_summary(
        f"scripts/routing_figure.py: {args.checkpoint} ({payload['kind']}, "
        f"ResNet-{backbone.depth}), images by blocks run and blocks per class",
        device=device,
        data=images(len(data), args.split),
        out=args.out,
    )
    executed, predictions = route_all(backbone, gate, data.images, device)
    blocks = executed.sum(dim=1).numpy()  # n
    labels = data.labels.numpy()
    right = predictions.numpy() == labels
    name = args.checkpoint if "/" not in args.checkpoint else Path(args.checkpoint).stem
    n_blocks = backbone.num_blocks
    rng = np.random.default_rng(args.seed)

    # -- figure 1: a row per number of blocks run
    counts = sorted(set(blocks.tolist()))
    rows = []
    for c in counts:
        members = np.flatnonzero(blocks == c)
        shown = np.sort(rng.choice(members, size=min(args.per_row, len(members)), replace=False))
        rows.append(
            {
                "blocks": int(c),
                "images": len(members),
                "share": len(members) / len(blocks),
                "accuracy": float(right[members].mean()),
                "shown": shown.tolist(),
            }
        )
    cell = 0.42 * args.scale
    fig, axes = plt.subplots(
        len(rows),
        args.per_row,
        figsize=(cell * args.per_row + 2.2, cell * len(rows) + 0.9),
        squeeze=False,
    )
    for r, row in enumerate(rows):
        for j in range(args.per_row):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j >= len(row["shown"]):
                continue
            i = row["shown"][j]
            img = data.images[i].permute(1, 2, 0).numpy()  # 32 x 32 x 3
            img = img.repeat(args.scale, axis=0).repeat(args.scale, axis=1)
            ax.imshow(img, interpolation="nearest")
            title = data.classes[labels[i]]
            if not right[i]:  # true -> predicted
                title += f" -> {data.classes[int(predictions[i])]}"
            ax.set_title(title, fontsize=7, color="black" if right[i] else "red")
        axes[r][0].set_ylabel(
            f"{row['blocks']} of {n_blocks} blocks\n{row['images']} images "
            f"({100 * row['share']:.1f}%)\nacc {100 * row['accuracy']:.1f}%",
            rotation=0,
            ha="right",
            va="center",
            fontsize=8,
            labelpad=6,
        )
    fig.suptitle(
        f"{name} on {args.split}: images by number of blocks run "
        "(greedy gates; red: wrong, true -> predicted)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    args.out.mkdir(parents=True, exist_ok=True)
    by_blocks = args.out / f"routing-{name}-by-blocks.png"
    fig.savefig(by_blocks, dpi=110)
    plt.close(fig)

    # -- figure 2: mean blocks run per class
    means = [float(blocks[labels == k].mean()) for k in range(len(data.classes))]
    stds = [float(blocks[labels == k].std()) for k in range(len(data.classes))]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bars = ax.bar(data.classes, means, yerr=stds, capsize=3, color="tab:blue", alpha=0.8)
    ax.bar_label(bars, labels=[f"{m:.2f}" for m in means], fontsize=7, padding=2)
    ax.axhline(float(blocks.mean()), color="black", linestyle="--", linewidth=1, label="all")
    ax.set_ylim(0, n_blocks + 1)  # bars start at 0: differences are shown to scale
    ax.set_ylabel(f"mean blocks run (of {n_blocks})")
    ax.set_title(f"{name} on {args.split}: mean blocks run per class (error bars: std)", fontsize=9)
    ax.tick_params(axis="x", labelsize=8, rotation=30)
    ax.legend(fontsize=8)
    fig.tight_layout()
    per_class = args.out / f"routing-{name}-per-class.png"
    fig.savefig(per_class, dpi=110)
    plt.close(fig)

    summary = {
        "checkpoint": args.checkpoint,
        "kind": payload["kind"],
        "split": args.split,
        "num_images": len(blocks),
        "num_blocks": n_blocks,
        "accuracy": float(right.mean()),
        "rows": rows,
        "per_class_mean_blocks": dict(zip(data.classes, means, strict=True)),
        "per_class_std_blocks": dict(zip(data.classes, stds, strict=True)),
        "figures": [str(by_blocks), str(per_class)],
    }
    js = args.out / f"routing-{name}.json"
    write_json(js, summary)  # atomic, read back before it replaces js
    print(f"wrote {by_blocks}, {per_class}, {js}")
    for row in rows:
        print(f"  {row['blocks']:>2} blocks: {row['images']:>5} images, acc {row['accuracy']:.4f}")
    return summary


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except CheckpointError as err:
        raise SystemExit(f"routing_figure.py: error: {err}") from None
