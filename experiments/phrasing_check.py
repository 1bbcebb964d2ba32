"""Does the held-out split measure skills or phrasing luck? Own-family exact match under two sets of phrasings.

The zoo's tokenizer is word-level and its held-out questions use words no training question contains ("object",
"name", "tell", "part"), whose embeddings never trained; and "shape", the only family word in some of them,
appears in every family's training questions. This script asks the held-out images of one zoo again with
questions that are *new* sentences (none is a training question) built only from training words and keeping
the family's cue word, and compares each model's exact match with the zoo's own held-out questions. The models,
images and answers are the same; only the questions differ.

    python experiments/phrasing_check.py [--preset default] [--seed 0]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from common import parse_args, pct, write_table, zoo

from uqmerge.evaluate.merge_eval import MergeEvaluator, zoo_eval_specs
from uqmerge.uq.data import jsonl_rows
from uqmerge.zoo.tasks import TRAIN_QUESTIONS, tokenize_words

# Two per family, alternated over the items as the zoo's held-out split alternates its own two.
IN_VOCABULARY_QUESTIONS: dict[str, tuple[str, ...]] = {
    "colour": ("the shape is what colour?", "what colour is the shape in the image?"),
    "shape": ("which shape is this?", "what shape is in the image?"),
    "count": ("count the shapes in the image.", "how many shapes are there in the image?"),
    "position": ("which side of the image is the shape on?", "the shape is on which side?"),
    "size": ("the shape is how big?", "what is the size of the shape?"),
}


def check_questions() -> None:
    """Every replacement question is new, and made of words that training questions contain."""
    train_words = {w for questions in TRAIN_QUESTIONS.values() for q in questions for w in tokenize_words(q)}
    for family, questions in IN_VOCABULARY_QUESTIONS.items():
        for q in questions:
            unseen = set(tokenize_words(q)) - train_words
            if unseen or q in TRAIN_QUESTIONS[family]:
                raise ValueError(f"{family}: {q!r} is a training question or has unseen words {sorted(unseen)}")


def rephrased_copy(held_out: Path, out_dir: Path) -> Path:
    """``held_out`` with each item's question replaced (images by absolute path); same file name."""
    family = held_out.stem
    rows = []
    for index, (_, row) in enumerate(jsonl_rows(held_out, "open-ended items from")):
        image = Path(row["image"])
        row["image"] = str(image if image.is_absolute() else (held_out.parent / image).resolve())
        row["question"] = IN_VOCABULARY_QUESTIONS[family][index % len(IN_VOCABULARY_QUESTIONS[family])]
        rows.append(row)
    out = out_dir / held_out.name
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


def main() -> None:
    args = parse_args(__doc__)
    check_questions()
    started = time.perf_counter()
    z = zoo(args.root, args.preset, args.seed)
    held_out = [Path(p) for p in zoo_eval_specs(z.manifest, z.path)["held_out"]]
    models = ["base", *[e["id"] for e in z.manifest["experts"] if e["kind"] == "specialist"]]
    experts = {e["id"]: z.path / e["path"] for e in z.manifest["experts"]}
    scores: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "zoo held-out questions": [str(p) for p in held_out],
            "in-vocabulary rephrasing": [str(rephrased_copy(p, Path(tmp))) for p in held_out],
        }
        for label, specs in variants.items():
            evaluator = MergeEvaluator(z.path / z.manifest["base"]["path"], experts, specs)
            scores[label] = {m: evaluator([] if m == "base" else [m])["open_accuracy"] for m in models}
    rows = []
    for m in models:
        for label, per_model in scores.items():
            rows.append([m, label, *(pct(per_model[m][f]) for f in IN_VOCABULARY_QUESTIONS)])
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
                *(f"{100 * per_model[f'specialist-{f}']:+.1f}" for f in IN_VOCABULARY_QUESTIONS),
            ]
        )
    write_table(
        args.out,
        "phrasing",
        "Held-out exact match (%) per family: the zoo's held-out questions vs in-vocabulary rephrasings",
        z,
        ["model", "questions", *IN_VOCABULARY_QUESTIONS],
        rows,
        {"scores": scores, "gains": gains, "questions": IN_VOCABULARY_QUESTIONS},
        started=started,
    )


if __name__ == "__main__":
    main()
