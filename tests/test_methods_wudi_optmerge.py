"""WUDI (Adam and closed form) and OptMerge against losses, gradients and subspaces computed by hand."""

from __future__ import annotations

import itertools

import pytest
import torch

from uqmerge.core.errors import ConfigError
from uqmerge.methods import MergeInputs, get_method
from uqmerge.methods.optmerge import optmerge_targets
from uqmerge.methods.wudi import QuadraticInterference, interference_loss, inverse_square_norms, minimise


def _taus(shape: tuple[int, int], n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for _ in range(n)]


def _merge_taus(name: str, taus: list[torch.Tensor], **params: object) -> torch.Tensor:
    """τ_m of ``name`` with base 0 and λ = 1."""
    base = torch.zeros_like(taus[0])
    inputs = MergeInputs(name="w", models=[base + t for t in taus], base=base, params={"lambda": 1.0, **params})
    return get_method(name).merge(inputs) - base


def _wudi_loss_by_hand(x: torch.Tensor, taus: list[torch.Tensor]) -> torch.Tensor:
    """Σ_i tr((x − τ_i) τ_iᵀτ_i (x − τ_i)ᵀ) / ‖τ_i‖², term by term in float64."""
    total = torch.zeros((), dtype=torch.float64)
    for tau in taus:
        t = tau.double()
        diff = x.double() - t
        total = total + torch.trace(diff @ t.T @ t @ diff.T) / (t * t).sum()
    return total


def _wudi_gradient_by_hand(x: torch.Tensor, taus: list[torch.Tensor]) -> torch.Tensor:
    x = x.detach().double().requires_grad_(True)
    _wudi_loss_by_hand(x, taus).backward()
    return x.grad


def test_closed_form_solves_the_normal_equations() -> None:
    taus = _taus((9, 6), 3, seed=0)
    c = sum(t.double().T @ t.double() / (t.double() ** 2).sum() for t in taus)
    d = sum(t.double() @ t.double().T @ t.double() / (t.double() ** 2).sum() for t in taus)
    expected = torch.linalg.solve(c, d.T).T  # D C⁻¹, C symmetric and invertible here
    torch.testing.assert_close(_merge_taus("wudi_closed_form", taus).double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(9, 6), (3, 12)])
def test_closed_form_gradient_is_zero(shape: tuple[int, int]) -> None:
    taus = _taus(shape, 3, seed=1)
    start_gradient = _wudi_gradient_by_hand(sum(taus), taus).norm()
    gradient = _wudi_gradient_by_hand(_merge_taus("wudi_closed_form", taus), taus).norm()
    assert gradient < 1e-5 * start_gradient


def test_singular_case_returns_the_pseudo_inverse_solution() -> None:
    # Wide matrices: the two tasks' rows span 6 of 12 input dimensions, so C is singular. Σ τ_i lies in
    # that row space, so the minimiser nearest it is the minimum-norm one, D C⁺, with nothing outside.
    taus = _taus((3, 12), 2, seed=2)
    c = sum(t.double().T @ t.double() / (t.double() ** 2).sum() for t in taus)
    d = sum(t.double() @ t.double().T @ t.double() / (t.double() ** 2).sum() for t in taus)
    merged = _merge_taus("wudi_closed_form", taus).double()
    torch.testing.assert_close(merged, d @ torch.linalg.pinv(c, hermitian=True), atol=1e-4, rtol=1e-4)
    q, _ = torch.linalg.qr(torch.cat(taus).double().T)  # 12×6 basis of the row space
    torch.testing.assert_close(merged - merged @ q @ q.T, torch.zeros(3, 12, dtype=torch.float64), atol=1e-5, rtol=0)


def test_directions_below_rcond_keep_the_start_and_the_rest_is_stationary() -> None:
    taus = _taus((9, 6), 3, seed=13)
    weights = [1 / (t.double() ** 2).sum() for t in taus]
    stacked = torch.cat([w.sqrt() * t.double() for w, t in zip(weights, taus, strict=True)])
    _, sigma, vh = torch.linalg.svd(stacked, full_matrices=False)  # C = stackedᵀ stacked: λ = σ²
    kept = vh[sigma**2 > 0.3 * sigma[0] ** 2].T  # the cut-off drops the weaker input directions
    assert 0 < kept.shape[1] < 6
    outside = torch.eye(6, dtype=torch.float64) - kept @ kept.T
    start = sum(taus).double()
    merged = _merge_taus("wudi_closed_form", taus, rcond=0.3).double()
    torch.testing.assert_close(merged @ outside, start @ outside, atol=1e-5, rtol=0)
    gradient = _wudi_gradient_by_hand(merged, taus)
    assert (gradient @ kept).norm() < 1e-5 * _wudi_gradient_by_hand(start, taus).norm()


@pytest.mark.parametrize("shape", [(8, 6), (4, 10)])
def test_adam_reaches_the_closed_form_loss(shape: tuple[int, int]) -> None:
    # The method's default lr 1e-5 needs far more than a test's budget of steps on unit-scale
    # matrices; lr 3e-2 for 1000 steps converges in well under a second.
    taus = _taus(shape, 3, seed=3)
    adam = _merge_taus("wudi", taus, lr=3e-2, steps=1000)
    closed = _merge_taus("wudi_closed_form", taus)
    assert _wudi_loss_by_hand(adam, taus) <= 1.01 * _wudi_loss_by_hand(closed, taus)
    assert _wudi_loss_by_hand(closed, taus) < _wudi_loss_by_hand(sum(taus), taus)


def test_wudi_with_defaults_moves_downhill_from_the_sum() -> None:
    taus = _taus((6, 5), 3, seed=4)
    merged = _merge_taus("wudi", taus, steps=20)
    assert _wudi_loss_by_hand(merged, taus) < _wudi_loss_by_hand(sum(taus), taus)


def test_wudi_parameters_are_validated() -> None:
    taus = _taus((4, 4), 2, seed=5)
    for name, params in [("wudi", {"steps": 0}), ("wudi", {"lr": 0.0}), ("wudi_closed_form", {"rcond": 1.0})]:
        with pytest.raises(ConfigError, match=next(iter(params))):
            _merge_taus(name, taus, **params)


# ------------------------------------------------------------------------------------------ OptMerge


def _top_right_eigvecs(t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs of tᵀt (σ², V_k), float64."""
    evals, evecs = torch.linalg.eigh(t.double().T @ t.double())
    return evals.flip(0)[:k], evecs.flip(1)[:, :k]


def _optmerge_loss_by_hand(x: torch.Tensor, taus: list[torch.Tensor], k: int, variant: str) -> torch.Tensor:
    """Σ_i ‖(x − τ̂_i) V_k diag(σ_k)‖² / ‖τ_i‖², targets by projection onto top right eigenvectors."""
    mean = sum(t.double() for t in taus) / len(taus)
    total = torch.zeros((), dtype=torch.float64)
    for tau in taus:
        t = tau.double()
        if variant == "full":
            _, v_c = _top_right_eigvecs(t - mean, k)
            target = (t - mean) @ v_c @ v_c.T + mean
        else:
            _, v_t = _top_right_eigvecs(t, k)
            target = t @ v_t @ v_t.T
        sq_sigma, v = _top_right_eigvecs(t, k)
        total = total + (((x.double() - target) @ v) ** 2 * sq_sigma).sum() / (t * t).sum()
    return total


@pytest.mark.parametrize("variant", ["full", "lora"])
def test_optmerge_targets_have_rank_at_most_k(variant: str) -> None:
    taus = _taus((10, 8), 3, seed=6)
    k = 2
    targets, anchors = optmerge_targets(taus, k, variant)
    mean = torch.stack(taus).mean(dim=0)
    for tau, target, anchor in zip(taus, targets, anchors, strict=True):
        low = target - mean if variant == "full" else target
        assert torch.linalg.matrix_rank(low) <= k
        assert torch.linalg.matrix_rank(anchor) <= k
        sq_sigma, _ = _top_right_eigvecs(tau, k)
        torch.testing.assert_close((anchor.double() ** 2).sum(), sq_sigma.sum(), atol=1e-4, rtol=1e-5)
        if variant == "lora":  # Eckart–Young: the residual carries exactly the dropped singular values
            tail = torch.linalg.svdvals(tau.double())[k:]
            torch.testing.assert_close(((tau - target).double() ** 2).sum(), (tail**2).sum(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("variant", ["full", "lora"])
def test_optmerge_targets_and_anchors_give_the_hand_built_loss(variant: str) -> None:
    taus = _taus((10, 8), 3, seed=11)
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(12))
    targets, anchors = optmerge_targets(taus, 2, variant)
    weights = inverse_square_norms(taus)
    torch.testing.assert_close(
        interference_loss(x, targets, anchors, weights).double(),
        _optmerge_loss_by_hand(x, taus, 2, variant),
        atol=1e-3,
        rtol=1e-5,
    )


@pytest.mark.parametrize(("variant", "lr"), [("full", 1e-2), ("lora", 2e-3)])
def test_optmerge_loss_decreases_over_steps(variant: str, lr: float) -> None:
    # Larger learning rates than the variants' defaults (1e-5, 1e-4) so a few steps move visibly.
    taus = _taus((10, 8), 3, seed=7)
    k = 8 // 3
    start = sum(taus) if variant == "full" else sum(taus) / 3
    losses = [_optmerge_loss_by_hand(start, taus, k, variant)]
    for steps in (1, 10, 100):
        merged = _merge_taus("optmerge", taus, variant=variant, lr=lr, steps=steps)
        losses.append(_optmerge_loss_by_hand(merged, taus, k, variant))
    assert all(later < earlier for earlier, later in itertools.pairwise(losses)), losses


@pytest.mark.parametrize("variant", ["full", "lora"])
def test_optmerge_default_learning_rate_moves_downhill(variant: str) -> None:
    taus = _taus((6, 6), 2, seed=8)
    start = sum(taus) if variant == "full" else sum(taus) / 2
    merged = _merge_taus("optmerge", taus, variant=variant, steps=5)
    assert _optmerge_loss_by_hand(merged, taus, 3, variant) < _optmerge_loss_by_hand(start, taus, 3, variant)


def test_optmerge_ratio_sets_the_rank() -> None:
    taus = _taus((10, 8), 2, seed=9)
    merged = _merge_taus("optmerge", taus, variant="lora", ratio=0.25, lr=2e-3, steps=50)
    start = sum(taus) / 2
    assert _optmerge_loss_by_hand(merged, taus, 2, "lora") < _optmerge_loss_by_hand(start, taus, 2, "lora")


@pytest.mark.parametrize(("variant", "lam"), [("full", 0.1), ("lora", 1.0)])
def test_optmerge_lambda_defaults_per_variant(variant: str, lam: float) -> None:
    base = torch.zeros(4)
    models = [base + 1.0, base + 3.0]
    default = get_method("optmerge").merge(MergeInputs(name="b", models=models, base=base, params={"variant": variant}))
    torch.testing.assert_close(default, torch.full((4,), 2.0 * lam))
    explicit = get_method("optmerge").merge(
        MergeInputs(name="b", models=models, base=base, params={"variant": variant, "lambda": 0.5})
    )
    torch.testing.assert_close(explicit, torch.full((4,), 1.0))


def test_optmerge_rejects_an_unknown_variant() -> None:
    with pytest.raises(ConfigError, match="variant"):
        _merge_taus("optmerge", _taus((4, 4), 2, seed=10), variant="qlora")


def test_interference_loss_with_tall_anchors_equals_the_explicit_product_form() -> None:
    g = torch.Generator().manual_seed(3)
    merged = torch.randn(9, 4, generator=g, dtype=torch.float64)
    targets = torch.randn(3, 9, 4, generator=g, dtype=torch.float64)
    anchors = torch.randn(3, 9, 4, generator=g, dtype=torch.float64)  # k = 9 rows > d = 4: the Gram path
    weights = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    explicit = sum(
        w * torch.linalg.matrix_norm((merged - t) @ a.T) ** 2 for w, t, a in zip(weights, targets, anchors, strict=True)
    )
    torch.testing.assert_close(interference_loss(merged, targets, anchors, weights), explicit)


@pytest.mark.parametrize(("rows", "width"), [(3, 8), (9, 4)])  # 2·n·k < d: factored C; otherwise the d×d Gram
def test_quadratic_interference_gradient_equals_autograd_of_the_loss(rows: int, width: int) -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, width, generator=g, dtype=torch.float64)
    targets = torch.randn(2, 5, width, generator=g, dtype=torch.float64)
    anchors = torch.randn(2, rows, width, generator=g, dtype=torch.float64)
    weights = torch.tensor([0.7, 1.3], dtype=torch.float64)
    problem = QuadraticInterference.build(targets, anchors, weights)
    assert (problem.factor is not None) == (2 * 2 * rows < width)
    leaf = x.clone().requires_grad_(True)
    interference_loss(leaf, targets, anchors, weights).backward()
    torch.testing.assert_close(problem.gradient(x), leaf.grad)


@pytest.mark.parametrize(("optimizer", "lr", "momentum"), [("adam", 1e-2, 0.0), ("sgd", 1e-3, 0.9)])
def test_minimise_follows_the_same_path_as_an_autograd_optimiser(optimizer: str, lr: float, momentum: float) -> None:
    taus = _taus((7, 5), 3, seed=13)
    stacked = torch.stack(taus).double()
    weights = inverse_square_norms(taus).double()
    start = stacked.sum(dim=0)
    reference = start.clone().requires_grad_(True)
    opt = (
        torch.optim.Adam([reference], lr=lr)
        if optimizer == "adam"
        else torch.optim.SGD([reference], lr=lr, momentum=momentum)
    )
    for _ in range(20):
        opt.zero_grad()
        interference_loss(reference, stacked, stacked, weights).backward()
        opt.step()
    problem = QuadraticInterference.build(stacked, stacked, weights)
    result = minimise(start, problem, lr=lr, steps=20, optimizer=optimizer, momentum=momentum)
    torch.testing.assert_close(result, reference.detach())
    assert torch.equal(start, stacked.sum(dim=0))  # the start is not modified
