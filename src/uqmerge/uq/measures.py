"""Uncertainty measures over option probabilities: entropy, total, expected, mutual information.

All functions are pure and work in the dtype they are given (UQ passes float64). Entropies are in
nats with ``0 · log 0 = 0``. For one item, ``probs`` has shape ``(J, K)``: J perturbed passes over K
options, each row summing to 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

ROUNDING_TOLERANCE = 1e-9
"""Largest negative mutual information accepted as floating-point rounding (then clamped to 0)."""


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy ``-Σ p log p`` over the last dimension."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def total_uncertainty(probs: Tensor) -> Tensor:
    """``H(mean_j p_j)``: entropy of the mean prediction over passes (dim -2)."""
    return entropy(probs.mean(dim=-2))


def expected_entropy(probs: Tensor) -> Tensor:
    """``mean_j H(p_j)``: the data (aleatoric) part."""
    return entropy(probs).mean(dim=-1)


def mutual_information(probs: Tensor) -> Tensor:
    """``H(mean_j p_j) − mean_j H(p_j)``, the model (epistemic) uncertainty, ≥ 0.

    Entropy is concave, so the difference is ≥ 0 for any non-negative ``probs`` (Jensen); negative
    values down to :data:`ROUNDING_TOLERANCE` are floating-point rounding and become 0. Raises
    ``ValueError`` for negative or non-finite probabilities, or a larger negative difference.
    """
    if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
        raise ValueError("probs must be finite and non-negative (rows of probs are not distributions)")
    mi = total_uncertainty(probs) - expected_entropy(probs)
    if bool((mi < -ROUNDING_TOLERANCE).any()):
        raise ValueError(f"mutual information {float(mi.min()):.3g} < 0 beyond rounding")
    return mi.clamp(min=0.0)


def item_measures(probs: Tensor) -> tuple[float, float, float]:
    """(total, expected, mutual information) of one item's ``(J, K)`` probabilities."""
    return (
        float(total_uncertainty(probs)),
        float(expected_entropy(probs)),
        float(mutual_information(probs)),
    )


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (dataset score over items, model score over datasets); ``ValueError`` if empty."""
    if not values:
        raise ValueError("mean of no values")
    return float(torch.tensor(list(values), dtype=torch.float64).mean())


def accuracy(predictions: Sequence[int], answers: Sequence[int | None]) -> float | None:
    """Share of labelled items whose prediction equals the answer; None when nothing is labelled."""
    pairs = [(p, a) for p, a in zip(predictions, answers, strict=True) if a is not None]
    if not pairs:
        return None
    return sum(p == a for p, a in pairs) / len(pairs)
