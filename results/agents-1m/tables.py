"""The README tables and learning-curve plot of results/agents-1m from saved outputs.

    python results/agents-1m/tables.py --board results/agents-1m/leaderboard.json \
        --old results/agents-100k/leaderboard.json --curves results/agents-1m/runs

Reads compare_agents' leaderboard JSON (this run and the 100k one, same 2,000 val images) and
the runs' metrics.jsonl (copied to --curves/ALGO-aALPHA/metrics.jsonl); prints markdown and
writes learning_curves.png next to --board. Nothing is evaluated here.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--board", type=Path, required=True)
    p.add_argument("--old", type=Path, required=True)
    p.add_argument("--curves", type=Path, required=True)
    args = p.parse_args()
    rows = json.loads(args.board.read_text())["rows"]
    old = {r["agent"]: r for r in json.loads(args.old.read_text())["rows"]}
    by = {r["agent"]: r for r in rows}
    static = {r["agent"]: r for r in rows if r["family"] == "StaticRoute (greedy)"}
    learned = [r for r in rows if r.get("env_steps") or r["agent"] == "GateAgent"]
    print(
        "| agent | env steps | accuracy % | FLOPs % | best static route at its FLOPs % | "
        "minus static (points) | matched RandomSkip % | routes | top route % | "
        "100k: accuracy % | 100k: FLOPs % |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in sorted(learned, key=lambda r: -r["flops_fraction"]):
        name = r["agent"]
        s = static.get(f"StaticRoute({100 * r['flops_fraction']:.1f}%)")
        rnd = next((x for x in rows if x["agent"].endswith(f"matched to {name})")), None)
        o = old.get(name)
        steps = f"{r['env_steps']:,}" if r.get("env_steps") else "-"
        cells = [
            name,
            steps,
            f"{100 * r['accuracy']:.2f}",
            f"{100 * r['flops_fraction']:.1f}",
            "" if s is None else f"{100 * s['accuracy']:.2f}",
            "" if s is None else f"{100 * (r['accuracy'] - s['accuracy']):+.2f}",
            "" if rnd is None else f"{100 * rnd['accuracy']:.2f}",
            str(r["routing"]["distinct_routes"]),
            f"{100 * r['routing']['top_route_share']:.1f}",
            "" if o is None else f"{100 * o['accuracy']:.2f}",
            "" if o is None else f"{100 * o['flops_fraction']:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")
    ref = by.get("AlwaysExecute")
    if ref:
        print(f"\nAlwaysExecute: {100 * ref['accuracy']:.2f}% at 100% FLOPs")

    # learning curves: training episodes' accuracy and FLOPs every ~10k env steps
    curves = {}
    for f in sorted(args.curves.glob("*/metrics.jsonl")):
        m = re.match(r"(.+)-a([0-9.]+)$", f.parent.name)
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        curves[(m.group(1), m.group(2))] = lines
    print(
        "\n| run | train accuracy % at ~100k | FLOPs % at ~100k | at 1M: accuracy % | FLOPs % | "
        "last 100k mean: accuracy % | FLOPs % |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (algo, alpha), lines in curves.items():
        at = min(lines, key=lambda x: abs(x["step"] - 100_000))
        end = lines[-1]
        tail = [x for x in lines if x["step"] > end["step"] - 100_000]
        acc = sum(x["accuracy"] for x in tail) / len(tail)
        fl = sum(x["flops_fraction"] for x in tail) / len(tail)
        print(
            f"| {algo} a{alpha} | {100 * at['accuracy']:.1f} | {100 * at['flops_fraction']:.1f} | "
            f"{100 * end['accuracy']:.1f} | {100 * end['flops_fraction']:.1f} | "
            f"{100 * acc:.1f} | {100 * fl:.1f} |"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7), sharex=True, sharey="row")
    alphas = sorted({a for _, a in curves}, key=float)
    for j, alpha in enumerate(alphas):
        for (algo, a), lines in curves.items():
            if a != alpha:
                continue
            x = [ln["step"] / 1e6 for ln in lines]
            axes[0, j].plot(x, [100 * ln["accuracy"] for ln in lines], label=algo, lw=1)
            axes[1, j].plot(x, [100 * ln["flops_fraction"] for ln in lines], label=algo, lw=1)
        axes[0, j].set_title(f"paper reward, alpha {alpha}")
        axes[1, j].set_xlabel("env steps (millions)")
    axes[0, 0].set_ylabel("training episodes: accuracy %")
    axes[1, 0].set_ylabel("training episodes: FLOPs %")
    axes[0, 0].legend()
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(
        "learning curves on skipnet38-hrl-a0.6: training episodes on train images, "
        "one point per ~10k env steps"
    )
    fig.tight_layout()
    out = args.board.parent / "learning_curves.png"
    fig.savefig(out, dpi=110)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
