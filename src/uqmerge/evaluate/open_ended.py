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

from uqmerge.errors import DataError
from uqmerge.uq.data import jsonl_rows
from uqmerge.uq.prompts import build_messages, render_prompt, tokenizer_of
from uqmerge.uq.scoring import left_padding

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


def generate_answers(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[str]:
    """Greedy answers to ``questions`` about ``images`` in one left-padded batch (special tokens dropped)."""
    tokenizer = tokenizer_of(processor)
    prompts = [render_prompt(processor, build_messages(q)) for q in questions]
    with left_padding(tokenizer):
        batch = processor(text=prompts, images=list(images), padding=True, return_tensors="pt")
    param = next(model.parameters())
    inputs = {
        k: (v.to(device=param.device, dtype=param.dtype) if v.is_floating_point() else v.to(param.device))
        for k, v in batch.items()
        if isinstance(v, torch.Tensor)
    }
    pad_id = model.generation_config.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.pad_token_id
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id, num_beams=1)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True) for row in new_tokens]


def evaluate_open_ended(
    model: Any,
    processor: Any,
    items: Sequence[OpenItem],
    batch_size: int = 64,
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Exact-match accuracy of greedy answers, per family.

    Returns ``{"accuracy": {family: float}, "mean_accuracy": float (unweighted over families),
    "n": {family: int}, "predictions": [{"id", "family", "prediction", "answer", "correct"}]}``.
    ``on_batch(k)`` is called with the number of items after each batch.
    """
    if not items:
        raise DataError("no open-ended items to evaluate")
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    was_training = model.training
    model.eval()
    predictions: list[dict[str, Any]] = []
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            answers = generate_answers(
                model,
                processor,
                [item.load_image() for item in chunk],
                [item.question for item in chunk],
                max_new_tokens=max_new_tokens,
            )
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
