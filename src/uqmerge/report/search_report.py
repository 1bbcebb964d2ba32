"""The search report: the score over the grid (with the oracle's accuracy when labelled), the table and the choice."""

from __future__ import annotations

import html
from pathlib import Path

from uqmerge.core.files import atomic_write_text
from uqmerge.report.records import SearchRecord
from uqmerge.report.tables import markdown_table

PLOT_FILE = "search_scores.png"

RULES = {
    "consistency": "D_j = DiffCnt(j, j−1) + DiffCnt(j, j+1) over the interior points, lowest chosen (AdaMMS)",
    "uncertainty": "the UQ measure of each merge, lowest chosen",
    "accuracy": "labelled accuracy (the oracle), highest chosen",
}
COMPARISONS = {"exact": "exactly (case and whitespace normalised)", "embedding": "by 1 − cosine of sentence embeddings"}
SCORE_NAMES = {"consistency": "D_j (responses that change)", "uncertainty": "uncertainty", "accuracy": "accuracy"}


def plot_search(record: SearchRecord, out: Path) -> Path:
    """Save the criterion score per grid value (the choice circled; accuracy on a second axis when recorded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    scored = [(p.value, p.score) for p in record.points if p.score is not None]
    ax.plot([v for v, _ in scored], [s for _, s in scored], marker="o", label=record.criterion)
    if record.chosen_index is not None:
        chosen = record.points[record.chosen_index]
        if chosen.score is not None:
            ax.scatter([chosen.value], [chosen.score], s=120, facecolors="none", edgecolors="red", label="chosen")
    ax.set_xlabel(record.parameter)
    ax.set_ylabel(SCORE_NAMES.get(record.criterion, "score"))
    handles, labels = ax.get_legend_handles_labels()
    accuracy = [(p.value, p.accuracy) for p in record.points if p.accuracy is not None]
    if accuracy and record.criterion != "accuracy":
        twin = ax.twinx()
        line = twin.plot([v for v, _ in accuracy], [a for _, a in accuracy], "s--", color="grey", label="accuracy")
        twin.set_ylabel("accuracy (oracle)")
        handles, labels = [*handles, *line], [*labels, "accuracy (oracle)"]
    ax.set_title(f"{record.criterion} over the {record.parameter} grid")
    ax.legend(handles, labels, fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _fmt(x: float | None, digits: int = 6) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def search_rows(record: SearchRecord) -> tuple[list[str], list[list[str]]]:
    """The per-point table: value, score, uncertainty, accuracy, merge and measure seconds, the choice."""
    header = [
        record.parameter,
        SCORE_NAMES.get(record.criterion, "score"),
        "uncertainty",
        "accuracy",
        "merge s / eval s",
        "",
    ]
    rows = []
    for i, p in enumerate(record.points):
        timing = f"{p.merge_s:.2f} / {p.eval_s or 0:.2f}" if p.merge_s is not None else "not measured"
        mark = (
            "chosen"
            if i == record.chosen_index
            else "end point"
            if record.criterion == "consistency" and i in (0, len(record.points) - 1)
            else ""
        )
        rows.append([f"{p.value:g}", _fmt(p.score), _fmt(p.uncertainty), _fmt(p.accuracy, 4), timing, mark])
    return header, rows


def explain_search(record: SearchRecord) -> str:
    """One paragraph: the rule and the choice."""
    text = (
        f"Each of the {len(record.grid)} values of {record.parameter} was merged into one resident model and scored "
        f"on {len(record.inputs)} input(s) by {record.criterion}: {RULES.get(record.criterion, record.criterion)}"
    )
    if record.compare is not None:
        text += f", responses compared {COMPARISONS.get(record.compare, record.compare)}"
    text += "; ties go to the smaller value."
    if record.accuracy_from == "lmms-eval":
        tasks = ", ".join((record.config.get("lmms_eval") or {}).get("tasks", [])) or "its tasks"
        text += f" Accuracy is lmms-eval's score of each point's merge on {tasks} (mean of each task's first metric)."
    if record.chosen_value is not None:
        text += f" Chosen: {record.parameter} = {record.chosen_value:g}."
    if record.lmms_score is not None:
        text += f" lmms-eval score of the chosen merge: {record.lmms_score:.4f} (results in lmms_eval/)."
    return text


def search_markdown(record: SearchRecord, *, heading: str = "#") -> list[str]:
    """The search section of a report (a whole search report, or a section of a run report)."""
    header, rows = search_rows(record)
    return [
        f"{heading} Coefficient search: {record.parameter}",
        "",
        explain_search(record),
        "",
        markdown_table(header, rows),
        "",
        f"![{record.criterion} over the grid]({PLOT_FILE})",
        "",
    ]


def search_html(record: SearchRecord) -> str:
    """The search section as HTML."""
    header, rows = search_rows(record)
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (
        f"<h2>Coefficient search: {html.escape(record.parameter)}</h2><p>{html.escape(explain_search(record))}</p>"
        f'<table><tr>{th}</tr>{trs}</table><p><img src="{PLOT_FILE}" alt="score over the grid"></p>'
    )


def write_search_report(record: SearchRecord, run_dir: Path) -> None:
    """Write ``search_scores.png``, ``report.md`` and ``report.html`` of a `uqmerge search` into ``run_dir``."""
    plot_search(record, run_dir / PLOT_FILE)
    md = search_markdown(record)
    md.append(f"Merged model at the chosen value: `{record.model_dir}`. Full record: `search.json`.")
    atomic_write_text(run_dir / "report.md", "\n".join(md) + "\n")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>uqmerge search</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{border:1px solid #ccc;padding:.2em .5em}}
table{{border-collapse:collapse}}</style></head><body>
<h1>uqmerge search</h1>{search_html(record)}<p>Merged model: {html.escape(str(record.model_dir))}</p>
</body></html>"""
    atomic_write_text(run_dir / "report.html", page)
