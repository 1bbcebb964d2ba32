"""Open-ended evaluation: greedy generation, batched with left padding, scored by normalised exact match.

Items are JSONL records ``{"id", "image", "question", "answer"}`` (``image`` relative to the file),
the layout of the zoo's ``data/held_out/<family>.jsonl``; the family (dataset) of an item defaults to
the file's stem. Each prompt is the question after the image, rendered by the model's own chat
template with the generation prompt; the model generates greedily (at most ``max_new_tokens``) and
stops at its generation config's end-of-turn ids. A prediction is correct when its normalised text
(:func:`normalise_answer`) equals the normalised reference answer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from uqmerge.core.errors import DataError
from uqmerge.core.jsonl import jsonl_rows
from uqmerge.core.prompts import build_messages, left_padding, render_prompt, tokenizer_of

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 8
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class OpenItem:
    """One open-ended question about an image, with its reference answer and family (dataset)."""

    id: str
    family: str
    question: str
    answer: str
    image: Path | Image.Image

    def load_image(self) -> Image.Image:
        if isinstance(self.image, Image.Image):
            return self.image.convert("RGB")
        try:
            with Image.open(self.image) as img:
                return img.convert("RGB")
        except OSError as e:
            raise DataError(f"item {self.id!r}: cannot read image {self.image}: {e}") from e


def load_open_items(path: str | Path, *, family: str | None = None) -> list[OpenItem]:
    """Read open-ended items from a JSONL file; ``family`` defaults to the file's stem."""
    file = Path(path)
    items = []
    for lineno, row in jsonl_rows(file, "open-ended items from"):
        missing = [key for key in ("id", "image", "question", "answer") if key not in row]
        if missing:
            raise DataError(f"{file}:{lineno}: missing field(s) {missing}; expected id, image, question, answer")
        image = Path(row["image"])
        items.append(
            OpenItem(
                id=str(row["id"]),
                family=family or file.stem,
                question=str(row["question"]),
                answer=str(row["answer"]),
                image=image if image.is_absolute() else file.parent / image,
            )
        )
    return items


def normalise_answer(text: str) -> str:
    """Lower-case, strip surrounding whitespace and final ``.``/``!``/``?``, collapse inner whitespace."""
    return _SPACES.sub(" ", text.strip().rstrip(".!?").strip().lower())


def encode_questions(
    processor: Any, images: Sequence[Image.Image], questions: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The processor's left-padded batch of prompts (each question after its image, in the chat template)."""
    return encode_prompts(processor, [[image] for image in images], questions)


def encode_prompts(
    processor: Any, image_lists: Sequence[Sequence[Image.Image]], texts: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The left-padded batch of prompts with any number of images each (none: a text-only prompt), the images
    before the text in the chat template."""
    tokenizer = tokenizer_of(processor)
    prompts = [
        render_prompt(processor, build_messages(t, images=len(ims))) for t, ims in zip(texts, image_lists, strict=True)
    ]
    flat = [image for ims in image_lists for image in ims]
    with left_padding(tokenizer):
        batch = processor(text=prompts, images=flat or None, padding=True, return_tensors="pt")
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def generate_from_inputs(
    model: Any, processor: Any, batch: dict[str, torch.Tensor], *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
) -> list[str]:
    """Greedy answers to an :func:`encode_questions` batch (special tokens dropped)."""
    tokenizer = tokenizer_of(processor)
    param = next(model.parameters())
    inputs = {
        k: (v.to(device=param.device, dtype=param.dtype) if v.is_floating_point() else v.to(param.device))
        for k, v in batch.items()
    }
    pad_id = model.generation_config.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.pad_token_id
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id, num_beams=1)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True) for row in new_tokens]


def generate_answers(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[str]:
    """Greedy answers to ``questions`` about ``images`` in one left-padded batch (special tokens dropped)."""
    batch = encode_questions(processor, images, questions)
    return generate_from_inputs(model, processor, batch, max_new_tokens=max_new_tokens)


def _encode_items(processor: Any, items: Sequence[OpenItem]) -> dict[str, torch.Tensor]:
    return encode_questions(processor, [item.load_image() for item in items], [item.question for item in items])


@dataclass(frozen=True)
class EncodedOpenItems:
    """Open-ended items with their processor batches prepared once, for evaluating many models on one set."""

    items: tuple[OpenItem, ...]
    batches: tuple[dict[str, torch.Tensor], ...]
    batch_size: int


def encode_open_items(processor: Any, items: Sequence[OpenItem], batch_size: int = 64) -> EncodedOpenItems:
    """Encode ``items`` in batches of ``batch_size`` (what :func:`evaluate_open_ended` would encode each call)."""
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    batches = tuple(
        _encode_items(processor, items[start : start + batch_size]) for start in range(0, len(items), batch_size)
    )
    return EncodedOpenItems(tuple(items), batches, batch_size)


def evaluate_open_ended(
    model: Any,
    processor: Any,
    items: Sequence[OpenItem] | EncodedOpenItems,
    batch_size: int = 64,
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Exact-match accuracy of greedy answers, per family.

    ``items`` may be :func:`encode_open_items`' encoding (its batches and batch size are used as they are:
    the same answers, without re-encoding the set for every model).

    Returns ``{"accuracy": {family: float}, "mean_accuracy": float (unweighted over families),
    "n": {family: int}, "predictions": [{"id", "family", "prediction", "answer", "correct"}]}``.
    ``on_batch(k)`` is called with the number of items after each batch.
    """
    encoded = items if isinstance(items, EncodedOpenItems) else None
    if encoded is not None:
        items, batch_size = encoded.items, encoded.batch_size
    if not items:
        raise DataError("no open-ended items to evaluate")
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    was_training = model.training
    model.eval()
    predictions: list[dict[str, Any]] = []
    try:
        for index, start in enumerate(range(0, len(items), batch_size)):
            chunk = items[start : start + batch_size]
            batch = encoded.batches[index] if encoded is not None else _encode_items(processor, chunk)
            answers = generate_from_inputs(model, processor, batch, max_new_tokens=max_new_tokens)
            for item, text in zip(chunk, answers, strict=True):
                correct = normalise_answer(text) == normalise_answer(item.answer)
                predictions.append(
                    {
                        "id": item.id,
                        "family": item.family,
                        "prediction": text,
                        "answer": item.answer,
                        "correct": correct,
                    }
                )
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        model.train(was_training)
    families = list(dict.fromkeys(item.family for item in items))
    n = {f: sum(1 for p in predictions if p["family"] == f) for f in families}
    accuracy = {f: sum(1 for p in predictions if p["family"] == f and p["correct"]) / n[f] for f in families}
    return {
        "accuracy": accuracy,
        "mean_accuracy": sum(accuracy.values()) / len(accuracy),
        "n": n,
        "predictions": predictions,
    }
