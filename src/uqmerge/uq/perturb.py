"""The three UQ perturbations: AugMix on the image, a drawn system message, MC dropout in LM attention."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import torch
from PIL import Image
from torch import nn

from uqmerge.core.errors import UQMergeError

SYSTEM_MESSAGES: tuple[str, ...] = (
    "you are a helpful assistant",
    "you are a question-answering assistant",
    "you are a nice assistant",
    "You are a helpful assistant",
    "You are a question-answering assistant",
    "You are a nice assistant",
    "You are a helpful assistant.",
    "You are a question-answering assistant.",
    "You are a nice assistant.",
)
"""The nine system messages of the text perturbation (UQ-Merge, appendix B.1)."""


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
    """One of :data:`SYSTEM_MESSAGES`, drawn uniformly with ``seed``."""
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


@contextlib.contextmanager
def inference_mode(model: nn.Module, *, attention_dropout: float = 0.0) -> Iterator[None]:
    """Eval mode for the whole model, with MC dropout ``p`` on LM attention probabilities if ``p > 0``.

    Implements the transformers-5 recipe: each LM layer's ``self_attn.attention_dropout = p`` and
    ``self_attn.train()`` (attention modules pass ``dropout=0`` unless training); the vision tower, the
    projector and everything else stay in eval. Every module's training flag and every changed
    ``attention_dropout`` is restored on exit, also on error.
    """
    flags = {m: m.training for m in model.modules()}
    changed: list[tuple[nn.Module, Any]] = []
    try:
        model.eval()
        if attention_dropout > 0:
            for attn in language_model_attention_modules(model):
                changed.append((attn, attn.attention_dropout))
                attn.attention_dropout = attention_dropout
                attn.train()
        yield
    finally:
        for attn, old in changed:
            attn.attention_dropout = old
        for module, flag in flags.items():
            module.training = flag
