"""Table 8 (toy scale): alternatives to vision-language perturbation UQ: image-only, text-only, conformal.

Conformal prediction (mode `cp`, LAC, α=0.1) uses the held-in labels for calibration and guides by the mean
prediction-set size (`selection.guidance: cp_set_size`).

    python experiments/table8_uq_alternatives.py [--preset default] [--seed 0]
"""

from __future__ import annotations

import time

from common import evaluate_selection, parse_args, uq_merge, write_table, zoo

VARIANTS = {
    "image-only perturbation": ("mode-image", {"uq": {"mode": "image"}}),
    "text-only perturbation": ("mode-text", {"uq": {"mode": "text"}}),
    "conformal prediction (set size)": (
        "cp",
        {"uq": {"mode": "cp"}, "selection": {"guidance": "cp_set_size"}},
    ),
    "vision-language perturbation (UQ-Merge)": ("uq-merge", {}),
}


def main() -> None:
    args = parse_args(__doc__)
    started = time.perf_counter()
    z = zoo(args.root, args.preset, args.seed)
    rows, data = [], {}
    for label, (name, overrides) in VARIANTS.items():
        run = uq_merge(args.root, z, name, **overrides)
        data[label], cells = evaluate_selection(z, run)
        rows.append([label, *cells])
    write_table(
        args.out,
        "table8",
        "Table 8 — UQ alternatives (accuracy %)",
        z,
        ["UQ", "selected", "held-in MC", "held-out EM"],
        rows,
        data,
        started=started,
    )


if __name__ == "__main__":
    main()
