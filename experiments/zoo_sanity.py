"""Sanity figures of the miniature zoo: is merging meaningful in this world?

For each zoo seed: build (or reuse) the zoo, then report held-out exact match per family of the base
and every expert, and of two merges of the specialists computed here directly on the state dicts:
the plain average (uniform linear merge) and task arithmetic (base + sum of task vectors, lambda 1).
Across seeds: each specialist's own-family score (mean, spread = max - min) against the base's.

    python experiments/zoo_sanity.py --root /tmp/zoos --preset default --seeds 0 1 2 [--out figures.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from uqmerge.evaluate.open_ended import evaluate_open_ended, load_open_items
from uqmerge.uq.prompts import LETTERS
from uqmerge.zoo.build import build_zoo, read_manifest
from uqmerge.zoo.model import load_zoo_model, mc_prompt

log = logging.getLogger("zoo_sanity")


def mc_accuracy(model, processor, zoo: Path, manifest: dict) -> dict[str, float]:
    """Letter-argmax accuracy on the held-in MC sets (last position, left padding, explicit positions)."""
    letter_ids = [processor.tokenizer.convert_tokens_to_ids(letter) for letter in LETTERS[:6]]
    out = {}
    for entry in manifest["datasets"]:
        if entry["split"] != "held_in":
            continue
        path = zoo / entry["path"]
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        from PIL import Image

        prompts = [mc_prompt(processor, r["question"], r["options"]) for r in rows]
        images = [Image.open(path.parent / r["image"]).convert("RGB") for r in rows]
        batch = processor(text=prompts, images=images, padding=True, return_tensors="pt")
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(**batch, logits_to_keep=1).logits[:, -1, letter_ids]
        predicted = logits.argmax(-1).tolist()
        correct = [p == r["options"].index(r["answer"]) for p, r in zip(predicted, rows, strict=True)]
        out[entry["family"]] = round(sum(correct) / len(correct), 4)
    return out


def merged_state(states: list[dict[str, torch.Tensor]], base: dict[str, torch.Tensor], method: str):
    if method == "average":
        return {k: sum(s[k] for s in states) / len(states) for k in base}
    if method == "task_arithmetic":
        return {k: base[k] + sum(s[k] - base[k] for s in states) for k in base}
    raise ValueError(method)


def evaluate_zoo(zoo: Path) -> dict:
    manifest = read_manifest(zoo)
    items = [
        item
        for d in manifest["datasets"]
        if d["split"] == "held_out"
        for item in load_open_items(zoo / d["path"], family=d["family"])
    ]
    results: dict[str, dict] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    model = processor = None
    for entry in [manifest["base"], *manifest["experts"]]:
        model, processor = load_zoo_model(zoo / entry["path"])
        states[entry["id"]] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        results[entry["id"]] = {
            "open": evaluate_open_ended(model, processor, items, 100)["accuracy"],
            "mc": mc_accuracy(model, processor, zoo, manifest),
        }
    specialists = [e["id"] for e in manifest["experts"] if e["kind"] == "specialist"]
    for method in ("average", "task_arithmetic"):
        model.load_state_dict(merged_state([states[s] for s in specialists], states["base"], method))
        results[f"merge:{method}"] = {
            "open": evaluate_open_ended(model, processor, items, 100)["accuracy"],
            "mc": mc_accuracy(model, processor, zoo, manifest),
        }
    return {"manifest": manifest, "results": results, "specialists": specialists}


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def print_table(seed: int, evaluation: dict) -> None:
    results = evaluation["results"]
    families = evaluation["manifest"]["families"]
    print(f"\nseed {seed}: held-out exact match (open) | held-in MC accuracy")
    print(f"{'model':34s} " + " ".join(f"{f[:8]:>8s}" for f in families) + "     mean |  MC mean")
    for name, r in results.items():
        row = " ".join(f"{r['open'][f]:8.2f}" for f in families)
        print(f"{name:34s} {row} {mean(r['open'].values()):8.3f} | {mean(r['mc'].values()):8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="directory holding one zoo per seed")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="write all figures as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    evaluations = {}
    for seed in args.seeds:
        tick, cpu = time.perf_counter(), time.process_time()
        zoo = build_zoo(args.root / f"{args.preset}-seed{seed}", args.preset, seed)
        log.info(
            "zoo seed %d ready in %.1f s (%.1f CPU s)", seed, time.perf_counter() - tick, time.process_time() - cpu
        )
        evaluations[seed] = evaluate_zoo(zoo)
        print_table(seed, evaluations[seed])
    print("\nown-family held-out exact match across seeds (spread = max - min)")
    first = evaluations[args.seeds[0]]
    summary = {}
    for expert in first["manifest"]["experts"]:
        family = expert["family"]
        own = [evaluations[s]["results"][expert["id"]]["open"][family] for s in args.seeds]
        base = [evaluations[s]["results"]["base"]["open"][family] for s in args.seeds]
        gains = [o - b for o, b in zip(own, base, strict=True)]
        summary[expert["id"]] = {"own": own, "base": base, "gain": gains}
        print(
            f"{expert['id']:34s} own {mean(own):.3f} (spread {max(own) - min(own):.3f}) "
            f"base {mean(base):.3f} (spread {max(base) - min(base):.3f}) "
            f"gain {mean(gains):+.3f} (min {min(gains):+.3f})"
        )
    for name in ("base", "merge:average", "merge:task_arithmetic"):
        means = [mean(evaluations[s]["results"][name]["open"].values()) for s in args.seeds]
        sd = statistics.pstdev(means) if len(means) > 1 else 0.0
        print(f"{name:34s} mean held-out {mean(means):.3f} per seed {[round(m, 3) for m in means]} (sd {sd:.3f})")
    if args.out:
        payload = {
            str(s): {"results": e["results"], "timings": e["manifest"]["timings"]} for s, e in evaluations.items()
        }
        args.out.write_text(json.dumps({"per_seed": payload, "specialists": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
