"""Table 9 (toy scale): each model's uncertainty over 3 UQ seeds, and whether models are told apart.

Every seed redraws the AugMix images, system prompts, dropout masks and distractor padding. Reported per
model: mean ± sd over seeds and its rank (1 = most uncertain); and the stability ratio (mean within-model
sd over the sd of the model means). The paper's claim holds when the ratio is well below 1.

    python experiments/table9_uq_stability.py [--preset default] [--seed 0] [--uq-seeds 0 1 2]
"""

from __future__ import annotations

import statistics
import time

from common import parse_args, write_table, zoo

from uqmerge.uq.api import run_uq
from uqmerge.uq.config import UQConfig


def main() -> None:
    args = parse_args(__doc__, lambda p: p.add_argument("--uq-seeds", type=int, nargs="+", default=[0, 1, 2]))
    started = time.perf_counter()
    z = zoo(args.root, args.preset, args.seed)
    from uqmerge.evaluate.merge_eval import zoo_eval_specs

    held_in = zoo_eval_specs(z.manifest, z.path)["held_in"]
    models = {
        "base": z.path / z.manifest["base"]["path"],
        **{e["id"]: z.path / e["path"] for e in z.manifest["experts"]},
    }
    kinds = {"base": "base", **z.kinds}
    scores: dict[str, list[float]] = {m: [] for m in models}
    for seed in args.uq_seeds:
        config = UQConfig(seed=seed, perturbations=4, batch_size=32)
        for name, path in models.items():
            scores[name].append(run_uq(path, held_in, config, device="cpu").score)
    means = {m: statistics.fmean(v) for m, v in scores.items()}
    sds = {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in scores.items()}
    ranked = sorted(means, key=lambda m: -means[m])
    between = statistics.stdev(means.values())
    within = statistics.fmean(sds.values())
    rows = [
        [
            ranked.index(m) + 1,
            m,
            kinds[m],
            *(f"{s:.4f}" for s in scores[m]),
            f"{means[m]:.4f} ± {sds[m]:.4f}",
        ]
        for m in ranked
    ]
    # Rank stability: how often each seed alone orders the models as the mean does.
    per_seed_orders = [sorted(models, key=lambda m, i=i: -scores[m][i]) for i in range(len(args.uq_seeds))]
    same_order = sum(order == ranked for order in per_seed_orders)
    data = {
        "scores": scores,
        "mean": means,
        "sd": sds,
        "rank": ranked,
        "kinds": kinds,
        "within_model_sd_mean": within,
        "between_model_sd": between,
        "ratio": within / between if between else None,
        "seeds_with_the_mean_order": same_order,
    }
    notes = (
        f"Mean within-model sd over seeds {within:.4f} vs sd of the model means {between:.4f} "
        f"(ratio {within / between:.3f}); {same_order} of {len(args.uq_seeds)} seeds alone give the mean's order."
    )
    write_table(
        args.out,
        "table9",
        "Table 9 — uncertainty (MI, nats) of every model on the held-in sets over UQ seeds",
        z,
        ["rank", "model", "kind", *(f"seed {s}" for s in args.uq_seeds), "mean ± sd"],
        rows,
        data,
        notes=notes,
        started=started,
    )


if __name__ == "__main__":
    main()
