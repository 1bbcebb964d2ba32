"""The baseline merge methods: linear, task arithmetic and its sparsified variants, Model Stock.

Each method is a typed pure kernel over fp32 tensors (the caller casts on write) and a :class:`MergeMethod`
record binding it to its :class:`Param` specs (:mod:`uqmerge.methods.base`). The task-vector methods are
configurations of :func:`uqmerge.methods.task_vector.merge_onto_base`. Every baseline merges a tensor one block
of rows at a time: linear, task arithmetic, DARE and DELLA are element-wise (the generic block adapter runs the
kernel on each block); TIES and Breadcrumbs first find their magnitude cuts over the whole tensor
(:class:`~uqmerge.methods.task_vector.TaskVectorBlocks`), Model Stock its task vectors' angle.

Blockwise results equal the whole-tensor ones bit for bit, except Model Stock's, whose norms and dot
products are reduced block by block (equal up to fp32 rounding of those sums).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import torch
from torch import Tensor

from uqmerge.core.errors import ConfigError
from uqmerge.methods.base import Arguments, BlockMerger, Blockwise, MergeMethod, RowBlock, TensorContext
from uqmerge.methods.task_vector import (
    DENSITY,
    EPSILON,
    GAMMA,
    LAMBDA,
    NONNEGATIVE_WEIGHT,
    WEIGHT,
    MagnitudeBand,
    PairwiseCosineSums,
    Sparsifier,
    TaskVectorBlocks,
    band_prune,
    check_band_fractions,
    check_della_band,
    della_prune,
    keep_counts,
    magnitude_prune,
    mean_pairwise_cosine,
    merge_onto_base,
    random_prune,
    task_vectors,
    weighted_sum,
)

# ---------------------------------------------------------------------------------------------------
# Kernels, their cross-parameter checks, and the block builders of the methods that need statistics


def linear_weights(weights: Sequence[float]) -> list[float]:
    """The weights divided by their sum; a ConfigError when they sum to 0 (|Σ w| ≤ 1e-9·Σ|w|)."""
    total = math.fsum(weights)
    if abs(total) <= 1e-9 * math.fsum(abs(w) for w in weights):
        raise ConfigError(f"parameter 'weight' of the linear merge sums to {total:g}; the average needs a non-zero sum")
    return [w / total for w in weights]


def _check_linear(arguments: Arguments) -> None:
    linear_weights([float(w) for w in arguments.per_model["weight"]])


def linear(models: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Weighted average of the models: θ = Σ_i w_i·θ_i / Σ_i w_i (no base).

    Paper: "Model soups: averaging weights of multiple fine-tuned models improves accuracy without
    increasing inference time", Wortsman et al. 2022, https://arxiv.org/abs/2203.05482.
    Weights may be negative; weights summing to 0 (|Σ w| ≤ 1e-9·Σ|w|) are a ConfigError. mergekit's
    ``linear`` also normalises by Σ w (``normalize: true``) but silently skips a zero sum.
    """
    return weighted_sum(models, linear_weights(weights))


def task_arithmetic(base: Tensor, models: Sequence[Tensor], weights: Sequence[float], lam: float = 1.0) -> Tensor:
    """θ = θ_0 + λ·Σ_i w_i·τ_i with τ_i = θ_i − θ_0.

    Paper: "Editing Models with Task Arithmetic", Ilharco et al. 2023, https://arxiv.org/abs/2212.04089.
    Same as mergekit's ``task_arithmetic`` with ``normalize: false``; mergekit has no global λ (scale
    the weights instead).
    """
    return merge_onto_base(base, models, weights, scale=lam)


def ties(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    lam: float = 1.0,
) -> Tensor:
    """TIES: trim each τ_i to its top ``density`` by magnitude, elect signs, disjoint mean, × λ.

    Paper: "TIES-Merging: Resolving Interference When Merging Models", Yadav et al. 2023,
    https://arxiv.org/abs/2306.01708.
    θ = θ_0 + λ·Σ_{i∈A} w_i·τ̂_i / Σ_{i∈A} w_i, γ = sgn(Σ_i w_i·τ̂_i), A = {i : sgn(w_i·τ̂_i) = γ ≠ 0}.
    Keep count k = clamp(floor(density·n + 0.5), 1, n), ties to the lower index (mergekit/peft: floor).
    Divisor as mergekit (agreeing weights; peft: agreeing count); an exact-zero vote elects no sign
    (mergekit and peft elect +), so that entry keeps the base value.
    """
    sparsifiers = [partial(magnitude_prune, density=d) for d in densities]
    return merge_onto_base(base, models, weights, sparsifiers=sparsifiers, sign_consensus=True, scale=lam)


def ties_blocks(
    context: TensorContext, weights: Sequence[float], densities: Sequence[float], lam: float = 1.0
) -> BlockMerger:
    """Block merger of :func:`ties`: statistics = each τ_i's exact top-k magnitude cut."""
    sparsifiers = [MagnitudeBand(context.numel, *keep_counts(context.numel, d)) for d in densities]
    return TaskVectorBlocks(weights, sparsifiers=sparsifiers, sign_consensus=True, scale=lam)


def _dare_sparsifiers(densities: Sequence[float], generators: Sequence[torch.Generator]) -> list[Sparsifier]:
    return [partial(random_prune, density=d, generator=g) for d, g in zip(densities, generators, strict=True)]


def dare_linear(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    generators: Sequence[torch.Generator],
    lam: float = 1.0,
) -> Tensor:
    """DARE + task arithmetic: θ = θ_0 + λ·Σ_i w_i·DARE(τ_i), DARE keeping each entry w.p. density, ÷ density.

    Paper: "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
    Lunch", Yu et al. 2024, https://arxiv.org/abs/2311.03099.
    E[θ] equals task arithmetic. Model i's mask is drawn from ``generators[i]`` (the same generator
    repeated: drawn in model order). Recent mergekit rescales survivors to the L1 norm rather than
    ÷ density; peft's rescale was long a no-op.
    """
    return merge_onto_base(base, models, weights, sparsifiers=_dare_sparsifiers(densities, generators), scale=lam)


def dare_ties(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    generators: Sequence[torch.Generator],
    lam: float = 1.0,
) -> Tensor:
    """DARE + TIES without trimming: DARE each τ_i, elect signs, disjoint mean, × λ.

    Paper: "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
    Lunch", Yu et al. 2024, https://arxiv.org/abs/2311.03099.
    Masks as in :func:`dare_linear`. The disjoint mean divides by the agreeing weights, as in :func:`ties`;
    mergekit's ``dare_ties`` defaults to ``normalize: false`` (the agreeing weighted deltas are summed).
    """
    sparsifiers = _dare_sparsifiers(densities, generators)
    return merge_onto_base(base, models, weights, sparsifiers=sparsifiers, sign_consensus=True, scale=lam)


def _check_della(arguments: Arguments) -> None:
    epsilon = float(arguments.params["epsilon"])
    for i, density in enumerate(arguments.per_model["density"]):
        check_della_band(float(density), epsilon, where=f" of model {i}")


def della(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    generators: Sequence[torch.Generator],
    epsilon: float = 0.1,
    lam: float = 1.0,
) -> Tensor:
    """DELLA: magnitude-ranked random drop (MAGPRUNE) per row, survivors ÷ keep-prob, TIES election, × λ.

    Paper: "DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based
    Sampling", Deep et al. 2024, https://arxiv.org/abs/2406.11617.
    Per row, keep-prob rises linearly with |τ| rank from density − ε to density + ε (see
    :func:`~uqmerge.methods.task_vector.della_keep_probabilities`); density ± ε must lie in (0, 1].
    ε is global, default 0.1 (mergekit: 0.15 at the time of writing); λ is global (mergekit reads it
    per model, from the first). Masks drawn as in :func:`dare_linear`; with ε = 0 this equals
    :func:`dare_ties` for the same generators.
    """
    sparsifiers = [
        partial(della_prune, density=d, epsilon=epsilon, generator=g)
        for d, g in zip(densities, generators, strict=True)
    ]
    return merge_onto_base(base, models, weights, sparsifiers=sparsifiers, sign_consensus=True, scale=lam)


def _check_breadcrumbs(arguments: Arguments) -> None:
    bands = zip(arguments.per_model["density"], arguments.per_model["gamma"], strict=True)
    for i, (density, gamma) in enumerate(bands):
        check_band_fractions(float(density), float(gamma), where=f" of model {i}")


def breadcrumbs(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    gammas: Sequence[float],
    lam: float = 1.0,
) -> Tensor:
    """Model Breadcrumbs: per τ_i drop the largest ``gamma`` fraction, keep the next ``density``; then
    task arithmetic.

    Paper: "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks", Davari &
    Belilovsky 2024, https://arxiv.org/abs/2312.06795.
    θ = θ_0 + λ·Σ_i w_i·band(τ_i). Counts round half up; density + gamma > 1 is a ConfigError (mergekit
    silently shrinks the dropped top, e.g. drops nothing at its default density 1).
    """
    sparsifiers = [partial(band_prune, density=d, gamma=g) for d, g in zip(densities, gammas, strict=True)]
    return merge_onto_base(base, models, weights, sparsifiers=sparsifiers, scale=lam)


def breadcrumbs_blocks(
    context: TensorContext,
    weights: Sequence[float],
    densities: Sequence[float],
    gammas: Sequence[float],
    lam: float = 1.0,
) -> BlockMerger:
    """Block merger of :func:`breadcrumbs`: statistics = each τ_i's two exact magnitude cuts."""
    n = context.numel
    sparsifiers = [MagnitudeBand(n, *keep_counts(n, d, g)) for d, g in zip(densities, gammas, strict=True)]
    return TaskVectorBlocks(weights, sparsifiers=sparsifiers, scale=lam)


def model_stock_ratio(cosine: Tensor, n_models: int) -> Tensor:
    """Model Stock's interpolation ratio t = N·c / (1 + (N − 1)·c) with c clamped into [0, 1].

    The clamp puts t in [0, 1]: a non-positive mean cosine (no agreement, or task vectors pointing
    apart, where the raw formula gives t < 0 or a pole at c = −1/(N − 1)) falls back to the base.
    """
    c = cosine.clamp(0.0, 1.0)
    return n_models * c / (1.0 + (n_models - 1) * c)


def model_stock(base: Tensor, models: Sequence[Tensor]) -> Tensor:
    """Model Stock: θ = t·mean_i(θ_i) + (1 − t)·θ_0 = θ_0 + t·mean_i(τ_i), t from the task vectors' angle.

    Paper: "Model Stock: All we need is just a few fine-tuned models", Jang et al. 2024,
    https://arxiv.org/abs/2403.19522.
    cos θ = mean pairwise cosine of the flattened τ_i (the paper's multi-model case is unspecified;
    mergekit does the same, tensor-wise unless ``filter_wise``); t = N·cos θ / (1 + (N − 1)·cos θ).
    Degenerate cases: a zero τ_i makes its pairs count as cosine 0; cos θ ≤ 0 gives t = 0 (the base);
    see :func:`model_stock_ratio`. Needs at least two models.
    """
    deltas = task_vectors(base, models)
    t = model_stock_ratio(mean_pairwise_cosine(deltas), len(deltas))
    return base + t * weighted_sum(deltas, [1.0 / len(deltas)] * len(deltas))


class _ModelStockBlocks:
    """:func:`model_stock` block by block: one statistics pass sums norms and dot products, then t is fixed."""

    needs_statistics = True

    def __init__(self, n_models: int) -> None:
        self.n = n_models
        self.sums = PairwiseCosineSums(n_models)
        self.ratio: Tensor | None = None

    def observe(self, block: RowBlock) -> None:
        self.sums.add(task_vectors(block.base_rows(), block.models))

    def end_pass(self) -> bool:
        self.ratio = model_stock_ratio(torch.tensor(self.sums.mean(), dtype=torch.float32), self.n)
        return False

    def merge(self, block: RowBlock) -> Tensor:
        if self.ratio is None:
            raise RuntimeError("model_stock: merge() called before its statistics pass")
        base = block.base_rows()
        deltas = task_vectors(base, block.models)
        return base + self.ratio.to(base.device) * weighted_sum(deltas, [1.0 / self.n] * self.n)


def model_stock_blocks(context: TensorContext) -> BlockMerger:
    """Block merger of :func:`model_stock`."""
    return _ModelStockBlocks(context.n_models)


# ---------------------------------------------------------------------------------------------------
# The method records

_DARE_PAPER = "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch"
_DARE_URL = "https://arxiv.org/abs/2311.03099"

METHODS: tuple[MergeMethod, ...] = (
    MergeMethod(
        "linear",
        linear,
        (WEIGHT,),
        summary="θ = Σ w_i θ_i / Σ w_i (model soup; no base needed)",
        paper="Model soups: averaging weights of multiple fine-tuned models improves accuracy without "
        "increasing inference time",
        url="https://arxiv.org/abs/2203.05482",
        requires_base=False,
        blockwise=Blockwise(),
        check=_check_linear,
    ),
    MergeMethod(
        "task_arithmetic",
        task_arithmetic,
        (WEIGHT, LAMBDA),
        summary="θ = θ_0 + λ Σ w_i τ_i",
        paper="Editing Models with Task Arithmetic",
        url="https://arxiv.org/abs/2212.04089",
        blockwise=Blockwise(),
    ),
    MergeMethod(
        "ties",
        ties,
        (NONNEGATIVE_WEIGHT, replace(DENSITY, default=0.2), LAMBDA),
        summary="trim each τ_i to its top-density entries, elect signs, disjoint mean; θ = θ_0 + λ·that",
        paper="TIES-Merging: Resolving Interference When Merging Models",
        url="https://arxiv.org/abs/2306.01708",
        blockwise=Blockwise(ties_blocks),
    ),
    MergeMethod(
        "dare_linear",
        dare_linear,
        (WEIGHT, replace(DENSITY, default=0.5), LAMBDA),
        summary="drop entries of each τ_i w.p. 1 − density, rescale by 1/density; task arithmetic",
        paper=_DARE_PAPER,
        url=_DARE_URL,
        randomized=True,
        blockwise=Blockwise(),
    ),
    MergeMethod(
        "dare_ties",
        dare_ties,
        (NONNEGATIVE_WEIGHT, replace(DENSITY, default=0.5), LAMBDA),
        summary="drop entries of each τ_i w.p. 1 − density, rescale by 1/density; sign election + disjoint mean",
        paper=_DARE_PAPER,
        url=_DARE_URL,
        randomized=True,
        blockwise=Blockwise(),
    ),
    MergeMethod(
        "della",
        della,
        (NONNEGATIVE_WEIGHT, replace(DENSITY, default=0.5), EPSILON, LAMBDA),
        summary="per row keep-prob rises with |τ| rank from density−ε to density+ε, rescale by 1/p; "
        "sign election + disjoint mean; × λ",
        paper="DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based Sampling",
        url="https://arxiv.org/abs/2406.11617",
        randomized=True,
        blockwise=Blockwise(row_wise=True, extra_bytes=24),  # per-row ranking: int64 order, int32 keys, fp32 p
        check=_check_della,
    ),
    MergeMethod(
        "breadcrumbs",
        breadcrumbs,
        (WEIGHT, replace(DENSITY, default=0.1), GAMMA, LAMBDA),
        summary="per τ_i drop the largest gamma fraction, keep the next density fraction; task arithmetic",
        paper="Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks",
        url="https://arxiv.org/abs/2312.06795",
        blockwise=Blockwise(breadcrumbs_blocks),
        check=_check_breadcrumbs,
    ),
    MergeMethod(
        "model_stock",
        model_stock,
        (),
        summary="t = N cosθ / (1 + (N−1) cosθ) from the τ_i's mean pairwise cosine; θ = t·mean θ_i + (1−t)·θ_0",
        paper="Model Stock: All we need is just a few fine-tuned models",
        url="https://arxiv.org/abs/2403.19522",
        min_models=2,
        blockwise=Blockwise(model_stock_blocks),
    ),
)
BASELINE_METHODS = METHODS
