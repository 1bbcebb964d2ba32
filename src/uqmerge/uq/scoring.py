"""One batched forward pass per group of prompts: left padding, explicit positions, letter softmax.

Only the last position's logits are computed (``logits_to_keep=1``). With left padding that position
is every row's last real token, so batched and one-by-one scoring agree; models with plain 1-D
positions get ``position_ids = cumsum(attention_mask) − 1`` (otherwise a row's positions would start
at its pad count), while models that build their own multimodal positions from the attention mask
(Qwen2-VL's M-RoPE ``get_rope_index``) are left to do so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from uqmerge.core.errors import UQMergeError
from uqmerge.uq.prompts import tokenizer_of


@dataclass(frozen=True)
class ForwardRequest:
    """One prompt to score: rendered chat text, its (possibly perturbed) image, the option-letter ids."""

    prompt: str
    image: Image.Image
    letter_ids: tuple[int, ...]


def builds_own_positions(model: nn.Module) -> bool:
    """True for models that derive (multimodal) positions from the attention mask themselves."""
    inner = getattr(model, "model", model)
    return callable(getattr(inner, "get_rope_index", None))


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter."""
    param = next(model.parameters())
    return param.device, param.dtype


@contextlib.contextmanager
def left_padding(tokenizer: Any) -> Iterator[None]:
    """Pad on the left inside the block (batched next-token scoring and generation need it); restore after."""
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = old


@contextlib.contextmanager
def seeded_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run with the global torch RNG (CPU and ``device``) forked and seeded; no-op for ``seed=None``."""
    if seed is None:
        yield
        return
    cuda = device.type == "cuda"
    index = device.index if device.index is not None else (torch.cuda.current_device() if cuda else 0)
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def encode_batch(processor: Any, requests: Sequence[ForwardRequest]) -> dict[str, Tensor]:
    """Processor outputs for ``requests`` with the tokenizer padding on the left."""
    with left_padding(tokenizer_of(processor)):
        encoded = processor(
            text=[r.prompt for r in requests],
            images=[r.image for r in requests],
            padding=True,
            return_tensors="pt",
        )
    return dict(encoded)


def scoring_inputs(model: nn.Module, processor: Any, requests: Sequence[ForwardRequest]) -> dict[str, Tensor]:
    """The model's inputs for ``requests``: left-padded, with explicit positions where the model takes them,
    on the model's device and (floating tensors) dtype."""
    device, dtype = model_device_dtype(model)
    batch = encode_batch(processor, requests)
    mask = batch.get("attention_mask")
    if mask is None:
        raise UQMergeError(f"{type(processor).__name__} returned no attention_mask; cannot batch prompts")
    if not bool(mask[:, -1].all()):
        raise UQMergeError("left padding failed: a prompt's last position is padding")
    if not builds_own_positions(model):
        batch["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return {
        k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
        for k, v in batch.items()
        if isinstance(v, Tensor)
    }


def letter_probabilities(
    model: nn.Module,
    processor: Any,
    requests: Sequence[ForwardRequest],
    *,
    dropout_seed: int | None = None,
) -> list[Tensor]:
    """Softmax over each request's option-letter logits at the next-token position (float64, CPU).

    The model must already be in the wanted train/eval state (see :func:`.perturb.inference_mode`);
    ``dropout_seed`` seeds the RNG that MC dropout draws from for this forward pass.
    """
    if not requests:
        return []
    device, _ = model_device_dtype(model)
    inputs = scoring_inputs(model, processor, requests)
    with seeded_rng(dropout_seed, device), torch.inference_mode():
        logits = model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1, :]
    logits = logits.to(device="cpu", dtype=torch.float64)
    return [torch.softmax(logits[i, list(r.letter_ids)], dim=-1) for i, r in enumerate(requests)]
