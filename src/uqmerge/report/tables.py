"""Small formatting helpers for result tables (markdown cells, percentages, short zoo expert ids)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_KIND_ABBREVIATIONS = {"specialist": "S", "overtrained": "OT", "overconfident": "OC"}


def abbreviate_ids(ids: Sequence[str]) -> str:
    """Zoo expert ids in short form for tables (``specialist-colour`` → ``S:colour``); ``(base)`` when empty."""
    out = []
    for cid in ids:
        kind, _, rest = cid.partition("-")
        out.append(f"{_KIND_ABBREVIATIONS[kind]}:{rest}" if kind in _KIND_ABBREVIATIONS and rest else cid)
    return ", ".join(out) if out else "(base)"


def pct(x: float | None, se: float | None = None) -> str:
    """``x`` as a percentage with one decimal (± s.e. when given); ``—`` for None."""
    if x is None:
        return "—"
    return f"{100 * x:.1f} ± {100 * se:.1f}" if se is not None else f"{100 * x:.1f}"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
