"""Is the miniature zoo a fair test bed? Experts vs base over zoo seeds, and merge-all vs base.

For each zoo seed: held-out exact match per family of the base and of every expert, and of the uniform
linear merge of the specialists and of all experts. Across seeds: each specialist's gain on its own family
over the base, against the spread (max − min) of its own-family score and of the base's over the seeds.

    python experiments/zoo_facts.py [--preset default] [--zoo-seeds 0 1 2]
"""

from __future__ import annotations

import statistics
import time

from common import parse_args, write_table, zoo

from uqmerge.report.tables import pct


def main() -> None:
    args = parse_args(__doc__, lambda p: p.add_argument("--zoo-seeds", type=int, nargs="+", default=[0, 1, 2]))
    started = time.perf_counter()
    per_seed = {}
    for seed in args.zoo_seeds:
        z = zoo(args.root, args.preset, seed)
        specialists = [e for e in z.manifest["experts"] if e["kind"] == "specialist"]
        record = {
            "base": z.evaluate([]),
            "experts": {e["id"]: z.evaluate([e["id"]]) for e in z.manifest["experts"]},
            "merge_specialists": z.evaluate([e["id"] for e in specialists]),
            "merge_all": z.evaluate(z.expert_ids),
            "timings": z.manifest["timings"],
        }
        per_seed[seed] = {
            k: ({i: _slim(r) for i, r in v.items()} if k == "experts" else v if k == "timings" else _slim(v))
            for k, v in record.items()
        }
        last = z
    rows = []
    gains = {}
    for e in last.manifest["experts"]:
        family = e["family"]
        own = [per_seed[s]["experts"][e["id"]]["per_family"][family] for s in args.zoo_seeds]
        base = [per_seed[s]["base"]["per_family"][family] for s in args.zoo_seeds]
        gain = [o - b for o, b in zip(own, base, strict=True)]
        spread = max(max(own) - min(own), max(base) - min(base))
        gains[e["id"]] = {"own": own, "base": base, "gain": gain, "spread": spread}
        rows.append(
            [
                e["id"],
                e["kind"],
                family,
                " / ".join(pct(x) for x in base),
                " / ".join(pct(x) for x in own),
                f"{100 * statistics.fmean(gain):+.1f}",
                f"{100 * min(gain):+.1f}",
                pct(spread),
                "yes" if min(gain) > spread else "no",
            ]
        )
    for label, key in (("base", "base"), ("merge of the specialists", "merge_specialists"), ("merge-all", "merge_all")):
        means = [per_seed[s][key]["mean"] for s in args.zoo_seeds]
        mc = [per_seed[s][key]["mc"] for s in args.zoo_seeds]
        rows.append(
            [
                f"**{label}**",
                "",
                "mean",
                "",
                " / ".join(pct(x) for x in means),
                "",
                "",
                "",
                f"MC {' / '.join(pct(x) for x in mc)}",
            ]
        )
    write_table(
        args.out,
        "zoo",
        "The zoo — own-family held-out exact match per zoo seed (%), and merges vs base (mean over families)",
        last,
        [
            "model",
            "kind",
            "family",
            "base (per seed)",
            "model (per seed)",
            "mean gain",
            "min gain",
            "spread",
            "gain > spread",
        ],
        rows,
        {"per_seed": per_seed, "gains": gains},
        notes="Spread = the larger of the expert's and the base's max − min over zoo seeds (the noise floor).",
        started=started,
        zoo_seeds=args.zoo_seeds,
    )


def _slim(r: dict) -> dict:
    return {
        "per_family": r["open_accuracy"],
        "mean": r["open_mean"],
        "mc": r["mc_mean"],
        "mc_per_family": r["mc_accuracy"],
    }


if __name__ == "__main__":
    main()
