"""The baseline merge methods: linear, task arithmetic and its sparsified variants, Model Stock.

Each method is a pure typed function over fp32 tensors (the caller casts on write), a typed block builder
with the same parameters (the :class:`~uqmerge.methods.base.Blockwise` protocol: every baseline can merge a
tensor one block of rows at a time), and a :class:`MergeMethod` record; the task-vector methods are
configurations of :func:`uqmerge.methods.task_vector.merge_task_vectors` and, block by block, of
:class:`~uqmerge.methods.task_vector.TaskVectorBlocks`. ``_bind`` turns the typed pair into the registry's
``merge(inputs)`` and ``blockwise.start(context)``: both validate every parameter against the record's
:class:`Param` specs (and reject parameters the method does not have) before any tensor work.

Blockwise results equal the whole-tensor ones bit for bit, except Model Stock's, whose norms and dot
products are reduced block by block (equal up to fp32 rounding of those sums).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial

import torch
from torch import Tensor

from uqmerge.core.errors import ConfigError, PlanError
from uqmerge.methods.base import (
    BlockMerger,
    Blockwise,
    MergeInputs,
    MergeMethod,
    Param,
    RowBlock,
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
    StreamSparsifier,
    TaskVectorBlocks,
    band_prune,
    check_band_fractions,
    check_della_band,
    check_param,
    della_prune,
    keep_counts,
    magnitude_prune,
    mean_pairwise_cosine,
    merge_task_vectors,
    random_prune,
    task_vectors,
    weighted_sum,
)

# ---------------------------------------------------------------------------------------------------
# Typed merge functions


def _linear_weights(weights: Sequence[float]) -> list[float]:
    """The weights divided by their sum; a ConfigError when they sum to 0 (|Σ w| ≤ 1e-9·Σ|w|)."""
    total = math.fsum(weights)
    if abs(total) <= 1e-9 * math.fsum(abs(w) for w in weights):
        raise ConfigError(f"parameter 'weight' of the linear merge sums to {total:g}; the average needs a non-zero sum")
    return [w / total for w in weights]


def linear(models: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Weighted average of the models: θ = Σ_i w_i·θ_i / Σ_i w_i (no base).

    Paper: "Model soups: averaging weights of multiple fine-tuned models improves accuracy without
    increasing inference time", Wortsman et al. 2022, https://arxiv.org/abs/2203.05482.
    Weights may be negative; weights summing to 0 (|Σ w| ≤ 1e-9·Σ|w|) are a ConfigError. mergekit's
    ``linear`` also normalises by Σ w (``normalize: true``) but silently skips a zero sum.
    """
    return weighted_sum(models, _linear_weights(weights))


class _LinearBlocks:
    """:func:`linear` block by block (elementwise, no statistics)."""

    needs_statistics = False

    def __init__(self, weights: Sequence[float]) -> None:
        self.weights = _linear_weights(weights)

    def observe(self, block: RowBlock) -> None:
        raise RuntimeError("linear has no statistics pass")

    def end_pass(self) -> bool:
        return False

    def merge(self, block: RowBlock) -> Tensor:
        return weighted_sum(block.models, self.weights)


def linear_blocks(context: TensorContext, weights: Sequence[float]) -> BlockMerger:
    """Block merger of :func:`linear`."""
    return _LinearBlocks(weights)


def _task_vector_merge(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    lam: float,
    *,
    sparsifiers: Sequence[Sparsifier] | None = None,
    sign_consensus: bool = False,
) -> Tensor:
    """θ_0 + merge_task_vectors(τ_1..τ_N): the body every task-vector method shares."""
    deltas = task_vectors(base, models)
    return base + merge_task_vectors(deltas, weights, sparsifiers=sparsifiers, sign_consensus=sign_consensus, scale=lam)


def task_arithmetic(base: Tensor, models: Sequence[Tensor], weights: Sequence[float], lam: float = 1.0) -> Tensor:
    """θ = θ_0 + λ·Σ_i w_i·τ_i with τ_i = θ_i − θ_0.

    Paper: "Editing Models with Task Arithmetic", Ilharco et al. 2023, https://arxiv.org/abs/2212.04089.
    Same as mergekit's ``task_arithmetic`` with ``normalize: false``; mergekit has no global λ (scale
    the weights instead).
    """
    return _task_vector_merge(base, models, weights, lam)


def task_arithmetic_blocks(context: TensorContext, weights: Sequence[float], lam: float = 1.0) -> BlockMerger:
    """Block merger of :func:`task_arithmetic`."""
    return TaskVectorBlocks(weights, scale=lam)


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
    return _task_vector_merge(base, models, weights, lam, sparsifiers=sparsifiers, sign_consensus=True)


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
    sparsifiers = _dare_sparsifiers(densities, generators)
    return _task_vector_merge(base, models, weights, lam, sparsifiers=sparsifiers)


def dare_linear_blocks(
    context: TensorContext,
    weights: Sequence[float],
    densities: Sequence[float],
    generators: Sequence[torch.Generator],
    lam: float = 1.0,
) -> BlockMerger:
    """Block merger of :func:`dare_linear`: each model's mask stream continues block by block."""
    sparsifiers = [StreamSparsifier(prune) for prune in _dare_sparsifiers(densities, generators)]
    return TaskVectorBlocks(weights, sparsifiers=sparsifiers, scale=lam)


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
    return _task_vector_merge(base, models, weights, lam, sparsifiers=sparsifiers, sign_consensus=True)


def dare_ties_blocks(
    context: TensorContext,
    weights: Sequence[float],
    densities: Sequence[float],
    generators: Sequence[torch.Generator],
    lam: float = 1.0,
) -> BlockMerger:
    """Block merger of :func:`dare_ties`."""
    sparsifiers = [StreamSparsifier(prune) for prune in _dare_sparsifiers(densities, generators)]
    return TaskVectorBlocks(weights, sparsifiers=sparsifiers, sign_consensus=True, scale=lam)


def _della_sparsifiers(
    densities: Sequence[float], epsilon: float, generators: Sequence[torch.Generator]
) -> list[Sparsifier]:
    for i, density in enumerate(densities):
        check_della_band(density, epsilon, where=f" of model {i}")
    return [
        partial(della_prune, density=d, epsilon=epsilon, generator=g)
        for d, g in zip(densities, generators, strict=True)
    ]


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
    sparsifiers = _della_sparsifiers(densities, epsilon, generators)
    return _task_vector_merge(base, models, weights, lam, sparsifiers=sparsifiers, sign_consensus=True)


def della_blocks(
    context: TensorContext,
    weights: Sequence[float],
    densities: Sequence[float],
    generators: Sequence[torch.Generator],
    epsilon: float = 0.1,
    lam: float = 1.0,
) -> BlockMerger:
    """Block merger of :func:`della` (row-wise: blocks must hold whole rows)."""
    sparsifiers = [StreamSparsifier(prune) for prune in _della_sparsifiers(densities, epsilon, generators)]
    return TaskVectorBlocks(weights, sparsifiers=sparsifiers, sign_consensus=True, scale=lam)


def _check_breadcrumbs(densities: Sequence[float], gammas: Sequence[float]) -> None:
    for i, (density, gamma) in enumerate(zip(densities, gammas, strict=True)):
        check_band_fractions(density, gamma, where=f" of model {i}")


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
    _check_breadcrumbs(densities, gammas)
    sparsifiers = [partial(band_prune, density=d, gamma=g) for d, g in zip(densities, gammas, strict=True)]
    return _task_vector_merge(base, models, weights, lam, sparsifiers=sparsifiers)


def breadcrumbs_blocks(
    context: TensorContext,
    weights: Sequence[float],
    densities: Sequence[float],
    gammas: Sequence[float],
    lam: float = 1.0,
) -> BlockMerger:
    """Block merger of :func:`breadcrumbs`: statistics = each τ_i's two exact magnitude cuts."""
    _check_breadcrumbs(densities, gammas)
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


def _check_model_stock(n_models: int) -> None:
    if n_models < 2:
        raise ConfigError(f"model_stock needs at least two models besides the base, got {n_models}")


def model_stock(base: Tensor, models: Sequence[Tensor]) -> Tensor:
    """Model Stock: θ = t·mean_i(θ_i) + (1 − t)·θ_0 = θ_0 + t·mean_i(τ_i), t from the task vectors' angle.

    Paper: "Model Stock: All we need is just a few fine-tuned models", Jang et al. 2024,
    https://arxiv.org/abs/2403.19522.
    cos θ = mean pairwise cosine of the flattened τ_i (the paper's multi-model case is unspecified;
    mergekit does the same, tensor-wise unless ``filter_wise``); t = N·cos θ / (1 + (N − 1)·cos θ).
    Degenerate cases: a zero τ_i makes its pairs count as cosine 0; cos θ ≤ 0 gives t = 0 (the base);
    see :func:`model_stock_ratio`. Needs at least two models.
    """
    _check_model_stock(len(models))
    deltas = task_vectors(base, models)
    t = model_stock_ratio(mean_pairwise_cosine(deltas), len(deltas))
    return base + t * weighted_sum(deltas, [1.0 / len(deltas)] * len(deltas))


class _ModelStockBlocks:
    """:func:`model_stock` block by block: one statistics pass sums norms and dot products, then t is fixed."""

    needs_statistics = True

    def __init__(self, n_models: int) -> None:
        _check_model_stock(n_models)
        self.n = n_models
        self.sums = PairwiseCosineSums(n_models)
        self.ratio: Tensor | None = None

    def observe(self, block: RowBlock) -> None:
        self.sums.add(task_vectors(_base_rows(block), block.models))

    def end_pass(self) -> bool:
        self.ratio = model_stock_ratio(torch.tensor(self.sums.mean(), dtype=torch.float32), self.n)
        return False

    def merge(self, block: RowBlock) -> Tensor:
        if self.ratio is None:
            raise RuntimeError("model_stock: merge() called before its statistics pass")
        base = _base_rows(block)
        deltas = task_vectors(base, block.models)
        return base + self.ratio.to(base.device) * weighted_sum(deltas, [1.0 / self.n] * self.n)


def model_stock_blocks(context: TensorContext) -> BlockMerger:
    """Block merger of :func:`model_stock`."""
    return _ModelStockBlocks(context.n_models)


def _base_rows(block: RowBlock) -> Tensor:
    if block.base is None:
        raise PlanError(f"rows {block.start}:{block.stop}: this method needs the base model's rows")
    return block.base


# ---------------------------------------------------------------------------------------------------
# Binding typed functions to the registry's MergeInputs and TensorContext

_ARGUMENT_NAMES = {"weight": "weights", "density": "densities", "gamma": "gammas", "lambda": "lam"}


def _check_parameter_names(
    per_model: Mapping[str, Sequence[float]], params: Mapping[str, object], specs: Sequence[Param]
) -> None:
    """ConfigError for parameters the method does not take."""
    for given, kind, is_per_model in ((per_model, "per-model", True), (params, "global", False)):
        known = sorted(p.name for p in specs if p.per_model == is_per_model)
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown {kind} parameter(s) {', '.join(map(repr, unknown))}; "
                f"this method takes: {', '.join(known) or 'none'}"
            )


def _check_inputs(inputs: MergeInputs, params: Sequence[Param], requires_base: bool, randomized: bool) -> None:
    """PlanError for structural problems, ConfigError for parameters the method does not take."""
    if not inputs.models:
        raise PlanError(f"tensor {inputs.name!r}: no models to merge")
    if requires_base and inputs.base is None:
        raise PlanError(f"tensor {inputs.name!r}: this method needs the base model's tensor")
    if randomized:
        _check_generators(inputs.name, inputs.model_generators(), len(inputs.models))
    shape = inputs.models[0].shape
    shapes = [m.shape for m in inputs.models] + ([inputs.base.shape] if inputs.base is not None else [])
    if any(s != shape for s in shapes):
        raise PlanError(f"tensor {inputs.name!r}: shapes differ between inputs: {[tuple(s) for s in shapes]}")
    _check_parameter_names(inputs.per_model, inputs.params, params)


def _check_generators(name: str, generators: Sequence[torch.Generator] | None, n: int) -> None:
    if generators is None:
        raise PlanError(f"tensor {name!r}: this randomized method needs a seeded generator")
    if len(generators) != n:
        raise PlanError(f"tensor {name!r}: {len(generators)} generators for {n} models; give one per model")


def _typed_arguments(
    per_model: Mapping[str, Sequence[float]], given: Mapping[str, object], specs: Sequence[Param], n: int
) -> dict[str, object]:
    """Keyword arguments of a typed merge function: per-model lists and global values, all validated."""
    kwargs: dict[str, object] = {}
    for spec in specs:
        argument = _ARGUMENT_NAMES.get(spec.name, spec.name)
        if spec.per_model:
            values = per_model.get(spec.name, [spec.default] * n)
            if len(values) != n:
                raise ConfigError(f"parameter {spec.name!r} has {len(values)} values for {n} models")
            kwargs[argument] = [check_param(spec, v, where=f" of model {i}") for i, v in enumerate(values)]
        else:
            kwargs[argument] = check_param(spec, given.get(spec.name, spec.default))
    return kwargs


def _bind(
    fn: Callable[..., Tensor], params: tuple[Param, ...], *, requires_base: bool, randomized: bool
) -> Callable[[MergeInputs], Tensor]:
    """``merge(inputs)``: validate ``inputs`` against ``params``, then call ``fn`` with typed arguments."""

    def merge(inputs: MergeInputs) -> Tensor:
        _check_inputs(inputs, params, requires_base, randomized)
        kwargs = _typed_arguments(inputs.per_model, inputs.params, params, len(inputs.models))
        if randomized:
            kwargs["generators"] = inputs.model_generators()
        if requires_base:
            return fn(inputs.base, inputs.models, **kwargs)
        return fn(inputs.models, **kwargs)

    merge.__name__ = merge.__qualname__ = fn.__name__
    merge.__doc__ = fn.__doc__
    return merge


def _bind_blocks(
    build: Callable[..., BlockMerger], params: tuple[Param, ...], *, randomized: bool
) -> Callable[[TensorContext], BlockMerger]:
    """``start(context)``: validate the context's parameters against ``params``, then call ``build``."""

    def start(context: TensorContext) -> BlockMerger:
        if context.n_models < 1:
            raise PlanError(f"tensor {context.name!r}: no models to merge")
        if randomized:
            _check_generators(context.name, context.generators, context.n_models)
        _check_parameter_names(context.per_model, context.params, params)
        kwargs = _typed_arguments(context.per_model, context.params, params, context.n_models)
        if randomized:
            kwargs["generators"] = list(context.generators or [])
        return build(context, **kwargs)

    start.__name__ = start.__qualname__ = build.__name__
    return start


def _method(
    fn: Callable[..., Tensor],
    blocks: Callable[..., BlockMerger],
    params: tuple[Param, ...],
    *,
    summary: str,
    paper: str,
    url: str,
    requires_base: bool = True,
    min_models: int = 1,
    randomized: bool = False,
    row_wise: bool = False,
    extra_bytes: int = 0,
) -> MergeMethod:
    return MergeMethod(
        name=fn.__name__,
        merge=_bind(fn, params, requires_base=requires_base, randomized=randomized),
        params=params,
        summary=summary,
        paper=paper,
        url=url,
        requires_base=requires_base,
        min_models=min_models,
        randomized=randomized,
        blockwise=Blockwise(
            _bind_blocks(blocks, params, randomized=randomized), row_wise=row_wise, extra_bytes=extra_bytes
        ),
    )


_DARE_PAPER = "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch"
_DARE_URL = "https://arxiv.org/abs/2311.03099"

BASELINE_METHODS: tuple[MergeMethod, ...] = (
    _method(
        linear,
        linear_blocks,
        (WEIGHT,),
        summary="θ = Σ w_i θ_i / Σ w_i (model soup; no base needed)",
        paper="Model soups: averaging weights of multiple fine-tuned models improves accuracy without "
        "increasing inference time",
        url="https://arxiv.org/abs/2203.05482",
        requires_base=False,
    ),
    _method(
        task_arithmetic,
        task_arithmetic_blocks,
        (WEIGHT, LAMBDA),
        summary="θ = θ_0 + λ Σ w_i τ_i",
        paper="Editing Models with Task Arithmetic",
        url="https://arxiv.org/abs/2212.04089",
    ),
    _method(
        ties,
        ties_blocks,
        (NONNEGATIVE_WEIGHT, replace(DENSITY, default=0.2), LAMBDA),
        summary="trim each τ_i to its top-density entries, elect signs, disjoint mean; θ = θ_0 + λ·that",
        paper="TIES-Merging: Resolving Interference When Merging Models",
        url="https://arxiv.org/abs/2306.01708",
    ),
    _method(
        dare_linear,
        dare_linear_blocks,
        (WEIGHT, replace(DENSITY, default=0.5), LAMBDA),
        summary="drop entries of each τ_i w.p. 1 − density, rescale by 1/density; task arithmetic",
        paper=_DARE_PAPER,
        url=_DARE_URL,
        randomized=True,
    ),
    _method(
        dare_ties,
        dare_ties_blocks,
        (NONNEGATIVE_WEIGHT, replace(DENSITY, default=0.5), LAMBDA),
        summary="drop entries of each τ_i w.p. 1 − density, rescale by 1/density; sign election + disjoint mean",
        paper=_DARE_PAPER,
        url=_DARE_URL,
        randomized=True,
    ),
    _method(
        della,
        della_blocks,
        (NONNEGATIVE_WEIGHT, replace(DENSITY, default=0.5), EPSILON, LAMBDA),
        summary="per row keep-prob rises with |τ| rank from density−ε to density+ε, rescale by 1/p; "
        "sign election + disjoint mean; × λ",
        paper="DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based Sampling",
        url="https://arxiv.org/abs/2406.11617",
        randomized=True,
        row_wise=True,
        extra_bytes=24,  # per-row ranking: int64 argsort order, int32 keys, fp32 probabilities
    ),
    _method(
        breadcrumbs,
        breadcrumbs_blocks,
        (WEIGHT, replace(DENSITY, default=0.1), GAMMA, LAMBDA),
        summary="per τ_i drop the largest gamma fraction, keep the next density fraction; task arithmetic",
        paper="Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks",
        url="https://arxiv.org/abs/2312.06795",
    ),
    _method(
        model_stock,
        model_stock_blocks,
        (),
        summary="t = N cosθ / (1 + (N−1) cosθ) from the τ_i's mean pairwise cosine; θ = t·mean θ_i + (1−t)·θ_0",
        paper="Model Stock: All we need is just a few fine-tuned models",
        url="https://arxiv.org/abs/2403.19522",
        min_models=2,
    ),
)
