"""The run report: per-step table, the uncertainty-vs-step plot, and the choice explained (markdown + HTML)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

PLOT_FILE = "uncertainty_steps.png"


def plot_steps(record: dict[str, Any], out: Path) -> Path:
    """Save the merged-model measure per step (and baselines as horizontal lines) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = record["steps"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    xs = [len(s["prefix"]) for s in steps]
    ax.plot(xs, [s["value"] for s in steps], marker="o", label="UQ-Merge prefix")
    n_sel = len(record["selected"])
    sel = [s for s in steps if len(s["prefix"]) == n_sel]
    if sel:
        ax.scatter([n_sel], [sel[0]["value"]], s=120, facecolors="none", edgecolors="red", label="selected")
    for name, b in record.get("baselines", {}).items():
        ax.axhline(b["uncertainty"], linestyle=":", linewidth=1, color="grey")
        ax.annotate(name, (max(xs or [1]), b["uncertainty"]), fontsize=6, color="grey", ha="right")
    ax.set_xlabel("models merged (prefix length)")
    ax.set_ylabel(record["selection"].get("measure") or "uncertainty")
    ax.set_title("Merged-model uncertainty per step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _rows(record: dict[str, Any]) -> list[list[str]]:
    rows = []
    n_sel = len(record["selected"])
    for i, s in enumerate(record["steps"], start=1):
        mark = "selected" if len(s["prefix"]) == n_sel and s["prefix"] == record["selected"] else ""
        timing = f"{s.get('merge_s', 0):.2f} / {s.get('uq_s', 0):.2f}" if "merge_s" in s else "own score"
        rows.append([str(i), " + ".join(s["prefix"]), f"{s['value']:.6f}", timing, mark])
    return rows


def explain(record: dict[str, Any]) -> str:
    """One paragraph on why this prefix was chosen."""
    sel = record["selection"]
    steps = record["steps"]
    order = ", ".join(sel["order"])
    best = min(steps, key=lambda s: s["value"]) if steps else None
    text = (
        f"Candidates were ordered by {sel['guidance']} ({sel.get('direction') or 'n/a'}): {order}. "
        f"Each prefix was merged into one resident model and its {sel.get('measure')} measured. "
    )
    if sel.get("stop") == "first_increase" and len(steps) > len(record["selected"]):
        last = steps[-1]
        text += (
            f"Adding {last['prefix'][-1]} gave {last['value']:.6f}, not lower than the best so far, so the run "
            f"stopped and kept the {len(record['selected'])}-model prefix."
        )
    elif best is not None:
        text += f"The lowest value, {best['value']:.6f}, came from the {len(best['prefix'])}-model prefix."
    return text


def write_run_report(record: dict[str, Any], run_dir: Path) -> None:
    """Write ``uncertainty_steps.png``, ``report.md`` and ``report.html`` into ``run_dir``."""
    plot_steps(record, run_dir / PLOT_FILE)
    header = ["step", "models merged", record["selection"].get("measure") or "value", "merge s / UQ s", ""]
    rows = _rows(record)
    cands = record["candidates"]
    md = [
        "# UQ-Merge run",
        "",
        f"**Selected** ({len(record['selected'])}): {', '.join(record['selected'])}",
        "",
        explain(record),
        "",
        "## Steps",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        f"![uncertainty per step]({PLOT_FILE})",
        "",
        "## Candidates",
        "",
        "| id | model | scores |",
        "|---|---|---|",
        *[
            f"| {cid} | {c['model']} | "
            + "; ".join(f"{m}: {v['score']:.6f}" for m, v in c.items() if isinstance(v, dict))
            + " |"
            for cid, c in cands.items()
        ],
        "",
    ]
    if record.get("baselines"):
        md += ["## Baselines", "", "| baseline | models | uncertainty |", "|---|---|---|"]
        md += [f"| {k} | {', '.join(b['models'])} | {b['uncertainty']:.6f} |" for k, b in record["baselines"].items()]
        md.append("")
    md.append(f"Merged model: `{record['model_dir']}`. Full record: `run.json`.")
    (run_dir / "report.md").write_text("\n".join(md) + "\n")

    def table(head: list[str], body: list[list[str]]) -> str:
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        return f"<table><tr>{th}</tr>{trs}</table>"

    baseline_rows = [[k, ", ".join(b["models"]), f"{b['uncertainty']:.6f}"] for k, b in record["baselines"].items()]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>UQ-Merge run</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{border:1px solid #ccc;padding:.2em .5em}}
table{{border-collapse:collapse}}</style></head><body>
<h1>UQ-Merge run</h1><p><b>Selected</b>: {html.escape(", ".join(record["selected"]))}</p>
<p>{html.escape(explain(record))}</p><h2>Steps</h2>{table(header, rows)}
<p><img src="{PLOT_FILE}" alt="uncertainty per step"></p>
{"<h2>Baselines</h2>" + table(["baseline", "models", "uncertainty"], baseline_rows) if baseline_rows else ""}
</body></html>"""
    (run_dir / "report.html").write_text(page)
