"""Table 5 (toy scale): perturbation types of the UQ that guides UQ-Merge.

`input` = image + text perturbations, `vl` = input + model (attention dropout, the paper's default), and each
alone. The same Algorithm 1 (descending, linear, first increase) with only `uq.mode` changed.

    python experiments/table5_perturbations.py [--preset default] [--seed 0]
"""

from __future__ import annotations

import time

from common import evaluate_selection, parse_args, uq_merge, write_table, zoo

MODES = ("image", "text", "model", "input", "vl")


def main() -> None:
    args = parse_args(__doc__)
    started = time.perf_counter()
    z = zoo(args.root, args.preset, args.seed)
    rows, data = [], {}
    for mode in MODES:
        run = uq_merge(args.root, z, "uq-merge" if mode == "vl" else f"mode-{mode}", uq={"mode": mode})
        data[mode], cells = evaluate_selection(z, run)
        rows.append([mode, *cells])
    write_table(
        args.out,
        "table5",
        "Table 5 — perturbation types (accuracy %)",
        z,
        ["perturbation", "selected", "held-in MC", "held-out EM"],
        rows,
        data,
        started=started,
    )


if __name__ == "__main__":
    main()
