"""Coefficient search (toy scale): does a label-free criterion choose λ (or α) near the held-out oracle?

For each merge setting, `uqmerge search` runs over the grid with each criterion on the held-in inputs:
consistency (AdaMMS: exact match of greedy responses, and with `compare: embedding`), uncertainty (UQ-Merge's
`vl` measure) and accuracy (labelled held-in MC accuracy: a labelled validation set, as the OptMerge benchmark
uses). Every grid point is
also evaluated on the held-out open-ended sets; the oracle is the grid point with the best held-out exact match
(ties to the smaller value). Settings: task arithmetic and TIES over the five specialists and over all nine
experts, λ on the OptMerge grid; and α of the base's interpolation with each single specialist
(base + α·(specialist − base), AdaMMS's two-model setting). Every other parameter is at its registry default.

With ``--headline-seeds 1 2`` it also writes ``table_search_seeds``: the four λ settings on those zoo seeds too
(the chosen λ per seed and the mean gap to the oracle).

    python experiments/table_search.py [--preset default] [--seed 0] [--sample 100] [--headline-seeds 1 2]
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

from common import log, parse_args, short, write_table, zoo

from uqmerge.report.records import SearchRecord
from uqmerge.report.tables import pct

OPTMERGE_GRID = (0.1, 0.3, 0.5, 0.7, 1.0, 1.5)
ALPHA_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CRITERIA = ("consistency", "consistency-embedding", "uncertainty", "accuracy")
"""Table rows per setting; ``consistency-embedding`` is consistency with ``compare: embedding`` (all-MiniLM-L6-v2)."""


def settings(z: Any) -> list[dict[str, Any]]:
    """The merge settings searched: (name, method, expert ids, parameter, grid)."""
    specialists = [e for e, kind in z.kinds.items() if kind == "specialist"]
    out = []
    for method in ("task_arithmetic", "ties"):
        for group, ids in (("specialists", specialists), ("all", z.expert_ids)):
            out.append({"name": f"{method}/{group}", "method": method, "ids": ids, "grid": OPTMERGE_GRID})
    for sid in specialists:
        out.append({"name": f"alpha/{sid}", "method": "task_arithmetic", "ids": [sid], "grid": ALPHA_GRID})
    return out


def search(root: Path, z: Any, setting: dict[str, Any], criterion: str, sample: int) -> SearchRecord:
    """`uqmerge search` for one setting and criterion under ``root/search``, reused when already complete."""
    from uqmerge.evaluate.merge_eval import zoo_eval_specs
    from uqmerge.pipeline.digest import config_digest
    from uqmerge.pipeline.search import run_search
    from uqmerge.pipeline.search_config import parse_search_config

    experts = {e["id"]: str(z.path / e["path"]) for e in z.manifest["experts"]}
    cfg = {
        "base_model": str(z.path / z.manifest["base"]["path"]),
        "models": [experts[i] for i in setting["ids"]],
        "merge": {"merge_method": setting["method"]},
        "search": {
            "parameter": "lambda",
            "grid": list(setting["grid"]),
            "criterion": criterion.split("-")[0],
            **({"consistency": {"compare": "embedding"}} if criterion == "consistency-embedding" else {}),
            "data": zoo_eval_specs(z.manifest, z.path)["held_in"],
            "sample": sample,
            "seed": 0,
        },
        "uq": {"mode": "vl", "perturbations": 4, "seed": 0, "batch_size": 32},
        "device": "cpu",
    }
    config = parse_search_config(cfg, source=f"experiment {setting['name']} {criterion}")
    run_dir = root / "search" / z.path.name / setting["name"].replace("/", "-") / criterion
    stamp = run_dir / "zoo-manifest.sha256"
    zoo_build = hashlib.sha256((z.path / "manifest.json").read_bytes()).hexdigest()
    done = run_dir / "search.json"
    if done.exists() and stamp.exists() and stamp.read_text() == zoo_build:
        record = SearchRecord.read(done)
        if record.chosen_index is not None and record.digest == config_digest(config):
            log.info("search %s %s: reusing %s", setting["name"], criterion, done)
            return record
    if run_dir.exists():
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    record = run_search(config, run_dir, quiet=True)
    stamp.write_text(zoo_build)
    wall = time.perf_counter() - start
    log.info("search %s %s: chose %s (%.0f s)", setting["name"], criterion, record.chosen_value, wall)
    return record


def held_out(z: Any, setting: dict[str, Any]) -> list[float]:
    """Held-out exact match of the merge at every grid value."""
    merges = [{"merge_method": setting["method"], "parameters": {"lambda": v}} for v in setting["grid"]]
    return [z.evaluator(setting["ids"], m)["open_mean"] for m in merges]


def evaluate_setting(root: Path, z: Any, setting: dict[str, Any], sample: int) -> dict[str, Any]:
    """Held-out exact match over the grid, the oracle, and each criterion's choice with its gap."""
    grid = list(setting["grid"])
    em = held_out(z, setting)
    oracle = max(range(len(grid)), key=lambda j: (em[j], -j))
    entry: dict[str, Any] = {"grid": grid, "held_out": em, "oracle_index": oracle, "criteria": {}}
    for criterion in CRITERIA:
        record = search(root, z, setting, criterion, sample)
        j = record.chosen_index
        entry["criteria"][criterion] = {
            "chosen_index": j,
            "chosen_value": record.chosen_value,
            "scores": [p.score for p in record.points],
            "held_in_accuracy": [p.accuracy for p in record.points],
            "held_out": em[j],
            "gap": em[oracle] - em[j],
        }
    return entry


def headline_table(args: Any, seeds: list[int]) -> None:
    """The four λ settings on several zoo seeds: chosen λ per seed and the mean gap per criterion."""
    started = time.perf_counter()
    per_seed = {}
    for seed in seeds:
        z = zoo(args.root, args.preset, seed)
        per_seed[seed] = {
            s["name"]: evaluate_setting(args.root, z, s, args.sample)
            for s in settings(z)
            if not s["name"].startswith("alpha")
        }
    rows = []
    for name in per_seed[seeds[0]]:
        for criterion in CRITERIA:
            picks = [per_seed[s][name]["criteria"][criterion] for s in seeds]
            oracles = [per_seed[s][name]["grid"][per_seed[s][name]["oracle_index"]] for s in seeds]
            gaps = [p["gap"] for p in picks]
            rows.append(
                [
                    name,
                    criterion,
                    " / ".join(f"{p['chosen_value']:g}" for p in picks),
                    " / ".join(f"{o:g}" for o in oracles),
                    f"{100 * sum(gaps) / len(gaps):.1f}",
                ]
            )
    write_table(
        args.out,
        "table_search_seeds",
        "Coefficient search on several zoo seeds — chosen λ vs the held-out oracle",
        z,
        ["merge", "criterion", "chosen λ (per seed)", "oracle λ (per seed)", "mean gap (points)"],
        rows,
        {str(s): v for s, v in per_seed.items()},
        notes=f"As the single-seed table, on zoo seeds {', '.join(map(str, seeds))}.",
        started=started,
        zoo_seeds=seeds,
    )


def main() -> None:
    def extra(p: Any) -> None:
        p.add_argument("--sample", type=int, default=100)
        p.add_argument("--headline-seeds", type=int, nargs="*", default=[])

    args = parse_args(__doc__, extra)
    started = time.perf_counter()
    z = zoo(args.root, args.preset, args.seed)
    rows, data = [], {}
    for setting in settings(z):
        entry = evaluate_setting(args.root, z, setting, args.sample)
        grid, em, oracle = entry["grid"], entry["held_out"], entry["oracle_index"]
        for criterion in CRITERIA:
            j = entry["criteria"][criterion]["chosen_index"]
            rows.append(
                [
                    setting["name"],
                    criterion,
                    f"{grid[j]:g}",
                    pct(em[j]),
                    f"{grid[oracle]:g}",
                    pct(em[oracle]),
                    f"{100 * (em[oracle] - em[j]):.1f}",
                ]
            )
        data[setting["name"]] = entry
    gaps = {c: [d["criteria"][c]["gap"] for d in data.values()] for c in CRITERIA}
    summary = "; ".join(
        f"{c}: mean gap {100 * sum(g) / len(g):.1f} points, at the oracle in {sum(x == 0 for x in g)} of {len(g)}"
        for c, g in gaps.items()
    )
    write_table(
        args.out,
        "table_search",
        "Coefficient search — label-free choice vs the held-out oracle (held-out exact match %)",
        z,
        ["merge", "criterion", "chosen", "held-out EM", "oracle", "oracle EM", "gap (points)"],
        rows,
        {"settings": data, "summary": summary, "ids": {s["name"]: short(s["ids"]) for s in settings(z)}},
        notes=(
            f"Criteria on {args.sample} held-in inputs drawn with seed 0 (consistency: greedy responses, exact "
            "match, or 1 − cosine of all-MiniLM-L6-v2 embeddings; uncertainty: `vl`, J = 4; accuracy: labelled "
            f"held-in MC). The oracle is the best held-out exact match on the grid. {summary}."
        ),
        started=started,
    )
    if args.headline_seeds:
        headline_table(args, [args.seed, *[s for s in args.headline_seeds if s != args.seed]])


if __name__ == "__main__":
    main()
