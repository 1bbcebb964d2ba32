"""The run report: per-step table, the uncertainty-vs-step plot, and the choice explained (markdown + HTML)."""

from __future__ import annotations

import html
from pathlib import Path

from uqmerge.core.files import atomic_write_text
from uqmerge.report.records import RunRecord
from uqmerge.report.search_report import PLOT_FILE as SEARCH_PLOT_FILE
from uqmerge.report.search_report import plot_search, search_html, search_markdown
from uqmerge.report.tables import markdown_table

PLOT_FILE = "uncertainty_steps.png"


def plot_steps(record: RunRecord, out: Path) -> Path:
    """Save the merged-model measure per step (and baselines as horizontal lines) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = record.steps
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    xs = [len(s.prefix) for s in steps]
    ax.plot(xs, [s.value for s in steps], marker="o", label="UQ-Merge prefix")
    n_sel = len(record.selected)
    sel = [s for s in steps if len(s.prefix) == n_sel]
    if sel:
        ax.scatter([n_sel], [sel[0].value], s=120, facecolors="none", edgecolors="red", label="selected")
    for name, b in record.baselines.items():
        ax.axhline(b.uncertainty, linestyle=":", linewidth=1, color="grey")
        ax.annotate(name, (max(xs or [1]), b.uncertainty), fontsize=6, color="grey", ha="right")
    ax.set_xlabel("models merged (prefix length)")
    ax.set_ylabel(record.selection.measure or "uncertainty")
    ax.set_title("Merged-model uncertainty per step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _rows(record: RunRecord) -> list[list[str]]:
    rows = []
    for i, s in enumerate(record.steps, start=1):
        mark = "selected" if s.prefix == record.selected else ""
        timing = f"{s.merge_s:.2f} / {s.uq_s or 0:.2f}" if s.merge_s is not None else "own score"
        rows.append([str(i), " + ".join(s.prefix), f"{s.value:.6f}", timing, mark])
    return rows


def explain(record: RunRecord) -> str:
    """One paragraph on why this prefix was chosen."""
    sel = record.selection
    steps = record.steps
    best = min(steps, key=lambda s: s.value) if steps else None
    text = (
        f"Candidates were ordered by {sel.guidance} ({sel.direction or 'n/a'}): {', '.join(sel.order)}. "
        f"Each prefix was merged into one resident model and its {sel.measure} measured. "
    )
    if sel.stop == "first_increase" and len(steps) > len(record.selected):
        last = steps[-1]
        text += (
            f"Adding {last.prefix[-1]} gave {last.value:.6f}, not lower than the best so far, so the run "
            f"stopped and kept the {len(record.selected)}-model prefix."
        )
    elif best is not None:
        text += f"The lowest value, {best.value:.6f}, came from the {len(best.prefix)}-model prefix."
    return text


def write_run_report(record: RunRecord, run_dir: Path) -> None:
    """Write ``uncertainty_steps.png``, ``report.md`` and ``report.html`` into ``run_dir`` (and, after a coefficient
    search, ``search_scores.png`` and its section)."""
    plot_steps(record, run_dir / PLOT_FILE)
    if record.search is not None:
        plot_search(record.search, run_dir / SEARCH_PLOT_FILE)
    header = ["step", "models merged", record.selection.measure or "value", "merge s / UQ s", ""]
    rows = _rows(record)
    candidate_rows = [
        [cid, c.model, "; ".join(f"{mode}: {s.score:.6f}" for mode, s in c.scores.items())]
        for cid, c in record.candidates.items()
    ]
    baseline_rows = [[k, ", ".join(b.models), f"{b.uncertainty:.6f}"] for k, b in record.baselines.items()]
    md = [
        "# UQ-Merge run",
        "",
        f"**Selected** ({len(record.selected)}): {', '.join(record.selected)}",
        "",
        explain(record),
        "",
        "## Steps",
        "",
        markdown_table(header, rows),
        "",
        f"![uncertainty per step]({PLOT_FILE})",
        "",
        "## Candidates",
        "",
        markdown_table(["id", "model", "scores"], candidate_rows),
        "",
    ]
    if baseline_rows:
        md += ["## Baselines", "", markdown_table(["baseline", "models", "uncertainty"], baseline_rows), ""]
    if record.search is not None:
        md += search_markdown(record.search, heading="##")
    md.append(f"Merged model: `{record.model_dir}`. Full record: `run.json`.")
    atomic_write_text(run_dir / "report.md", "\n".join(md) + "\n")

    def table(head: list[str], body: list[list[str]]) -> str:
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        return f"<table><tr>{th}</tr>{trs}</table>"

    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>UQ-Merge run</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{border:1px solid #ccc;padding:.2em .5em}}
table{{border-collapse:collapse}}</style></head><body>
<h1>UQ-Merge run</h1><p><b>Selected</b>: {html.escape(", ".join(record.selected))}</p>
<p>{html.escape(explain(record))}</p><h2>Steps</h2>{table(header, rows)}
<p><img src="{PLOT_FILE}" alt="uncertainty per step"></p>
{"<h2>Baselines</h2>" + table(["baseline", "models", "uncertainty"], baseline_rows) if baseline_rows else ""}
{search_html(record.search) if record.search is not None else ""}
</body></html>"""
    atomic_write_text(run_dir / "report.html", page)
