"""SLERP against rotations by hand: endpoints, norm preservation, and the linear fallback."""

from __future__ import annotations

import math

import pytest
import torch

from uqmerge.core.errors import ConfigError
from uqmerge.methods import MergeInputs, get_method


def _slerp(a: torch.Tensor, b: torch.Tensor, **params: object) -> torch.Tensor:
    return get_method("slerp").merge(MergeInputs(name="w", models=[a, b], base=None, params=params))


def test_slerp_takes_exactly_two_models_and_no_base() -> None:
    method = get_method("slerp")
    assert (method.min_models, method.max_models, method.requires_base) == (2, 2, False)


@pytest.mark.parametrize("shape", [(5, 3), (7,)])
def test_slerp_endpoints_are_the_two_models(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    torch.testing.assert_close(_slerp(a, b, t=0.0), a)
    torch.testing.assert_close(_slerp(a, b, t=1.0), b)


@pytest.mark.parametrize("t", [0.25, 0.5, 0.8])
def test_slerp_of_orthogonal_unit_vectors_rotates_by_t_times_the_angle(t: float) -> None:
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    expected = torch.tensor([math.cos(t * math.pi / 2), math.sin(t * math.pi / 2), 0.0])
    torch.testing.assert_close(_slerp(a, b, t=t), expected)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_slerp_keeps_the_norm_of_equal_norm_vectors(t: float) -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    a, b = a / a.norm(), b / b.norm()
    merged = _slerp(a, b, t=t)
    torch.testing.assert_close(merged.norm(), torch.tensor(1.0))
    angle = torch.arccos((a * b).sum())
    torch.testing.assert_close(torch.arccos((merged * a).sum()), t * angle, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scale", [2.0, -3.0])
def test_parallel_and_antiparallel_inputs_fall_back_to_lerp(scale: float) -> None:
    a = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    b = scale * a
    torch.testing.assert_close(_slerp(a, b, t=0.3), 0.7 * a + 0.3 * b)


def test_the_eps_threshold_decides_between_lerp_and_slerp() -> None:
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([math.cos(0.05), math.sin(0.05)])  # 1 − cos θ ≈ 1.25e-3
    lerp = 0.5 * a + 0.5 * b
    torch.testing.assert_close(_slerp(a, b, t=0.5, eps=2e-3), lerp)
    spherical = _slerp(a, b, t=0.5, eps=5e-4)
    torch.testing.assert_close(spherical, torch.tensor([math.cos(0.025), math.sin(0.025)]))
    assert not torch.allclose(spherical, lerp, atol=1e-6, rtol=0)


def test_a_zero_tensor_falls_back_to_lerp() -> None:
    a, b = torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(_slerp(a, b, t=0.25), 0.25 * b)


def test_equal_models_give_that_model_and_inputs_are_untouched() -> None:
    a = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    b = a.clone()
    torch.testing.assert_close(_slerp(a, b, t=0.4), a)
    assert torch.equal(a, b)


def test_t_outside_the_unit_interval_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'t'"):
        _slerp(torch.ones(2), torch.zeros(2), t=1.5)
