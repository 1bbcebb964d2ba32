"""AdaMMS's interpolation of two architectures that share a language model (on the tensors mapped between them)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from uqmerge.methods.base import Blockwise, MergeMethod, Param

ALPHA = Param(
    "alpha",
    0.5,
    "weight on the other model (`models:`); 0 returns `base_model` unchanged, 1 the other model's mapped tensors",
    low=0.0,
    high=1.0,
)


def adamms(base: Tensor, models: Sequence[Tensor], alpha: float = 0.5) -> Tensor:
    """θ = (1 − α)·θ_base + α·f(θ_other) on one tensor mapped from the other architecture.

    Paper: "AdaMMS: Model Merging for Heterogeneous Multimodal Large Language Models with Unsupervised Coefficient
    Optimization", Du et al., CVPR 2025, https://arxiv.org/abs/2503.23733. ``base`` is the target
    architecture's tensor, ``models`` the one other model's tensor after the mapping f. α is the weight on the
    *other* model, as in the paper's equation: the authors' scripts use α and 1 − α in opposite roles in
    different places, and their Qwen pair scales ``lm_head``/``embed_tokens`` by (1 − α) with nothing added;
    uqmerge interpolates every mapped tensor. Tensors the map does not cover keep the base's values (the plan
    copies them), so α = 0 returns the base bit for bit.
    """
    (other,) = models
    return (1.0 - alpha) * base + alpha * other


ADAMMS = MergeMethod(
    name="adamms",
    kernel=adamms,
    params=(ALPHA,),
    summary="AdaMMS: (1−α)·base + α·other on the tensors mapped from another architecture sharing its LLM",
    paper="AdaMMS: Model Merging for Heterogeneous Multimodal Large Language Models (Du et al., CVPR 2025)",
    url="https://arxiv.org/abs/2503.23733",
    requires_base=True,
    min_models=1,
    max_models=1,
    blockwise=Blockwise(),
)

METHODS: tuple[MergeMethod, ...] = (ADAMMS,)
