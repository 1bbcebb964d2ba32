"""Tiny model builders: offline round trip, image-token count, tokenizer case handling, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from uqmerge.tiny import OPTION_LETTERS, build_tiny_llava, build_tiny_qwen2vl, build_word_tokenizer


def _digest(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_word_tokenizer_keeps_option_letters_apart_from_words() -> None:
    tok = build_word_tokenizer(["What colour is the circle?"])
    letters = [tok.convert_tokens_to_ids(c) for c in OPTION_LETTERS]
    assert len(set(letters)) == len(OPTION_LETTERS)
    assert tok.unk_token_id not in letters
    for system in ("you are a helpful assistant", "You are a nice assistant."):
        ids = tok(system, add_special_tokens=False)["input_ids"]
        assert not set(ids) & set(letters), "the article 'a' must not be the option token 'A'"
        assert tok.unk_token_id not in ids
    assert tok("A. red", add_special_tokens=False)["input_ids"][0] == letters[0]
    assert tok.convert_tokens_to_ids("You") != tok.convert_tokens_to_ids("you")
    assert tok("Zebra", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_word_tokenizer_template_renders_roles_and_image() -> None:
    tok = build_word_tokenizer([])
    messages = [
        {"role": "system", "content": "you are a nice assistant"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<s><|system|> you are a nice assistant <|end|> <|user|> <image> What is it? <|end|> <|assistant|> "
    )


@pytest.mark.parametrize("builder", [build_tiny_llava, build_tiny_qwen2vl])
def test_builders_load_offline_and_forward(tmp_path: Path, builder) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = builder(tmp_path / "m", seed=3)
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    assert 50_000 < n_params < 1_000_000
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], images=[Image.new("RGB", (45, 30), (200, 10, 10))], return_tensors="pt")
    image_tokens = int((batch["input_ids"] == model.config.image_token_id).sum())
    if builder is build_tiny_llava:
        assert image_tokens == 16  # (32/8)^2 patches; CLS counted and dropped by strategy "default"
    else:
        assert image_tokens == int(batch["image_grid_thw"].prod()) // 4  # 2x2 spatial merge
    with torch.inference_mode():
        logits = model(**batch, logits_to_keep=1).logits
    assert logits.shape == (1, 1, len(processor.tokenizer))


def test_builders_are_deterministic_and_leave_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_tiny_llava(tmp_path / "a", seed=1, hidden=32, layers=1)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_tiny_llava(tmp_path / "b", seed=1, hidden=32, layers=1)
    c = build_tiny_llava(tmp_path / "c", seed=2, hidden=32, layers=1)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
