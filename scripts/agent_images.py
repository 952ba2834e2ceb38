"""Which images should agents learn on? The table of train/sb3.py runs that differ in --split
and --augment, all scored on the same val-eval images (issue 14, item 6).

    python scripts/agent_images.py --runs runs/images/train-s0 runs/images/val-agent-s0 ... \\
        --out results/agent-images

Each run folder holds ``run.json``, ``val.json`` (train/sb3.py with ``--eval-split val-eval``)
and ``final.zip``. Per run: the training images (``--split``, ``--augment``), the env steps,
training wall time and PPO ``learn()`` env steps per second (with where the time went), and on
val-eval the deterministic agent's accuracy, FLOPs, blocks and routing diagnostics, plus its
static control (its most common route run on every val-eval image). With ``--train-limit``,
the same agent is also routed through a stratified ``--train-limit`` of ``train`` (the images
the backbone was trained on): how much more it skips, and how much less that costs, there.
Per condition (runs with the same split and augmentation): the mean and the spread (max - min)
over seeds, and, since the runs land at different FLOPs, the accuracy at 50% FLOPs from one
linear fit (:func:`matched_flops`). Writes ``OUT/agent_images.json`` and
``OUT/agent_images.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

from agents.protocol import evaluate_on, evaluation_results, load_sb3
from agents.skipnet import load_backbone_and_gate
from skipenv.data.splits import load_cifar10
from skipenv.envs.config import EnvConfig
from skipenv.training.devices import prepare_device
from skipenv.training.routing import static_route_correct
from skipenv.utils import write_json


@dataclass
class Args:
    runs: list[Path]
    """train/sb3.py run folders (run.json, val.json, final.zip)"""
    out: Path = Path("results/agent-images")
    """folder for agent_images.json and agent_images.md"""
    train_limit: int = 2000
    """also route a stratified sample of this many train images (0: skip)"""
    data_dir: str | None = None
    """CIFAR-10 data root (default: $SKIPNET_DATA, else the per-user cache folder)"""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda"""
    threads: int | None = None
    """torch CPU threads (default: all cores)"""
    progress: bool = True
    """show progress bars"""


def condition(run_args: dict[str, Any]) -> str:
    """``train``, ``train + augment``, ``val-agent``, ..."""
    return run_args["split"] + (" + augment" if run_args.get("augment") else "")


def static_control(backbone: Any, route: str, data: Any, device: torch.device) -> float:
    """Accuracy of ``route`` run on every image of ``data`` (float32, real skipping)."""
    from skipenv.data.loader import normalize

    pairs = [
        (normalize(data.images[i : i + 500]).to(device), data.labels[i : i + 500].to(device))
        for i in range(0, len(data), 500)
    ]
    correct = static_route_correct(backbone, route, pairs)
    return int(correct.sum()) / len(correct)


def measure(args: Args, folder: Path, device: torch.device, cache: dict) -> dict[str, Any]:
    run_args = json.loads((folder / "run.json").read_text())["args"]
    val = json.loads((folder / "val.json").read_text())
    if val["split"] != "val-eval":
        raise SystemExit(
            f"agent_images.py: error: {folder}/val.json is on {val['split']!r}; train the runs "
            "with --eval-split val-eval so that every run is scored on the same images"
        )
    name = run_args["checkpoint"]
    if name not in cache:
        _, backbone, _ = load_backbone_and_gate(name, device)
        cache[name] = backbone.eval()
    backbone = cache[name]
    if "val-eval" not in cache:
        cache["val-eval"] = load_cifar10("val-eval", args.data_dir, progress=args.progress)
    routing = val["routing"]
    row: dict[str, Any] = {
        "run": str(folder),
        "condition": condition(run_args),
        "split": run_args["split"],
        "augment": bool(run_args.get("augment", False)),
        "seed": run_args["seed"],
        "algo": run_args["algo"],
        "alpha": run_args["alpha"],
        "env_steps": val["env_steps"],
        "train_wall_s": val["train_wall_s"],
        "train_env_steps_per_s": val["train_env_steps_per_s"],
        "time": val["time"],
        "accuracy": val["accuracy"],
        "flops_fraction": val["flops_fraction"],
        "block_fraction": val["block_fraction"],
        "routes": routing["distinct_routes"],
        "top_route": routing["top_route"],
        "top_route_share": routing["top_route_share"],
        "dynamic_blocks": len(routing["dynamic_blocks"]),
        "blocks_std": routing["blocks_std"],
        "static_control": static_control(backbone, routing["top_route"], cache["val-eval"], device),
    }
    if args.train_limit:
        if "train" not in cache:
            cache["train"] = load_cifar10("train", args.data_dir, progress=args.progress)
        agent = load_sb3(folder / "final.zip", run_args["algo"], torch.device("cpu"))
        config = EnvConfig(
            backbone=backbone, device=device, reward=run_args["reward"],
            alpha=run_args["alpha"], lam=run_args["lam"], obs_mode=agent.obs_mode,
        )  # fmt: skip
        on_train = evaluate_on(
            "agent", agent, config, cache["train"], limit=args.train_limit, seed=0,
            progress=args.progress,
        )  # fmt: skip
        res = evaluation_results(on_train, backbone.num_decisions)
        row["train_accuracy"] = res["accuracy"]
        row["train_flops_fraction"] = res["flops_fraction"]
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per condition: mean and spread (max - min) over its runs of the main numbers."""
    keys = ["accuracy", "flops_fraction", "static_control", "train_accuracy",
            "train_flops_fraction", "train_env_steps_per_s"]  # fmt: skip
    out = []
    for cond in dict.fromkeys(r["condition"] for r in rows):
        group = [r for r in rows if r["condition"] == cond]
        entry: dict[str, Any] = {"condition": cond, "runs": len(group)}
        for key in keys:
            values = [r[key] for r in group if r.get(key) is not None]
            if values:
                entry[key] = sum(values) / len(values)
                entry[f"{key}_spread"] = max(values) - min(values)
        out.append(entry)
    return out


def matched_flops(rows: list[dict[str, Any]], at: float = 0.5) -> dict[str, Any] | None:
    """Conditions compared at the same FLOPs: a least-squares fit of accuracy on FLOPs with
    one slope for all runs and one intercept per condition. Gives each condition's accuracy
    at FLOPs ``at`` and its difference from the first condition, each with its standard error
    (from the residuals); None with too few runs (fewer than conditions + 2)."""
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    if len(rows) < len(conds) + 2:
        return None
    x = np.array(
        [[r["flops_fraction"]] + [float(r["condition"] == c) for c in conds] for r in rows]
    )  # runs x (1 + conditions)
    y = np.array([r["accuracy"] for r in rows])  # runs
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    dof = len(y) - len(coef)
    sigma2 = float(((y - x @ coef) ** 2).sum()) / dof
    cov = sigma2 * np.linalg.pinv(x.T @ x)
    out: dict[str, Any] = {"at": at, "slope": float(coef[0]), "residual_sd": sigma2**0.5,
                           "conditions": {}}  # fmt: skip
    for i, cond in enumerate(conds):
        level = np.zeros(len(coef))
        level[0], level[1 + i] = at, 1.0
        diff = np.zeros(len(coef))
        diff[1 + i] += 1.0
        diff[1] -= 1.0  # zero for the first condition
        out["conditions"][cond] = {
            "accuracy": float(level @ coef),
            "accuracy_se": float(level @ cov @ level) ** 0.5,
            "minus_first": float(diff @ coef),
            "minus_first_se": float(max(diff @ cov @ diff, 0.0)) ** 0.5,
        }
    return out


def markdown(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    pct = lambda v: "" if v is None else f"{100 * v:.2f}"  # noqa: E731
    pc1 = lambda v: "" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [
        "| training images | seed | val-eval accuracy % | FLOPs % | blocks % | routes | top "
        "route % | dynamic blocks | static control % | train accuracy % | train FLOPs % | env "
        "steps | learn() steps/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['condition']} | {r['seed']} | {pct(r['accuracy'])} | "
            f"{100 * r['flops_fraction']:.1f} | {100 * r['block_fraction']:.1f} | {r['routes']} | "
            f"{pct(r['top_route_share'])} | {r['dynamic_blocks']} | {pct(r['static_control'])} | "
            f"{pct(r.get('train_accuracy'))} | "
            f"{pc1(r.get('train_flops_fraction'))} | "
            f"{r['env_steps']:,} | {r['train_env_steps_per_s'] or 0:.0f} |"
        )
    lines += [
        "",
        "| training images | runs | val-eval accuracy % (spread) | FLOPs % (spread) | static "
        "control % | train accuracy % | train FLOPs % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summary:
        lines.append(
            f"| {s['condition']} | {s['runs']} | {pct(s['accuracy'])} "
            f"({pct(s['accuracy_spread'])}) | {100 * s['flops_fraction']:.1f} "
            f"({100 * s['flops_fraction_spread']:.1f}) | {pct(s['static_control'])} | "
            f"{pct(s.get('train_accuracy'))} | "
            f"{pc1(s.get('train_flops_fraction'))} |"
        )
    return "\n".join(lines) + "\n"


def main(args: Args) -> dict[str, Any]:
    device = prepare_device(args.device, args.threads)
    started = time.monotonic()
    cache: dict[str, Any] = {}
    rows = [measure(args, Path(folder), device, cache) for folder in args.runs]
    summary = summarise(rows)
    matched = matched_flops(rows)
    results = {
        "eval_split": "val-eval",
        "train_limit": args.train_limit,
        "rows": rows,
        "summary": summary,
        "matched_flops": matched,
        "wall_s": time.monotonic() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "agent_images.json", results)  # atomic, read back
    text = markdown(rows, summary)
    if matched is not None:
        first = next(iter(matched["conditions"]))
        text += (
            f"\nAt {100 * matched['at']:.0f}% FLOPs (one slope, "
            f"{matched['slope']:.3f} accuracy per FLOPs, one intercept per condition; residual "
            f"sd {100 * matched['residual_sd']:.2f} points):\n\n"
            f"| training images | val-eval accuracy % | minus {first} (points) |\n"
            "| --- | ---: | ---: |\n"
        )
        for cond, v in matched["conditions"].items():
            text += (
                f"| {cond} | {100 * v['accuracy']:.2f} +- {100 * v['accuracy_se']:.2f} | "
                f"{100 * v['minus_first']:+.2f} +- {100 * v['minus_first_se']:.2f} |\n"
            )
    (args.out / "agent_images.md").write_text(text)
    assert (args.out / "agent_images.md").read_text() == text
    print(text)
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
