"""Task-vector kernels (sparsify, elect a sign, combine), one step each, composed by ``merge_task_vectors``.

Every task-vector method is one recipe: sparsify each τ_i = θ_i − θ_0 (none | magnitude top-k |
random DARE | DELLA | magnitude band), then combine the sparsified vectors either as a weighted sum
(task arithmetic) or with sign consensus and a disjoint mean (TIES), then scale by λ. The kernels
below are pure: they never modify their arguments and keep the dtype and device they are given. Their
scalar arguments come validated (:meth:`~uqmerge.methods.base.MergeMethod.bind` checks them against the
:class:`Param` specs below); the kernels only assert what they rely on.

Counting and tie rules, shared by every magnitude-based step so results are exact and deterministic:

* a fraction f of n entries is ``floor(f·n + 0.5)`` entries (round half up); a keep count is at
  least 1 (a density in (0, 1] never empties a tensor) and at most n;
* entries of equal magnitude are ranked by flat (row-major) index: the lower index counts as larger;
* random masks are drawn as ``torch.rand(..) < p`` on the generator's own device, then moved to the
  tensor's device, so the same generator state gives the same mask on any compute device; one draw per
  entry in flat order, so a block of rows drawn after the rows before it continues the same stream;
* TIES's sign is elected from votes Σ_i w_i·τ̂_i computed in float64 (each product rounded to float64, then
  summed in model order), so a vote that is zero in decimal arithmetic, such as 1.0·0.0703125 + 0.8·(−0.087890625),
  is exactly 0 and elects no sign, where fp32 arithmetic leaves a rounding residue (−1e-9) that elects one.

Under ``semantics="mergekit"`` (``compat: mergekit``) the kernels follow mergekit 0.1.5 instead
(:mod:`uqmerge.methods.mergekit` holds its parameter specs and sparsifiers): keep counts are ``int(density·n)``
(floor) and a density ≥ 1 sparsifies nothing; an exact-zero vote elects +; ``normalize`` divides by the agreeing
weights (sign consensus) or by Σ w (|Σ w| < 1e-8: by 1), with a zero divisor read as 1; ``rescale`` scales a
sparsified τ to τ's L1 norm (unless either norm is below 1e-7) instead of dividing survivors by their
keep-probability.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Protocol

import torch
from torch import Tensor

from uqmerge.core.errors import ConfigError
from uqmerge.methods.base import Param, RowBlock, Semantics
from uqmerge.methods.magnitude import MagnitudeCut, MagnitudeSelector, magnitude_keys, select_magnitude_cuts

Sparsifier = Callable[[Tensor], Tensor]
"""Maps one task vector to its sparsified (and possibly rescaled) version."""

WEIGHT = Param(
    "weight",
    1.0,
    "scale of this model's contribution; a negative weight subtracts its task vector",
    per_model=True,
    argument="weights",
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
    argument="densities",
)
GAMMA = Param(
    "gamma",
    0.01,
    "fraction of each task vector's largest-magnitude entries that is dropped",
    per_model=True,
    low=0.0,
    high=1.0,
    high_inclusive=False,
    argument="gammas",
)
EPSILON = Param(
    "epsilon",
    0.1,
    "half-width of the keep-probability band: keep-probabilities run from density - epsilon to density + epsilon",
    low=0.0,
    high=1.0,
    high_inclusive=False,
)
LAMBDA = Param("lambda", 1.0, "scale of the merged task vector added to the base", argument="lam")


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


def keep_counts(n: int, density: float, gamma: float = 0.0) -> tuple[int, int]:
    """(dropped top count, kept count) of a magnitude band over ``n`` entries, per :func:`fraction_count`.

    The kept count is clamped to [1, n]; where rounding makes the two exceed ``n`` the dropped top shrinks.
    """
    keep = min(n, max(1, fraction_count(density, n)))
    return min(fraction_count(gamma, n), n - keep), keep


def keep_magnitude_band(
    tensor: Tensor, keys: Tensor, top: MagnitudeCut, dropped: MagnitudeCut, offset: int = 0
) -> Tensor:
    """``tensor`` where an entry is in ``top`` but not in ``dropped``, else 0 (``keys`` from :func:`magnitude_keys`).

    ``tensor`` may be a block of rows whose first entry has flat index ``offset`` in the whole tensor.
    """
    if tensor.dtype == torch.float32 and tensor.is_contiguous():
        bits = top.bit_mask(keys, offset)
        if dropped.count > 0:
            bits &= ~dropped.bit_mask(keys, offset)
        return (tensor.view(torch.int32) & bits).view(torch.float32)  # = torch.where(mask, tensor, 0.0)
    mask = top.mask(keys, offset)
    if dropped.count > 0:
        mask &= ~dropped.mask(keys, offset)
    return torch.where(mask, tensor, 0.0)


def _keep_magnitude_ranks(tensor: Tensor, skip: int, keep: int) -> Tensor:
    """Zero all but the entries ranked ``skip .. skip + keep − 1`` by descending magnitude."""
    keys = magnitude_keys(tensor)
    dropped, top = select_magnitude_cuts(keys, (skip, skip + keep))
    return keep_magnitude_band(tensor, keys, top, dropped)


def keep_ranks(tensor: Tensor, skip: int, keep: int) -> Tensor:
    """Zero all but the entries ranked ``skip .. skip + keep − 1`` by descending magnitude (ties: lower index)."""
    if skip == 0 and keep >= tensor.numel():
        return tensor.clone()
    return _keep_magnitude_ranks(tensor, skip, keep)


def l1_rescaled(
    tensor: Tensor, sparsified: Tensor, *, before: float | None = None, after: float | None = None
) -> Tensor:
    """mergekit's ``rescale``: ``sparsified`` × ‖tensor‖₁/‖sparsified‖₁, or ``sparsified`` if either norm < 1e-7.

    ``before`` and ``after`` are the two norms when known (a block of a tensor whose norms were summed first).
    """
    before = float(tensor.abs().sum(dtype=torch.float64)) if before is None else before
    after = float(sparsified.abs().sum(dtype=torch.float64)) if after is None else after
    if before < 1e-7 or after < 1e-7:
        return sparsified
    return sparsified * (before / after)


def magnitude_prune(tensor: Tensor, density: float) -> Tensor:
    """Keep the ``k = clamp(floor(density·n + 0.5), 1, n)`` largest-magnitude entries, zero the rest.

    TIES's trim step. Ties at the boundary go to the lower flat index. Selection is exact (radix selection,
    :mod:`uqmerge.methods.magnitude`), not a sort. mergekit and peft use ``k = int(density·n)`` (floor;
    mergekit asserts k > 0) and leave tie order to ``topk``/``argsort``.
    """
    assert 0.0 < density <= 1.0, density
    n = tensor.numel()
    skip, keep = keep_counts(n, density)
    if keep == n:
        return tensor.clone()
    return _keep_magnitude_ranks(tensor, skip, keep)


def band_prune(tensor: Tensor, density: float, gamma: float) -> Tensor:
    """Drop the largest ``gamma`` fraction by magnitude, keep the next ``density`` fraction, zero the rest.

    Model Breadcrumbs' mask. Counts follow :func:`keep_counts`: the kept count is at least 1, and
    where rounding makes the two counts exceed ``n`` the dropped top shrinks (density wins), as in
    mergekit's ``magnitude_outliers``. ``density + gamma`` must not exceed 1 (:func:`check_band_fractions`).
    """
    assert 0.0 < density <= 1.0 and 0.0 <= gamma < 1.0 and density + gamma <= 1.0 + 1e-9, (density, gamma)
    n = tensor.numel()
    skip, keep = keep_counts(n, density, gamma)
    if keep == n:
        return tensor.clone()
    return _keep_magnitude_ranks(tensor, skip, keep)


def _uniform_like(tensor: Tensor, generator: torch.Generator) -> Tensor:
    """U[0, 1) draws of ``tensor``'s shape, drawn on ``generator``'s device, moved to ``tensor``'s."""
    draws = torch.rand(tensor.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return draws.to(tensor.device)


def _bernoulli_keep_rescale(
    tensor: Tensor, keep_prob: Tensor | float, generator: torch.Generator, *, divide: bool = True
) -> Tensor:
    """Keep each entry with probability ``keep_prob`` and divide survivors by it (unbiased: E = tensor).

    Entry kept iff its draw u < p. For fp32 this is computed without a boolean ``where`` (slow on CPU): u − p is
    negative exactly when u < p, so its sign bit, spread over the word by an arithmetic shift, masks the bits
    of the rescaled entry — the same result as ``torch.where(u < p, tensor / p, 0.0)``. With ``divide`` False
    survivors keep their value (mergekit's mask before its ``rescale``).
    """
    draws = _uniform_like(tensor, generator)
    rescaled = tensor / keep_prob if divide else tensor
    if rescaled.dtype != torch.float32:
        return torch.where(draws < keep_prob, rescaled, 0.0)
    keep_bits = (draws - keep_prob).view(torch.int32).bitwise_right_shift_(31)
    return (rescaled.view(torch.int32) & keep_bits).view(torch.float32)


def random_prune(tensor: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE's drop-and-rescale: keep each entry with probability ``density``, survivors ÷ ``density``.

    E[output] = input. Older peft releases discarded the rescaled result (the rescale was a no-op);
    recent mergekit rescales survivors to match the L1 norm (``rescale_norm``) instead of
    dividing by density — we keep the paper's 1/density.
    """
    assert 0.0 < density <= 1.0, density
    return _bernoulli_keep_rescale(tensor, density, generator)


def random_mask(tensor: Tensor, keep_prob: Tensor | float, generator: torch.Generator) -> Tensor:
    """Keep each entry with probability ``keep_prob`` (draws as :func:`random_prune`), survivors unscaled."""
    return _bernoulli_keep_rescale(tensor, keep_prob, generator, divide=False)


def della_keep_probabilities(tensor: Tensor, density: float, epsilon: float) -> Tensor:
    """DELLA's per-entry keep-probabilities, rising linearly with magnitude rank within each row.

    Rows: a 0-D or 1-D tensor is one row; a tensor of ≥ 2 dims is ``shape[0]`` rows of its flattened
    trailing dims. In a row of m entries, rank r (0 = smallest |τ|, ties by index) gets
    ``p = (density − ε) + 2ε·r/(m − 1)``; a row of one entry gets ``density``. The band must lie in (0, 1]
    (:func:`check_della_band`).
    """
    assert density - epsilon > 0.0 and density + epsilon <= 1.0 and epsilon >= 0.0, (density, epsilon)
    cols = math.prod(tensor.shape[1:]) if tensor.dim() >= 2 else tensor.numel()
    if cols < 2 or tensor.numel() == 0:
        return torch.full_like(tensor, density)
    rows = tensor.reshape(-1, cols)
    by_rank = (density - epsilon) + (2.0 * epsilon / (cols - 1)) * torch.arange(
        cols, dtype=tensor.dtype, device=tensor.device
    )
    probs = torch.empty_like(rows).scatter_(1, _ascending_order_per_row(magnitude_keys(rows)), by_rank.expand_as(rows))
    return probs.reshape(tensor.shape)


def _ascending_order_per_row(keys: Tensor) -> Tensor:
    """Per row of the int32 ``keys`` (≥ 0), the column indices in ascending key order, ties by column.

    One sort of a flat int64 composite (row, key, column) replaces a stable sort per row: the same order,
    about a third faster on CPU. A block too large for the composite's 63 bits falls back to the per-row sort.
    """
    n_rows, cols = keys.shape
    col_bits, row_bits = (cols - 1).bit_length(), max(n_rows - 1, 1).bit_length()
    if row_bits + 31 + col_bits > 63:
        return torch.argsort(keys, dim=1, stable=True)
    row = torch.arange(n_rows, dtype=torch.int64, device=keys.device).unsqueeze(1)
    col = torch.arange(cols, dtype=torch.int64, device=keys.device)
    composite = (row << (31 + col_bits)) | (keys.to(torch.int64) << col_bits) | col
    flat_order = torch.sort(composite.reshape(-1)).indices.reshape(n_rows, cols)
    return flat_order - row * cols


def della_prune(tensor: Tensor, density: float, epsilon: float, generator: torch.Generator) -> Tensor:
    """DELLA's MAGPRUNE: keep each entry with its :func:`della_keep_probabilities` p, survivors ÷ p.

    mergekit's ``della_magprune`` also ranks per row, but requires density ± ε strictly inside (0, 1)
    and (in recent versions) rescales to the L1 norm instead of dividing by p; we allow density + ε = 1.
    With ε = 0 this is exactly :func:`random_prune` (same draws from the same generator).
    """
    return _bernoulli_keep_rescale(tensor, della_keep_probabilities(tensor, density, epsilon), generator)


def exact_votes(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Σ_i w_i·τ̂_i in float64: each product rounded to float64, then summed in model order (no fused multiply-add).

    A decimal weight's representation error (0.8 is stored as 0.8000000000000000444) is below the float64 rounding
    of its product with an fp32 τ̂, so 0.8·(−0.087890625) is exactly −0.0703125 here, and the vote
    1.0·0.0703125 + 0.8·(−0.087890625) is exactly 0; in fp32 with a fused multiply-add it is −1.05e-9.
    """
    if not tensors or len(tensors) != len(weights):
        raise ValueError(f"exact_votes needs one weight per tensor, got {len(tensors)} and {len(weights)}")
    total = tensors[0].to(torch.float64) * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:], strict=True):
        total += tensor.to(torch.float64) * weight  # the product is rounded before the sum
    return total


def elect_sign(tensors: Sequence[Tensor], weights: Sequence[float], *, zero_vote: float = 0.0) -> Tensor:
    """TIES's elected sign γ = sgn(Σ_i w_i·τ̂_i) per entry, from :func:`exact_votes`; ``zero_vote`` where it is 0.

    uqmerge elects nothing on an exact tie (``zero_vote`` 0), so such an entry takes no update and the merge is
    odd (τ → −τ flips it); mergekit (``consensus_method: sum``, ``zero_vote`` 1) and peft
    (``majority_sign_method="total"``) elect +. peft elects on the unweighted τ̂_i; we weight the votes, as
    mergekit does. The sign has the dtype of ``tensors``.
    """
    sign = torch.sign(exact_votes(tensors, weights))
    if zero_vote:
        sign = torch.where(sign == 0, zero_vote, sign)
    return sign.to(tensors[0].dtype)


def disjoint_merge(
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    sign: Tensor,
    *,
    normalize: bool = True,
    semantics: Semantics = "uqmerge",
) -> Tensor:
    """TIES's disjoint mean: Σ_{i∈A} w_i·τ̂_i / Σ_{i∈A} w_i over A = {i : sgn(w_i·τ̂_i) = γ ≠ 0}; 0 where A = ∅.

    Weights must be ≥ 0 (:data:`NONNEGATIVE_WEIGHT`). A zero weight or a pruned (zero) entry never
    agrees, so it neither votes nor counts in the divisor. mergekit divides by the same sum of the
    agreeing weights; peft divides by the number of agreeing models. Computed without boolean masks
    (they are slow on CPU): w·τ̂·γ > 0 exactly where model i agrees, so relu(w·τ̂·γ)·γ is w·τ̂ there and 0
    elsewhere; a NaN entry (only with non-finite inputs allowed) propagates instead of being ignored.

    ``semantics="mergekit"``: weights may be negative (model i agrees where sgn(w_i·τ̂_i) = γ), a zero divisor
    counts as 1, and ``normalize`` False returns the numerator Σ_{i∈A} w_i·τ̂_i undivided.
    """
    assert semantics == "mergekit" or all(weight >= 0 for weight in weights), weights
    numerator = torch.zeros_like(sign)
    divisor = torch.zeros_like(sign)
    for tensor, weight in zip(tensors, weights, strict=True):
        if weight == 0:
            continue  # sgn(0·τ̂) = 0 never agrees
        weighted = tensor * weight
        agreeing = torch.relu(weighted * sign)  # |w·τ̂| where it agrees, else 0
        numerator.addcmul_(agreeing, sign)  # + w·τ̂ where it agrees (exact: |x|·sgn(x) = x)
        divisor.add_(torch.sign(agreeing), alpha=weight)  # + w where it agrees
    if semantics == "mergekit":
        return numerator / torch.where(divisor == 0, 1.0, divisor) if normalize else numerator
    # 0/0 (no agreeing model) is NaN: make it 0, keep infinities.
    return torch.nan_to_num_(numerator / divisor, nan=0.0, posinf=math.inf, neginf=-math.inf)


def mergekit_sum_divisor(weights: Sequence[float]) -> float:
    """mergekit's divisor of a normalised sum without sign consensus: Σ w, or 1 when |Σ w| < 1e-8."""
    total = math.fsum(weights)
    return 1.0 if abs(total) < 1e-8 else total


def merge_task_vectors(
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    *,
    sparsifiers: Sequence[Sparsifier] | None = None,
    sign_consensus: bool = False,
    scale: float = 1.0,
    normalize: bool | None = None,
    semantics: Semantics = "uqmerge",
) -> Tensor:
    """The task-vector recipe: sparsify each τ_i (in model order), combine, scale by λ.

    ``sparsifiers[i]`` is applied to ``tensors[i]`` (None: no sparsification). With ``sign_consensus``
    the combination is :func:`elect_sign` + :func:`disjoint_merge` (normalised by the agreeing
    weights), else :func:`weighted_sum` (unnormalised, as task arithmetic). Returns λ·combined.
    ``normalize`` None keeps those defaults; True/False (mergekit semantics) divides or not, a sum without
    consensus by :func:`mergekit_sum_divisor`.
    """
    if len(tensors) != len(weights):
        raise ValueError(f"one weight per task vector needed, got {len(tensors)} and {len(weights)}")
    if sparsifiers is not None:
        tensors = [sparsify(tensor) for sparsify, tensor in zip(sparsifiers, tensors, strict=True)]
    if sign_consensus:
        sign = elect_sign(tensors, weights, zero_vote=1.0 if semantics == "mergekit" else 0.0)
        combined = disjoint_merge(
            tensors, weights, sign, normalize=True if normalize is None else normalize, semantics=semantics
        )
    else:
        combined = weighted_sum(tensors, weights)
        if normalize:
            combined = combined / mergekit_sum_divisor(weights)
    return combined if scale == 1.0 else combined * scale


def merge_onto_base(
    base: Tensor,
    models: Sequence[Tensor],
    weights: Sequence[float],
    *,
    sparsifiers: Sequence[Sparsifier] | None = None,
    sign_consensus: bool = False,
    scale: float = 1.0,
    normalize: bool | None = None,
    semantics: Semantics = "uqmerge",
) -> Tensor:
    """θ_0 + :func:`merge_task_vectors` (τ_1..τ_N): the body every task-vector method shares."""
    combined = merge_task_vectors(
        task_vectors(base, models),
        weights,
        sparsifiers=sparsifiers,
        sign_consensus=sign_consensus,
        scale=scale,
        normalize=normalize,
        semantics=semantics,
    )
    return base + combined


def mean_pairwise_cosine(tensors: Sequence[Tensor], *, semantics: Semantics = "uqmerge") -> Tensor:
    """Mean over pairs i < j of cos(τ_i, τ_j) on the flattened tensors, as a 0-D tensor.

    A pair involving an all-zero tensor has no angle and counts as cosine 0 (orthogonal); mergekit
    reaches about the same by clamping the norm product at 1e-6, which ``semantics="mergekit"`` does
    (and clamps each cosine into [−1, 1]). Needs at least two tensors.
    """
    if len(tensors) < 2:
        raise ValueError(f"mean_pairwise_cosine needs at least two tensors, got {len(tensors)}")
    flat = [tensor.reshape(-1) for tensor in tensors]
    norms = [torch.linalg.vector_norm(x) for x in flat]
    cosines = []
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            denominator = norms[i] * norms[j]
            dot = torch.dot(flat[i], flat[j])
            if semantics == "mergekit":
                cosines.append((dot / denominator.clamp(min=1e-6)).clamp(-1.0, 1.0))
                continue
            defined = denominator > 0
            cosines.append(torch.where(defined, dot / torch.where(defined, denominator, 1.0), 0.0))
    return torch.stack(cosines).mean()


class PairwiseCosineSums:
    """Blockwise :func:`mean_pairwise_cosine`: squared norms and dot products summed block by block.

    Each block's sums are fp32 (``torch.dot``) and are accumulated in Python floats (fp64), so the result
    equals the whole-tensor one up to fp32 rounding of the per-block reductions, not bit for bit.
    """

    def __init__(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"mean_pairwise_cosine needs at least two tensors, got {n}")
        self.n = n
        self.squares = [0.0] * n
        self.dots = {(i, j): 0.0 for i in range(n) for j in range(i + 1, n)}

    def add(self, tensors: Sequence[Tensor]) -> None:
        """Add one block of every tensor (the same entries of each)."""
        flat = [tensor.reshape(-1) for tensor in tensors]
        for i, x in enumerate(flat):
            self.squares[i] += float(torch.dot(x, x))
        for i, j in self.dots:
            self.dots[i, j] += float(torch.dot(flat[i], flat[j]))

    def mean(self, *, semantics: Semantics = "uqmerge") -> float:
        """Mean pairwise cosine; a pair with an all-zero tensor counts as 0, as in :func:`mean_pairwise_cosine`
        (mergekit semantics: norm products clamped at 1e-6, cosines into [−1, 1])."""
        cosines = []
        for (i, j), dot in self.dots.items():
            denominator = math.sqrt(self.squares[i]) * math.sqrt(self.squares[j])
            if semantics == "mergekit":
                cosines.append(min(1.0, max(-1.0, dot / max(denominator, 1e-6))))
            else:
                cosines.append(dot / denominator if denominator > 0 else 0.0)
        return math.fsum(cosines) / len(cosines)


# ---------------------------------------------------------------------------------------------------
# The recipe block by block (see uqmerge.methods.base for the block protocol)


class BlockSparsifier(Protocol):
    """One model's sparsifier in a blockwise merge: optional statistics passes over τ, then block by block."""

    needs_statistics: bool

    def observe(self, tau: Tensor, offset: int) -> None:
        """Statistics pass: one block of τ whose first entry has flat index ``offset``."""
        ...

    def end_pass(self) -> bool:
        """Close a statistics pass; True when another is needed."""
        ...

    def apply(self, tau: Tensor, offset: int) -> Tensor:
        """The sparsified block (blocks come once each, in row order)."""
        ...


class MagnitudeBand:
    """Blockwise :func:`magnitude_prune` (``skip`` = 0) and :func:`band_prune`: keep ranks skip … skip+keep−1.

    The statistics are the two exact :class:`MagnitudeCut` s of the whole τ (two passes over the blocks, rarely
    three); applying them to a block gives the block's entries of the whole-tensor result.
    """

    def __init__(self, numel: int, skip: int, keep: int) -> None:
        self.numel, self.keep = numel, keep
        self.selector = MagnitudeSelector(numel, (skip, skip + keep))
        self.needs_statistics = keep < numel and not self.selector.done
        self._cuts: list[MagnitudeCut] | None = None

    def observe(self, tau: Tensor, offset: int) -> None:
        self.selector.observe(magnitude_keys(tau), offset)

    def end_pass(self) -> bool:
        return self.selector.end_pass()

    def apply(self, tau: Tensor, offset: int) -> Tensor:
        if self.keep == self.numel:
            return tau.clone()
        if self._cuts is None:
            self._cuts = self.selector.cuts()
        dropped, top = self._cuts
        return keep_magnitude_band(tau, magnitude_keys(tau), top, dropped, offset)


class ElementwiseSparsifier:
    """A sparsifier without statistics (DARE's, DELLA's random masks) as a :class:`BlockSparsifier`."""

    needs_statistics = False

    def __init__(self, sparsify: Sparsifier) -> None:
        self.sparsify = sparsify

    def observe(self, tau: Tensor, offset: int) -> None:
        raise RuntimeError("an element-wise sparsifier has no statistics pass")

    def end_pass(self) -> bool:
        return False

    def apply(self, tau: Tensor, offset: int) -> Tensor:
        return self.sparsify(tau)


class L1Rescaled:
    """Blockwise :func:`l1_rescaled` of another :class:`BlockSparsifier`: its statistics passes, then one pass summing
    ‖τ‖₁ and ‖sparsified τ‖₁ over the blocks; ``generator`` (a random sparsifier's) is rewound after that pass so
    the merge draws what the norm pass drew."""

    needs_statistics = True

    def __init__(self, inner: BlockSparsifier, generator: torch.Generator | None = None) -> None:
        self.inner = inner
        self.generator = generator
        self._state = None if generator is None else generator.get_state()
        self._phase = "inner" if inner.needs_statistics else "norms"
        self.before = 0.0
        self.after = 0.0

    def observe(self, tau: Tensor, offset: int) -> None:
        if self._phase == "inner":
            self.inner.observe(tau, offset)
            return
        self.before += float(tau.abs().sum(dtype=torch.float64))
        self.after += float(self.inner.apply(tau, offset).abs().sum(dtype=torch.float64))

    def end_pass(self) -> bool:
        if self._phase == "inner":
            if not self.inner.end_pass():
                self._phase = "norms"
            return True
        if self.generator is not None and self._state is not None:
            self.generator.set_state(self._state)
        self._phase = "done"
        return False

    def apply(self, tau: Tensor, offset: int) -> Tensor:
        return l1_rescaled(tau, self.inner.apply(tau, offset), before=self.before, after=self.after)


class TaskVectorBlocks:
    """:func:`merge_task_vectors` as a block merger: θ_0 + λ·combine(sparsify_i(τ_i)), one block of rows at a time.

    Every entry goes through the same operations as in the whole-tensor merge, so blockwise results are
    bit-identical to it; only the sparsifiers' statistics (magnitude cuts) look at the whole tensor.
    """

    def __init__(
        self,
        weights: Sequence[float],
        *,
        sparsifiers: Sequence[BlockSparsifier] | None = None,
        sign_consensus: bool = False,
        scale: float = 1.0,
        normalize: bool | None = None,
        semantics: Semantics = "uqmerge",
    ) -> None:
        if sparsifiers is not None and len(sparsifiers) != len(weights):
            raise ValueError(f"one sparsifier per task vector needed, got {len(sparsifiers)} and {len(weights)}")
        self.weights = list(weights)
        self.sparsifiers = None if sparsifiers is None else list(sparsifiers)
        self.sign_consensus = sign_consensus
        self.scale = scale
        self.normalize = normalize
        self.semantics = semantics
        self._collecting = [(i, s) for i, s in enumerate(self.sparsifiers or []) if s.needs_statistics]
        self.needs_statistics = bool(self._collecting)

    def observe(self, block: RowBlock) -> None:
        base = block.base_rows()
        for i, sparsifier in self._collecting:
            sparsifier.observe(block.models[i] - base, block.offset)

    def end_pass(self) -> bool:
        self._collecting = [(i, s) for i, s in self._collecting if s.end_pass()]
        return bool(self._collecting)

    def merge(self, block: RowBlock) -> Tensor:
        sparsifiers = None
        if self.sparsifiers is not None:
            sparsifiers = [partial(s.apply, offset=block.offset) for s in self.sparsifiers]
        return merge_onto_base(
            block.base_rows(),
            block.models,
            self.weights,
            sparsifiers=sparsifiers,
            sign_consensus=self.sign_consensus,
            scale=self.scale,
            normalize=self.normalize,
            semantics=self.semantics,
        )
