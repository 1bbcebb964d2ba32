"""Start-up cost of the command line: ``uqmerge --help`` wall time and peak RSS, and import times.

Each figure is the median of N fresh subprocesses (default 5, after one warm-up run that fills the page
cache), all in one run so that the numbers compare:
  * ``uqmerge --help`` and ``uqmerge merge --help``: wall time and the child's peak RSS;
  * ``import uqmerge.cli``: the CLI package's import time, measured inside the child;
  * ``import torch``: the baseline — what the CLI would pay at every start if it imported torch eagerly.
Example: .venv/bin/python benchmarks/cli_startup.py --runs 7
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

IMPORT_TIMER = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def cli_command() -> list[str]:
    """The installed ``uqmerge`` script next to this interpreter, else ``python -m uqmerge``."""
    script = Path(sys.executable).with_name("uqmerge")
    if script.is_file():
        return [str(script)]
    found = shutil.which("uqmerge")
    return [found] if found else [sys.executable, "-m", "uqmerge"]


def timed_run(argv: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of one subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.stdout:
        proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with status {proc.returncode}")
    return wall, usage.ru_maxrss / 1024, out  # ru_maxrss is in KiB on Linux


def measure(argv: list[str], runs: int) -> dict[str, float]:
    """Medians over ``runs`` runs (after one warm-up): wall s, RSS MB and, for an import timer, its figure."""
    timed_run(argv)
    walls, rss, inner = [], [], []
    for _ in range(runs):
        wall, peak, out = timed_run(argv)
        walls.append(wall)
        rss.append(peak)
        if argv[-2:-1] == ["-c"]:
            inner.append(float(out.strip().splitlines()[-1]))
    result = {"wall": statistics.median(walls), "rss": statistics.median(rss)}
    if inner:
        result["import"] = statistics.median(inner)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="Runs per row (median reported).")
    args = parser.parse_args()

    cli = cli_command()
    rows = [
        ("uqmerge --help", [*cli, "--help"]),
        ("uqmerge merge --help", [*cli, "merge", "--help"]),
        ("import uqmerge.cli", [sys.executable, "-c", IMPORT_TIMER.format(module="uqmerge.cli")]),
        ("import torch (baseline)", [sys.executable, "-c", IMPORT_TIMER.format(module="torch")]),
    ]
    print(f"median of {args.runs} runs each; CLI: {' '.join(cli)}")
    print(f"{'what':<26} {'wall (s)':>9} {'import (s)':>11} {'peak RSS (MB)':>14}")
    for label, argv in rows:
        r = measure(argv, args.runs)
        imported = f"{r['import']:.3f}" if "import" in r else "-"
        print(f"{label:<26} {r['wall']:>9.3f} {imported:>11} {r['rss']:>14.1f}")


if __name__ == "__main__":
    main()
