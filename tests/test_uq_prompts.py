"""The UQ prompt text, its rendering by the model's own chat template, and option-letter tokens."""

from __future__ import annotations

import pytest

from uqmerge.core.errors import UQMergeError
from uqmerge.core.prompts import SYSTEM_MESSAGES, build_messages, format_user_text, render_prompt
from uqmerge.tiny import build_word_tokenizer
from uqmerge.uq.perturb import draw_system_message
from uqmerge.uq.prompts import resolve_option_token_ids

OPTIONS = ["red", "blue", "green", "yellow", "I don't know", "None of the above"]


def test_user_text_matches_the_spec_exactly() -> None:
    text = format_user_text("What colour is the circle?", OPTIONS, hint="Look closely.")
    assert text == (
        "Look closely.\nWhat colour is the circle?\nA. red\nB. blue\nC. green\nD. yellow\nE. I don't know\n"
        "F. None of the above\nAnswer with the option's letter from the given choices directly."
    )
    assert (
        format_user_text("Q?", ["x", "y"])
        == "Q?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly."
    )


def test_system_messages_are_the_nine_of_the_paper() -> None:
    assert len(set(SYSTEM_MESSAGES)) == 9
    assert {m.rstrip(".").lower() for m in SYSTEM_MESSAGES} == {
        "you are a helpful assistant",
        "you are a question-answering assistant",
        "you are a nice assistant",
    }
    drawn = {draw_system_message(s) for s in range(200)}
    assert drawn == set(SYSTEM_MESSAGES)
    assert draw_system_message(7) == draw_system_message(7)


def test_llava_prompt_uses_the_chat_template_with_image(uq_llava) -> None:
    _, processor = uq_llava
    user = format_user_text("What colour?", OPTIONS[:4])
    prompt = render_prompt(processor, build_messages(user, "You are a nice assistant."))
    assert prompt == (
        "<s><|system|> You are a nice assistant. <|end|> <|user|> <image> " + user + " <|end|> <|assistant|> "
    )
    assert render_prompt(processor, build_messages(user)).startswith("<s><|user|> <image> What colour?")


def test_qwen2vl_prompt_uses_the_chat_template_with_image(uq_qwen2vl) -> None:
    _, processor = uq_qwen2vl
    user = format_user_text("What colour?", OPTIONS[:4])
    prompt = render_prompt(processor, build_messages(user, "you are a nice assistant"))
    assert prompt == (
        "<|im_start|>system\nyou are a nice assistant<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|image_pad|><|vision_end|>{user}<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("fixture", ["uq_llava", "uq_qwen2vl"])
def test_option_letters_resolve_to_single_distinct_tokens(fixture: str, request: pytest.FixtureRequest) -> None:
    _, processor = request.getfixturevalue(fixture)
    ids = resolve_option_token_ids(processor, 6)
    assert processor.tokenizer.convert_ids_to_tokens(list(ids)) == ["A", "B", "C", "D", "E", "F"]


def test_letter_that_is_not_a_single_token_is_an_error() -> None:
    tokenizer = build_word_tokenizer([])  # knows A-F only; "G" is <unk>
    with pytest.raises(UQMergeError, match="'G' is not a single token"):
        resolve_option_token_ids(tokenizer, 7)
