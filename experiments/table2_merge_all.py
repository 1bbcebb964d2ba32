"""Table 2 (toy scale): UQ-Merge vs the six baseline methods merging all experts.

python experiments/table2_merge_all.py [--preset default] [--seed 0]
"""

from __future__ import annotations

import time

from common import PAPER_METHODS, parse_args, short, uq_merge, write_table, zoo

from uqmerge.report.tables import pct


def main() -> None:
    args = parse_args(__doc__)
    started = time.perf_counter()
    z = zoo(args.root, args.preset, args.seed)
    run = uq_merge(args.root, z, "uq-merge")
    rows, data = [], {"methods": {}}
    for method in PAPER_METHODS:
        r = z.evaluate(z.expert_ids, method)
        data["methods"][method] = {
            "held_in": r["mc_mean"],
            "held_out": r["open_mean"],
            "per_family": r["open_accuracy"],
        }
        rows.append([method, f"all {len(z.expert_ids)}", pct(r["mc_mean"]), pct(r["open_mean"])])
    uq = z.evaluate(run.selected)
    data["uq_merge"] = {"selected": run.selected, "held_in": uq["mc_mean"], "held_out": uq["open_mean"]}
    rows.append(["**UQ-Merge** (linear)", short(run.selected), pct(uq["mc_mean"]), pct(uq["open_mean"])])
    base = z.evaluate([])
    data["base"] = {"held_in": base["mc_mean"], "held_out": base["open_mean"]}
    rows.append(["base (no merge)", "—", pct(base["mc_mean"]), pct(base["open_mean"])])
    write_table(
        args.out,
        "table2",
        "Table 2 — UQ-Merge vs baselines merging all experts (accuracy %)",
        z,
        ["method", "models", "held-in MC", "held-out EM"],
        rows,
        data,
        started=started,
    )


if __name__ == "__main__":
    main()
