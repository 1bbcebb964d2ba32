"""Shared plumbing of the toy-scale experiments: zoos, UQ-Merge runs, merge evaluation, result tables.

Every table script writes ``experiments/results/<table>.json`` (all figures) and ``<table>.md`` (the table,
the command that made it, the zoo and its timings); ``experiments/make_results_doc.py`` collects them into
``docs/results.md``. Zoos, runs and the UQ cache live under ``--root`` (default ``.uqmerge-cache/experiments``),
so a second script reuses the zoo and every candidate's UQ.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uqmerge.report.records import RunRecord
from uqmerge.report.tables import abbreviate_ids, markdown_table, pct

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "experiments" / "results"
PAPER_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "della", "model_stock")
"""The six single-modal baselines of the paper's Tables 1, 2 and 6 (DARE as DARE-TIES, as in mergekit)."""
log = logging.getLogger("experiments")
short = abbreviate_ids


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The options every table script takes (``--root``, ``--preset``, ``--seed``), plus ``extra`` ones."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / ".uqmerge-cache" / "experiments")
    parser.add_argument("--preset", default="default", help="zoo preset (mini for a quick check)")
    parser.add_argument("--seed", type=int, default=0, help="zoo seed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the table's .json and .md go")
    if extra:
        extra(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("uqmerge", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("UQMERGE_CACHE", str(args.root / "uq-cache"))
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return args


@dataclass
class Zoo:
    """A built zoo: its directory, manifest and an evaluator of merges of its experts."""

    path: Path
    manifest: dict[str, Any]
    _evaluator: Any = field(default=None, repr=False)

    @property
    def expert_ids(self) -> list[str]:
        return [e["id"] for e in self.manifest["experts"]]

    @property
    def kinds(self) -> dict[str, str]:
        return {e["id"]: e["kind"] for e in self.manifest["experts"]}

    @property
    def evaluator(self) -> Any:
        """A :class:`~uqmerge.evaluate.merge_eval.MergeEvaluator` on held-in MC and held-out open-ended."""
        if self._evaluator is None:
            from uqmerge.evaluate.merge_eval import MergeEvaluator, zoo_eval_specs

            specs = zoo_eval_specs(self.manifest, self.path)
            experts = {e["id"]: self.path / e["path"] for e in self.manifest["experts"]}
            self._evaluator = MergeEvaluator(
                self.path / self.manifest["base"]["path"], experts, [*specs["held_in"], *specs["held_out"]]
            )
        return self._evaluator

    def evaluate(self, models: Sequence[str], method: str = "linear") -> dict[str, Any]:
        """Held-in MC accuracy and held-out exact match of Merge_method(models) (``[]``: the base)."""
        # Each method at its registry defaults (`uqmerge methods`): nothing is tuned on the zoo.
        return self.evaluator(list(models), {"merge_method": method})


def zoo(root: Path, preset: str, seed: int) -> Zoo:
    """Build or reuse the zoo of ``preset`` and ``seed`` under ``root``."""
    from uqmerge.zoo.build import build_zoo, read_manifest

    start = time.perf_counter()
    path = build_zoo(root / f"zoo-{preset}-seed{seed}", preset, seed)
    log.info("zoo %s seed %d ready (%.0f s)", preset, seed, time.perf_counter() - start)
    return Zoo(path, read_manifest(path))


def method_takes(method: str, n_models: int) -> bool:
    """Whether ``method`` merges ``n_models`` models (Model Stock needs at least two)."""
    from uqmerge.methods.registry import get_method

    spec = get_method(method)
    return n_models >= spec.min_models and (spec.max_models is None or n_models <= spec.max_models)


def run_config(z: Zoo, **overrides: Any) -> dict[str, Any]:
    """The demo's run config (uniform linear merge, `vl` UQ, J=4, held-in MC) with nested ``overrides``.

    ``overrides`` keys are sections (``uq``, ``selection``, ``merge``, ``baselines``) whose dicts update the
    section key by key.
    """
    from uqmerge.demo import demo_run_config

    cfg = demo_run_config(z.manifest, z.path, order="descending")
    cfg["baselines"] = {"all": False}
    for section, values in overrides.items():
        if isinstance(values, Mapping) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **copy.deepcopy(dict(values))}
        else:
            cfg[section] = copy.deepcopy(values)
    return cfg


def uq_merge(root: Path, z: Zoo, name: str, **overrides: Any) -> RunRecord:
    """Run UQ-Merge (config :func:`run_config` + ``overrides``) into ``root/runs/<zoo>/<name>``; the record."""
    from uqmerge.pipeline.config import parse_run_config
    from uqmerge.pipeline.runner import run_uq_merge

    run_dir = root / "runs" / z.path.name / name
    cfg = parse_run_config(run_config(z, **overrides), source=f"experiment {name}")
    done, stamp = run_dir / "run.json", run_dir / "zoo-manifest.sha256"
    # The config names model paths only; a zoo rebuilt in the same place (a new code version) holds other
    # models, so a run is reused only if it was made on this very build of the zoo.
    zoo_build = hashlib.sha256((z.path / "manifest.json").read_bytes()).hexdigest()
    if done.exists() and stamp.exists() and stamp.read_text() == zoo_build:
        record = RunRecord.read(done)
        if record.config == cfg.model_dump(mode="json"):
            log.info("run %s: reusing %s", name, done)
            return record
    if run_dir.exists():
        shutil.rmtree(run_dir)  # unfinished, of another config or of another zoo build: start afresh
    start = time.perf_counter()
    record = run_uq_merge(cfg, run_dir, quiet=True)
    stamp.write_text(zoo_build)
    log.info("run %s: selected %s (%.0f s)", name, record.selected, time.perf_counter() - start)
    return record


def evaluate_selection(z: Zoo, run: RunRecord) -> tuple[dict[str, Any], list[str]]:
    """A UQ-Merge run's selection, evaluated: its JSON entry and its table cells (selected, held-in, held-out)."""
    r = z.evaluate(run.selected)
    entry = {
        "order": run.selection.order,
        "scores": run.selection.scores,
        "selected": run.selected,
        "held_in": r["mc_mean"],
        "held_out": r["open_mean"],
    }
    return entry, [short(run.selected), pct(r["mc_mean"]), pct(r["open_mean"])]


def write_table(
    out: Path,
    table_id: str,
    title: str,
    z: Zoo,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    data: Mapping[str, Any],
    notes: str = "",
    started: float | None = None,
    zoo_seeds: Sequence[int] | None = None,
) -> None:
    """Write ``<table_id>.json`` (``data`` + the table) and ``<table_id>.md`` under ``out``.

    ``z`` names the zoo in the header; a table made on several zoo seeds passes them as ``zoo_seeds``.
    """
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    wall = None if started is None else round(time.perf_counter() - started, 1)
    from uqmerge import __version__

    meta = {
        "table": table_id,
        "uqmerge_version": __version__,
        "title": title,
        "command": command,
        "zoo": {
            "preset": z.manifest["preset"],
            "seed": z.manifest["seed"] if zoo_seeds is None else list(zoo_seeds),
            "code_version": z.manifest["code_version"],
            "path": str(z.path),
        },
        "wall_s": wall,
    }
    table = markdown_table(columns, rows)
    (out / f"{table_id}.json").write_text(
        json.dumps(
            {**meta, "columns": list(columns), "rows": [list(map(str, r)) for r in rows], "data": data}, indent=2
        )
        + "\n"
    )
    zoo_name = f"zoo `{z.manifest['preset']}` v{z.manifest['code_version']}"
    seeds = f"seed {z.manifest['seed']}" if zoo_seeds is None else "seeds " + ", ".join(map(str, zoo_seeds))
    text = f"### {title}\n\n`{command}` ({zoo_name}, {seeds}"
    text += f"; {wall:.0f} s on this machine)\n\n" if wall is not None else ")\n\n"
    text += table + "\n" + (f"\n{notes.strip()}\n" if notes.strip() else "")
    (out / f"{table_id}.md").write_text(text)
    print(text)
