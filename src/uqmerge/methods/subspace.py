"""Singular-subspace merge methods (TSV-M, Iso-C, Iso-CTS) and the per-matrix helpers they share.

The helpers here (rank budget, truncated SVD, orthogonal polar factor, the per-matrix
wrapper that sends non-2-D tensors to the mean task vector) are reused by ``wudi`` and ``optmerge``.
All linear algebra runs in fp32 on the device of the input tensors. These methods need whole matrices,
so they have no block protocol.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from uqmerge.methods.base import MergeMethod, Param
from uqmerge.methods.task_vector import LAMBDA, task_vectors

MatrixMerge = Callable[[Sequence[Tensor]], Tensor]


def rank_budget(shape: Sequence[int], n_models: int, ratio: float | None = None) -> int:
    """Rank kept per task: ⌊min(m, d)·ratio⌋, or ⌊min(m, d)/n⌋ when ratio is None; at least 1."""
    full = min(shape)
    kept = full // n_models if ratio is None else math.floor(full * ratio + 1e-9)
    return max(1, min(full, kept))


def thin_svd(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD in fp32; if LAPACK's divide-and-conquer fails to converge (ill-conditioned matrices such as
    the near-zero residuals Iso-CTS projects), it is redone in float64 and cast back."""
    try:
        return torch.linalg.svd(matrix.float(), full_matrices=False)
    except torch.linalg.LinAlgError:
        u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
        return u.float(), s.float(), vh.float()


def truncated_svd(matrix: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``k`` singular triplets (U_k: m×k, σ_k: k, V_kᵀ: k×d) of a 2-D fp32 matrix."""
    u, s, vh = thin_svd(matrix)
    return u[:, :k], s[:k], vh[:k, :]


def low_rank(matrix: Tensor, k: int) -> Tensor:
    """Best rank-``k`` approximation U_k diag(σ_k) V_kᵀ (Eckart–Young)."""
    u, s, vh = truncated_svd(matrix, k)
    return (u * s) @ vh


def polar_orthogonal(matrix: Tensor) -> Tensor:
    """Orthogonal polar factor P Qᵀ of ``matrix`` = P S Qᵀ: the nearest matrix with orthonormal columns
    (orthonormal rows when it is wider than tall). Its column span equals the input's when it has full
    column rank."""
    p, _, qh = thin_svd(matrix)
    return p @ qh


def merge_task_matrices(base: Tensor, models: Sequence[Tensor], merge_matrix: MatrixMerge, lam: float) -> Tensor:
    """θ_0 + λ·τ_m with τ_m = ``merge_matrix``(τ_1..τ_n) for 2-D tensors, the mean τ_i otherwise
    (biases, norms, conv kernels, and empty tensors)."""
    base = base.float()
    taus = task_vectors(base, [model.float() for model in models])
    is_matrix = taus[0].ndim == 2 and taus[0].numel() > 0
    merged = merge_matrix(taus) if is_matrix else torch.stack(taus).mean(dim=0)
    return base + lam * merged


# --------------------------------------------------------------------------------------------- TSV-M


def tsv_factors(taus: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """TSV-M's (U⊥, σ, V⊥ᵀ): each τ_i's top-k triplets stacked, U and V stacks orthogonalised."""
    k = rank_budget(taus[0].shape, len(taus))
    triplets = [truncated_svd(tau, k) for tau in taus]
    u_stack = torch.cat([u for u, _, _ in triplets], dim=1)
    sigma = torch.cat([s for _, s, _ in triplets])
    vh_stack = torch.cat([vh for _, _, vh in triplets], dim=0)
    return polar_orthogonal(u_stack), sigma, polar_orthogonal(vh_stack.T).T


def tsv_merge(taus: Sequence[Tensor]) -> Tensor:
    """τ_m = U⊥ diag(σ) V⊥ᵀ (TSV-M on one weight matrix)."""
    u, sigma, vh = tsv_factors(taus)
    return (u * sigma) @ vh


def tsv_m(base: Tensor, models: Sequence[Tensor], lam: float = 1.0) -> Tensor:
    """TSV-M (Gargiulo et al., CVPR 2025, arXiv:2412.00081), per 2-D weight matrix.

    k = max(1, ⌊min(m, d)/n⌋). Each τ_i = U_i Σ_i V_iᵀ keeps its top-k triplets; U = [U_1,k … U_n,k],
    V = [V_1,k … V_n,k], σ = [σ_1,k … σ_n,k]. Both stacks are replaced by their orthogonal polar
    factor (stack = P S Qᵀ → P Qᵀ, the nearest orthonormal frame, which removes the overlap between the
    tasks' singular subspaces), and τ_m = U⊥ diag(σ) V⊥ᵀ; θ = θ_0 + λ·τ_m. Non-2-D tensors take the
    mean τ_i.

    λ defaults to 1.0, the value the paper uses for TSV-M without validation tuning.

    Differences from released code: the authors' code uses k = int(min(m, d)/n) with no lower bound (a
    matrix with fewer rows than tasks becomes zero; here k ≥ 1, and with more stacked vectors than
    rows the polar factor has orthonormal rows instead) and zero-pads the stacks to min(m, d) columns
    (equivalent). The OptMerge release's "TSV" branch only fires on ``lm_head.weight``, which its own
    exclude list removes, so its reported TSV numbers are plain task-vector averaging.
    """
    return merge_task_matrices(base, models, tsv_merge, lam)


TSV_M = MergeMethod(
    name="tsv_m",
    kernel=tsv_m,
    params=(LAMBDA,),
    summary="Task Singular Vectors merge: per-task top-1/n singular triplets, orthogonalised stacks",
    paper="Task Singular Vectors: Reducing Task Interference in Model Merging (Gargiulo et al., CVPR 2025)",
    url="https://arxiv.org/abs/2412.00081",
)


# --------------------------------------------------------------------------------------------- Iso-C


def iso_c_merge(taus: Sequence[Tensor]) -> Tensor:
    """Σ τ_i = U Σ Vᵀ → mean(σ)·U Vᵀ: same singular subspaces, flat spectrum."""
    u, s, vh = thin_svd(torch.stack(taus).sum(dim=0))
    return s.mean() * (u @ vh)


def iso_cts_dimensions(rank: int, n_models: int, common_space_fraction: float) -> tuple[int, int]:
    """(common dimensions, dimensions per task) with common + n·per_task = rank.

    As the reference code: per_task = round((rank − ⌊rank·fraction⌋)/n), the common subspace takes
    the rest; per_task is capped at ⌊rank/n⌋ so the common part is never negative.
    """
    per_task = min(rank // n_models, round((rank - int(rank * common_space_fraction)) / n_models))
    return rank - n_models * per_task, per_task


def iso_cts_merge(taus: Sequence[Tensor], common_space_fraction: float) -> Tensor:
    """Iso-CTS on one matrix: common top subspace of Σ τ_i plus per-task residual directions, flat spectrum."""
    total = torch.stack(taus).sum(dim=0)
    u, s, vh = thin_svd(total)
    common, per_task = iso_cts_dimensions(s.numel(), len(taus), common_space_fraction)
    u_c, s_c, vh_c = u[:, :common], s[:common], vh[:common, :]
    us, sigmas, vhs = [u_c], [s_c], [vh_c]
    if per_task > 0:
        for tau in taus:
            residual = tau - u_c @ (u_c.T @ tau)
            u_i, s_i, vh_i = truncated_svd(residual, per_task)
            us.append(u_i)
            sigmas.append(s_i)
            vhs.append(vh_i)
    u_orth = polar_orthogonal(torch.cat(us, dim=1))
    vh_orth = polar_orthogonal(torch.cat(vhs, dim=0).T).T
    return torch.cat(sigmas).mean() * (u_orth @ vh_orth)


_ISO_LAMBDA_HELP = (
    "scale of the merged task vector; the paper tunes it on validation data per backbone and task count "
    "(reference configs: 1.0)"
)
_ISO_LAMBDA = replace(LAMBDA, help=_ISO_LAMBDA_HELP)
_COMMON_FRACTION = Param(
    "common_space_fraction",
    0.8,
    "share of the rank min(m, d) given to the common subspace of Σ τ_i; the rest is split equally "
    "between the tasks' own directions",
    low=0.0,
    high=1.0,
)


def iso_c(base: Tensor, models: Sequence[Tensor], lam: float = 1.0) -> Tensor:
    """Iso-C (Marczak et al., ICML 2025, arXiv:2502.04959), per 2-D weight matrix.

    Σ τ_i = U Σ Vᵀ; τ_m = σ̄ U Vᵀ with σ̄ the mean singular value (an isotropic spectrum on the task
    arithmetic subspace); θ = θ_0 + λ·τ_m. Non-2-D tensors take the mean τ_i.

    λ defaults to 1.0: the paper picks α per backbone and number of tasks on held-out validation data
    and publishes no single value; the authors' and FusionBench's configs default to 1.0. Sweep λ when
    validation data exist.

    Differences from released code: none in the formula (the authors skip CLIP's ``text_projection``;
    the OptMerge release applies it to every merged tensor because its exclude list leaves only
    matrices). Here the plan decides which tensors are merged.
    """
    return merge_task_matrices(base, models, iso_c_merge, lam)


def iso_cts(base: Tensor, models: Sequence[Tensor], common_space_fraction: float = 0.8, lam: float = 1.0) -> Tensor:
    """Iso-CTS (Marczak et al., ICML 2025, arXiv:2502.04959), per 2-D weight matrix.

    r = min(m, d). The common subspace is the top-k of Σ τ_i = U Σ Vᵀ with k ≈ ``common_space_fraction``·r
    (the paper's k/r; 0.8 is its recommended value). Each task then contributes s = (r − k)/n directions:
    the top-s singular triplets of (I − U_k U_kᵀ) τ_i, its part outside the common left subspace. The
    stacks [U_k, U_1,s … U_n,s] and [V_k, V_1,s … V_n,s] are replaced by their orthogonal polar factors
    and the spectrum is flattened to the mean of all stacked singular values:
    τ_m = mean(σ)·U⊥ V⊥ᵀ; θ = θ_0 + λ·τ_m. Non-2-D tensors take the mean τ_i. With fraction 1 (or
    r < n) this is Iso-C.

    Rounding follows the reference code: s = round((r − ⌊r·fraction⌋)/n) and k = r − n·s, capped here
    so that k ≥ 0. λ defaults to 1.0 (the paper tunes α on validation data; reference configs use 1.0).

    Differences from released code: none in the formula beyond the k ≥ 0 cap; the stacks are
    concatenated rather than written into preallocated zero buffers (equivalent).
    """
    return merge_task_matrices(base, models, lambda taus: iso_cts_merge(taus, common_space_fraction), lam)


ISO_C = MergeMethod(
    name="iso_c",
    kernel=iso_c,
    params=(_ISO_LAMBDA,),
    summary="Isotropic merge in the common subspace: SVD of Σ τ_i with every singular value set to their mean",
    paper=(
        "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces "
        "(Marczak et al., ICML 2025)"
    ),
    url="https://arxiv.org/abs/2502.04959",
)

ISO_CTS = replace(
    ISO_C,
    name="iso_cts",
    kernel=iso_cts,
    params=(_ISO_LAMBDA, _COMMON_FRACTION),
    summary="Isotropic merge in common and task-specific subspaces, flat spectrum",
)

METHODS: tuple[MergeMethod, ...] = (TSV_M, ISO_C, ISO_CTS)
