"""WUDI merging (Adam and closed form) and the data-free optimisation helpers that OptMerge reuses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from uqmerge.methods.base import MergeMethod, Param
from uqmerge.methods.subspace import merge_task_matrices
from uqmerge.methods.task_vector import LAMBDA


@dataclass(frozen=True)
class QuadraticInterference:
    """L(x) = Σ_i w_i ‖(x − T_i) A_iᵀ‖²_F kept as its gradient's two terms, ∇L(x) = 2(x C − D).

    C = Σ_i w_i A_iᵀA_i (d×d) and D = Σ_i w_i T_i A_iᵀ A_i (m×d) are built once, so each optimiser step
    costs one product x C instead of n forward and backward passes through the n task terms. When the
    stacked anchors have fewer than d/2 rows (OptMerge's rank-k anchors on wide matrices), C stays
    factored as BᵀB with B = [√w_i A_i] and x C = (x Bᵀ) B is cheaper.
    """

    linear: Tensor
    gram: Tensor | None = None
    factor: Tensor | None = None

    @classmethod
    def build(
        cls, targets: Tensor, anchors: Tensor, weights: Tensor, *, allow_factored: bool = True
    ) -> QuadraticInterference:
        """From stacked targets T (n×m×d), anchors A (n×k×d) and weights w (n); ``allow_factored=False``
        always forms the d×d Gram C (the closed form needs it explicitly)."""
        linear = sum(w * torch.linalg.multi_dot([t, a.T, a]) for w, t, a in zip(weights, targets, anchors, strict=True))
        rows, width = anchors.shape[0] * anchors.shape[1], anchors.shape[2]
        if allow_factored and 2 * rows < width:
            factor = (weights.sqrt().view(-1, 1, 1) * anchors).reshape(rows, width)
            return cls(linear=linear, factor=factor)
        gram = sum(w * (a.T @ a) for w, a in zip(weights, anchors, strict=True))
        return cls(linear=linear, gram=gram)

    def gradient(self, x: Tensor) -> Tensor:
        """∇L(x) = 2(x C − D)."""
        times_c = x @ self.gram if self.gram is not None else (x @ self.factor.T) @ self.factor
        return 2.0 * (times_c - self.linear)


def minimise(
    init: Tensor,
    problem: QuadraticInterference,
    *,
    lr: float,
    steps: int,
    optimizer: str = "adam",
    momentum: float = 0.0,
) -> Tensor:
    """Run ``steps`` steps of torch's Adam (default betas) or SGD (with ``momentum``) on ``problem`` from a copy
    of ``init``, feeding the optimiser the exact gradient (no autograd graph); ``init`` is not modified."""
    x = init.detach().clone()
    # The fused kernels do one pass over x per step (10× faster than the default on CPU, same update).
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam([x], lr=lr, fused=True)
    elif optimizer == "sgd":
        opt = torch.optim.SGD([x], lr=lr, momentum=momentum, fused=True)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam' or 'sgd'")
    with torch.no_grad():
        for _ in range(steps):
            x.grad = problem.gradient(x)
            opt.step()
    return x


def inverse_square_norms(taus: Sequence[Tensor]) -> Tensor:
    """1/‖τ_i‖²_F per task; 0 for an all-zero τ_i (its loss term is identically zero anyway)."""
    sq = torch.stack([tau.square().sum() for tau in taus])
    return torch.where(sq > 0, 1.0 / sq.clamp_min(torch.finfo(sq.dtype).tiny), torch.zeros_like(sq))


def interference_loss(merged: Tensor, targets: Tensor, anchors: Tensor, weights: Tensor) -> Tensor:
    """Σ_i w_i ‖(τ_m − T_i) A_iᵀ‖²_F for stacked targets T (n×m×d), anchors A (n×k×d), weights w (n).

    With more anchor rows than columns (k > d, e.g. WUDI on a 32000-row embedding, where A_i = τ_i) the m×k
    products would not fit in memory; then ‖E Aᵀ‖²_F = Σ (E AᵀA) ⊙ E is used, with the d×d Gram AᵀA.
    """
    errors = merged.unsqueeze(0) - targets
    if anchors.shape[1] > anchors.shape[2]:
        grams = anchors.transpose(1, 2) @ anchors
        return (weights * ((errors @ grams) * errors).sum(dim=(1, 2))).sum()
    products = errors @ anchors.transpose(1, 2)
    return (weights * products.square().sum(dim=(1, 2))).sum()


def wudi_loss(merged: Tensor, taus: Sequence[Tensor]) -> Tensor:
    """WUDI's objective L(τ_m) = Σ_i ‖(τ_m − τ_i) τ_iᵀ‖²_F / ‖τ_i‖²_F."""
    stacked = torch.stack(list(taus))
    return interference_loss(merged, stacked, stacked, inverse_square_norms(taus))


def wudi_adam_merge(taus: Sequence[Tensor], *, lr: float, steps: int) -> Tensor:
    """Minimise :func:`wudi_loss` with Adam from τ_m = Σ τ_i."""
    stacked = torch.stack(list(taus))
    problem = QuadraticInterference.build(stacked, stacked, inverse_square_norms(taus))
    return minimise(stacked.sum(dim=0), problem, lr=lr, steps=steps, optimizer="adam")


def wudi_closed_form_merge(taus: Sequence[Tensor], *, rcond: float) -> Tensor:
    """The minimiser of :func:`wudi_loss` nearest τ_0 = Σ τ_i: D C⁺ + τ_0 (I − P).

    C = Σ_i w_i τ_iᵀτ_i (d×d) and D = Σ_i w_i τ_i τ_iᵀ τ_i (m×d), w_i = 1/‖τ_i‖². C⁺ comes from the
    eigendecomposition C = Q Λ Qᵀ keeping the eigenvalues above ``rcond``·λ_max; P = Q_k Q_kᵀ projects
    onto their span. τ_0's rows lie in the row space of the τ_i, so with nothing cut the result is the
    minimum-norm minimiser D C⁺; the directions the cut-off drops are (numerically) flat for the loss and
    keep τ_0's component.
    """
    stacked = torch.stack(list(taus))
    terms = QuadraticInterference.build(stacked, stacked, inverse_square_norms(taus), allow_factored=False)
    evals, evecs = torch.linalg.eigh(terms.gram)
    keep = (evals > rcond * evals[-1]) & (evals > 0)
    q, kept = evecs[:, keep], evals[keep]
    start = stacked.sum(dim=0)
    return ((terms.linear @ q) / kept) @ q.T + start - (start @ q) @ q.T


_LR = Param("lr", 1e-5, "Adam learning rate", low=0.0, low_inclusive=False)
_STEPS = Param("steps", 300, "Adam steps per weight matrix", kind=int, low=1)
_RCOND = Param(
    "rcond",
    1e-4,
    "relative cut-off of the pseudo-inverse C⁺: eigenvalues of C at or below rcond·λ_max count as zero",
    low=0.0,
    high=1.0,
    high_inclusive=False,
)


def wudi(base: Tensor, models: Sequence[Tensor], lam: float = 1.0, lr: float = 1e-5, steps: int = 300) -> Tensor:
    """WUDI-Merging (Cheng et al., ICML 2025, arXiv:2503.08099), per 2-D weight matrix.

    The rows of τ_i span the inputs task i's layer saw, so interference on task i is measured as
    (τ_m − τ_i) τ_iᵀ. Minimise L(τ_m) = Σ_i ‖(τ_m − τ_i) τ_iᵀ‖²_F / ‖τ_i‖²_F with Adam (``lr``, default
    1e-5; ``steps``, default 300; default betas) from τ_m = Σ τ_i; θ = θ_0 + λ·τ_m (λ default 1.0, as
    the authors' configs: the optimised vector is used unscaled). Non-2-D tensors take the mean τ_i.
    :data:`WUDI_CLOSED_FORM` returns the exact minimiser in seconds.

    Differences from released code (the WUDI and OptMerge releases): the same loss, optimiser and
    schedule; the releases backpropagate through the loss, split into task chunks to save memory, while
    here Adam is fed the exact gradient 2(τ_m C − D) from C and D built once per matrix (the same steps,
    one matrix product each instead of n forward and backward passes); the releases skip ``lm_head`` by
    name (here the plan decides which tensors are merged). An all-zero τ_i gets weight 0 here, where the
    releases divide by zero.
    """
    return merge_task_matrices(base, models, lambda taus: wudi_adam_merge(taus, lr=lr, steps=steps), lam)


def wudi_closed_form(base: Tensor, models: Sequence[Tensor], lam: float = 1.0, rcond: float = 1e-4) -> Tensor:
    """WUDI's objective (Cheng et al., ICML 2025, arXiv:2503.08099) solved exactly, per 2-D weight matrix.

    L(τ_m) = Σ_i ‖(τ_m − τ_i) τ_iᵀ‖²_F / ‖τ_i‖²_F is quadratic; ∇L = 2(τ_m C − D) = 0 with
    C = Σ_i τ_iᵀτ_i / ‖τ_i‖², D = Σ_i τ_i τ_iᵀ τ_i / ‖τ_i‖², so τ_m = D C⁺. C is singular whenever the
    task vectors' rows do not span the input space (wide matrices, low-rank or LoRA task vectors); the
    minimisers then differ by anything outside that row space, where the loss is flat. Adam's start
    Σ τ_i has no component there, so D C⁺ is both the minimum-norm minimiser and the one nearest the
    start. C⁺ treats eigenvalues of C at or below ``rcond``·λ_max as zero (default 1e-4: safely above the
    fp32 eigen-solver's noise, about 1e-7·λ_max times a slowly growing factor of d; a dropped direction
    changes the loss by at most rcond·λ_max per unit²). The dropped directions keep Σ τ_i's component,
    which gradient steps there would barely change (see :func:`wudi_closed_form_merge`). Adam's per-coordinate scaling
    can also drift outside the row space without changing the loss, so Adam and the closed form agree
    in loss rather than weight by weight. θ = θ_0 + λ·τ_m, λ default 1.0. Non-2-D tensors take the mean τ_i.

    Not in the paper or its code, which run Adam for 300 steps per matrix.
    """
    return merge_task_matrices(base, models, lambda taus: wudi_closed_form_merge(taus, rcond=rcond), lam)


WUDI = MergeMethod(
    name="wudi",
    kernel=wudi,
    params=(LAMBDA, _LR, _STEPS),
    summary="Data-free merge minimising the task-vector interference loss with Adam",
    paper=(
        "Whoever Started the Interference Should End It: Guiding Data-Free Model Merging via Task Vectors "
        "(Cheng et al., ICML 2025)"
    ),
    url="https://arxiv.org/abs/2503.08099",
)

WUDI_CLOSED_FORM = replace(
    WUDI,
    name="wudi_closed_form",
    kernel=wudi_closed_form,
    params=(LAMBDA, _RCOND),
    summary="Exact minimiser of the WUDI interference loss (pseudo-inverse), nearest to Σ τ_i",
)

METHODS: tuple[MergeMethod, ...] = (WUDI, WUDI_CLOSED_FORM)
