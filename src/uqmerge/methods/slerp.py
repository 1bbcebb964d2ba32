"""Spherical linear interpolation (SLERP) of two models' weights, with mergekit's semantics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from uqmerge.methods import mergekit
from uqmerge.methods.base import Compat, MergeMethod, Param, Semantics


def slerp(a: Tensor, b: Tensor, t: float, eps: float) -> Tensor:
    """Interpolate from ``a`` (t=0) to ``b`` (t=1) along the great circle between their directions.

    With θ the angle between the flattened tensors: sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b (the
    weights are applied to the tensors themselves, so equal-norm inputs keep their norm). Falls back to
    the linear a + t(b − a) when 1 − |cos θ| ≤ ``eps`` (near-parallel or near-antiparallel) or when
    either tensor is all zero.
    """
    a, b = a.float(), b.float()
    norms = a.norm() * b.norm()
    if float(norms) == 0.0:
        return torch.lerp(a, b, t)
    cos = ((a.flatten() @ b.flatten()) / norms).clamp(-1.0, 1.0)
    if 1.0 - float(cos.abs()) <= eps:
        return torch.lerp(a, b, t)
    theta = torch.arccos(cos)
    return (torch.sin((1.0 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)


_T = Param("t", 0.5, "interpolation position: 0 gives the first model, 1 the second", low=0.0, high=1.0)
_EPS = Param(
    "eps",
    5e-4,
    "fall back to linear interpolation when 1 − |cos θ| ≤ eps (mergekit's 0.9995 dot threshold)",
    low=0.0,
    high=1.0,
    high_inclusive=False,
)


def slerp_models(
    models: Sequence[Tensor], t: float = 0.5, eps: float = 5e-4, semantics: Semantics = "uqmerge"
) -> Tensor:
    """SLERP of exactly two models (Shoemake, "Animating Rotation with Quaternion Curves", SIGGRAPH 1985),
    applied per tensor as in mergekit.

    θ = arccos(⟨a, b⟩ / ‖a‖‖b‖) over the flattened tensors a = θ_first, b = θ_second;
    θ(t) = sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b, so t = 0 returns the first model and t = 1 the
    second. Near-parallel tensors (1 − |cos θ| ≤ ``eps``, default 5e-4, i.e. mergekit's |cos θ| > 0.9995)
    and all-zero tensors use linear interpolation. Every tensor, 1-D or 2-D, is interpolated the same way.

    Differences from mergekit: mergekit's first endpoint is ``base_model``; here it is the first entry
    of ``models:`` and no base is read. ``t`` is one global number (mergekit also accepts per-filter
    gradients). The threshold test is ≤ rather than <. mergekit semantics (:func:`uqmerge.methods.mergekit.slerp`):
    ``t`` required and unbounded, linear only where |cos θ| > 0.9995, a zero tensor interpolated along θ = π/2;
    a ``compat: mergekit`` config lists the base first, so t = 0 is ``base_model``.
    """
    a, b = models
    if semantics == "mergekit":
        return mergekit.slerp(a, b, t)
    return slerp(a, b, t, eps)


SLERP = MergeMethod(
    name="slerp",
    kernel=slerp_models,
    params=(_T, _EPS),
    summary="Spherical interpolation between two models (t=0: first, t=1: second), linear when near-parallel",
    paper='Animating Rotation with Quaternion Curves (Shoemake, SIGGRAPH 1985); as in mergekit "slerp"',
    url="https://doi.org/10.1145/325165.325242",
    requires_base=False,
    min_models=2,
    max_models=2,
    compat={"mergekit": Compat((mergekit.T_REQUIRED,))},
)

METHODS: tuple[MergeMethod, ...] = (SLERP,)
