"""Table 1 (toy scale): UQ-Merge vs the six baseline methods merging random selections of the same size.

Each baseline merges 3 random subsets of the experts with as many models as UQ-Merge selected (seeds 0, 1, 2)
and is reported as mean ± s.e. over the subsets; UQ-Merge is the paper's setting (descending uncertainty,
uniform linear merge, stop at the first increase). Held-in = MC accuracy on the held-in sets UQ used
(without their labels); held-out = open-ended exact match.

    python experiments/table1_random_baselines.py [--preset default] [--seed 0]
"""

from __future__ import annotations

import time

from common import PAPER_METHODS, method_takes, parse_args, short, uq_merge, write_table, zoo

from uqmerge.core.stats import mean_se
from uqmerge.report.tables import pct
from uqmerge.selection import random_subsets

SUBSET_SEEDS = (0, 1, 2)


def main() -> None:
    args = parse_args(__doc__)
    started = time.perf_counter()
    z = zoo(args.root, args.preset, args.seed)
    run = uq_merge(args.root, z, "uq-merge")
    selected = run.selected
    subsets = [list(s.selected) for s in random_subsets(z.expert_ids, len(selected), SUBSET_SEEDS)]
    rows, data = [], {"uq_merge": {"selected": selected}, "subsets": subsets, "methods": {}}
    undefined = [m for m in PAPER_METHODS if not method_takes(m, len(selected))]
    for method in PAPER_METHODS:
        if method in undefined:  # e.g. Model Stock of one model: no such merge, so no row of figures
            data["methods"][method] = None
            rows.append([method, f"random k={len(selected)} ×{len(subsets)}", "n/a", "n/a"])
            continue
        scores = [z.evaluate(s, method) for s in subsets]
        held_in = mean_se(s["mc_mean"] for s in scores)
        held_out = mean_se(s["open_mean"] for s in scores)
        data["methods"][method] = {
            "held_in": [s["mc_mean"] for s in scores],
            "held_out": [s["open_mean"] for s in scores],
        }
        rows.append([method, f"random k={len(selected)} ×{len(subsets)}", pct(*held_in), pct(*held_out)])
    uq = z.evaluate(selected)
    data["uq_merge"].update(held_in=uq["mc_mean"], held_out=uq["open_mean"])
    rows.append(["**UQ-Merge** (linear)", short(selected), pct(uq["mc_mean"]), pct(uq["open_mean"])])
    base = z.evaluate([])
    data["base"] = {"held_in": base["mc_mean"], "held_out": base["open_mean"]}
    rows.append(["base (no merge)", "—", pct(base["mc_mean"]), pct(base["open_mean"])])
    write_table(
        args.out,
        "table1",
        "Table 1 — UQ-Merge vs baselines merging random selections of the same size (accuracy %)",
        z,
        ["method", "models", "held-in MC", "held-out EM"],
        rows,
        data,
        notes=f"Random subsets: {'; '.join(short(s) for s in subsets)}."
        + "".join(f" {m} is not defined for {len(selected)} model(s)." for m in undefined),
        started=started,
    )


if __name__ == "__main__":
    main()
