"""The README table of results/skiptolerant38 from saved outputs (nothing is evaluated here).

    python results/skiptolerant38/tables.py --dir results/skiptolerant38

Reads, for each model of the skip-tolerant line, ``NAME.val.json`` (``train/evaluate.py
--json``: accuracy, FLOPs and the routing diagnostics of ``skipenv/training/routing.py``) and
``RUN/metrics.jsonl`` (the training run's ``wall_s``), pairs every HRL point ``aA`` with
``static38-ld-aA`` (the greedy static route of equal FLOPs, fine-tuned as long) and
``headroom-aA.json`` (``scripts/route_headroom.py``), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def wall_s(run: Path) -> float | None:
    """Last ``wall_s`` of a run's metrics.jsonl (seconds), None when absent."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return lines[-1].get("wall_s") if lines else None


def cells(d: dict, wall: float | None) -> list[str]:
    r = d.get("routing") or {}
    dyn = r.get("dynamic_blocks") or []
    return [
        f"{100 * d['accuracy']:.2f}",
        f"{100 * d['flops_fraction']:.1f}",
        f"{r['blocks_mean']:.2f} +- {r['blocks_std']:.2f}" if r else "",
        str(r.get("distinct_routes", "")),
        f"{100 * r['top_route_share']:.1f}" if r else "",
        f"{len(dyn)}" + (f" ({', '.join(map(str, dyn))})" if dyn else ""),
        f"{100 * r['static_accuracy']:.2f}" if r else "",
        "-" if wall is None else f"{wall:.0f}",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path(__file__).parent)
    args = p.parse_args()
    d = args.dir
    head = (
        "| model | val top-1 % | FLOPs % | blocks/image (mean +- std) | routes | top route % "
        "| dynamic blocks | static control % | train wall s |"
    )
    print(head)
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = [("resnet38-ld", "base"), ("skipnet38-ld-sp", "sp")]
    alphas = sorted(
        (
            m.group(1)
            for f in d.glob("skipnet38-ld-hrl-a*.val.json")
            if (m := re.match(r"skipnet38-ld-hrl-a([0-9.]+)\.val\.json", f.name))
        ),
        key=float,
    )
    rows += [(f"skipnet38-ld-hrl-a{a}", f"hrl-a{a}") for a in alphas]
    rows += [(f"static38-ld-a{a}", f"static-a{a}") for a in alphas]
    for name, run in rows:
        v = load(d / f"{name}.val.json")
        if v is not None:
            print(f"| {name} | " + " | ".join(cells(v, wall_s(d / run))) + " |")

    print("\nHRL against the fine-tuned static route of equal FLOPs and its own plain network")
    print("(resnet38-ld) and SP, in points:\n")
    base = load(d / "resnet38-ld.val.json")
    sp = load(d / "skipnet38-ld-sp.val.json")
    print(
        "| alpha | HRL % | FLOPs % | static fine-tuned % | FLOPs % | HRL - static | "
        "HRL - static control | HRL - resnet38-ld | HRL - SP |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for a in alphas:
        h = load(d / f"skipnet38-ld-hrl-a{a}.val.json")
        s = load(d / f"static38-ld-a{a}.val.json")
        ctrl = h["routing"]["static_accuracy"]
        row = [
            a,
            f"{100 * h['accuracy']:.2f}",
            f"{100 * h['flops_fraction']:.1f}",
            "" if s is None else f"{100 * s['accuracy']:.2f}",
            "" if s is None else f"{100 * s['flops_fraction']:.1f}",
            "" if s is None else f"{100 * (h['accuracy'] - s['accuracy']):+.2f}",
            f"{100 * (h['accuracy'] - ctrl):+.2f}",
            "" if base is None else f"{100 * (h['accuracy'] - base['accuracy']):+.2f}",
            "" if sp is None else f"{100 * (h['accuracy'] - sp['accuracy']):+.2f}",
        ]
        print("| " + " | ".join(row) + " |")

    print("\nPer-image headroom on each HRL point's top route (`scripts/route_headroom.py`):")
    print("per decision, the share of images better off with it flipped, and how well the")
    print("gate's input predicts which (cross-validated AUC; from the final prediction: late);")
    print("bf16 forward passes, so a route's share can differ by 0.1 from the float32 table\n")
    print("| alpha | route | share | decisions | images better flipped % | AUC gate | AUC late |")
    print("| ---: | --- | ---: | ---: | --- | --- | --- |")
    for a in alphas:
        hr = load(d / f"headroom-a{a}.json")
        if hr is None:
            continue
        dec = hr["decisions"]
        better = [100 * x["better"] for x in dec]
        gate = [x["auc_gate"] for x in dec]
        late = [x["auc_late"] for x in dec]
        print(
            f"| {a} | `{hr['route']}` | {100 * hr['route_share']:.1f} | {len(dec)} | "
            f"{min(better):.0f}-{max(better):.0f} | {min(gate):.2f}-{max(gate):.2f} | "
            f"{min(late):.2f}-{max(late):.2f} |"
        )


if __name__ == "__main__":
    main()
