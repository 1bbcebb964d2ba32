"""Zoo build time against the issue's budgets (mini ≤ 90 s, default ≤ 10 min on 2 cores), per thread count.

Each build runs in a fresh process into a temporary directory; its peak RSS is the build process's and, when
experts train in worker processes, the largest worker's (its VmHWM, sampled every 0.5 s). ``--workers``
compares expert parallelism in the same run (``1``: every expert in the build process; ``auto``: the
builder's default, one process per thread). The same run measures the machine's 2-thread fp32 matmul speed,
because build times on shared machines vary with it from day to day.
Example: .venv/bin/python benchmarks/zoo_bench.py --preset mini --threads 2 --workers 1 auto
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
import json, os, resource, sys, threading, time, torch
from pathlib import Path
torch.set_num_threads(int(sys.argv[3]))
from uqmerge.zoo.build import build_zoo, read_manifest

worker_peaks = {}  # pid -> VmHWM in MB of this process's children (expert workers), sampled


def watch_children():
    # ru_maxrss of children counts the parent's pages at fork time, so read each worker's own high-water mark.
    me = str(os.getpid())
    while True:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if stat.read_text().rsplit(")", 1)[1].split()[1] != me:
                    continue
                for line in (stat.parent / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        worker_peaks[stat.parent.name] = int(line.split()[1]) / 1024
            except (OSError, IndexError):
                pass  # the process ended between listing /proc and reading it
        time.sleep(0.5)


threading.Thread(target=watch_children, daemon=True).start()
start = time.perf_counter()
workers = None if sys.argv[5] == "auto" else int(sys.argv[5])
if __name__ == "__main__":
    path = build_zoo(Path(sys.argv[1]), sys.argv[2], seed=int(sys.argv[4]), expert_workers=workers)
    wall = time.perf_counter() - start
    manifest = read_manifest(path)
    base = manifest["base"]
    runs = [base.get("vision_pretraining", {}), base, *manifest["experts"]]  # the tower's pre-training counts too
    steps = sum(run.get("steps_taken", 0) for run in runs)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_rss = max(worker_peaks.values(), default=0.0)
    env = manifest["environment"]
    print(json.dumps({"wall_s": wall, "steps": steps, "peak_rss_mb": rss, "worker_rss_mb": worker_rss,
                      "workers": env.get("expert_workers", 1), "timings": manifest["timings"]}))
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


def build_once(out: Path, preset: str, threads: int, seed: int, workers: str = "auto") -> dict:
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(out), preset, str(threads), str(seed), workers],
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
    parser.add_argument("--workers", nargs="+", default=["auto"], help="expert workers per build: N or auto")
    args = parser.parse_args()

    print(f"machine: 2-thread fp32 matmul {matmul_gflops():.0f} GFLOPS (docs/benchmarks.md: 170-200 on a normal day)")
    budget = BUDGET_S[args.preset]
    print(
        f"\n{'preset':8s} {'threads':>7s} {'workers':>7s} {'wall s':>8s} {'steps':>6s} {'ms/step':>8s} "
        f"{'base s':>7s} {'experts s':>9s} {'peak RSS MB (worker)':>20s} budget"
    )
    with tempfile.TemporaryDirectory(prefix="uqmerge-zoo-bench-") as tmp:
        for threads in args.threads:
            for workers in args.workers:
                r = build_once(Path(tmp) / f"zoo-{threads}-{workers}", args.preset, threads, args.seed, workers)
                verdict = "within" if r["wall_s"] <= budget else "OVER"
                rss = (
                    f"{r['peak_rss_mb']:.0f} ({r['worker_rss_mb']:.0f})"
                    if r["workers"] > 1
                    else f"{r['peak_rss_mb']:.0f}"
                )
                print(
                    f"{args.preset:8s} {threads:>7d} {r['workers']:>7d} {r['wall_s']:>8.1f} {r['steps']:>6d} "
                    f"{1000 * r['wall_s'] / max(1, r['steps']):>8.1f} {r['timings']['base_seconds']:>7.1f} "
                    f"{r['timings']['experts_seconds']:>9.1f} {rss:>20s} {verdict} {budget:.0f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
