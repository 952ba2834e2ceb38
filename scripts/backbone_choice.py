"""Which backbone should the env route? Room for per-image routing, backbone by backbone.

    python scripts/backbone_choice.py \\
        --checkpoints resnet38 skipnet38-hrl-a0.6 runs/base38-ld/final.pt \\
        --names resnet38 skipnet38-hrl-a0.6 base38-ld --out results/backbones

Per backbone (``--checkpoints``; a gate or route in the checkpoint is ignored), on all of
``--split``:

- ``scripts/skip_tolerance.py``: the full route's accuracy, random routes that run 50% and
  75% of the K decidable blocks (``--routes`` seeded draws per image; the same routes for
  every backbone), and the oracle: the share of images that at least one of the random 50%
  routes classifies right. Written to ``OUT/skip_tolerance-NAME.json`` with the checkpoint
  file's SHA-256; a file already there with the same checkpoint (name and SHA-256), split,
  routes, seed and precision is read instead of measured again (``--remeasure`` redoes it).
- The best static route (one route for every image) with as many blocks as the random routes
  of each fraction (10 and 14 of 18 on ResNet-38): greedy block dropping
  (:func:`agents.static.greedy_static_route`) on a seeded ``--select-limit`` images of the
  split (forward passes in ``--amp``), then the chosen route evaluated on the whole split in
  float32, with its FLOPs.

The criterion, ``room`` (in points of accuracy): the oracle of the random half-routes minus
the best static half-route, i.e. what a per-image router that picks among R random routes
could gain over the best input-independent route of the same blocks, the baseline that
agents must beat (issue 14). The oracle is an upper bound that also counts images a route
gets right by luck, which dominates when the routes are mostly wrong; so a backbone is
``eligible`` only where random half-routes keep at least half of its full route's accuracy
(``--min-retained``), and ``most_room`` is the eligible backbone with the largest room.
``OUT/backbones.json`` holds everything, ``OUT/backbones.md`` the table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import tyro

from agents.skipnet import load_backbone_and_gate
from agents.static import greedy_static_route, route_flops_fraction, selection_batches
from skipenv.data.splits import load_cifar10
from skipenv.models.checkpoint import CheckpointError
from skipenv.models.pretrained import resolve_checkpoint
from skipenv.training.devices import autocast, prepare_device
from skipenv.training.routing import static_route_correct
from skipenv.training.summary import print_summary
from skipenv.utils import import_script, write_json

tolerance = import_script(Path(__file__).with_name("skip_tolerance.py"))


@dataclass
class Args:
    checkpoints: list[str]
    """backbones: shipped names or base/sp/hrl/static checkpoint paths"""
    names: list[str] = field(default_factory=list)
    """a short name per checkpoint for the files and table (default: the checkpoints)"""
    out: Path = Path("results/backbones")
    """folder for skip_tolerance-NAME.json, backbones.json and backbones.md"""
    split: str = "val"
    """split to measure on (val: the 5,000 held out of train)"""
    routes: int = 16
    """R: random routes per image and fraction"""
    seed: int = 0
    """seeds the random routes and the greedy search's images"""
    fractions: list[float] = field(default_factory=lambda: [0.5, 0.75])
    """fractions of the K decidable blocks a random route runs; the oracle uses the first"""
    select_limit: int = 1000
    """images (seeded random subset of --split) the greedy static-route search measures"""
    amp: str = "bf16"
    """precision of the greedy search's forward passes (the random routes and the chosen
    static routes are evaluated in float32)"""
    min_retained: float = 0.5
    """eligible backbones: random half-routes keep at least this share of the full route's
    accuracy (else their oracle counts a broken network's lucky guesses)"""
    remeasure: bool = False
    """measure the random routes again even where OUT/skip_tolerance-NAME.json matches"""
    data_dir: str | None = None
    """CIFAR-10 data root (default: $SKIPNET_DATA, else the per-user cache folder)"""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda"""
    threads: int | None = None
    """torch CPU threads (default: all cores; lower it when another job shares the machine)"""
    progress: bool = True
    """show progress bars"""

    def check(self) -> list[str]:
        """The names, one per checkpoint; raises ValueError on a bad value."""
        names = self.names or [Path(c).stem if "/" in c else c for c in self.checkpoints]
        if not self.checkpoints or len(names) != len(self.checkpoints):
            raise ValueError(
                f"need one --names entry per --checkpoints entry, got {len(self.checkpoints)} "
                f"checkpoints and {len(names)} names"
            )
        if len(set(names)) != len(names) or any(not n or "/" in n for n in names):
            raise ValueError(f"--names must be distinct and contain no '/', got {names}")
        if self.select_limit < 1:
            raise ValueError(f"--select-limit must be >= 1, got {self.select_limit}")
        return names


def random_routes(args: Args, checkpoint: str, name: str) -> dict[str, Any]:
    """skip_tolerance.py's results for ``checkpoint``: read from OUT when they match, else
    measured (and written there)."""
    path = args.out / f"skip_tolerance-{name}.json"
    measure = tolerance.Args(
        checkpoint=checkpoint,
        split=args.split,
        routes=args.routes,
        seed=args.seed,
        fractions=list(args.fractions),
        data_dir=args.data_dir,
        device=args.device,
        threads=args.threads,
        json=path,
        progress=args.progress,
    )
    digest = sha256(resolve_checkpoint(checkpoint))
    if path.exists() and not args.remeasure:
        old = json.loads(path.read_text())
        wanted = {"checkpoint": checkpoint, "split": args.split, "routes": args.routes,
                  "seed": args.seed, "amp": measure.amp, "checkpoint_sha256": digest}  # fmt: skip
        same = all(old.get(k) == wanted[k] for k in wanted)
        same = same and sorted(old["random"]) == sorted(str(f) for f in args.fractions)
        if same:
            print(f"{name}: random routes read from {path} (--remeasure to measure again)")
            return old
    results = {**tolerance.main(measure), "checkpoint_sha256": digest}
    write_json(path, results)  # atomic, read back
    return results


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (what the cached random routes were measured on)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def best_static(
    args: Args, checkpoint: str, blocks: dict[str, int], device: torch.device
) -> dict[str, Any]:
    """Greedy static routes of ``checkpoint`` that run ``blocks[f]`` blocks (block 0 included,
    as many as the random routes of fraction f), chosen on --select-limit images and
    evaluated on the whole split in float32."""
    _, backbone, _ = load_backbone_and_gate(checkpoint, map_location=device)
    backbone = backbone.to(memory_format=torch.channels_last).eval()
    data = load_cifar10(args.split, args.data_dir, progress=args.progress)
    batch_kw = {"device": device, "memory_format": torch.channels_last}
    select = selection_batches(data, args.select_limit, args.seed, **batch_kw)
    every = selection_batches(data, None, **batch_kw)
    amp = (lambda: autocast(device, args.amp)) if args.amp != "none" else None
    table = backbone.macs_table()
    # down to the cheapest route of the fewest blocks: the greedy sequence, one block dropped
    # per step, then holds a route of every count asked for
    saved = [e - k for e, k in zip(table.block_execute, table.block_skip, strict=True)]
    cheapest = sorted(range(1, backbone.num_blocks), key=lambda j: saved[j])
    fewest = min(blocks.values())
    floor = [j == 0 or j in cheapest[: fewest - 1] for j in range(backbone.num_blocks)]
    budget = route_flops_fraction(table, floor)
    search = greedy_static_route(backbone, select, budget, autocast=amp, progress=args.progress)
    out: dict[str, Any] = {"search": search.to_dict()}
    for fraction, count in blocks.items():
        (step,) = [s for s in search.trace if s.route.count("1") == count]
        correct = static_route_correct(backbone, step.route, every)  # M
        out[fraction] = {
            "route": step.route,
            "blocks_run": count,
            "flops_fraction": route_flops_fraction(table, step.route),
            "select_accuracy": step.accuracy,
            "accuracy": int(correct.sum()) / len(correct),
        }
    return out


def row(
    name: str,
    tol: dict[str, Any],
    static: dict[str, Any],
    fractions: list[str],
    min_retained: float,
) -> dict[str, Any]:
    """The table row of one backbone, criterion included (accuracies as fractions)."""
    first = fractions[0]
    entry: dict[str, Any] = {
        "name": name,
        "checkpoint": tol["checkpoint"],
        "full_accuracy": tol["full_accuracy"],
        "oracle_accuracy": tol["oracle_accuracy"],
        "oracle_fraction": tol["oracle_fraction"],
    }
    for f in fractions:
        rnd, st = tol["random"][f], static[f]
        entry[f] = {
            "random_mean": rnd["accuracy_mean"],
            "random_std": rnd["accuracy_std"],
            "random_flops_fraction": rnd["flops_fraction_mean"],
            "static_accuracy": st["accuracy"],
            "static_flops_fraction": st["flops_fraction"],
            "static_route": st["route"],
        }
    entry["room"] = tol["oracle_accuracy"] - static[first]["accuracy"]
    entry["static_minus_random"] = static[first]["accuracy"] - tol["random"][first]["accuracy_mean"]
    entry["retained"] = tol["random"][first]["accuracy_mean"] / tol["full_accuracy"]
    entry["eligible"] = entry["retained"] >= min_retained
    return entry


def markdown(rows: list[dict], fractions: list[str], routes: int, split: str) -> str:
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    head = ["backbone", "full route %"]
    for f in fractions:
        head += [f"random {100 * float(f):.0f}% routes %", "best static, same blocks % (FLOPs %)"]
    head += [f"oracle of {routes} random {100 * float(fractions[0]):.0f}% routes %",
             "room: oracle - static (points)", "random / full", "eligible"]  # fmt: skip
    lines = [
        f"Backbones on {split}: random routes (mean +- std over {routes} draws), the greedy best "
        "static route with as many blocks, the oracle and the room.",
        "",
        "| " + " | ".join(head) + " |",
        "| --- | " + " | ".join("---:" for _ in head[1:]) + " |",
    ]
    for r in rows:
        cells = [r["name"], pct(r["full_accuracy"])]
        for f in fractions:
            v = r[f]
            cells += [
                f"{pct(v['random_mean'])} +- {pct(v['random_std'])}",
                f"{pct(v['static_accuracy'])} ({100 * v['static_flops_fraction']:.1f})",
            ]
        cells += [pct(r["oracle_accuracy"]), f"{100 * r['room']:.2f}", f"{r['retained']:.2f}",
                  "yes" if r["eligible"] else "no"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(args: Args) -> dict[str, Any]:
    try:
        names = args.check()
    except ValueError as err:
        raise SystemExit(f"backbone_choice.py: error: {err}") from None
    device = prepare_device(args.device, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    fractions = [str(f) for f in args.fractions]
    print_summary(
        f"scripts/backbone_choice.py: {len(names)} backbones ({', '.join(names)}), random routes "
        f"at {fractions} of the blocks and greedy static routes at their FLOPs",
        device=device,
        data=f"{args.split} (all of it; the greedy search: {args.select_limit} of it)",
        steps=f"per backbone: skip_tolerance.py ({args.routes} routes per fraction, reused when "
        f"OUT has them), a greedy search on {args.select_limit} images, float32 evaluation",
        out=args.out,
    )
    started = time.monotonic()
    rows, details = [], {}
    for checkpoint, name in zip(args.checkpoints, names, strict=True):
        tol = random_routes(args, checkpoint, name)
        blocks = {f: tol["random"][f]["blocks_run"] for f in fractions}
        static = best_static(args, checkpoint, blocks, device)
        rows.append(row(name, tol, static, fractions, args.min_retained))
        details[name] = {"static": static}
        print(
            f"{name}: full {tol['full_accuracy']:.4f}, random {fractions[0]} "
            f"{tol['random'][fractions[0]]['accuracy_mean']:.4f}, static "
            f"{static[fractions[0]]['accuracy']:.4f}, oracle {tol['oracle_accuracy']:.4f}, "
            f"room {rows[-1]['room']:+.4f}"
        )
    eligible = [r for r in rows if r["eligible"]]
    best = max(eligible, key=lambda r: r["room"]) if eligible else None
    results = {
        "split": args.split,
        "routes": args.routes,
        "seed": args.seed,
        "fractions": fractions,
        "select_limit": args.select_limit,
        "amp_search": args.amp,
        "criterion": "room = oracle of the random routes at the first fraction - the best "
        "static route with as many blocks (greedy on select_limit images, float32 on all), "
        "among backbones whose random routes keep >= min_retained of the full accuracy",
        "min_retained": args.min_retained,
        "most_room": best["name"] if best else None,
        "rows": rows,
        "details": details,
        "args": json.loads(json.dumps(dataclasses.asdict(args), default=str)),
        "wall_s": time.monotonic() - started,
    }
    write_json(args.out / "backbones.json", results)  # atomic, read back
    text = markdown(rows, fractions, args.routes, args.split)
    (args.out / "backbones.md").write_text(text)
    assert (args.out / "backbones.md").read_text() == text
    print(text + f"most room for per-image routing: {best['name'] if best else 'none eligible'}")
    return results


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except CheckpointError as err:
        raise SystemExit(f"backbone_choice.py: error: {err}") from None
