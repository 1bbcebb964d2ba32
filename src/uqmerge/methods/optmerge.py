"""OptMerge: WUDI's interference loss on denoised low-rank task vectors (full fine-tunes or LoRA)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from uqmerge.methods.base import MergeMethod, Param
from uqmerge.methods.subspace import low_rank, merge_task_matrices, rank_budget, truncated_svd
from uqmerge.methods.task_vector import LAMBDA
from uqmerge.methods.wudi import QuadraticInterference, inverse_square_norms, minimise


@dataclass(frozen=True)
class OptMergeVariant:
    """Per-variant defaults, as the OptMerge release's scripts."""

    lam: float
    lr: float
    optimizer: str
    momentum: float
    centre: bool
    start_from_mean: bool


VARIANTS: dict[str, OptMergeVariant] = {
    # InternVL2.5 full fine-tunes: centred targets, Adam from Σ τ_i, λ = 0.1.
    "full": OptMergeVariant(lam=0.1, lr=1e-5, optimizer="adam", momentum=0.0, centre=True, start_from_mean=False),
    # Qwen2-VL LoRA experts: plain truncation, SGD with momentum from the mean, λ = 1.0.
    "lora": OptMergeVariant(lam=1.0, lr=1e-4, optimizer="sgd", momentum=0.9, centre=False, start_from_mean=True),
}


def optmerge_targets(taus: Sequence[Tensor], k: int, variant: str) -> tuple[Tensor, Tensor]:
    """Stacked targets τ̂_i (n×m×d) and anchors X_i = diag(σ_k) V_kᵀ of τ_i (n×k×d).

    ``full``: τ̂_i = TruncSVD_k(τ_i − τ̄) + τ̄ with τ̄ the mean τ_i; ``lora``: τ̂_i = TruncSVD_k(τ_i).
    """
    centre = VARIANTS[variant].centre
    mean = torch.stack(list(taus)).mean(dim=0)
    targets, anchors = [], []
    for tau in taus:
        u, s, vh = truncated_svd(tau, k)
        anchors.append(s.unsqueeze(1) * vh)
        targets.append(low_rank(tau - mean, k) + mean if centre else (u * s) @ vh)
    return torch.stack(targets), torch.stack(anchors)


def optmerge_merge(taus: Sequence[Tensor], *, variant: str, ratio: float | None, lr: float, steps: int) -> Tensor:
    """Minimise Σ_i ‖(τ_m − τ̂_i) X_iᵀ‖²_F / ‖τ_i‖²_F with the variant's optimiser and starting point."""
    spec = VARIANTS[variant]
    k = rank_budget(taus[0].shape, len(taus), ratio)
    targets, anchors = optmerge_targets(taus, k, variant)
    weights = inverse_square_norms(taus)
    stacked = torch.stack(list(taus))
    start = stacked.mean(dim=0) if spec.start_from_mean else stacked.sum(dim=0)
    return minimise(
        start,
        QuadraticInterference.build(targets, anchors, weights),
        lr=lr,
        steps=steps,
        optimizer=spec.optimizer,
        momentum=spec.momentum,
    )


_LAMBDA = replace(
    LAMBDA, default=None, help="scale of the merged task vector; unset: 0.1 for variant full, 1.0 for lora"
)
_VARIANT = Param(
    "variant",
    "full",
    "full: task vectors of full fine-tunes (centred targets, Adam); lora: LoRA-derived task vectors "
    "(plain truncation, SGD with momentum 0.9)",
    kind=str,
    choices=tuple(VARIANTS),
)
_RATIO = Param(
    "ratio",
    None,
    "rank kept per task as a share of min(m, d): k = ⌊min(m, d)·ratio⌋ (at least 1); unset: 1/n",
    low=0.0,
    low_inclusive=False,
    high=1.0,
)
_LR = Param("lr", None, "learning rate; unset: 1e-5 (full, Adam) or 1e-4 (lora, SGD)", low=0.0, low_inclusive=False)
_STEPS = Param("steps", 300, "optimiser steps per weight matrix", kind=int, low=1)


def optmerge(
    base: Tensor,
    models: Sequence[Tensor],
    lam: float | None = None,
    variant: str = "full",
    ratio: float | None = None,
    lr: float | None = None,
    steps: int = 300,
) -> Tensor:
    """OptMerge (Wei et al., ICLR 2026, arXiv:2505.19892), per 2-D weight matrix.

    k = max(1, ⌊min(m, d)·``ratio``⌋), ratio = 1/n when unset. Each τ_i = U Σ Vᵀ gives an input anchor
    X_i = Σ_k V_kᵀ (its top-k right singular vectors weighted by their singular values) and a denoised
    target τ̂_i. Minimise L(τ_m) = Σ_i ‖(τ_m − τ̂_i) X_iᵀ‖²_F / ‖τ_i‖²_F — WUDI's loss with τ_i's rank-k
    parts — then θ = θ_0 + λ·τ_m. Non-2-D tensors take the mean τ_i.

    ``variant=full`` (full fine-tunes): τ̄ = mean τ_i, τ̂_i = TruncSVD_k(τ_i − τ̄) + τ̄; Adam (lr 1e-5)
    from Σ τ_i; λ 0.1. ``variant=lora`` (LoRA-derived task vectors): τ̂_i = TruncSVD_k(τ_i); SGD (lr 1e-4,
    momentum 0.9) from the mean τ_i; λ 1.0. ``steps`` 300 for both. ``lambda`` and ``lr`` left unset take
    the variant's value; these are the defaults of the release's InternVL (full) and Qwen2-VL (LoRA)
    merge scripts.

    Differences from released code: the anchors X_i come from the SVD of the uncentred τ_i in both
    variants, as in the release (the centred residuals of two tasks are each other's negatives and would
    give both the same input subspace); the release writes them as zero-padded m×d matrices (same loss).
    The release's ``lora`` branch optimises in the checkpoints' fp16; here everything is fp32. The release
    backpropagates through the loss; here the optimiser gets the exact gradient from once-built Gram
    terms (:class:`~uqmerge.methods.wudi.QuadraticInterference`), the same steps at a fraction of the cost. Its
    k = int(min(m, d)/n) can be 0, leaving a matrix unmerged; here k ≥ 1. An all-zero τ_i gets weight 0
    here, where the release divides by zero. The release excludes the vision tower, embeddings,
    ``lm_head``, norms and biases by name; here the plan decides.
    """
    spec = VARIANTS[variant]
    step_size = spec.lr if lr is None else lr
    return merge_task_matrices(
        base,
        models,
        lambda taus: optmerge_merge(taus, variant=variant, ratio=ratio, lr=step_size, steps=steps),
        spec.lam if lam is None else lam,
    )


OPTMERGE = MergeMethod(
    name="optmerge",
    kernel=optmerge,
    params=(_LAMBDA, _VARIANT, _RATIO, _LR, _STEPS),
    summary="WUDI-style interference loss on denoised rank-k task vectors (full fine-tune or LoRA variant)",
    paper=(
        "Unifying Multimodal Large Language Model Capabilities and Modalities via Model Merging "
        "(OptMerge; Wei et al., ICLR 2026)"
    ),
    url="https://arxiv.org/abs/2505.19892",
)

METHODS: tuple[MergeMethod, ...] = (OPTMERGE,)
