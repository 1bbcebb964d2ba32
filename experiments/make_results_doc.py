"""Collect ``experiments/results/*.md`` into ``docs/results.md`` between a hand-written header and findings.

python experiments/make_results_doc.py
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ORDER = ("zoo", "phrasing", "table1", "table2", "table3", "table5", "table6", "table7", "table8", "table9")
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"


def main() -> None:
    doc = REPO / "docs" / "results.md"
    text = doc.read_text() if doc.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    parts = [
        (REPO / "experiments" / "results" / f"{t}.md").read_text().strip()
        for t in ORDER
        if (REPO / "experiments" / "results" / f"{t}.md").exists()
    ]
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(head + BEGIN + "\n\n" + "\n\n".join(parts) + "\n\n" + END + tail)


if __name__ == "__main__":
    main()
