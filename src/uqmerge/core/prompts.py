"""Prompt primitives shared by UQ, evaluation and the zoo: MC user text, chat messages, the chat template."""

from __future__ import annotations

import contextlib
import string
from collections.abc import Iterator, Sequence
from typing import Any

from uqmerge.core.errors import UQMergeError

LETTERS: tuple[str, ...] = tuple(string.ascii_uppercase)
"""Option letters, in option order."""

ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."

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
"""The nine system messages of the UQ text perturbation (UQ-Merge, appendix B.1); the zoo trains with them."""


def format_user_text(question: str, options: Sequence[str], hint: str | None = None) -> str:
    """``[hint\\n]question\\nA. …\\nB. …\\n…\\nAnswer with the option's letter from the given choices directly.``"""
    lines = [hint] if hint else []
    lines.append(question)
    lines.extend(f"{letter}. {option}" for letter, option in zip(LETTERS, options, strict=False))
    lines.append(ANSWER_INSTRUCTION)
    return "\n".join(lines)


def build_messages(user_text: str, system_message: str | None = None, *, images: int = 1) -> list[dict[str, Any]]:
    """Chat messages: an optional system message, then the user turn with its ``images`` before the text."""
    messages: list[dict[str, Any]] = []
    if system_message is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_message}]})
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(images)]
    messages.append({"role": "user", "content": [*content, {"type": "text", "text": user_text}]})
    return messages


def _template_owner(processor: Any) -> Any:
    if getattr(processor, "chat_template", None):
        return processor
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer
    raise UQMergeError(
        f"{type(processor).__name__} has no chat template; prompts are rendered with the model's own "
        "template (save one with processor.chat_template = ... and save_pretrained)"
    )


def render_prompt(processor: Any, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True) -> str:
    """The prompt string from the processor's (or its tokenizer's) chat template, untokenised."""
    return _template_owner(processor).apply_chat_template(
        list(messages), add_generation_prompt=add_generation_prompt, tokenize=False
    )


def tokenizer_of(processor: Any) -> Any:
    """The tokenizer of a processor (or the object itself when it is a tokenizer)."""
    return getattr(processor, "tokenizer", processor)


@contextlib.contextmanager
def left_padding(tokenizer: Any) -> Iterator[None]:
    """Pad on the left inside the block (batched next-token scoring and generation need it); restore after."""
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = old
