"""Table 3 (toy scale): uncertainty vs accuracy guidance, each in ascending and descending order.

Accuracy guidance sorts by held-in MC accuracy (labels used); every variant stops where the merged model's
uncertainty stops falling, as Algorithm 1. Results on held-out (and held-in) data.

    python experiments/table3_guidance.py [--preset default] [--seed 0]
"""

from __future__ import annotations

import time

from common import evaluate_selection, parse_args, uq_merge, write_table, zoo


def main() -> None:
    args = parse_args(__doc__)
    started = time.perf_counter()
    z = zoo(args.root, args.preset, args.seed)
    rows, data = [], {}
    for guidance in ("uncertainty", "accuracy"):
        for order in ("ascending", "descending"):
            name = "uq-merge" if (guidance, order) == ("uncertainty", "descending") else f"{guidance}-{order}"
            run = uq_merge(args.root, z, name, selection={"guidance": guidance, "order": order})
            data[name], cells = evaluate_selection(z, run)
            rows.append([guidance, order, *cells])
    write_table(
        args.out,
        "table3",
        "Table 3 — guidance × order (accuracy %)",
        z,
        ["guidance", "order", "selected", "held-in MC", "held-out EM"],
        rows,
        data,
        started=started,
    )


if __name__ == "__main__":
    main()
