"""mergekit 0.1.5's semantics of the methods uqmerge shares with it: parameter specs, counts, sparsifiers, SLERP.

The kernels of :mod:`uqmerge.methods.baselines` and :mod:`uqmerge.methods.slerp` take ``semantics="mergekit"``
(bound from a ``compat: mergekit`` config) and then build their steps from here. What differs from uqmerge's own
definitions, from mergekit's ``merge_methods/`` and ``sparsify.py``:

* parameters: ``weight`` is required (no default) and may be negative in TIES; ``density`` defaults to 1.0 (no
  sparsification); DELLA's ``epsilon`` is per model with default 0.15; ``normalize``, ``rescale`` and
  ``int8_mask`` are accepted, with mergekit's per-method defaults; SLERP's ``t`` is required;
* keep counts are ``int(density·n)`` (floor): TIES keeps at least one entry, Breadcrumbs may keep none, and a
  density ≥ 1 sparsifies nothing (Breadcrumbs' ``gamma`` then drops nothing either);
* ``rescale`` scales a sparsified task vector to its L1 norm (:func:`~uqmerge.methods.task_vector.l1_rescaled`);
  with ``rescale: false`` random masks keep survivors unscaled;
* Model Stock's ratio is not clamped (a negative mean cosine extrapolates away from the average), and is 0 at its
  pole; SLERP's endpoints are the base (t = 0) and the other model (t = 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import torch
from torch import Tensor

from uqmerge.core.errors import ConfigError
from uqmerge.methods.base import Arguments, Compat, Param
from uqmerge.methods.task_vector import (
    DENSITY,
    EPSILON,
    GAMMA,
    LAMBDA,
    WEIGHT,
    BlockSparsifier,
    ElementwiseSparsifier,
    L1Rescaled,
    MagnitudeBand,
    Sparsifier,
    della_keep_probabilities,
    keep_ranks,
    l1_rescaled,
    random_mask,
)

WEIGHT_REQUIRED = replace(
    WEIGHT, default=None, required=True, help="scale of this model's contribution (required by mergekit)"
)
DENSITY_ALL = replace(DENSITY, default=1.0, help="fraction of each task vector kept: int(density·n) entries")
EPSILON_PER_MODEL = replace(
    EPSILON,
    default=0.15,
    per_model=True,
    argument="epsilons",
    help="half-width of each model's keep-probability band (density ± epsilon strictly inside (0, 1))",
)
INT8_MASK = Param(
    "int8_mask", False, "mergekit stores its sign masks as int8 (memory only; the result is the same)", kind=bool
)
RESCALE_HELP = "scale each sparsified task vector back to its L1 norm"
T_REQUIRED = Param("t", None, "interpolation position: 0 gives the base model, 1 the other (required)", required=True)
FILTER_WISE = Param("filter_wise", False, "one Model Stock ratio per row (last axis) instead of per tensor", kind=bool)


def normalize_param(default: bool) -> Param:
    """mergekit's ``normalize`` with its per-method default."""
    return Param(
        "normalize",
        default,
        "divide by the agreeing weights (sign consensus) or by the sum of the weights",
        kind=bool,
    )


def rescale_param(default: bool) -> Param:
    """mergekit's ``rescale`` with its per-method default."""
    return Param("rescale", default, RESCALE_HELP, kind=bool)


def task_vector_compat(
    *,
    normalize: bool,
    rescale: bool,
    gamma: bool = False,
    epsilon: bool = False,
    sparsifies: bool = True,
) -> Compat:
    """A mergekit task-vector method (``generalized_task_arithmetic.py``): its parameters and which are inert."""
    params = [WEIGHT_REQUIRED, DENSITY_ALL]
    if gamma:
        params.append(replace(GAMMA, help=GAMMA.help + " (int(gamma·n), shrunk to keep int(density·n))"))
    if epsilon:
        params.append(EPSILON_PER_MODEL)
    params += [normalize_param(normalize), rescale_param(rescale), LAMBDA, INT8_MASK]
    inert = ["int8_mask"]
    if not sparsifies:
        inert += ["density", "rescale"]
    return Compat(tuple(params), check=check_della if epsilon else None, inert=tuple(inert))


# ---------------------------------------------------------------------------------------------------- counts


def magnitude_counts(n: int, density: float) -> tuple[int, int]:
    """mergekit's TIES trim as (dropped top, kept): all ``n`` for density ≥ 1, else ``max(1, int(density·n))``."""
    if density >= 1.0:
        return 0, n
    return 0, min(n, max(1, int(density * n)))


def band_counts(n: int, density: float, gamma: float) -> tuple[int, int]:
    """mergekit's Breadcrumbs band as (dropped top, kept): kept ``int(density·n)`` (may be 0), dropped
    ``int(gamma·n)`` shrunk to fit beside it; a density ≥ 1 keeps everything."""
    if density >= 1.0:
        return 0, n
    keep = int(density * n)
    return min(int(gamma * n), n - keep), keep


def _counts(n: int, density: float, gamma: float | None) -> tuple[int, int]:
    return magnitude_counts(n, density) if gamma is None else band_counts(n, density, gamma)


# ------------------------------------------------------------------------------------------------ sparsifiers


def _magnitude(tau: Tensor, density: float, gamma: float | None, rescale: bool) -> Tensor:
    kept = keep_ranks(tau, *_counts(tau.numel(), density, gamma))
    return l1_rescaled(tau, kept) if rescale and density < 1.0 else kept


def magnitude_sparsifiers(
    densities: Sequence[float], gammas: Sequence[float] | None, *, rescale: bool
) -> list[Sparsifier]:
    """Per model: mergekit's ``magnitude`` (``gammas`` None, TIES) or ``magnitude_outliers`` (Breadcrumbs)."""
    bands = gammas if gammas is not None else [None] * len(densities)
    return [partial(_magnitude, density=d, gamma=g, rescale=rescale) for d, g in zip(densities, bands, strict=True)]


def magnitude_block_sparsifiers(
    numel: int, densities: Sequence[float], gammas: Sequence[float] | None, *, rescale: bool
) -> list[BlockSparsifier]:
    """:func:`magnitude_sparsifiers` for a blockwise merge: exact magnitude cuts, then the L1 norms if rescaled."""
    bands = gammas if gammas is not None else [None] * len(densities)
    out: list[BlockSparsifier] = []
    for density, gamma in zip(densities, bands, strict=True):
        band = MagnitudeBand(numel, *_counts(numel, density, gamma))
        out.append(L1Rescaled(band) if rescale and density < 1.0 else band)
    return out


def della_probabilities(tensor: Tensor, density: float, epsilon: float) -> Tensor:
    """mergekit's DELLA keep-probabilities: ranked along dim 1 (a 1-D tensor is one row), so a tensor of ≥ 3 dims
    is ranked per fibre along dim 1 rather than per flattened row."""
    if tensor.dim() <= 2:
        return della_keep_probabilities(tensor, density, epsilon)
    moved = tensor.movedim(1, -1)
    fibres = moved.reshape(-1, moved.shape[-1])
    return della_keep_probabilities(fibres, density, epsilon).reshape(moved.shape).movedim(-1, 1)


def _random(tau: Tensor, density: float, epsilon: float | None, generator: torch.Generator, rescale: bool) -> Tensor:
    if density >= 1.0:
        return tau.clone()
    keep_prob = density if epsilon is None else della_probabilities(tau, density, epsilon)
    kept = random_mask(tau, keep_prob, generator)
    return l1_rescaled(tau, kept) if rescale else kept


def random_sparsifiers(
    densities: Sequence[float],
    epsilons: Sequence[float] | None,
    generators: Sequence[torch.Generator],
    *,
    rescale: bool,
) -> list[Sparsifier]:
    """Per model: mergekit's ``random`` (DARE, ``epsilons`` None) or ``della_magprune`` mask, then its rescale.

    The masks are drawn from uqmerge's per-model generators (mergekit draws from torch's global generator), so
    they follow mergekit's distribution, not its numbers.
    """
    bands = epsilons if epsilons is not None else [None] * len(densities)
    return [
        partial(_random, density=d, epsilon=e, generator=g, rescale=rescale)
        for d, e, g in zip(densities, bands, generators, strict=True)
    ]


def random_block_sparsifiers(
    densities: Sequence[float],
    epsilons: Sequence[float] | None,
    generators: Sequence[torch.Generator],
    *,
    rescale: bool,
) -> list[BlockSparsifier]:
    """:func:`random_sparsifiers` for a blockwise merge: L1 norms summed in a pass that replays the draws."""
    whole = random_sparsifiers(densities, epsilons, generators, rescale=False)
    out: list[BlockSparsifier] = []
    for sparsify, density, generator in zip(whole, densities, generators, strict=True):
        block = ElementwiseSparsifier(sparsify)
        out.append(L1Rescaled(block, generator) if rescale and density < 1.0 else block)
    return out


def check_della(arguments: Arguments) -> None:
    """mergekit's DELLA band: for a density below 1, density ± epsilon strictly inside (0, 1)."""
    bands = zip(arguments.per_model["density"], arguments.per_model["epsilon"], strict=True)
    for i, (density, epsilon) in enumerate(bands):
        d, e = float(density), float(epsilon)
        if d < 1.0 and (d - e <= 0.0 or d + e >= 1.0):
            raise ConfigError(
                f"model {i}: density {d:g} ± epsilon {e:g} must lie strictly inside (0, 1) (mergekit's rule); "
                "lower 'epsilon' or move 'density' towards 0.5"
            )


# ---------------------------------------------------------------------------------------- Model Stock, SLERP


def model_stock_ratio(cosine: Tensor, n_models: int) -> Tensor:
    """mergekit's t = N·c / (1 + (N − 1)·c), unclamped; 0 where |1 + (N − 1)·c| < 1e-6 (the pole)."""
    denominator = 1.0 + (n_models - 1) * cosine
    singular = denominator.abs() < 1e-6
    return torch.where(singular, 0.0, n_models * cosine / torch.where(singular, 1.0, denominator))


def row_cosines(tensors: Sequence[Tensor]) -> Tensor:
    """Mean pairwise cosine per row of the last axis (``filter_wise``), norm products clamped at 1e-6, as (rows, 1)."""
    rows = [t.reshape(-1, t.shape[-1]) for t in tensors]
    cosines = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            norms = torch.linalg.vector_norm(rows[i], dim=-1) * torch.linalg.vector_norm(rows[j], dim=-1)
            cosines.append(((rows[i] * rows[j]).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1.0, 1.0))
    return torch.stack(cosines).mean(dim=0).unsqueeze(-1)


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """mergekit's SLERP from ``a`` (t = 0) to ``b`` (t = 1) over the flattened tensors.

    Directions are a/‖a‖ and b/‖b‖ (a norm ≤ 1e-8 counts as 1); linear interpolation where |cos| > 0.9995,
    else sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b. A zero tensor is not linear: its cosine is 0, θ = π/2.
    """
    norm_a, norm_b = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    norm_a = torch.where(norm_a > 1e-8, norm_a, 1.0)
    norm_b = torch.where(norm_b > 1e-8, norm_b, 1.0)
    dot = ((a.reshape(-1) / norm_a) * (b.reshape(-1) / norm_b)).sum().clamp(-1.0, 1.0)
    if float(dot.abs()) > 0.9995:
        return (1.0 - t) * a + t * b
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    return (torch.sin((1.0 - t) * theta) / sin_theta) * a + (torch.sin(t * theta) / sin_theta) * b
