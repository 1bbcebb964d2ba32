"""The baseline merge methods: linear, task arithmetic and its sparsified variants, Model Stock.

Each method is a pure typed function over fp32 tensors (the caller casts on write) plus a
:class:`MergeMethod` record; the task-vector methods are configurations of
:func:`uqmerge.methods.task_vector.merge_task_vectors`. ``_bind`` turns a typed function into the
registry's ``merge(inputs)``: it validates every parameter against the record's :class:`Param` specs
(and rejects parameters the method does not have) before any tensor work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

import torch
from torch import Tensor

from uqmerge.errors import ConfigError, PlanError
from uqmerge.methods.base import MergeInputs, MergeMethod, Param
from uqmerge.methods.task_vector import (
    DENSITY,
    EPSILON,
    GAMMA,
    LAMBDA,
    NONNEGATIVE_WEIGHT,
    WEIGHT,
    Sparsifier,
    band_prune,
    check_band_fractions,
    check_della_band,
    check_param,
    della_prune,
    magnitude_prune,
    mean_pairwise_cosine,
    merge_task_vectors,
    random_prune,
    task_vectors,
    weighted_sum,
)

# ---------------------------------------------------------------------------------------------------
# Typed merge functions


def linear(models: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Weighted average of the models: θ = Σ_i w_i·θ_i / Σ_i w_i (no base).

    Paper: "Model soups: averaging weights of multiple fine-tuned models improves accuracy without
    increasing inference time", Wortsman et al. 2022, https://arxiv.org/abs/2203.05482.
    Weights may be negative; weights summing to 0 (|Σ w| ≤ 1e-9·Σ|w|) are a ConfigError. mergekit's
    ``linear`` also normalises by Σ w (``normalize: true``) but silently skips a zero sum.
    """
    total = math.fsum(weights)
    if abs(total) <= 1e-9 * math.fsum(abs(w) for w in weights):
        raise ConfigError(f"parameter 'weight' of the linear merge sums to {total:g}; the average needs a non-zero sum")
    return weighted_sum(models, [w / total for w in weights])


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


def _dare_sparsifiers(densities: Sequence[float], generator: torch.Generator) -> list[Sparsifier]:
    return [partial(random_prune, density=d, generator=generator) for d in densities]


def dare_linear(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    generator: torch.Generator,
    lam: float = 1.0,
) -> Tensor:
    """DARE + task arithmetic: θ = θ_0 + λ·Σ_i w_i·DARE(τ_i), DARE keeping each entry w.p. density, ÷ density.

    Paper: "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
    Lunch", Yu et al. 2024, https://arxiv.org/abs/2311.03099.
    E[θ] equals task arithmetic. Masks are drawn from ``generator`` in model order. Recent mergekit
    rescales survivors to the L1 norm rather than ÷ density; peft's rescale was long a no-op.
    """
    sparsifiers = _dare_sparsifiers(densities, generator)
    return _task_vector_merge(base, models, weights, lam, sparsifiers=sparsifiers)


def dare_ties(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    generator: torch.Generator,
    lam: float = 1.0,
) -> Tensor:
    """DARE + TIES without trimming: DARE each τ_i, elect signs, disjoint mean, × λ.

    Paper: "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
    Lunch", Yu et al. 2024, https://arxiv.org/abs/2311.03099.
    The disjoint mean divides by the agreeing weights, as in :func:`ties`; mergekit's ``dare_ties``
    defaults to ``normalize: false`` (the agreeing weighted deltas are summed, not averaged).
    """
    sparsifiers = _dare_sparsifiers(densities, generator)
    return _task_vector_merge(base, models, weights, lam, sparsifiers=sparsifiers, sign_consensus=True)


def della(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    generator: torch.Generator,
    epsilon: float = 0.1,
    lam: float = 1.0,
) -> Tensor:
    """DELLA: magnitude-ranked random drop (MAGPRUNE) per row, survivors ÷ keep-prob, TIES election, × λ.

    Paper: "DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based
    Sampling", Deep et al. 2024, https://arxiv.org/abs/2406.11617.
    Per row, keep-prob rises linearly with |τ| rank from density − ε to density + ε (see
    :func:`~uqmerge.methods.task_vector.della_keep_probabilities`); density ± ε must lie in (0, 1].
    ε is global, default 0.1 (mergekit: 0.15 at the time of writing); λ is global (mergekit reads it
    per model, from the first). With ε = 0 this equals :func:`dare_ties` for the same generator.
    """
    for i, density in enumerate(densities):
        check_della_band(density, epsilon, where=f" of model {i}")
    sparsifiers = [partial(della_prune, density=d, epsilon=epsilon, generator=generator) for d in densities]
    return _task_vector_merge(base, models, weights, lam, sparsifiers=sparsifiers, sign_consensus=True)


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
    for i, (density, gamma) in enumerate(zip(densities, gammas, strict=True)):
        check_band_fractions(density, gamma, where=f" of model {i}")
    sparsifiers = [partial(band_prune, density=d, gamma=g) for d, g in zip(densities, gammas, strict=True)]
    return _task_vector_merge(base, models, weights, lam, sparsifiers=sparsifiers)


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
    if len(models) < 2:
        raise ConfigError(f"model_stock needs at least two models besides the base, got {len(models)}")
    deltas = task_vectors(base, models)
    t = model_stock_ratio(mean_pairwise_cosine(deltas), len(deltas))
    return base + t * weighted_sum(deltas, [1.0 / len(deltas)] * len(deltas))


# ---------------------------------------------------------------------------------------------------
# Binding typed functions to the registry's MergeInputs

_ARGUMENT_NAMES = {"weight": "weights", "density": "densities", "gamma": "gammas", "lambda": "lam"}


def _check_inputs(inputs: MergeInputs, params: Sequence[Param], requires_base: bool, randomized: bool) -> None:
    """PlanError for structural problems, ConfigError for parameters the method does not take."""
    if not inputs.models:
        raise PlanError(f"tensor {inputs.name!r}: no models to merge")
    if requires_base and inputs.base is None:
        raise PlanError(f"tensor {inputs.name!r}: this method needs the base model's tensor")
    if randomized and inputs.generator is None:
        raise PlanError(f"tensor {inputs.name!r}: this randomized method needs a seeded generator")
    shape = inputs.models[0].shape
    shapes = [m.shape for m in inputs.models] + ([inputs.base.shape] if inputs.base is not None else [])
    if any(s != shape for s in shapes):
        raise PlanError(f"tensor {inputs.name!r}: shapes differ between inputs: {[tuple(s) for s in shapes]}")
    for given, kind, per_model in ((inputs.per_model, "per-model", True), (inputs.params, "global", False)):
        known = sorted(p.name for p in params if p.per_model == per_model)
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown {kind} parameter(s) {', '.join(map(repr, unknown))}; "
                f"this method takes: {', '.join(known) or 'none'}"
            )


def _per_model_values(inputs: MergeInputs, spec: Param) -> list[float]:
    n = len(inputs.models)
    values = inputs.per_model.get(spec.name, [spec.default] * n)
    if len(values) != n:
        raise ConfigError(f"parameter {spec.name!r} has {len(values)} values for {n} models")
    return [check_param(spec, v, where=f" of model {i}") for i, v in enumerate(values)]


def _bind(
    fn: Callable[..., Tensor], params: tuple[Param, ...], *, requires_base: bool, randomized: bool
) -> Callable[[MergeInputs], Tensor]:
    """``merge(inputs)``: validate ``inputs`` against ``params``, then call ``fn`` with typed arguments."""

    def merge(inputs: MergeInputs) -> Tensor:
        _check_inputs(inputs, params, requires_base, randomized)
        kwargs: dict[str, object] = {}
        for spec in params:
            argument = _ARGUMENT_NAMES.get(spec.name, spec.name)
            if spec.per_model:
                kwargs[argument] = _per_model_values(inputs, spec)
            else:
                kwargs[argument] = check_param(spec, inputs.params.get(spec.name, spec.default))
        if randomized:
            kwargs["generator"] = inputs.generator
        if requires_base:
            return fn(inputs.base, inputs.models, **kwargs)
        return fn(inputs.models, **kwargs)

    merge.__name__ = merge.__qualname__ = fn.__name__
    merge.__doc__ = fn.__doc__
    return merge


def _method(
    fn: Callable[..., Tensor],
    params: tuple[Param, ...],
    *,
    summary: str,
    paper: str,
    url: str,
    requires_base: bool = True,
    min_models: int = 1,
    randomized: bool = False,
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
    )


_DARE_PAPER = "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch"
_DARE_URL = "https://arxiv.org/abs/2311.03099"

BASELINE_METHODS: tuple[MergeMethod, ...] = (
    _method(
        linear,
        (WEIGHT,),
        summary="θ = Σ w_i θ_i / Σ w_i (model soup; no base needed)",
        paper="Model soups: averaging weights of multiple fine-tuned models improves accuracy without "
        "increasing inference time",
        url="https://arxiv.org/abs/2203.05482",
        requires_base=False,
    ),
    _method(
        task_arithmetic,
        (WEIGHT, LAMBDA),
        summary="θ = θ_0 + λ Σ w_i τ_i",
        paper="Editing Models with Task Arithmetic",
        url="https://arxiv.org/abs/2212.04089",
    ),
    _method(
        ties,
        (NONNEGATIVE_WEIGHT, replace(DENSITY, default=0.2), LAMBDA),
        summary="trim each τ_i to its top-density entries, elect signs, disjoint mean; θ = θ_0 + λ·that",
        paper="TIES-Merging: Resolving Interference When Merging Models",
        url="https://arxiv.org/abs/2306.01708",
    ),
    _method(
        dare_linear,
        (WEIGHT, replace(DENSITY, default=0.5), LAMBDA),
        summary="drop entries of each τ_i w.p. 1 − density, rescale by 1/density; task arithmetic",
        paper=_DARE_PAPER,
        url=_DARE_URL,
        randomized=True,
    ),
    _method(
        dare_ties,
        (NONNEGATIVE_WEIGHT, replace(DENSITY, default=0.5), LAMBDA),
        summary="drop entries of each τ_i w.p. 1 − density, rescale by 1/density; sign election + disjoint mean",
        paper=_DARE_PAPER,
        url=_DARE_URL,
        randomized=True,
    ),
    _method(
        della,
        (NONNEGATIVE_WEIGHT, replace(DENSITY, default=0.5), EPSILON, LAMBDA),
        summary="per row keep-prob rises with |τ| rank from density−ε to density+ε, rescale by 1/p; "
        "sign election + disjoint mean; × λ",
        paper="DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based Sampling",
        url="https://arxiv.org/abs/2406.11617",
        randomized=True,
    ),
    _method(
        breadcrumbs,
        (WEIGHT, replace(DENSITY, default=0.1), GAMMA, LAMBDA),
        summary="per τ_i drop the largest gamma fraction, keep the next density fraction; task arithmetic",
        paper="Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks",
        url="https://arxiv.org/abs/2312.06795",
    ),
    _method(
        model_stock,
        (),
        summary="t = N cosθ / (1 + (N−1) cosθ) from the τ_i's mean pairwise cosine; θ = t·mean θ_i + (1−t)·θ_0",
        paper="Model Stock: All we need is just a few fine-tuned models",
        url="https://arxiv.org/abs/2403.19522",
        min_models=2,
    ),
)
