"""Candidates per minute: the UQ of n candidate models on the local backend vs Ray actors, by number of workers.

Builds a tiny LLaVA base and ``--candidates`` fake fine-tunes, then scores every candidate (no cache) through
``ExecutionBackend.score_models``: first on the local backend in this process (the baseline, at 1 and at
``--threads`` torch threads), then on a local Ray cluster of ``max(--workers)`` CPUs with each worker count of
``--workers`` (one CPU and one torch thread per worker). Every Ray result is checked bit-identical to the local
one. Reported: start-up (actors started, then one warm-up candidate per worker, which imports the model code),
scoring wall time of all candidates after it (the local rows are warmed up the same way), candidates per minute,
speed-up over the 1-thread baseline, and peak RSS of the driver and of each worker.

The compute bound of the UQ pass: the forward FLOPs per item (J passes, counted by
``torch.utils.flop_counter.FlopCounterMode`` on one candidate) times the items per second achieved, against the
measured fp32 matmul rate at one thread; the bound is the candidates per minute one thread would reach if the UQ
pass ran at that matmul rate.

    .venv/bin/python benchmarks/ray_bench.py --candidates 6 --items 32 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
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
        rows.append(
            {"id": f"q{i}", "image": f"img/{i}.png", "question": "What colour is the image?", "options": options}
        )
    path = root / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def matmul_gflops(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """The best fp32 matmul rate of ``repeats`` timed products at ``threads`` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def uq_flops(model_dir: Path, datasets: list, config) -> float:
    """Forward FLOPs of one model's whole UQ pass (every item, J passes)."""
    from torch.utils.flop_counter import FlopCounterMode

    from uqmerge.uq.api import load_model, uncertainty_of_loaded_model

    model, processor = load_model(model_dir, device=torch.device("cpu"), dtype=torch.float32)
    with FlopCounterMode(display=False) as counter:
        uncertainty_of_loaded_model(model, processor, datasets, config)
    return float(counter.get_total_flops())


def score_all(backend, jobs) -> tuple[float, dict]:
    start = time.perf_counter()
    results = dict(backend.score_models(jobs))
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--perturbations", "-J", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the local baseline's second row")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    from uqmerge.checkpoint.synthetic import make_fake_finetune
    from uqmerge.cli.common import quiet_transformers
    from uqmerge.pipeline.execution import ExecutionSettings, LocalBackend, ModelJob
    from uqmerge.pipeline.execution.ray_backend import RayBackend
    from uqmerge.tiny import build_tiny_llava
    from uqmerge.uq.api import prepare_datasets
    from uqmerge.uq.config import UQConfig

    quiet_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = build_tiny_llava(root / "base", seed=0, hidden=args.hidden, layers=args.layers)
        models = [make_fake_finetune(base, root / f"c{i}", seed=100 + i, scale=0.05) for i in range(args.candidates)]
        config = UQConfig(perturbations=args.perturbations, batch_size=8)
        datasets = prepare_datasets([str(_write_items(root / "data", args.items))], config)
        jobs = [ModelJob(m, datasets, config, device="cpu", use_cache=False) for m in models]
        params = sum(p.numel() for p in torch.nn.Module.parameters(_load(base)))
        print(
            f"{args.candidates} candidates of {params / 1e6:.2f}M parameters (tiny LLaVA, fp32), {args.items} items, "
            f"J={args.perturbations}, mode vl"
        )
        header = (
            f"{'backend':<24} {'start-up s':>10} {'scoring s':>9} {'cand/min':>8} {'speed-up':>8} {'peak RSS MiB':>22}"
        )
        print(header)
        print("-" * len(header))

        rows: list[tuple[str, float, float, str]] = []
        reference = None
        for threads in dict.fromkeys((1, args.threads)):
            torch.set_num_threads(threads)
            score_all(LocalBackend(), jobs[:1])  # warm-up: the model code's first import
            wall, results = score_all(LocalBackend(), jobs)
            reference = reference or results
            rows.append((f"local, {threads} thread(s)", 0.0, wall, f"driver {_peak_rss_mib():.0f}"))
        torch.set_num_threads(args.threads)
        baseline = rows[0][2]
        for label, startup, wall, rss in rows:
            _row(label, startup, wall, args.candidates, baseline, rss)

        ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        per_worker_rate = None
        for workers in args.workers:
            settings = ExecutionSettings(backend="ray", workers=workers, cpus_per_worker=1, gpus_per_worker=0)
            with RayBackend(settings) as backend:
                start = time.perf_counter()
                backend.start_workers("cpu", workers)  # imports and torch, before the scoring's clock
                score_all(backend, [jobs[0]] * workers)  # one warm-up candidate on each idle worker
                startup = time.perf_counter() - start
                wall, results = score_all(backend, jobs)
                info = backend.worker_info()
            identical = all(results[i].model_dump() == reference[i].model_dump() for i in reference)
            rss = f"{max(w['peak_rss_mib'] for w in info):.0f} per worker"
            _row(f"ray, {workers} worker(s)", startup, wall, args.candidates, baseline, rss)
            print(f"{'':<24} bit-identical to the local backend: {identical}")
            if workers == 1:
                per_worker_rate = args.candidates * args.items / wall
        ray.shutdown()

        flops = uq_flops(models[0], datasets, config) / args.items
        gflops = matmul_gflops(1)
        print(f"\nforward FLOPs per item (J={args.perturbations} passes): {flops / 1e6:.1f} MFLOP")
        print(f"measured fp32 matmul rate, 1 thread: {gflops:.1f} GFLOPS")
        if per_worker_rate is not None:
            achieved = per_worker_rate * flops / 1e9
            bound = gflops * 1e9 / flops / args.items * 60
            print(
                f"one Ray worker: {per_worker_rate:.1f} items/s = {achieved:.2f} GFLOPS, "
                f"{achieved / gflops:.1%} of the matmul rate; compute bound {bound:.0f} candidates/min per worker"
            )


def _load(model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir)


def _row(label: str, startup: float, wall: float, n: int, baseline: float, rss: str) -> None:
    print(f"{label:<24} {startup:>10.1f} {wall:>9.1f} {n / wall * 60:>8.1f} {baseline / wall:>7.2f}x {rss:>22}")


if __name__ == "__main__":
    main()
