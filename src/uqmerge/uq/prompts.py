"""The UQ prompt: user text, chat messages rendered by the model's own template, option-letter tokens."""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

from uqmerge.core.errors import UQMergeError

LETTERS: tuple[str, ...] = tuple(string.ascii_uppercase)
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
IDK_OPTION = "I don't know"
NOTA_OPTION = "None of the above"


def format_user_text(question: str, options: Sequence[str], hint: str | None = None) -> str:
    """``[hint\\n]question\\nA. …\\nB. …\\n…\\nAnswer with the option's letter from the given choices directly.``"""
    lines = [hint] if hint else []
    lines.append(question)
    lines.extend(f"{letter}. {option}" for letter, option in zip(LETTERS, options, strict=False))
    lines.append(ANSWER_INSTRUCTION)
    return "\n".join(lines)


def build_messages(user_text: str, system_message: str | None = None) -> list[dict[str, Any]]:
    """Chat messages: an optional system message, then the user turn with the image before the text."""
    messages: list[dict[str, Any]] = []
    if system_message is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_message}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]})
    return messages


def _template_owner(processor: Any) -> Any:
    if getattr(processor, "chat_template", None):
        return processor
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer
    raise UQMergeError(
        f"{type(processor).__name__} has no chat template; UQ renders prompts with the model's own "
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


def _first_answer_token(processor: Any, letter: str) -> int | None:
    """Token id the template places first in an assistant turn answering ``letter`` (None if unknown)."""
    tokenizer = tokenizer_of(processor)
    user = build_messages("Q")
    try:
        prefix = render_prompt(processor, user)
        full = render_prompt(
            processor,
            [*user, {"role": "assistant", "content": [{"type": "text", "text": letter}]}],
            add_generation_prompt=False,
        )
    except Exception:  # templates that reject an assistant turn: fall back to plain encoding
        return None
    if not full.startswith(prefix):
        return None
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if len(full_ids) <= len(prefix_ids) or full_ids[: len(prefix_ids)] != prefix_ids:
        return None
    return int(full_ids[len(prefix_ids)])


def resolve_option_token_ids(processor: Any, count: int) -> tuple[int, ...]:
    """Token ids of the letters ``A``… (``count`` of them) as the model emits them first.

    The token is the first one the chat template puts in an assistant turn that answers the letter
    (``▁A`` for Llama-style tokenizers after ``ASSISTANT:``, ``A`` for ChatML); when the template
    cannot render that, the plain encoding of the letter. Raises :class:`UQMergeError` if a letter is
    not exactly one token or two letters share a token.
    """
    if count > len(LETTERS):
        raise UQMergeError(f"{count} options exceed the {len(LETTERS)} letters A–Z")
    tokenizer = tokenizer_of(processor)
    ids: list[int] = []
    for letter in LETTERS[:count]:
        token = _first_answer_token(processor, letter)
        if token is None or tokenizer.decode([token]).strip() != letter:
            plain = tokenizer(letter, add_special_tokens=False)["input_ids"]
            if len(plain) != 1 or tokenizer.decode(plain).strip() != letter:
                pieces = tokenizer.convert_ids_to_tokens(plain)
                raise UQMergeError(
                    f"option letter {letter!r} is not a single token in {type(tokenizer).__name__} "
                    f"(encodes as {pieces}); UQ reads one letter token per option"
                )
            token = int(plain[0])
        ids.append(token)
    if len(set(ids)) != len(ids):
        raise UQMergeError(f"option letters {LETTERS[:count]} do not map to distinct tokens: {ids}")
    return tuple(ids)
