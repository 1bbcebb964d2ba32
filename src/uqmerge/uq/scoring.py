"""One forward pass per group of prompts: explicit positions, per-row MC-dropout keys, letter softmax.

Batch invariance. A CPU matrix product can round a row differently depending on how many rows are
computed with it when they are few (the BLAS picks kernels and thread splits by shape). So the parts with
few rows per prompt run one prompt at a time: each image is encoded on its own and handed to the model as
``mm_encoder_outputs`` (:func:`encode_images_one_at_a_time`; passes that share an unperturbed image share
its encoding), and on the CPU the output head runs one row at a time (:func:`row_wise_output_head`; only
the last position's logits are computed, ``logits_to_keep=1``). The language model runs batched, and the
UQ loop batches prompts of equal token length only, so no row is padded. A row's probabilities are then
bit-identical on the CPU whatever it is batched with, as long as prompts have enough tokens for the BLAS
to split the language model's products the same way (tested with MKL at 1 to 16 threads on prompts of
about 50 tokens). On CUDA the head runs batched (a large vocabulary's head read once per row would cost
more than the batch), and scores may differ in the last bits between batch sizes.

Padding. Prompts of unequal length are left-padded; models with plain 1-D positions then get
``position_ids = cumsum(attention_mask) − 1`` (otherwise a row's positions would start at its pad count),
while models that build their own multimodal positions from the attention mask (Qwen2-VL's M-RoPE
``get_rope_index``) are left to do so; padded rows agree with unpadded ones up to rounding.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from uqmerge.core.errors import UQMergeError
from uqmerge.core.prompts import left_padding, tokenizer_of
from uqmerge.uq.perturb import DropoutRows, dropout_rows


@dataclass(frozen=True)
class ForwardRequest:
    """One prompt to score: rendered chat text, its (possibly perturbed) image, the option-letter ids, and the
    seed parts of its MC-dropout masks (None when the pass has no model perturbation)."""

    prompt: str
    image: Image.Image
    letter_ids: tuple[int, ...]
    dropout_key: tuple[object, ...] | None = None


def builds_own_positions(model: nn.Module) -> bool:
    """True for models that derive (multimodal) positions from the attention mask themselves."""
    inner = getattr(model, "model", model)
    return callable(getattr(inner, "get_rope_index", None))


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter."""
    param = next(model.parameters())
    return param.device, param.dtype


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


def prompt_lengths(processor: Any, prompts: Sequence[str], image: Image.Image) -> list[int]:
    """Token length of each of ``prompts`` with ``image`` as the processor encodes it (image tokens expanded);
    one processor call for all of them."""
    batch = encode_batch(processor, [ForwardRequest(prompt, image, ()) for prompt in prompts])
    return [int(n) for n in batch["attention_mask"].sum(-1).tolist()]


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


@contextlib.contextmanager
def row_wise_output_head(model: nn.Module) -> Iterator[None]:
    """Inside the block the model's output head (``get_output_embeddings()``) runs on one batch row at a time.

    The rest of the model's forward (and any logit post-processing it does) is unchanged; the head's own
    ``forward`` is restored on exit. A model without an output-embeddings module is left as it is.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    own = "forward" in vars(head)
    forward = head.forward

    def one_row_at_a_time(hidden: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return torch.cat([forward(hidden[i : i + 1], *args, **kwargs) for i in range(hidden.shape[0])])

    head.forward = one_row_at_a_time
    try:
        yield
    finally:
        if own:
            head.forward = forward
        else:
            del head.forward


_IMAGE_META: tuple[str, ...] = ("image_grid_thw", "image_sizes")
"""Per-image processor outputs that travel with an image's pixels (Qwen2-VL's patch grid, LLaVA-NeXT's size)."""


def takes_encoder_outputs(model: nn.Module) -> bool:
    """True for models whose forward accepts precomputed image features (``mm_encoder_outputs``)."""
    return callable(getattr(model, "get_image_features", None)) and (
        "mm_encoder_outputs" in inspect.signature(model.forward).parameters
    )


def _image_chunks(inputs: dict[str, Any]) -> list[dict[str, Tensor]]:
    """``get_image_features`` arguments of each image: its pixels (a row, or its patches) and its metadata."""
    pixels = inputs["pixel_values"]
    if "image_grid_thw" in inputs:
        parts = list(torch.split(pixels, inputs["image_grid_thw"].prod(-1).tolist()))
    else:
        parts = [pixels[i : i + 1] for i in range(pixels.shape[0])]
    meta = [k for k in _IMAGE_META if isinstance(inputs.get(k), Tensor)]
    return [{"pixel_values": part, **{k: inputs[k][i : i + 1] for k in meta}} for i, part in enumerate(parts)]


def encode_images_one_at_a_time(
    model: nn.Module, inputs: dict[str, Any], requests: Sequence[ForwardRequest]
) -> dict[str, Any]:
    """``inputs`` with ``pixel_values`` replaced by ``mm_encoder_outputs``: each image encoded on its own.

    Requests that share one image object (passes without image perturbation) share its features. Models
    that cannot take precomputed features, inputs without one image per request and features that are not
    one tensor per image are left as they are (the images then run batched).
    """
    if "pixel_values" not in inputs or not takes_encoder_outputs(model):
        return inputs
    chunks = _image_chunks(inputs)
    if len(chunks) != len(requests):
        return inputs
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    first: dict[int, int] = {}
    features: list[Tensor] = []
    for index, (request, chunk) in enumerate(zip(requests, chunks, strict=True)):
        source = first.setdefault(id(request.image), index)
        if source != index:
            features.append(features[source])
            continue
        encoded = model.get_image_features(**chunk, return_dict=True).pooler_output
        if len(encoded) != 1:  # an architecture whose features are not one tensor per image: keep it batched
            return inputs
        features.append(encoded[0])
    rest = {k: v for k, v in inputs.items() if k != "pixel_values"}
    return {**rest, "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=tuple(features))}}


def _dropout_rows(requests: Sequence[ForwardRequest], mask: Tensor) -> DropoutRows | None:
    keys = [r.dropout_key for r in requests]
    if all(k is None for k in keys):
        return None
    if any(k is None for k in keys):
        raise UQMergeError("a batch mixes passes with and without MC-dropout keys")
    pads = (mask.shape[-1] - mask.long().sum(-1)).tolist()
    return DropoutRows(keys=tuple(k for k in keys if k is not None), pads=tuple(int(p) for p in pads))


def letter_probabilities_of_inputs(
    model: nn.Module, inputs: dict[str, Any], requests: Sequence[ForwardRequest]
) -> list[Tensor]:
    """:func:`letter_probabilities` on inputs already built by :func:`scoring_inputs` for ``requests``."""
    rows = _dropout_rows(requests, inputs["attention_mask"])
    on_cpu = model_device_dtype(model)[0].type == "cpu"
    head = row_wise_output_head(model) if on_cpu else contextlib.nullcontext()
    with dropout_rows(rows), head, torch.inference_mode():
        inputs = encode_images_one_at_a_time(model, inputs, requests)
        logits = model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1, :]
    logits = logits.to(device="cpu", dtype=torch.float64)
    return [torch.softmax(logits[i, list(r.letter_ids)], dim=-1) for i, r in enumerate(requests)]


def letter_probabilities(model: nn.Module, processor: Any, requests: Sequence[ForwardRequest]) -> list[Tensor]:
    """Softmax over each request's option-letter logits at the next-token position (float64, CPU).

    The model must already be in the wanted train/eval state (see :func:`.perturb.inference_mode`); with MC
    dropout on, each request's ``dropout_key`` seeds its own masks.
    """
    if not requests:
        return []
    return letter_probabilities_of_inputs(model, scoring_inputs(model, processor, requests), requests)
