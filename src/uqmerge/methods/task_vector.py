"""Task-vector kernels (sparsify, elect a sign, combine), one step each, composed by ``merge_task_vectors``.

Every task-vector method is one recipe: sparsify each τ_i = θ_i − θ_0 (none | magnitude top-k |
random DARE | DELLA | magnitude band), then combine the sparsified vectors either as a weighted sum
(task arithmetic) or with sign consensus and a disjoint mean (TIES), then scale by λ. The kernels
below are pure: they never modify their arguments, keep the dtype and device they are given, and
validate their scalar arguments against the same :class:`Param` specs the methods publish.

Counting and tie rules, shared by every magnitude-based step so results are exact and deterministic:

* a fraction f of n entries is ``floor(f·n + 0.5)`` entries (round half up); a keep count is at
  least 1 (a density in (0, 1] never empties a tensor) and at most n;
* entries of equal magnitude are ranked by flat (row-major) index: the lower index counts as larger;
* random masks are drawn as ``torch.rand(..) < p`` on the generator's own device, then moved to the
  tensor's device, so the same generator state gives the same mask on any compute device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from uqmerge.errors import ConfigError
from uqmerge.methods.base import Param

Sparsifier = Callable[[Tensor], Tensor]
"""Maps one task vector to its sparsified (and possibly rescaled) version."""

WEIGHT = Param(
    "weight",
    1.0,
    "scale of this model's contribution; a negative weight subtracts its task vector",
    per_model=True,
)
NONNEGATIVE_WEIGHT = replace(
    WEIGHT,
    help="scale of this model's contribution and its vote in the sign election (>= 0: a disjoint "
    "mean divides by the weights of the agreeing models)",
    low=0.0,
)
DENSITY = Param(
    "density",
    1.0,
    "fraction of each task vector's entries that is kept",
    per_model=True,
    low=0.0,
    high=1.0,
    low_inclusive=False,
)
GAMMA = Param(
    "gamma",
    0.01,
    "fraction of each task vector's largest-magnitude entries that is dropped",
    per_model=True,
    low=0.0,
    high=1.0,
    high_inclusive=False,
)
EPSILON = Param(
    "epsilon",
    0.1,
    "half-width of the keep-probability band: keep-probabilities run from density - epsilon to density + epsilon",
    low=0.0,
    high=1.0,
    high_inclusive=False,
)
LAMBDA = Param("lambda", 1.0, "scale of the merged task vector added to the base")


def check_param(spec: Param, value: float, *, where: str = "") -> float:
    """``value`` as a float if ``spec`` accepts it; a ConfigError naming the parameter otherwise."""
    problem = spec.check(value)
    if problem is not None:
        raise ConfigError(f"parameter {spec.name!r}{where} {problem}")
    return float(value)


def check_della_band(density: float, epsilon: float, *, where: str = "") -> None:
    """ConfigError unless ``density − epsilon > 0`` and ``density + epsilon <= 1``."""
    if density - epsilon <= 0.0 or density + epsilon > 1.0:
        raise ConfigError(
            f"parameters 'density' = {density:g} and 'epsilon' = {epsilon:g}{where} give keep-probabilities "
            f"from {density - epsilon:g} to {density + epsilon:g}; both must lie in (0, 1]: "
            "lower 'epsilon' or move 'density' towards 0.5"
        )


def check_band_fractions(density: float, gamma: float, *, where: str = "") -> None:
    """ConfigError unless ``density + gamma <= 1`` (the kept band fits below the dropped top)."""
    if density + gamma > 1.0 + 1e-9:
        raise ConfigError(
            f"parameters 'density' = {density:g} and 'gamma' = {gamma:g}{where} sum to more than 1: "
            "the dropped largest fraction plus the kept fraction cannot exceed the whole tensor"
        )


def fraction_count(fraction: float, n: int) -> int:
    """The number of entries that ``fraction`` of ``n`` stands for: ``floor(fraction·n + 0.5)``."""
    return math.floor(fraction * n + 0.5)


def task_vectors(base: Tensor, models: Sequence[Tensor]) -> list[Tensor]:
    """τ_i = θ_i − θ_0 for every model, in model order."""
    return [model - base for model in models]


def weighted_sum(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Σ_i w_i·x_i, accumulated one tensor at a time (no stacked copy of all inputs)."""
    if not tensors or len(tensors) != len(weights):
        raise ValueError(f"weighted_sum needs one weight per tensor, got {len(tensors)} and {len(weights)}")
    total = tensors[0] * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:], strict=True):
        total.add_(tensor, alpha=weight)  # in place on our own accumulator, never on an input
    return total


def _keep_magnitude_ranks(tensor: Tensor, skip: int, keep: int) -> Tensor:
    """Zero all but the entries ranked ``skip .. skip + keep − 1`` by descending magnitude."""
    flat = tensor.reshape(-1)
    order = torch.argsort(flat.abs(), descending=True, stable=True)
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    mask[order[skip : skip + keep]] = True
    return torch.where(mask, flat, 0.0).reshape(tensor.shape)


def magnitude_prune(tensor: Tensor, density: float) -> Tensor:
    """Keep the ``k = clamp(floor(density·n + 0.5), 1, n)`` largest-magnitude entries, zero the rest.

    TIES's trim step. Ties at the boundary go to the lower flat index. mergekit and peft use
    ``k = int(density·n)`` (floor; mergekit asserts k > 0) and leave tie order to ``topk``/``argsort``.
    """
    density = check_param(DENSITY, density)
    n = tensor.numel()
    keep = min(n, max(1, fraction_count(density, n)))
    if keep == n:
        return tensor.clone()
    return _keep_magnitude_ranks(tensor, 0, keep)


def band_prune(tensor: Tensor, density: float, gamma: float) -> Tensor:
    """Drop the largest ``gamma`` fraction by magnitude, keep the next ``density`` fraction, zero the rest.

    Model Breadcrumbs' mask. Counts follow :func:`fraction_count`; the kept count is at least 1, and
    where rounding makes the two counts exceed ``n`` the dropped top shrinks (density wins), as in
    mergekit's ``magnitude_outliers``. ``density + gamma > 1`` is a ConfigError.
    """
    density = check_param(DENSITY, density)
    gamma = check_param(GAMMA, gamma)
    check_band_fractions(density, gamma)
    n = tensor.numel()
    keep = min(n, max(1, fraction_count(density, n)))
    skip = min(fraction_count(gamma, n), n - keep)
    if keep == n:
        return tensor.clone()
    return _keep_magnitude_ranks(tensor, skip, keep)


def _uniform_like(tensor: Tensor, generator: torch.Generator) -> Tensor:
    """U[0, 1) draws of ``tensor``'s shape, drawn on ``generator``'s device, moved to ``tensor``'s."""
    draws = torch.rand(tensor.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return draws.to(tensor.device)


def _bernoulli_keep_rescale(tensor: Tensor, keep_prob: Tensor | float, generator: torch.Generator) -> Tensor:
    """Keep each entry with probability ``keep_prob`` and divide survivors by it (unbiased: E = tensor)."""
    keep = _uniform_like(tensor, generator) < keep_prob
    return torch.where(keep, tensor / keep_prob, 0.0)


def random_prune(tensor: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE's drop-and-rescale: keep each entry with probability ``density``, survivors ÷ ``density``.

    E[output] = input. Older peft releases discarded the rescaled result (the rescale was a no-op);
    recent mergekit rescales survivors to match the L1 norm (``rescale_norm``) instead of
    dividing by density — we keep the paper's 1/density.
    """
    density = check_param(DENSITY, density)
    return _bernoulli_keep_rescale(tensor, density, generator)


def della_keep_probabilities(tensor: Tensor, density: float, epsilon: float) -> Tensor:
    """DELLA's per-entry keep-probabilities, rising linearly with magnitude rank within each row.

    Rows: a 0-D or 1-D tensor is one row; a tensor of ≥ 2 dims is ``shape[0]`` rows of its flattened
    trailing dims. In a row of m entries, rank r (0 = smallest |τ|, ties by index) gets
    ``p = (density − ε) + 2ε·r/(m − 1)``; a row of one entry gets ``density``.
    """
    density = check_param(DENSITY, density)
    epsilon = check_param(EPSILON, epsilon)
    check_della_band(density, epsilon)
    cols = math.prod(tensor.shape[1:]) if tensor.dim() >= 2 else tensor.numel()
    if cols < 2 or tensor.numel() == 0:
        return torch.full_like(tensor, density)
    rows = tensor.reshape(-1, cols)
    order = torch.argsort(rows.abs(), dim=1, stable=True)
    ranks = torch.argsort(order, dim=1).to(tensor.dtype)
    probs = (density - epsilon) + (2.0 * epsilon / (cols - 1)) * ranks
    return probs.reshape(tensor.shape)


def della_prune(tensor: Tensor, density: float, epsilon: float, generator: torch.Generator) -> Tensor:
    """DELLA's MAGPRUNE: keep each entry with its :func:`della_keep_probabilities` p, survivors ÷ p.

    mergekit's ``della_magprune`` also ranks per row, but requires density ± ε strictly inside (0, 1)
    and (in recent versions) rescales to the L1 norm instead of dividing by p; we allow density + ε = 1.
    With ε = 0 this is exactly :func:`random_prune` (same draws from the same generator).
    """
    return _bernoulli_keep_rescale(tensor, della_keep_probabilities(tensor, density, epsilon), generator)


def elect_sign(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """TIES's elected sign γ = sgn(Σ_i w_i·τ̂_i) per entry; 0 where the weighted sum is exactly 0.

    mergekit (``consensus_method: sum``) and peft (``majority_sign_method="total"``) elect + on an exact
    tie; we elect nothing, so such an entry takes no update and the merge is odd (τ → −τ flips it).
    peft elects on the unweighted τ̂_i; we weight the votes, as mergekit does.
    """
    return torch.sign(weighted_sum(tensors, weights))


def disjoint_merge(tensors: Sequence[Tensor], weights: Sequence[float], sign: Tensor) -> Tensor:
    """TIES's disjoint mean: Σ_{i∈A} w_i·τ̂_i / Σ_{i∈A} w_i over A = {i : sgn(w_i·τ̂_i) = γ ≠ 0}; 0 where A = ∅.

    Weights must be ≥ 0 (a ConfigError otherwise). A zero weight or a pruned (zero) entry never
    agrees, so it neither votes nor counts in the divisor. mergekit divides by the same sum of the
    agreeing weights; peft divides by the number of agreeing models.
    """
    for i, weight in enumerate(weights):
        check_param(NONNEGATIVE_WEIGHT, weight, where=f" of model {i}")
    numerator = torch.zeros_like(sign)
    divisor = torch.zeros_like(sign)
    for tensor, weight in zip(tensors, weights, strict=True):
        weighted = tensor * weight
        agree = (torch.sign(weighted) == sign) & (sign != 0)
        numerator += torch.where(agree, weighted, 0.0)
        divisor += agree.to(sign.dtype) * weight
    has_agreement = divisor > 0
    return torch.where(has_agreement, numerator / torch.where(has_agreement, divisor, 1.0), 0.0)


def merge_task_vectors(
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    *,
    sparsifiers: Sequence[Sparsifier] | None = None,
    sign_consensus: bool = False,
    scale: float = 1.0,
) -> Tensor:
    """The task-vector recipe: sparsify each τ_i (in model order), combine, scale by λ.

    ``sparsifiers[i]`` is applied to ``tensors[i]`` (None: no sparsification). With ``sign_consensus``
    the combination is :func:`elect_sign` + :func:`disjoint_merge` (normalised by the agreeing
    weights), else :func:`weighted_sum` (unnormalised, as task arithmetic). Returns λ·combined.
    """
    if len(tensors) != len(weights):
        raise ValueError(f"one weight per task vector needed, got {len(tensors)} and {len(weights)}")
    if sparsifiers is not None:
        tensors = [sparsify(tensor) for sparsify, tensor in zip(sparsifiers, tensors, strict=True)]
    if sign_consensus:
        combined = disjoint_merge(tensors, weights, elect_sign(tensors, weights))
    else:
        combined = weighted_sum(tensors, weights)
    return combined * scale


def mean_pairwise_cosine(tensors: Sequence[Tensor]) -> Tensor:
    """Mean over pairs i < j of cos(τ_i, τ_j) on the flattened tensors, as a 0-D tensor.

    A pair involving an all-zero tensor has no angle and counts as cosine 0 (orthogonal); mergekit
    reaches about the same by clamping the norm product at 1e-6. Needs at least two tensors.
    """
    if len(tensors) < 2:
        raise ValueError(f"mean_pairwise_cosine needs at least two tensors, got {len(tensors)}")
    flat = [tensor.reshape(-1) for tensor in tensors]
    norms = [torch.linalg.vector_norm(x) for x in flat]
    cosines = []
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            denominator = norms[i] * norms[j]
            defined = denominator > 0
            dot = torch.dot(flat[i], flat[j])
            cosines.append(torch.where(defined, dot / torch.where(defined, denominator, 1.0), 0.0))
    return torch.stack(cosines).mean()
