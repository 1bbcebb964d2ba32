"""UQ throughput: item-passes (items × J) per second, batched vs a batch-1 loop, on a tiny LLaVA.

Both variants run in the same process on the same model and data through
``uncertainty_of_loaded_model``; the only difference is ``batch_size`` (the scores are bit-identical, which
the benchmark checks). Each is timed ``--repeats`` times, interleaved, and the best time is reported (robust
to other load on a shared machine). A "prep only" row times the per-pass input work (image decode, system
message, chat template, token lengths, AugMix) without any forward pass: it bounds the speed-up that batching
the forward pass can give in the perturbed modes. A "forward only" row times the forward passes alone on
pre-encoded inputs (images encoded one at a time, the language model batched by token length), batched and
batch-1: the speed-up batching gives where it acts (on a CPU it is small once the batch-1 forward already
keeps the cores busy). The "groups" column is the number of forward passes at that batch size: passes are
batched only with passes of the same token length.

    .venv/bin/python benchmarks/uq_bench.py --items 64 --batch-size 32 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _write_items(root: Path, n: int) -> Path:
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
    names = list(colours)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        colour = names[i % 4]
        Image.new("RGB", (24 + i % 17, 32 + i % 5), colours[colour]).save(root / "img" / f"{i}.png")
        options = [colour, *[c for c in names if c != colour][: 1 + i % 3]]
        question = "What colour is the image?" if i % 2 else "Which colour fills the picture in the middle?"
        rows.append({"id": f"q{i}", "image": f"img/{i}.png", "question": question, "options": options})
    path = root / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _groups(processor, datasets, config, batch_size: int) -> list:
    """The forward groups of requests as the UQ loop builds them (plans, AugMix, system message, template)."""
    from uqmerge.uq.api import forward_groups, group_requests, plan_dataset
    from uqmerge.uq.data import canonical_order
    from uqmerge.uq.prompts import resolve_option_token_ids

    letter_ids = resolve_option_token_ids(processor, 6)
    groups = []
    for d in datasets:
        items = canonical_order(d.items)
        plans, _ = plan_dataset(d, items, config, processor)
        groups += [group_requests(g, items, d.name, config, letter_ids) for g in forward_groups(plans, batch_size)]
    return groups


def _prep_only(processor, datasets, config) -> float:
    start = time.perf_counter()
    _groups(processor, datasets, config, 1)
    return time.perf_counter() - start


def _forward_only(model, processor, datasets, config, batch_size: int, repeats: int) -> tuple[float, int]:
    """Best of ``repeats`` timings of the forward passes alone (inputs built and encoded beforehand) at
    ``batch_size``, and the number of forward passes: what batching can speed up at most, since every other
    step costs the same per pass."""
    from uqmerge.uq.perturb import inference_mode
    from uqmerge.uq.scoring import letter_probabilities_of_inputs, scoring_inputs

    groups = _groups(processor, datasets, config, batch_size)
    encoded = [(scoring_inputs(model, processor, requests), requests) for requests in groups]
    dropout = config.dropout if config.mode.perturbs_model else 0.0
    best = float("inf")
    with inference_mode(model, attention_dropout=dropout):
        for _ in range(repeats):
            start = time.perf_counter()
            for inputs, requests in encoded:
                letter_probabilities_of_inputs(model, inputs, requests)
            best = min(best, time.perf_counter() - start)
    return best, len(groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--perturbations", "-J", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--modes", default="none,model,vl")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the best is reported")
    args = parser.parse_args()

    from uqmerge.core.devices import resolve_device
    from uqmerge.tiny import build_tiny_llava
    from uqmerge.uq.api import load_model, uncertainty_of_loaded_model
    from uqmerge.uq.config import UQConfig
    from uqmerge.uq.data import load_uq_datasets

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_tiny_llava(root / "llava", seed=0, hidden=args.hidden, layers=args.layers)
        datasets = load_uq_datasets([str(_write_items(root / "data", args.items))])
        model, processor = load_model(model_dir, device=device, dtype=torch.float32)
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"tiny LLaVA {n_params} params, {args.items} items, J={args.perturbations}, "
            f"device {device}, torch threads {args.threads}"
        )
        header = (
            f"{'mode':<6} {'variant':<14} {'item-passes':>11} {'groups':>6} {'seconds':>8} {'passes/s':>9} "
            f"{'speed-up':>8} {'peak RSS MiB':>12}"
        )
        print(header)
        print("-" * len(header))
        for mode in args.modes.split(","):
            base = UQConfig(mode=mode, perturbations=args.perturbations)
            passes = args.items * base.passes
            uncertainty_of_loaded_model(model, processor, datasets, base.model_copy(update={"batch_size": 4}))
            variants = (("batch-1 loop", 1), (f"batched B={args.batch_size}", args.batch_size))
            timings = {label: float("inf") for label, _ in variants}
            results = {}
            for _ in range(args.repeats):  # interleaved, best of N: the machine may be shared
                for label, batch in variants:
                    config = base.model_copy(update={"batch_size": batch})
                    start = time.perf_counter()
                    results[label] = uncertainty_of_loaded_model(model, processor, datasets, config)
                    timings[label] = min(timings[label], time.perf_counter() - start)
            forward = {
                batch: _forward_only(model, processor, datasets, base, batch, args.repeats)
                for batch in (1, args.batch_size)
            }
            for label, batch in variants:
                speedup = timings["batch-1 loop"] / timings[label]
                print(
                    f"{mode:<6} {label:<14} {passes:>11} {forward[batch][1]:>6} {timings[label]:>8.2f} "
                    f"{passes / timings[label]:>9.1f} {speedup:>7.1f}x {_peak_rss_mib():>12.0f}"
                )
            result, reference = results[variants[1][0]], results["batch-1 loop"]
            identical = [d.model_dump() for d in result.datasets] == [d.model_dump() for d in reference.datasets]
            print(f"{'':<6} batched and batch-1 scores bit-identical: {identical}")
            seconds, groups = forward[args.batch_size]
            print(
                f"{mode:<6} {'forward only':<14} {passes:>11} {groups:>6} {seconds:>8.2f} {passes / seconds:>9.1f} "
                f"{forward[1][0] / seconds:>7.1f}x (batch-1 forwards alone: {forward[1][0]:.2f} s)"
            )
            if base.mode.is_perturbed and (base.mode.perturbs_image or base.mode.perturbs_text):
                prep = min(_prep_only(processor, datasets, base) for _ in range(args.repeats))
                print(f"{mode:<6} {'prep only':<14} {passes:>11} {prep:>8.2f} {passes / prep:>9.1f}")


if __name__ == "__main__":
    main()
