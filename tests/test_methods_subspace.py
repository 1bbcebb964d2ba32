"""TSV-M, Iso-C and Iso-CTS against hand-built matrices, plus invariants every base-using method of
the subspace/WUDI/OptMerge family shares (non-2-D → mean task vector, experts = base → base)."""

from __future__ import annotations

import pytest
import torch

from uqmerge.core.errors import ConfigError, PlanError
from uqmerge.methods import MergeInputs, get_method
from uqmerge.methods.subspace import iso_cts_dimensions, polar_orthogonal, rank_budget, tsv_factors

FAMILY = ["tsv_m", "iso_c", "iso_cts", "wudi", "wudi_closed_form", "optmerge"]
FAST = {"wudi": {"steps": 3}, "optmerge": {"steps": 3}}


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q


def _merged_task_vector(name: str, taus: list[torch.Tensor], **params: object) -> torch.Tensor:
    base = torch.zeros_like(taus[0])
    inputs = MergeInputs(name="w", models=[base + t for t in taus], base=base, params={"lambda": 1.0, **params})
    return get_method(name).merge(inputs) - base


def _inverse_sqrt_polar(a: torch.Tensor) -> torch.Tensor:
    """A (AᵀA)^{-1/2} for a full-column-rank A, by eigendecomposition in float64."""
    a = a.double()
    evals, evecs = torch.linalg.eigh(a.T @ a)
    return a @ (evecs * evals.rsqrt()) @ evecs.T


def _column_projector(m: torch.Tensor, rank: int) -> torch.Tensor:
    u = torch.linalg.svd(m.double(), full_matrices=False)[0][:, :rank]
    return u @ u.T


def test_polar_factor_is_the_inverse_square_root_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(9, 4, generator=gen)
    torch.testing.assert_close(polar_orthogonal(a).double(), _inverse_sqrt_polar(a), atol=1e-5, rtol=0)


def test_tsv_frames_are_orthonormal() -> None:
    gen = torch.Generator().manual_seed(1)
    taus = [torch.randn(14, 10, generator=gen) for _ in range(3)]
    u, sigma, vh = tsv_factors(taus)
    assert u.shape == (14, 9) and vh.shape == (9, 10) and sigma.shape == (9,)
    torch.testing.assert_close(u.T @ u, torch.eye(9), atol=1e-5, rtol=0)
    torch.testing.assert_close(vh @ vh.T, torch.eye(9), atol=1e-5, rtol=0)


def test_tsv_spectrum_is_the_stacked_top_singular_values() -> None:
    gen = torch.Generator().manual_seed(2)
    taus = [torch.randn(12, 9, generator=gen) for _ in range(3)]
    k = 9 // 3
    expected = torch.cat([torch.linalg.svdvals(t)[:k] for t in taus]).sort(descending=True).values
    got = torch.linalg.svdvals(_merged_task_vector("tsv_m", taus))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_tsv_reproduces_each_top_subspace_when_tasks_are_orthogonal() -> None:
    # Three tasks whose top-10 singular subspaces are disjoint blocks of one orthonormal basis; each
    # task also has a small tail on the other tasks' blocks, which truncation must drop.
    gen = torch.Generator().manual_seed(3)
    n, k, size = 3, 10, 30
    qu, qv = _orthonormal(size, size, gen), _orthonormal(size, size, gen)
    tops, taus = [], []
    for i in range(n):
        own = slice(i * k, (i + 1) * k)
        top = qu[:, own] @ torch.diag(torch.linspace(3.0, 1.0, k, dtype=torch.float64)) @ qv[:, own].T
        others = [j for j in range(size) if not own.start <= j < own.stop]
        tail = qu[:, others] @ torch.diag(torch.full((len(others),), 0.1, dtype=torch.float64)) @ qv[:, others].T
        tops.append(top)
        taus.append((top + tail).float())
    merged = _merged_task_vector("tsv_m", taus)
    torch.testing.assert_close(merged.double(), sum(tops), atol=1e-4, rtol=0)


def test_rank_budget_is_a_floor_with_at_least_one() -> None:
    assert rank_budget((10, 8), 3) == 2
    assert rank_budget((10, 8), 3, ratio=0.5) == 4
    assert rank_budget((2, 8), 5) == 1
    assert rank_budget((9, 9), 3, ratio=1 / 3) == 3


def test_iso_c_has_flat_spectrum_at_the_mean_and_the_same_subspaces() -> None:
    gen = torch.Generator().manual_seed(4)
    taus = [torch.randn(11, 7, generator=gen) for _ in range(4)]
    total = sum(taus)
    mean_sigma = torch.linalg.svdvals(total.double()).mean()
    merged = _merged_task_vector("iso_c", taus)
    torch.testing.assert_close(torch.linalg.svdvals(merged.double()), mean_sigma.expand(7), atol=1e-5, rtol=1e-5)
    # mean σ · U Vᵀ is mean σ times the orthogonal polar factor of Σ τ_i (same U and V).
    torch.testing.assert_close(merged.double(), mean_sigma * _inverse_sqrt_polar(total), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("rank", "n", "fraction", "expected"),
    [(20, 4, 0.8, (16, 1)), (24, 4, 0.75, (16, 2)), (10, 3, 0.8, (7, 1)), (5, 3, 0.0, (2, 1)), (2, 3, 0.5, (2, 0))],
)
def test_iso_cts_dimensions_fill_the_rank(rank: int, n: int, fraction: float, expected: tuple[int, int]) -> None:
    common, per_task = iso_cts_dimensions(rank, n, fraction)
    assert (common, per_task) == expected
    assert common + n * per_task == rank


@pytest.mark.parametrize("shape", [(24, 30), (30, 24)])
def test_iso_cts_spans_the_common_subspace_with_a_flat_spectrum(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(5)
    taus = [torch.randn(*shape, generator=gen) for _ in range(4)]
    common, _ = iso_cts_dimensions(24, 4, 0.75)
    u, _, vh = torch.linalg.svd(sum(taus).double(), full_matrices=False)
    u_c, v_c = u[:, :common], vh[:common].T
    merged = _merged_task_vector("iso_cts", taus, common_space_fraction=0.75).double()
    left, right = _column_projector(merged, 24), _column_projector(merged.T, 24)
    torch.testing.assert_close(left @ u_c, u_c, atol=1e-5, rtol=0)
    torch.testing.assert_close(right @ v_c, v_c, atol=1e-5, rtol=0)
    sigma = torch.linalg.svdvals(merged)
    torch.testing.assert_close(sigma, sigma[0].expand(24), atol=1e-5, rtol=1e-5)


def test_iso_cts_with_all_rank_common_is_iso_c() -> None:
    gen = torch.Generator().manual_seed(6)
    taus = [torch.randn(9, 6, generator=gen) for _ in range(3)]
    torch.testing.assert_close(
        _merged_task_vector("iso_cts", taus, common_space_fraction=1.0),
        _merged_task_vector("iso_c", taus),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("shape", [(5,), (3, 2, 2, 2)])
def test_non_matrix_tensors_get_lambda_times_the_mean_task_vector(name: str, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(*shape, generator=gen)
    models = [base + torch.randn(*shape, generator=gen) for _ in range(3)]
    inputs = MergeInputs(name="b", models=models, base=base, params={"lambda": 0.7, **FAST.get(name, {})})
    expected = base + 0.7 * torch.stack([m - base for m in models]).mean(dim=0)
    torch.testing.assert_close(get_method(name).merge(inputs), expected)


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5,)])
def test_experts_equal_to_base_give_the_base(name: str, shape: tuple[int, ...]) -> None:
    base = torch.randn(*shape, generator=torch.Generator().manual_seed(8))
    inputs = MergeInputs(name="w", models=[base.clone() for _ in range(3)], base=base, params=FAST.get(name, {}))
    merged = get_method(name).merge(inputs)
    assert torch.isfinite(merged).all()
    torch.testing.assert_close(merged, base)


@pytest.mark.parametrize("name", FAMILY)
def test_inputs_are_not_modified_and_grad_modes_do_not_matter(name: str) -> None:
    gen = torch.Generator().manual_seed(9)
    base = torch.randn(7, 5, generator=gen)
    models = [base + 0.1 * torch.randn(7, 5, generator=gen) for _ in range(3)]
    copies = [t.clone() for t in (base, *models)]
    inputs = MergeInputs(name="w", models=models, base=base, params=FAST.get(name, {}))
    plain = get_method(name).merge(inputs)
    with torch.no_grad():
        no_grad = get_method(name).merge(inputs)
    with torch.inference_mode():
        inference = get_method(name).merge(inputs)
    for original, copy in zip((base, *models), copies, strict=True):
        assert torch.equal(original, copy)
    assert not plain.requires_grad
    torch.testing.assert_close(no_grad, plain)
    torch.testing.assert_close(inference, plain)


@pytest.mark.parametrize("name", FAMILY)
def test_a_missing_base_is_a_plan_error_naming_the_tensor(name: str) -> None:
    inputs = MergeInputs(name="layers.0.w", models=[torch.ones(2, 2)], base=None, params=FAST.get(name, {}))
    with pytest.raises(PlanError, match=r"layers\.0\.w"):
        get_method(name).merge(inputs)


def test_out_of_range_parameters_are_config_errors() -> None:
    inputs = MergeInputs(
        name="w", models=[torch.ones(3, 3)], base=torch.zeros(3, 3), params={"common_space_fraction": 1.5}
    )
    with pytest.raises(ConfigError, match="common_space_fraction"):
        get_method("iso_cts").merge(inputs)


def test_thin_svd_falls_back_to_float64_when_lapack_does_not_converge(monkeypatch) -> None:
    from uqmerge.methods import subspace

    real_svd = torch.linalg.svd
    calls: list[torch.dtype] = []

    def flaky_svd(matrix, full_matrices=True):
        calls.append(matrix.dtype)
        if matrix.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real_svd(matrix, full_matrices=full_matrices)

    monkeypatch.setattr(torch.linalg, "svd", flaky_svd)
    matrix = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    u, s, vh = subspace.thin_svd(matrix)
    assert calls == [torch.float32, torch.float64]
    assert u.dtype == s.dtype == vh.dtype == torch.float32
    torch.testing.assert_close((u * s) @ vh, matrix, atol=1e-5, rtol=1e-5)
