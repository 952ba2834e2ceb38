"""The report of an agent comparison: its table (terminal, markdown, CSV) and the Pareto plot of
accuracy against executed FLOPs, for ``scripts/compare_agents.py``.

A row is one agent at one operating point, a dict with ``agent``, ``family``, ``point``,
``accuracy``, ``flops_fraction``, ``block_fraction`` (fractions in [0, 1]), its ``routing``
diagnostics (:mod:`skipenv.training.routing`) and what training it cost. Plots need
matplotlib (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skipenv.models.pretrained import list_pretrained, pretrained_info
from skipenv.utils import atomic_write

REFERENCE = "AlwaysExecute"  # the plain network's row: drawn as a reference line
BASELINE_FAMILIES = ("RandomSkip", "FixedPattern", "StaticRoute")  # drawn dashed in the plot

COLUMNS = (
    ("agent", "agent", "{}"),
    ("family", "family", "{}"),
    ("point", "point", "{}"),
    ("accuracy", "accuracy %", "{:.2f}"),
    ("flops_fraction", "FLOPs %", "{:.1f}"),
    ("block_fraction", "blocks %", "{:.1f}"),
    ("distinct_routes", "routes", "{}"),
    ("top_route_share", "top route %", "{:.1f}"),
    ("num_dynamic", "dynamic blocks", "{}"),
    ("env_steps", "env steps", "{:,}"),
    ("train_wall_s", "train s", "{:.1f}"),
    ("steps_per_s", "eval steps/s", "{:.0f}"),
)
PERCENT = {"accuracy", "flops_fraction", "block_fraction", "top_route_share"}


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """A row with the routing summary (routes, top-route share, dynamic blocks) lifted up."""
    routing = row.get("routing") or {}
    return {
        **row,
        "distinct_routes": routing.get("distinct_routes"),
        "top_route_share": routing.get("top_route_share"),
        "num_dynamic": routing.get("num_dynamic"),
    }


def cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = flat(row).get(key)
    if value is None or value == "":
        return "-" if key not in ("point",) else ""
    return fmt.format(100 * value if key in PERCENT else value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a plain-text table (printed)."""
    table = [[title for _, title, _ in COLUMNS]]
    table += [[cell(r, key, fmt) for key, _, fmt in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in table
    )


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |"]
    lines.append("|" + "|".join(" --- " if i < 3 else " ---: " for i in range(len(COLUMNS))) + "|")
    for r in rows:
        lines.append("| " + " | ".join(cell(r, key, fmt) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[dict[str, Any]]) -> str:
    keys = [k for k, _, _ in COLUMNS] + ["loss", "return"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: flat(r).get(k) for k in keys})
    return buf.getvalue()


def require_matplotlib() -> None:
    """Raise ImportError with what to do when matplotlib (needed by --plot) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "--plot needs matplotlib, which is not installed: `pip install matplotlib`, or "
            "leave out --plot (the table and --json need nothing extra)"
        ) from err


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats (fewer or equal FLOPs and higher or equal accuracy,
    one strictly), sorted by FLOPs: ``(flops, accuracy)`` pairs."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(set(points), key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def reference_points(split: str, depth: int) -> list[dict[str, Any]]:
    """The shipped models of ``depth`` with their registry (model card) val numbers: reference
    points for a plot on ``val`` (other splits: none, the numbers would not compare)."""
    if split != "val":
        return []
    points = []
    for name in list_pretrained():
        info = pretrained_info(name)
        if info["depth"] == depth and info["val_accuracy"] is not None:
            points.append(
                {
                    "name": name,
                    "kind": info["kind"],
                    "accuracy": info["val_accuracy"],
                    "flops_fraction": info["flops_fraction"],
                }
            )
    return points


def zoom_window(rows: Sequence[dict[str, Any]]) -> tuple[float, float, float, float] | None:
    """FLOPs and accuracy limits (%) of the plot's zoom panel: FLOPs >= 35%, accuracy from 12
    points below the best row (the band where routing agents compete) up to the best; None when
    no row falls in it (then the plot has one panel)."""
    best = max(100 * r["accuracy"] for r in rows)
    inside = [r for r in rows if r["flops_fraction"] >= 0.35 and 100 * r["accuracy"] >= best - 12]
    if len(rows) < 2 or len(inside) == len(rows) or not inside:
        return None
    x0 = min(100 * r["flops_fraction"] for r in inside)
    y0 = min(100 * r["accuracy"] for r in inside)
    return x0 - 2, 102.0, y0 - 0.5, best + 0.8


def plot(
    rows: Sequence[dict[str, Any]],
    path: Path,
    title: str,
    references: Sequence[dict[str, Any]] = (),
) -> None:
    """Accuracy against FLOPs: one marker and line per family (its operating points in FLOPs
    order, named in the legend), the plain network as a dashed reference line, the Pareto
    front of all rows, and the shipped models (``references``, registry numbers) in grey.
    Where rows spread far below the best ones, a second panel zooms on the top accuracy band
    (:func:`zoom_window`), where the agents worth comparing lie."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = zoom_window(rows)
    fig, axes = plt.subplots(1, 2 if window else 1, figsize=(14 if window else 8, 5.5),
                             squeeze=False)  # fmt: skip
    for ax in axes[0]:
        draw_pareto(ax, plt, rows, references)
    if window:
        ax = axes[0][1]
        ax.set_xlim(window[0], window[1])
        ax.set_ylim(window[2], window[3])
        ax.set_title("zoom: the top accuracy band", fontsize=9)
        x0, x1, y0, y1 = window
        box = plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", lw=0.8, ec="grey")
        axes[0][0].add_patch(box)
    fig.suptitle(title, fontsize=10)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def draw_pareto(
    ax: Any, plt: Any, rows: Sequence[dict[str, Any]], references: Sequence[dict[str, Any]]
) -> None:
    """One panel of :func:`plot` on the matplotlib axes ``ax``."""
    markers = "o^sDv<>pP*Xh"
    families: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault(r["family"], []).append(r)
    colors = plt.get_cmap("tab20").colors  # one colour per family up to 20
    for i, (family, members) in enumerate(families.items()):
        members = sorted(members, key=lambda r: r["flops_fraction"])
        xs = [100 * r["flops_fraction"] for r in members]
        ys = [100 * r["accuracy"] for r in members]
        if family == REFERENCE:
            ax.axhline(ys[0], color="black", linestyle="--", linewidth=1, label="plain network")
            ax.scatter(xs, ys, color="black", marker="s", zorder=3)
            continue
        color = colors[(2 * i) % 20 + (2 * i) // 20 % 2]
        # baselines dashed and thin, learned agents solid: the eye finds the agents first
        # (matched random rows are one per agent, not a curve: markers only)
        baseline = family.startswith(BASELINE_FAMILIES)
        style = "none" if "matched" in family else "--" if baseline else "-"
        ax.plot(xs, ys, marker=markers[i % len(markers)], label=family, color=color,
                linewidth=0.9 if baseline else 1.4, linestyle=style,
                markersize=4 if baseline else 6)  # fmt: skip
    front = pareto_front([(100 * r["flops_fraction"], 100 * r["accuracy"]) for r in rows])
    ax.plot(*zip(*front, strict=True), "k:", lw=1.5, zorder=2, label="Pareto front (all rows)")
    if references:
        xs = [100 * r["flops_fraction"] for r in references]
        ys = [100 * r["accuracy"] for r in references]
        ax.scatter(xs, ys, marker="x", c="grey", s=40, zorder=2,
                   label="shipped models (registry, val 5,000)")  # fmt: skip
        for r, x, y in zip(references, xs, ys, strict=True):
            short = r["name"].split("-", 1)[-1] if r["kind"] == "hrl" else r["name"]
            above = r["kind"] == "base"  # plain and SP sit together at 100%: one above, one below
            ax.annotate(short, (x, y), textcoords="offset points", xytext=(0, 6 if above else -11),
                        fontsize=7, color="grey", ha="center", clip_on=True)  # fmt: skip
    ax.set_xlabel("executed FLOPs (% of the full network's MACs)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))
