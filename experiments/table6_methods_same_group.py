"""Table 6 (toy scale): the six merge methods on the same group of models: all experts, and UQ-Merge's pick.

python experiments/table6_methods_same_group.py [--preset default] [--seed 0]
"""

from __future__ import annotations

import time

from common import PAPER_METHODS, method_takes, parse_args, short, uq_merge, write_table, zoo

from uqmerge.report.tables import pct


def main() -> None:
    args = parse_args(__doc__)
    started = time.perf_counter()
    z = zoo(args.root, args.preset, args.seed)
    selected = uq_merge(args.root, z, "uq-merge").selected
    groups = {f"all {len(z.expert_ids)}": z.expert_ids, f"UQ-Merge's {len(selected)}": selected}
    rows, data = [], {"groups": groups, "methods": {}}
    undefined: list[str] = []
    for method in PAPER_METHODS:
        row = [method]
        for label, group in groups.items():
            if not method_takes(method, len(group)):  # e.g. Model Stock of one model: no such merge
                data["methods"].setdefault(method, {})[label] = None
                row += ["n/a", "n/a"]
                undefined.append(f"{method} is not defined for {len(group)} model(s).")
                continue
            r = z.evaluate(group, method)
            data["methods"].setdefault(method, {})[label] = {"held_in": r["mc_mean"], "held_out": r["open_mean"]}
            row += [pct(r["mc_mean"]), pct(r["open_mean"])]
        rows.append(row)
    columns = ["method"] + [f"{label}: {split}" for label in groups for split in ("held-in MC", "held-out EM")]
    write_table(
        args.out,
        "table6",
        "Table 6 — merge methods on the same group of models (accuracy %)",
        z,
        columns,
        rows,
        data,
        notes=" ".join([f"UQ-Merge's group: {short(selected)}.", *undefined]),
        started=started,
    )


if __name__ == "__main__":
    main()
