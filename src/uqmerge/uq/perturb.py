"""The three UQ perturbations: AugMix on the image, a drawn system message, MC dropout in LM attention.

Every draw is keyed by (UQ seed, dataset, item id, pass ``j``), so a pass is perturbed the same way
whatever else is scored with it. MC dropout runs through an attention function registered with
transformers' ``AttentionInterface`` (:data:`MC_DROPOUT_ATTENTION`): eager attention whose dropout mask
is drawn for each batch row and decoder layer from its own generator, seeded by
``stable_seed(*row_key, layer)``, over the row's real (unpadded) positions only. The mask of a pass
therefore depends neither on its batch neighbours nor on padding.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from uqmerge.core.errors import UQMergeError
from uqmerge.core.prompts import SYSTEM_MESSAGES
from uqmerge.core.seeds import stable_seed

MC_DROPOUT_ATTENTION = "uqmerge_mc_dropout"
"""The name the MC-dropout attention function is registered under (transformers ``AttentionInterface``)."""


@dataclass(frozen=True)
class DropoutRows:
    """The rows of one forward pass: each row's dropout key (its pass's seed parts) and its left padding."""

    keys: tuple[tuple[object, ...], ...]
    pads: tuple[int, ...]


_ROWS: ContextVar[DropoutRows | None] = ContextVar("uqmerge_dropout_rows", default=None)
_LAYERS: ContextVar[Mapping[int, int] | None] = ContextVar("uqmerge_dropout_layers", default=None)


def augmix_image(image: Image.Image, seed: int) -> Image.Image:
    """``torchvision.transforms.v2.AugMix()`` with its defaults on a PIL image, seeded.

    torchvision draws from the global torch RNG, so the draw runs in a forked CPU RNG seeded with
    ``seed``: the same seed gives the same image and the caller's RNG state is untouched.
    """
    from torchvision.transforms import v2

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return v2.AugMix()(image)


def draw_system_message(seed: int) -> str:
    """One of :data:`~uqmerge.core.prompts.SYSTEM_MESSAGES`, drawn uniformly with ``seed``."""
    return SYSTEM_MESSAGES[random.Random(seed).randrange(len(SYSTEM_MESSAGES))]


def language_model_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The ``self_attn`` module of every decoder layer of the model's language model.

    Found through ``model.get_decoder()`` (the LM of LLaVA, Qwen2-VL and most HF MLLMs); only modules
    with an ``attention_dropout`` attribute qualify. Raises :class:`UQMergeError` when none is found.
    """
    decoder = None
    with contextlib.suppress(Exception):
        decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    modules = [
        layer.self_attn for layer in (layers or []) if hasattr(getattr(layer, "self_attn", None), "attention_dropout")
    ]
    if not modules:
        raise UQMergeError(
            f"cannot find the language model's self-attention layers in {type(model).__name__} "
            "(model.get_decoder().layers[i].self_attn with attention_dropout); mode 'model'/'vl' needs them"
        )
    return modules


def row_keep_mask(key: Sequence[object], layer: int, shape: tuple[int, ...], p: float, device: torch.device) -> Tensor:
    """Keep-mask (True with probability ``1 − p``) of one row at one layer, from a generator seeded by
    ``stable_seed(*key, layer)`` on ``device``: the same key, layer and shape give the same mask."""
    generator = torch.Generator(device=device)
    generator.manual_seed(stable_seed(*key, layer))
    return torch.rand(shape, generator=generator, device=device) >= p


def _keep_mask(module: nn.Module, weights: Tensor, p: float) -> Tensor:
    """The (batch, heads, q, k) keep-mask of one layer: each row's own draw at its real positions."""
    rows, layers = _ROWS.get(), _LAYERS.get()
    batch, heads, q_len, k_len = weights.shape
    if rows is None or layers is None or len(rows.keys) != batch:
        raise UQMergeError(
            "MC dropout needs one dropout key per batch row: run the forward pass through "
            "uqmerge.uq.scoring.letter_probabilities with a dropout_key on every ForwardRequest, inside inference_mode"
        )
    if q_len != k_len:
        raise UQMergeError("MC dropout attention scores whole sequences (no KV cache)")
    if id(module) not in layers:
        raise UQMergeError(f"MC dropout attention called by {type(module).__name__}, not a language-model layer")
    layer = layers[id(module)]
    keep = torch.ones(weights.shape, dtype=torch.bool, device=weights.device)
    for row, (key, pad) in enumerate(zip(rows.keys, rows.pads, strict=True)):
        real = q_len - pad
        keep[row, :, pad:, pad:] = row_keep_mask(key, layer, (heads, real, real), p, weights.device)
    return keep


def mc_dropout_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **_: Any,
) -> tuple[Tensor, Tensor]:
    """Eager attention (as transformers' ``eager_attention_forward``) with per-row MC dropout of probability
    ``dropout`` on the attention probabilities (see the module docstring)."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        is_bool = mask.dtype == torch.bool
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if is_bool else scores + mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout > 0:
        keep = _keep_mask(module, weights, dropout)
        weights = torch.where(keep, weights * (1.0 / (1.0 - dropout)), weights.new_zeros(()))
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def _register_mc_dropout_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(MC_DROPOUT_ATTENTION, mc_dropout_attention)
    AttentionMaskInterface.register(MC_DROPOUT_ATTENTION, eager_mask)


@contextlib.contextmanager
def dropout_rows(rows: DropoutRows | None) -> Iterator[None]:
    """The rows of the forward passes run inside the block (None: no MC dropout keys)."""
    token = _ROWS.set(rows)
    try:
        yield
    finally:
        _ROWS.reset(token)


@contextlib.contextmanager
def inference_mode(model: nn.Module, *, attention_dropout: float = 0.0) -> Iterator[None]:
    """Eval mode for the whole model, with MC dropout ``p`` on LM attention probabilities if ``p > 0``.

    For ``p > 0`` each LM layer's ``self_attn`` gets ``attention_dropout = p`` and ``train()`` (attention
    modules pass ``dropout=0`` unless training), and the LM's config selects :data:`MC_DROPOUT_ATTENTION`
    as its attention implementation; the vision tower, the projector and everything else stay in eval with
    their own attention. Forward passes then need their rows' dropout keys (:func:`dropout_rows`). Every
    module's training flag, every changed ``attention_dropout`` and the LM's attention implementation are
    restored on exit, also on error.
    """
    flags = {m: m.training for m in model.modules()}
    changed: list[tuple[nn.Module, Any]] = []
    implementations: dict[int, tuple[Any, Any]] = {}
    token = None
    try:
        model.eval()
        if attention_dropout > 0:
            modules = language_model_attention_modules(model)
            if not all(hasattr(m, "config") for m in modules):
                raise UQMergeError(f"{type(model).__name__}'s attention layers have no config; MC dropout needs one")
            _register_mc_dropout_attention()
            for attn in modules:
                changed.append((attn, attn.attention_dropout))
                attn.attention_dropout = attention_dropout
                attn.train()
                implementations.setdefault(id(attn.config), (attn.config, attn.config._attn_implementation))
            for config, _ in implementations.values():
                config._attn_implementation = MC_DROPOUT_ATTENTION
            token = _LAYERS.set({id(m): index for index, m in enumerate(modules)})
        yield
    finally:
        if token is not None:
            _LAYERS.reset(token)
        for config, old in implementations.values():
            config._attn_implementation = old
        for attn, old in changed:
            attn.attention_dropout = old
        for module, flag in flags.items():
            module.training = flag
