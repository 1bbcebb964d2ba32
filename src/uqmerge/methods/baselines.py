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
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import cast

import torch
from torch import Tensor

from uqmerge.core.errors import ConfigError
from uqmerge.methods import mergekit
from uqmerge.methods.base import (
    Arguments,
    BlockMerger,
    Blockwise,
    Compat,
    ElementwiseBlocks,
    MergeMethod,
    RowBlock,
    Semantics,
    TensorContext,
)
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


def _check_mergekit_linear(arguments: Arguments) -> None:
    if arguments.params["normalize"]:
        _check_linear(arguments)


def linear(
    models: Sequence[Tensor], weights: Sequence[float], normalize: bool = True, semantics: Semantics = "uqmerge"
) -> Tensor:
    """Weighted average of the models: θ = Σ_i w_i·θ_i / Σ_i w_i (no base).

    Paper: "Model soups: averaging weights of multiple fine-tuned models improves accuracy without
    increasing inference time", Wortsman et al. 2022, https://arxiv.org/abs/2203.05482.
    Weights may be negative; weights summing to 0 (|Σ w| ≤ 1e-9·Σ|w|) are a ConfigError. mergekit's
    ``linear`` also normalises by Σ w (``normalize: true``) but silently skips a zero sum. mergekit semantics:
    Σ_i w_i·θ_i, divided by Σ_i w_i unless ``normalize`` is false.
    """
    if semantics == "mergekit":
        total = weighted_sum(models, weights)
        return total / math.fsum(weights) if normalize else total
    return weighted_sum(models, linear_weights(weights))


def task_arithmetic(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    lam: float = 1.0,
    densities: Sequence[float] | None = None,
    normalize: bool = False,
    rescale: bool = False,
    int8_mask: bool = False,
    semantics: Semantics = "uqmerge",
) -> Tensor:
    """θ = θ_0 + λ·Σ_i w_i·τ_i with τ_i = θ_i − θ_0.

    Paper: "Editing Models with Task Arithmetic", Ilharco et al. 2023, https://arxiv.org/abs/2212.04089.
    Same as mergekit's ``task_arithmetic`` with ``normalize: false``; mergekit has no global λ (scale
    the weights instead). mergekit semantics: ``normalize`` divides the sum by Σ w; ``density``, ``rescale`` and
    ``int8_mask`` are accepted there and change nothing.
    """
    if semantics == "mergekit":
        return merge_onto_base(base, models, weights, scale=lam, normalize=normalize, semantics=semantics)
    return merge_onto_base(base, models, weights, scale=lam)


def ties(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    lam: float = 1.0,
    normalize: bool = True,
    rescale: bool = False,
    int8_mask: bool = False,
    semantics: Semantics = "uqmerge",
) -> Tensor:
    """TIES: trim each τ_i to its top ``density`` by magnitude, elect signs, disjoint mean, × λ.

    Paper: "TIES-Merging: Resolving Interference When Merging Models", Yadav et al. 2023,
    https://arxiv.org/abs/2306.01708.
    θ = θ_0 + λ·Σ_{i∈A} w_i·τ̂_i / Σ_{i∈A} w_i, γ = sgn(Σ_i w_i·τ̂_i), A = {i : sgn(w_i·τ̂_i) = γ ≠ 0}.
    Keep count k = clamp(floor(density·n + 0.5), 1, n), ties to the lower index (mergekit/peft: floor).
    Divisor as mergekit (agreeing weights; peft: agreeing count); an exact-zero vote (votes in float64)
    elects no sign (mergekit and peft elect +), so that entry keeps the base value. mergekit semantics
    (:mod:`uqmerge.methods.mergekit`): k = max(1, int(density·n)), a zero vote elects +, ``normalize`` false sums
    the agreeing w_i·τ̂_i undivided, ``rescale`` restores each τ̂_i's L1 norm.
    """
    if semantics == "mergekit":
        sparsifiers = mergekit.magnitude_sparsifiers(densities, None, rescale=rescale)
        return merge_onto_base(
            base,
            models,
            weights,
            sparsifiers=sparsifiers,
            sign_consensus=True,
            scale=lam,
            normalize=normalize,
            semantics=semantics,
        )
    sparsifiers = [partial(magnitude_prune, density=d) for d in densities]
    return merge_onto_base(base, models, weights, sparsifiers=sparsifiers, sign_consensus=True, scale=lam)


def ties_blocks(
    context: TensorContext,
    weights: Sequence[float],
    densities: Sequence[float],
    lam: float = 1.0,
    normalize: bool = True,
    rescale: bool = False,
    int8_mask: bool = False,
    semantics: Semantics = "uqmerge",
) -> BlockMerger:
    """Block merger of :func:`ties`: statistics = each τ_i's exact top-k magnitude cut (and L1 norms if rescaled)."""
    n = context.numel
    if semantics == "mergekit":
        sparsifiers = mergekit.magnitude_block_sparsifiers(n, densities, None, rescale=rescale)
        return TaskVectorBlocks(
            weights, sparsifiers=sparsifiers, sign_consensus=True, scale=lam, normalize=normalize, semantics=semantics
        )
    sparsifiers = [MagnitudeBand(n, *keep_counts(n, d)) for d in densities]
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
    normalize: bool = False,
    rescale: bool = True,
    int8_mask: bool = False,
    semantics: Semantics = "uqmerge",
) -> Tensor:
    """DARE + task arithmetic: θ = θ_0 + λ·Σ_i w_i·DARE(τ_i), DARE keeping each entry w.p. density, ÷ density.

    Paper: "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
    Lunch", Yu et al. 2024, https://arxiv.org/abs/2311.03099.
    E[θ] equals task arithmetic. Model i's mask is drawn from ``generators[i]`` (the same generator
    repeated: drawn in model order). Recent mergekit rescales survivors to the L1 norm rather than
    ÷ density; peft's rescale was long a no-op. mergekit semantics: survivors unscaled, then (``rescale``,
    default true) scaled to τ_i's L1 norm; ``normalize`` divides by Σ w.
    """
    if semantics == "mergekit":
        sparsifiers = mergekit.random_sparsifiers(densities, None, generators, rescale=rescale)
        return merge_onto_base(
            base, models, weights, sparsifiers=sparsifiers, scale=lam, normalize=normalize, semantics=semantics
        )
    return merge_onto_base(base, models, weights, sparsifiers=_dare_sparsifiers(densities, generators), scale=lam)


def dare_ties(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    generators: Sequence[torch.Generator],
    lam: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    int8_mask: bool = False,
    semantics: Semantics = "uqmerge",
) -> Tensor:
    """DARE + TIES without trimming: DARE each τ_i, elect signs, disjoint mean, × λ.

    Paper: "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
    Lunch", Yu et al. 2024, https://arxiv.org/abs/2311.03099.
    Masks as in :func:`dare_linear`. The disjoint mean divides by the agreeing weights, as in :func:`ties`;
    mergekit's ``dare_ties`` defaults to ``normalize: false`` (the agreeing weighted deltas are summed), which
    its semantics here follow, with the L1 ``rescale`` of :func:`dare_linear`.
    """
    if semantics == "mergekit":
        return _mergekit_random_ties(base, models, weights, densities, None, generators, lam, normalize, rescale)
    sparsifiers = _dare_sparsifiers(densities, generators)
    return merge_onto_base(base, models, weights, sparsifiers=sparsifiers, sign_consensus=True, scale=lam)


def _mergekit_random_ties(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    epsilons: Sequence[float] | None,
    generators: Sequence[torch.Generator],
    lam: float,
    normalize: bool,
    rescale: bool,
) -> Tensor:
    """mergekit's DARE-TIES (``epsilons`` None) or DELLA: its random sparsifiers, then the TIES election."""
    sparsifiers = mergekit.random_sparsifiers(densities, epsilons, generators, rescale=rescale)
    return merge_onto_base(
        base,
        models,
        weights,
        sparsifiers=sparsifiers,
        sign_consensus=True,
        scale=lam,
        normalize=normalize,
        semantics="mergekit",
    )


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
    epsilons: Sequence[float] | None = None,
    normalize: bool = True,
    rescale: bool = True,
    int8_mask: bool = False,
    semantics: Semantics = "uqmerge",
) -> Tensor:
    """DELLA: magnitude-ranked random drop (MAGPRUNE) per row, survivors ÷ keep-prob, TIES election, × λ.

    Paper: "DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based
    Sampling", Deep et al. 2024, https://arxiv.org/abs/2406.11617.
    Per row, keep-prob rises linearly with |τ| rank from density − ε to density + ε (see
    :func:`~uqmerge.methods.task_vector.della_keep_probabilities`); density ± ε must lie in (0, 1].
    ε is global, default 0.1 (mergekit: 0.15 at the time of writing); λ is global (mergekit reads it
    per model, from the first). Masks drawn as in :func:`dare_linear`; with ε = 0 this equals
    :func:`dare_ties` for the same generators. mergekit semantics: ε per model (``epsilons``, default 0.15),
    ranked along dim 1, survivors unscaled then L1-``rescale`` d, ``normalize`` as in :func:`ties`.
    """
    if semantics == "mergekit":
        assert epsilons is not None
        return _mergekit_random_ties(base, models, weights, densities, epsilons, generators, lam, normalize, rescale)
    sparsifiers = [
        partial(della_prune, density=d, epsilon=epsilon, generator=g)
        for d, g in zip(densities, generators, strict=True)
    ]
    return merge_onto_base(base, models, weights, sparsifiers=sparsifiers, sign_consensus=True, scale=lam)


def random_blocks(kernel: Callable[..., Tensor], context: TensorContext, **keywords: object) -> BlockMerger:
    """Block merger of DARE and DELLA: the kernel on each block, unless mergekit's L1 ``rescale`` needs the norms of
    the whole τ_i (one statistics pass that replays each model's draws)."""
    if keywords.get("semantics") != "mergekit" or not keywords.get("rescale"):
        return ElementwiseBlocks(lambda models, base: kernel(base, models, **keywords))
    sparsifiers = mergekit.random_block_sparsifiers(
        cast(Sequence[float], keywords["densities"]),
        cast("Sequence[float] | None", keywords.get("epsilons")),
        cast(Sequence[torch.Generator], keywords["generators"]),
        rescale=True,
    )
    return TaskVectorBlocks(
        cast(Sequence[float], keywords["weights"]),
        sparsifiers=sparsifiers,
        sign_consensus=kernel is not dare_linear,
        scale=cast(float, keywords["lam"]),
        normalize=cast(bool, keywords["normalize"]),
        semantics="mergekit",
    )


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
    normalize: bool = False,
    rescale: bool = False,
    int8_mask: bool = False,
    semantics: Semantics = "uqmerge",
) -> Tensor:
    """Model Breadcrumbs: per τ_i drop the largest ``gamma`` fraction, keep the next ``density``; then
    task arithmetic.

    Paper: "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks", Davari &
    Belilovsky 2024, https://arxiv.org/abs/2312.06795.
    θ = θ_0 + λ·Σ_i w_i·band(τ_i). Counts round half up; density + gamma > 1 is a ConfigError (mergekit
    silently shrinks the dropped top, e.g. drops nothing at its default density 1). mergekit semantics: kept
    int(density·n) (may be 0), dropped int(gamma·n) shrunk to fit, density ≥ 1 keeps all; ``normalize``
    divides by Σ w, ``rescale`` restores the L1 norm.
    """
    if semantics == "mergekit":
        sparsifiers = mergekit.magnitude_sparsifiers(densities, gammas, rescale=rescale)
        return merge_onto_base(
            base, models, weights, sparsifiers=sparsifiers, scale=lam, normalize=normalize, semantics=semantics
        )
    sparsifiers = [partial(band_prune, density=d, gamma=g) for d, g in zip(densities, gammas, strict=True)]
    return merge_onto_base(base, models, weights, sparsifiers=sparsifiers, scale=lam)


def breadcrumbs_blocks(
    context: TensorContext,
    weights: Sequence[float],
    densities: Sequence[float],
    gammas: Sequence[float],
    lam: float = 1.0,
    normalize: bool = False,
    rescale: bool = False,
    int8_mask: bool = False,
    semantics: Semantics = "uqmerge",
) -> BlockMerger:
    """Block merger of :func:`breadcrumbs`: statistics = each τ_i's two exact magnitude cuts."""
    n = context.numel
    if semantics == "mergekit":
        sparsifiers = mergekit.magnitude_block_sparsifiers(n, densities, gammas, rescale=rescale)
        return TaskVectorBlocks(weights, sparsifiers=sparsifiers, scale=lam, normalize=normalize, semantics=semantics)
    sparsifiers = [MagnitudeBand(n, *keep_counts(n, d, g)) for d, g in zip(densities, gammas, strict=True)]
    return TaskVectorBlocks(weights, sparsifiers=sparsifiers, scale=lam)


def model_stock_ratio(cosine: Tensor, n_models: int) -> Tensor:
    """Model Stock's interpolation ratio t = N·c / (1 + (N − 1)·c) with c clamped into [0, 1].

    The clamp puts t in [0, 1]: a non-positive mean cosine (no agreement, or task vectors pointing
    apart, where the raw formula gives t < 0 or a pole at c = −1/(N − 1)) falls back to the base.
    mergekit's ratio (:func:`uqmerge.methods.mergekit.model_stock_ratio`) is not clamped.
    """
    c = cosine.clamp(0.0, 1.0)
    return n_models * c / (1.0 + (n_models - 1) * c)


def _model_stock_mergekit(base: Tensor, models: Sequence[Tensor], t: Tensor) -> Tensor:
    """mergekit's form t·mean_i(θ_i) + (1 − t)·θ_0."""
    average = weighted_sum(models, [1.0] * len(models)) / len(models)
    return t * average + (1.0 - t) * base


def model_stock(
    base: Tensor, models: Sequence[Tensor], filter_wise: bool = False, semantics: Semantics = "uqmerge"
) -> Tensor:
    """Model Stock: θ = t·mean_i(θ_i) + (1 − t)·θ_0 = θ_0 + t·mean_i(τ_i), t from the task vectors' angle.

    Paper: "Model Stock: All we need is just a few fine-tuned models", Jang et al. 2024,
    https://arxiv.org/abs/2403.19522.
    cos θ = mean pairwise cosine of the flattened τ_i (the paper's multi-model case is unspecified;
    mergekit does the same, tensor-wise unless ``filter_wise``); t = N·cos θ / (1 + (N − 1)·cos θ).
    Degenerate cases: a zero τ_i makes its pairs count as cosine 0; cos θ ≤ 0 gives t = 0 (the base);
    see :func:`model_stock_ratio`. Needs at least two models. mergekit semantics: t unclamped (a negative
    mean cosine extrapolates, t = 0 at the pole), norm products clamped at 1e-6, and ``filter_wise`` gives
    each row of the last axis its own t (a 1-D tensor is one row).
    """
    deltas = task_vectors(base, models)
    if semantics == "mergekit":
        if filter_wise and base.dim() >= 2:
            t = mergekit.model_stock_ratio(mergekit.row_cosines(deltas), len(deltas))
            rows = [m.reshape(-1, base.shape[-1]) for m in models]
            return _model_stock_mergekit(base.reshape(-1, base.shape[-1]), rows, t).reshape(base.shape)
        t = mergekit.model_stock_ratio(mean_pairwise_cosine(deltas, semantics=semantics), len(deltas))
        return _model_stock_mergekit(base, models, t)
    t = model_stock_ratio(mean_pairwise_cosine(deltas), len(deltas))
    return base + t * weighted_sum(deltas, [1.0 / len(deltas)] * len(deltas))


class _ModelStockBlocks:
    """:func:`model_stock` block by block: one statistics pass sums norms and dot products, then t is fixed."""

    needs_statistics = True

    def __init__(self, n_models: int, semantics: Semantics = "uqmerge") -> None:
        self.n = n_models
        self.semantics = semantics
        self.sums = PairwiseCosineSums(n_models)
        self.ratio: Tensor | None = None

    def observe(self, block: RowBlock) -> None:
        self.sums.add(task_vectors(block.base_rows(), block.models))

    def end_pass(self) -> bool:
        cosine = torch.tensor(self.sums.mean(semantics=self.semantics), dtype=torch.float32)
        ratio = mergekit.model_stock_ratio if self.semantics == "mergekit" else model_stock_ratio
        self.ratio = ratio(cosine, self.n)
        return False

    def merge(self, block: RowBlock) -> Tensor:
        if self.ratio is None:
            raise RuntimeError("model_stock: merge() called before its statistics pass")
        base = block.base_rows()
        t = self.ratio.to(base.device)
        if self.semantics == "mergekit":
            return _model_stock_mergekit(base, block.models, t)
        deltas = task_vectors(base, block.models)
        return base + t * weighted_sum(deltas, [1.0 / self.n] * self.n)


def model_stock_blocks(
    context: TensorContext, filter_wise: bool = False, semantics: Semantics = "uqmerge"
) -> BlockMerger:
    """Block merger of :func:`model_stock`; mergekit's ``filter_wise`` on a ≥ 2-D tensor needs only its rows."""
    if filter_wise and len(context.shape) >= 2:
        return ElementwiseBlocks(lambda models, base: model_stock(base, models, True, semantics))
    return _ModelStockBlocks(context.n_models, semantics)


# ---------------------------------------------------------------------------------------------------
# The method records

_DARE_PAPER = "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch"
_DARE_URL = "https://arxiv.org/abs/2311.03099"
_VOTE_BYTES = 16  # the float64 votes of the sign election and one float64 product

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
        compat={
            "mergekit": Compat((mergekit.WEIGHT_REQUIRED, mergekit.normalize_param(True)), check=_check_mergekit_linear)
        },
    ),
    MergeMethod(
        "task_arithmetic",
        task_arithmetic,
        (WEIGHT, LAMBDA),
        summary="θ = θ_0 + λ Σ w_i τ_i",
        paper="Editing Models with Task Arithmetic",
        url="https://arxiv.org/abs/2212.04089",
        blockwise=Blockwise(),
        compat={"mergekit": mergekit.task_vector_compat(normalize=False, rescale=False, sparsifies=False)},
    ),
    MergeMethod(
        "ties",
        ties,
        (NONNEGATIVE_WEIGHT, replace(DENSITY, default=0.2), LAMBDA),
        summary="trim each τ_i to its top-density entries, elect signs, disjoint mean; θ = θ_0 + λ·that",
        paper="TIES-Merging: Resolving Interference When Merging Models",
        url="https://arxiv.org/abs/2306.01708",
        blockwise=Blockwise(ties_blocks, extra_bytes=_VOTE_BYTES),
        compat={"mergekit": mergekit.task_vector_compat(normalize=True, rescale=False)},
    ),
    MergeMethod(
        "dare_linear",
        dare_linear,
        (WEIGHT, replace(DENSITY, default=0.5), LAMBDA),
        summary="drop entries of each τ_i w.p. 1 − density, rescale by 1/density; task arithmetic",
        paper=_DARE_PAPER,
        url=_DARE_URL,
        randomized=True,
        blockwise=Blockwise(partial(random_blocks, dare_linear)),
        compat={"mergekit": mergekit.task_vector_compat(normalize=False, rescale=True)},
    ),
    MergeMethod(
        "dare_ties",
        dare_ties,
        (NONNEGATIVE_WEIGHT, replace(DENSITY, default=0.5), LAMBDA),
        summary="drop entries of each τ_i w.p. 1 − density, rescale by 1/density; sign election + disjoint mean",
        paper=_DARE_PAPER,
        url=_DARE_URL,
        randomized=True,
        blockwise=Blockwise(partial(random_blocks, dare_ties), extra_bytes=_VOTE_BYTES),
        compat={"mergekit": mergekit.task_vector_compat(normalize=False, rescale=True)},
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
        # per-row ranking: int64 order, int32 keys, fp32 p; plus the float64 votes
        blockwise=Blockwise(partial(random_blocks, della), row_wise=True, extra_bytes=24 + _VOTE_BYTES),
        check=_check_della,
        compat={"mergekit": mergekit.task_vector_compat(normalize=True, rescale=True, epsilon=True)},
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
        compat={"mergekit": mergekit.task_vector_compat(normalize=False, rescale=False, gamma=True)},
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
        compat={"mergekit": Compat((mergekit.FILTER_WISE,))},
    ),
)
BASELINE_METHODS = METHODS
