"""The shipped models' table in README.md and the model card is the one
scripts/pretrained_table.py writes, and it quotes registry.json."""

from __future__ import annotations

import re

import pytest
from conftest import REPO, load_script

from skipenv.models.pretrained import list_pretrained, pretrained_info

table = load_script("scripts/pretrained_table.py")
CARD = REPO / "skipenv" / "models" / "weights" / "MODEL_CARD.md"


def rows_of(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[re.sub(r" \(default\)$", "", cells[0])] = cells
    return rows


def test_readme_and_card_tables_are_generated_and_quote_the_registry(monkeypatch) -> None:
    monkeypatch.delenv("SKIPNET_PRETRAINED_DIR", raising=False)
    readme = table.table_between_markers((REPO / "README.md").read_text())
    card = table.table_between_markers(CARD.read_text())
    assert readme == card
    assert readme.splitlines()[:2] == table.render_table([]).splitlines()  # the script's header
    rows = rows_of(readme)
    assert list(rows) == list_pretrained()
    for name, cells in rows.items():
        info = pretrained_info(name)
        expected = [f"{100 * info[k]:.2f}%" for k in table.METRICS]
        assert cells[2:6] == expected, name
        assert cells[1] == table.KIND_NAMES[info["kind"]]
        assert cells[0].endswith("(default)") == info["default_for_depth"]
        assert re.fullmatch(r"\d+ of \d+|-", cells[6])


def test_render_and_replace_between_markers() -> None:
    entry = {"name": "m", "kind": "hrl", "default_for_depth": True, "val_accuracy": 0.886,
             "flops_fraction": 0.66, "flops_fraction_with_gate": 0.6602, "block_fraction": 0.667,
             "dependent_blocks": 1, "num_blocks": 18}  # fmt: skip
    rendered = table.render_table([entry])
    assert rendered.splitlines()[2] == (
        "| m (default) | HRL | 88.60% | 66.00% | 66.02% | 66.70% | 1 of 18 |"
    )
    text = f"a\n{table.BEGIN}\nold\n{table.END}\nb"
    assert table.replace_between_markers(text, rendered, "x") == (
        f"a\n{table.BEGIN}\n{rendered}\n{table.END}\nb"
    )
    with pytest.raises(ValueError, match="markers"):
        table.replace_between_markers("no markers", rendered, "x")
    assert table.dependent_blocks([0.0, 0.5, 1.0, 0.99]) == 2
