"""Zoo build time against the issue's budgets (mini ≤ 90 s, default ≤ 10 min on 2 cores), per thread count.

Each build runs in a fresh process (its own peak RSS) into a temporary directory. The same run measures the
machine's 2-thread fp32 matmul speed, because build times on shared machines vary with it from day to day.
Example: .venv/bin/python benchmarks/zoo_bench.py --preset mini --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = {"mini": 90.0, "default": 600.0}

BUILD = """
import json, resource, sys, time, torch
from pathlib import Path
torch.set_num_threads(int(sys.argv[3]))
from uqmerge.zoo.build import build_zoo, read_manifest
start = time.perf_counter()
path = build_zoo(Path(sys.argv[1]), sys.argv[2], seed=int(sys.argv[4]))
wall = time.perf_counter() - start
manifest = read_manifest(path)
base = manifest["base"]
runs = [base.get("vision_pretraining", {}), base, *manifest["experts"]]  # the tower's pre-training counts too
steps = sum(run.get("steps_taken", 0) for run in runs)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "steps": steps, "peak_rss_mb": rss, "timings": manifest["timings"]}))
"""


def matmul_gflops(threads: int = 2, size: int = 1024, repeats: int = 50) -> float:
    """fp32 matmul throughput: the machine-speed reference printed next to the build times."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def build_once(out: Path, preset: str, threads: int, seed: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(out), preset, str(threads), str(seed)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mini", choices=sorted(BUDGET_S))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"machine: 2-thread fp32 matmul {matmul_gflops():.0f} GFLOPS (docs/benchmarks.md: 170-200 on a normal day)")
    budget = BUDGET_S[args.preset]
    print(f"\n{'preset':8s} {'threads':>7s} {'wall s':>8s} {'steps':>6s} {'ms/step':>8s} {'peak RSS MB':>12s} budget")
    with tempfile.TemporaryDirectory(prefix="uqmerge-zoo-bench-") as tmp:
        for threads in args.threads:
            r = build_once(Path(tmp) / f"zoo-{threads}", args.preset, threads, args.seed)
            verdict = "within" if r["wall_s"] <= budget else "OVER"
            print(
                f"{args.preset:8s} {threads:>7d} {r['wall_s']:>8.1f} {r['steps']:>6d} "
                f"{1000 * r['wall_s'] / max(1, r['steps']):>8.1f} {r['peak_rss_mb']:>12.0f} "
                f"{verdict} {budget:.0f} s"
            )


if __name__ == "__main__":
    main()
