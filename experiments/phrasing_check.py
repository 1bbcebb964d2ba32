"""Does the held-out split measure skills or phrasing? The same held-out images asked in training phrasings.

The held-out questions put each family's question cores in a frame that no training question uses
(:data:`uqmerge.zoo.tasks.HELD_OUT_QUESTIONS`). This script asks the same held-out images again with the
family's *training* questions and compares each model's exact match: a large gap means the held-out score
measures how a model copes with the new frame more than its skill. (The zoo's first held-out questions used
words that no training question contained; this check found that they measured phrasing luck, see
docs/results.md.)

    python experiments/phrasing_check.py [--preset default] [--seed 0]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from common import parse_args, write_table, zoo

from uqmerge.core.jsonl import jsonl_rows
from uqmerge.evaluate.merge_eval import MergeEvaluator, zoo_eval_specs
from uqmerge.report.tables import pct
from uqmerge.zoo.tasks import FAMILIES, TRAIN_QUESTIONS


def rephrased_copy(held_out: Path, out_dir: Path) -> Path:
    """``held_out`` with item ``i`` asked in training question ``i mod n`` (images by absolute path); same name."""
    family = held_out.stem
    rows = []
    for index, (_, row) in enumerate(jsonl_rows(held_out, "open-ended items from")):
        image = Path(row["image"])
        row["image"] = str(image if image.is_absolute() else (held_out.parent / image).resolve())
        row["question"] = TRAIN_QUESTIONS[family][index % len(TRAIN_QUESTIONS[family])]
        rows.append(row)
    out = out_dir / held_out.name
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


def main() -> None:
    args = parse_args(__doc__)
    started = time.perf_counter()
    z = zoo(args.root, args.preset, args.seed)
    held_out = [Path(p) for p in zoo_eval_specs(z.manifest, z.path)["held_out"]]
    models = ["base", *[e["id"] for e in z.manifest["experts"] if e["kind"] == "specialist"]]
    experts = {e["id"]: z.path / e["path"] for e in z.manifest["experts"]}
    scores: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "zoo held-out questions": [str(p) for p in held_out],
            "training questions": [str(rephrased_copy(p, Path(tmp))) for p in held_out],
        }
        for label, specs in variants.items():
            evaluator = MergeEvaluator(z.path / z.manifest["base"]["path"], experts, specs)
            scores[label] = {m: evaluator([] if m == "base" else [m])["open_accuracy"] for m in models}
    rows = []
    for m in models:
        for label, per_model in scores.items():
            rows.append([m, label, *(pct(per_model[m][f]) for f in FAMILIES)])
    gains = {
        label: {
            m: per_model[m][m.removeprefix("specialist-")] - per_model["base"][m.removeprefix("specialist-")]
            for m in models[1:]
        }
        for label, per_model in scores.items()
    }
    for label, per_model in gains.items():
        rows.append(
            [
                "own-family gain over base",
                label,
                *(f"{100 * per_model[f'specialist-{f}']:+.1f}" for f in FAMILIES),
            ]
        )
    write_table(
        args.out,
        "phrasing",
        "Held-out exact match (%) per family: the zoo's held-out questions vs its training questions, same images",
        z,
        ["model", "questions", *FAMILIES],
        rows,
        {"scores": scores, "gains": gains, "questions": TRAIN_QUESTIONS},
        started=started,
    )


if __name__ == "__main__":
    main()
