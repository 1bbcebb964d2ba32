"""The UQ prompt's extras over :mod:`uqmerge.core.prompts`: the two appended options and option-letter tokens."""

from __future__ import annotations

from typing import Any

from uqmerge.core.errors import UQMergeError
from uqmerge.core.prompts import LETTERS, build_messages, render_prompt, tokenizer_of

IDK_OPTION = "I don't know"
NOTA_OPTION = "None of the above"


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
