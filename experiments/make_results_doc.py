"""Collect ``experiments/results/*.md`` into ``docs/results.md`` between a hand-written header and findings.

Under each table's title it adds the line that dates it: the zoo version (from ``<table>.json``), the date of
its figures (the last commit of ``<table>.json``; its modification date when it has uncommitted changes or git
is unavailable) and how its UQ draws were keyed (per (seed, item, draw) from uqmerge 0.2.0, batch-keyed
dropout draws before; a table's JSON without ``uqmerge_version`` predates 0.2.0; the zoo facts, the
phrasing check and the AdaMMS table involve no UQ).

python experiments/make_results_doc.py
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "experiments" / "results"
ORDER = (
    "zoo",
    "phrasing",
    "table1",
    "table2",
    "table3",
    "table5",
    "table6",
    "table7",
    "table8",
    "table9",
    "table_search",
    "table_search_seeds",
    "table_adamms",
)
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"
NO_UQ = ("zoo", "phrasing", "table_adamms")
"""Tables whose figures involve no UQ (accuracy, and consistency of greedy responses, only)."""
PER_DRAW_KEYS_SINCE = (0, 2, 0)
"""The uqmerge version from which UQ draws are keyed per (seed, item, draw)."""


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def measured_on(path: Path) -> str:
    """The date of a result file's figures: its last commit, or its modification date when it differs from it."""
    rel = path.relative_to(REPO).as_posix()
    if _git("status", "--porcelain", "--", rel) == "":
        committed = _git("log", "-1", "--format=%ad", "--date=short", "--", rel)
        if committed:
            return committed
    return dt.date.fromtimestamp(path.stat().st_mtime).isoformat()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def uq_draws(meta: dict) -> str:
    """How the table's UQ draws were keyed, from the uqmerge version its JSON records (none: before 0.2.0)."""
    version = meta.get("uqmerge_version")
    if version and _version(str(version)) >= PER_DRAW_KEYS_SINCE:
        return f"UQ draws keyed per (seed, item, draw) (uqmerge {version})"
    return "UQ with batch-keyed dropout draws (before uqmerge 0.2.0)"


def dated(table: str) -> str:
    """The table's markdown with a line under its title: zoo version, date, UQ draw keying."""
    text = (RESULTS / f"{table}.md").read_text().strip()
    json_path = RESULTS / f"{table}.json"
    if not json_path.exists():
        return text
    meta = json.loads(json_path.read_text())
    zoo = meta.get("zoo", {})
    line = f"*Zoo `{zoo.get('preset', '?')}` v{zoo.get('code_version', '?')}, measured {measured_on(json_path)}"
    line += ".*" if table in NO_UQ else f"; {uq_draws(meta)}.*"
    title, sep, rest = text.partition("\n\n")
    return f"{title}\n\n{line}{sep}{rest}" if sep else f"{title}\n\n{line}"


def main() -> None:
    doc = REPO / "docs" / "results.md"
    text = doc.read_text() if doc.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    parts = [dated(t) for t in ORDER if (RESULTS / f"{t}.md").exists()]
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(head + BEGIN + "\n\n" + "\n\n".join(parts) + "\n\n" + END + tail)


if __name__ == "__main__":
    main()
