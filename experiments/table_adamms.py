"""AdaMMS's Table 1 at toy scale: a LLaVA expert merged with a model of another architecture on the same LLM.

M1 is a LLaVA expert of the zoo (``--expert``; default: the one the partner complements, the zoo's first
specialist) and the target architecture; M2 is the zoo's LLaVA-NeXT partner (`uqmerge zoo hetero`: its own SigLIP
tower and connector, the zoo base's language model fine-tuned on the other four families), evaluated through its
own architecture. Rows, held-out exact match per family: the zoo base (the shared pre-trained LLM, for
reference), M1, M2, task arithmetic and TIES across the two architectures (task vectors relative to the zoo base,
``ancestor:``), AdaMMS (θ = (1 − α)·θ_M1 + α·θ_M2 on the language model, M1's tower and projector) at the α that
`uqmerge search` chooses by consistency on ``--sample`` unlabelled held-in inputs over α ∈ {0, 0.1, …, 0.6}, and
AdaMMS at the oracle α (the best held-out mean over the same grid; ties to the smaller α). Every method runs at
its registry defaults apart from α; nothing is tuned on the zoo.

    python experiments/table_adamms.py [--preset default] [--seed 0] [--sample 100] [--expert ID]
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from common import log, parse_args, write_table, zoo

from uqmerge.report.tables import pct

ALPHA_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
"""AdaMMS's grid of α (the weight on M2)."""


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class HeldOut:
    """Held-out exact match per family of model directories (the zoo's evaluator, one per processor class)."""

    def __init__(self, z: Any) -> None:
        from uqmerge.zoo.build import _Evaluator

        paths = {e["family"]: z.path / e["path"] for e in z.manifest["datasets"] if e["split"] == "held_out"}
        self.families = list(paths)
        self.evaluators: dict[str, Any] = {}
        self._make = lambda: _Evaluator(paths)

    def __call__(self, model_dir: Path) -> dict[str, float]:
        from uqmerge.zoo.model import load_zoo_model

        model, processor = load_zoo_model(model_dir)
        kind = type(model).__name__
        if kind not in self.evaluators:
            self.evaluators[kind] = self._make()  # items encoded once per processor class
        scores = self.evaluators[kind](model, processor)
        return {**scores, "mean": round(sum(scores[f] for f in self.families) / len(self.families), 4)}


def merged(root: Path, stamp: str, name: str, config: dict[str, Any]) -> Path:
    """``uqmerge merge`` of ``config`` into ``root/<name>``, reused when made from the same config and models."""
    from uqmerge.engine.merge import merge_to_dir
    from uqmerge.engine.recipe import parse_merge_config

    out = root / name
    marker = out / "experiment.sha256"
    key = _digest(config, stamp)
    if marker.exists() and marker.read_text() == key:
        return out
    if out.exists():
        shutil.rmtree(out)
    merge_to_dir(parse_merge_config(config, source=f"experiment {name}"), out, quiet=True)
    marker.write_text(key)
    log.info("merged %s", name)
    return out


def consistency_search(root: Path, stamp: str, z: Any, m1: Path, m2: Path, sample: int) -> Any:
    """`uqmerge search` of AdaMMS's α by consistency (exact match of greedy responses) on unlabelled inputs."""
    from uqmerge.evaluate.merge_eval import zoo_eval_specs
    from uqmerge.pipeline.digest import config_digest
    from uqmerge.pipeline.search import run_search
    from uqmerge.pipeline.search_config import parse_search_config
    from uqmerge.report.records import SearchRecord

    cfg = {
        "base_model": str(m1),
        "models": [str(m2)],
        "merge": {"merge_method": "adamms"},
        "search": {
            "parameter": "alpha",
            "grid": list(ALPHA_GRID),
            "criterion": "consistency",
            "data": zoo_eval_specs(z.manifest, z.path)["held_in"],
            "sample": sample,
            "seed": 0,
        },
        "device": "cpu",
    }
    config = parse_search_config(cfg, source="experiment adamms search")
    run_dir = root / "search"
    done, marker = run_dir / "search.json", run_dir / "experiment.sha256"
    if done.exists() and marker.exists() and marker.read_text() == stamp:
        record = SearchRecord.read(done)
        if record.chosen_index is not None and record.digest == config_digest(config):
            log.info("search: reusing %s", done)
            return record
    if run_dir.exists():
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    record = run_search(config, run_dir, quiet=True)
    marker.write_text(stamp)
    log.info("search: chose α = %s (%.0f s)", record.chosen_value, time.perf_counter() - start)
    return record


def measure(z: Any, m1_id: str, m2: Path, work: Path, sample: int) -> dict[str, Any]:
    """Every row's held-out scores, the α grid's, the oracle's and consistency's choice (merges under ``work``)."""
    paths = {e["id"]: z.path / e["path"] for e in z.manifest["experts"]}
    m1, base = paths[m1_id], z.path / z.manifest["base"]["path"]
    stamp = _digest(
        hashlib.sha256((z.path / "manifest.json").read_bytes()).hexdigest(),
        hashlib.sha256((m2 / "model.safetensors").read_bytes()).hexdigest(),
        m1_id,
    )
    evaluate = HeldOut(z)
    scores: dict[str, dict[str, float]] = {"base": evaluate(base), "M1": evaluate(m1), "M2": evaluate(m2)}
    for method in ("task_arithmetic", "ties"):
        config = {
            "merge_method": method,
            "base_model": str(m1),
            "ancestor": str(base),
            "models": [{"model": str(m1)}, {"model": str(m2)}],
        }
        scores[method] = evaluate(merged(work, stamp, method, config))
    grid_scores = []
    for alpha in ALPHA_GRID:
        config = {
            "merge_method": "adamms",
            "base_model": str(m1),
            "models": [{"model": str(m2)}],
            "parameters": {"alpha": alpha},
        }
        grid_scores.append(evaluate(merged(work, stamp, f"adamms-alpha{alpha:g}", config)))
    record = consistency_search(work, stamp, z, m1, m2, sample)
    return {
        "families": evaluate.families,
        "scores": scores,
        "grid_scores": grid_scores,
        "oracle_index": max(range(len(ALPHA_GRID)), key=lambda j: (grid_scores[j]["mean"], -j)),
        "chosen_index": record.chosen_index,
        "consistency_scores": [p.score for p in record.points],
        "search_inputs": len(record.inputs),
    }


def main() -> None:
    def extra(p: Any) -> None:
        p.add_argument("--sample", type=int, default=100, help="unlabelled held-in inputs for consistency")
        p.add_argument("--expert", default=None, help="M1: a LLaVA expert id (default: the partner's complement)")

    args = parse_args(__doc__, extra)
    started = time.perf_counter()
    from uqmerge.zoo.hetero import build_hetero, read_hetero_manifest

    z = zoo(args.root, args.preset, args.seed)
    m2 = build_hetero(z.path, args.preset)
    partner = read_hetero_manifest(m2)
    m1_id = args.expert or partner["complement_of"]["id"]
    result = measure(z, m1_id, m2, args.root / "adamms" / z.path.name / m1_id, args.sample)
    scores, grid_scores = result["scores"], result["grid_scores"]
    oracle, chosen = result["oracle_index"], result["chosen_index"]
    families = result["families"]
    rows = []

    def row(label: str, alpha: str, s: dict[str, float]) -> None:
        rows.append([label, alpha, *(pct(s[f]) for f in families), pct(s["mean"])])

    row("zoo base (the shared LLM; LLaVA)", "—", scores["base"])
    row(f"M1: {m1_id} (LLaVA)", "—", scores["M1"])
    row(f"M2: LLaVA-NeXT partner ({', '.join(partner['families'])})", "—", scores["M2"])
    row("task arithmetic (ancestor: zoo base)", "—", scores["task_arithmetic"])
    row("TIES (ancestor: zoo base)", "—", scores["ties"])
    row("AdaMMS, α by consistency", f"{ALPHA_GRID[chosen]:g}", grid_scores[chosen])
    row("AdaMMS, oracle α", f"{ALPHA_GRID[oracle]:g}", grid_scores[oracle])
    grid_line = ", ".join(f"α={a:g}: {pct(s['mean'])}" for a, s in zip(ALPHA_GRID, grid_scores, strict=True))
    consistency_line = ", ".join(
        f"α={a:g}: {d:g}" for a, d in zip(ALPHA_GRID, result["consistency_scores"], strict=True) if d is not None
    )
    gap = grid_scores[oracle]["mean"] - grid_scores[chosen]["mean"]
    write_table(
        args.out,
        "table_adamms",
        "AdaMMS across architectures — a LLaVA expert (M1) and a LLaVA-NeXT partner (M2), held-out exact match %",
        z,
        ["model / merge", "α", *families, "mean"],
        rows,
        {
            "m1": m1_id,
            "m2": str(m2),
            "m2_families": partner["families"],
            "m2_manifest": partner,
            "grid": list(ALPHA_GRID),
            **result,
            "gap": round(gap, 4),
        },
        notes=(
            f"M1 = `{m1_id}` (LLaVA, CLIP tower); M2 = the zoo's LLaVA-NeXT partner (`uqmerge zoo hetero`: SigLIP "
            f"tower, its own connector, the zoo base's LLM tuned on {', '.join(partner['families'])}), evaluated "
            "through its own architecture. Merges are LLaVA models (M1's tower and projector). Task arithmetic and "
            "TIES: models [M1, M2], task vectors relative to the zoo base (`ancestor:`), registry defaults. AdaMMS: "
            f"θ = (1 − α)·θ_M1 + α·θ_M2 on the language model. Held-out mean over the α grid: {grid_line}. "
            f"Consistency (D_j: responses that change with α, on {result['search_inputs']} unlabelled held-in "
            f"inputs, seed 0; the end points are never chosen): {consistency_line}. Gap to the oracle: "
            f"{100 * gap:.1f} points."
        ),
        started=started,
    )


if __name__ == "__main__":
    main()
