"""Table 7 (toy scale): UQ-Merge with different fractions of the held-in items used for UQ.

python experiments/table7_sample_ratio.py [--preset default] [--seed 0]
"""

from __future__ import annotations

import time

from common import evaluate_selection, parse_args, uq_merge, write_table, zoo

RATIOS = (0.2, 0.4, 0.6, 0.8, 1.0)


def main() -> None:
    args = parse_args(__doc__)
    started = time.perf_counter()
    z = zoo(args.root, args.preset, args.seed)
    rows, data = [], {}
    for ratio in RATIOS:
        run = uq_merge(args.root, z, "uq-merge" if ratio == 1.0 else f"ratio-{ratio}", uq={"sample_ratio": ratio})
        data[str(ratio)], cells = evaluate_selection(z, run)
        rows.append([f"{ratio:.0%}", *cells])
    write_table(
        args.out,
        "table7",
        "Table 7 — share of held-in items used for UQ (accuracy %)",
        z,
        ["UQ sample ratio", "selected", "held-in MC", "held-out EM"],
        rows,
        data,
        started=started,
    )


if __name__ == "__main__":
    main()
