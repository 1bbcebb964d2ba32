"""Builders of tiny, real-class Hugging Face MLLM directories (LLaVA, LLaVA-NeXT, Qwen2-VL) for tests and the zoo.

Every builder writes a directory with ``save_pretrained`` (config, ``model.safetensors``, tokenizer,
image processor, processor config and chat template) that loads offline with the model's own class,
``AutoModelForImageTextToText`` and ``AutoProcessor``. Weights are a deterministic function of
``seed``: they are drawn inside a forked torch RNG seeded with ``seed`` (never Python's salted
``hash()``), so the caller's global RNG is left untouched.

Tokenizer design (the word-level pitfall). The tokenizer is word-level and **case-sensitive**; it has
no lower-casing normaliser. A lower-casing vocabulary would map the option letter ``A`` to the article
``a`` ("you are a helpful assistant"), so the letter the scorer reads would also be an ordinary word of
every system prompt. Here the option letters ``A``–``F`` are dedicated single tokens that only an
upper-case standalone ``A``–``F`` produces; every other vocabulary word is added in its given,
lower-case and capitalised forms (``you``/``You``) except single letters, which are added as given.
Unknown words become ``<unk>``; punctuation characters are isolated tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

OPTION_LETTERS: tuple[str, ...] = ("A", "B", "C", "D", "E", "F")
"""Option letters that are guaranteed single tokens in every tiny tokenizer."""

PUNCTUATION: tuple[str, ...] = tuple(".,?!:;'\"()[]-/+=*%&#_")

BASE_WORDS: tuple[str, ...] = (
    # the UQ prompt and the two appended options
    "Answer with the option's letter from the given choices directly.",
    "I don't know",
    "None of the above",
    "Hint:",
    "system user assistant",
    # the nine system messages of the text perturbation (case variants are added automatically)
    "you are a helpful assistant",
    "you are a question-answering assistant",
    "you are a nice assistant",
    # generic question words
    "what which how many is are there in on of the image picture colour color shape object "
    "left right top bottom middle center red green blue yellow white black orange purple "
    "circle square triangle cross star one two three four five six zero yes no",
)
"""Words every tiny tokenizer knows: the UQ prompt, the system messages, and a small question vocabulary."""

TokenizerStyle = Literal["llava", "qwen2vl"]

_LLAVA_SPECIALS = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
}
_LLAVA_EXTRA = ("<image>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
_QWEN_SPECIALS = {
    "pad_token": "<|endoftext|>",
    "unk_token": "<unk>",
    "eos_token": "<|im_end|>",
}
_QWEN_EXTRA = (
    "<|im_start|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

LLAVA_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|> ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image> ' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- ' <|end|> ' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|> ' -}}{%- endif -%}"
)
"""Tiny LLaVA chat template: ``<s><|system|> … <|end|> <|user|> <image> text <|end|> <|assistant|> ``."""

QWEN2VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""Tiny Qwen2-VL chat template (Qwen's ChatML layout, without Qwen's default system message)."""


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")])


def _vocabulary_words(words: Iterable[str]) -> list[str]:
    """Split ``words`` like the tokenizer does and add case variants (single letters stay as given)."""
    splitter = _pre_tokenizer()
    seen: dict[str, None] = {}
    for text in (*BASE_WORDS, *words):
        for piece, _span in splitter.pre_tokenize_str(text):
            variants = (piece,) if len(piece) == 1 else (piece, piece.lower(), piece.capitalize())
            for variant in variants:
                seen.setdefault(variant, None)
    return list(seen)


def build_word_tokenizer(words: Sequence[str], *, style: TokenizerStyle = "llava") -> PreTrainedTokenizerFast:
    """Build a case-sensitive word-level tokenizer with special tokens and a chat template.

    ``words`` are strings (whole sentences are fine) whose whitespace/punctuation pieces become the
    vocabulary, on top of :data:`BASE_WORDS`. Token ids are assigned deterministically: special tokens,
    then the option letters ``A``–``F``, punctuation, then words in order of first appearance.
    ``style="llava"`` gives ``<s>``/``</s>``/``<pad>``/``<unk>``, ``<image>`` and role markers
    ``<|system|>``/``<|user|>``/``<|assistant|>``/``<|end|>`` with :data:`LLAVA_CHAT_TEMPLATE`;
    ``style="qwen2vl"`` gives ``<|im_start|>``/``<|im_end|>``/``<|endoftext|>`` and the vision tokens
    ``<|vision_start|>``/``<|image_pad|>``/``<|vision_end|>``/``<|video_pad|>`` with
    :data:`QWEN2VL_CHAT_TEMPLATE`.
    """
    if style == "llava":
        specials, extra, template = _LLAVA_SPECIALS, _LLAVA_EXTRA, LLAVA_CHAT_TEMPLATE
    elif style == "qwen2vl":
        specials, extra, template = _QWEN_SPECIALS, _QWEN_EXTRA, QWEN2VL_CHAT_TEMPLATE
    else:
        raise ValueError(f"unknown tokenizer style {style!r}; use 'llava' or 'qwen2vl'")
    special_list = list(dict.fromkeys([*specials.values(), *extra]))
    vocab: dict[str, int] = {}
    for token in (*special_list, *OPTION_LETTERS, *PUNCTUATION, *_vocabulary_words(words)):
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials["unk_token"]))
    core.pre_tokenizer = _pre_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        **specials,
        additional_special_tokens=[t for t in special_list if t not in specials.values()],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = template
    return tokenizer


def _fresh_model(model_cls: type, config, seed: int, dtype: torch.dtype):
    """Instantiate ``model_cls(config)`` with weights drawn from a forked RNG seeded by ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.to(dtype).eval()


def build_tiny_llava(
    out_dir: str | Path,
    *,
    words: Sequence[str] = (),
    seed: int = 0,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    vision_hidden: int = 64,
    vision_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    init_std: float = 0.02,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tiny ``LlavaForConditionalGeneration`` (Llama text, CLIP vision) + ``LlavaProcessor``.

    The processor expands ``<image>`` to exactly the number of image features the model produces:
    ``(image_size // patch_size) ** 2`` patches, CLIP's CLS counted by ``num_additional_image_tokens=1``
    and dropped again by strategy ``default`` (32/8 → 16 tokens). Returns ``out_dir``.
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    out = Path(out_dir)
    tokenizer = build_word_tokenizer(words, style="llava")
    text_config = _tiny_llama_config(tokenizer, hidden, layers, heads, init_std)
    vision_config = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=max(1, vision_hidden // 32),
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
        initializer_range=init_std,
    )
    num_image_tokens = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=num_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.initializer_range = init_std
    model = _fresh_model(LlavaForConditionalGeneration, config, seed, dtype)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.debug("wrote tiny LLaVA (%d parameters) to %s", sum(p.numel() for p in model.parameters()), out)
    return out


def _tiny_llama_config(tokenizer: PreTrainedTokenizerFast, hidden: int, layers: int, heads: int, init_std: float):
    """The Llama text config of the tiny LLaVA and LLaVA-NeXT builders (one home, so both match)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        initializer_range=init_std,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def build_tiny_llava_next(
    out_dir: str | Path,
    *,
    words: Sequence[str] = (),
    seed: int = 0,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    vision_hidden: int = 96,
    vision_layers: int = 2,
    vision_heads: int = 3,
    image_size: int = 32,
    patch_size: int = 8,
    init_std: float = 0.02,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tiny ``LlavaNextForConditionalGeneration`` (Llama text, SigLIP vision) + ``LlavaNextProcessor``.

    The text model and tokenizer are :func:`build_tiny_llava`'s for the same ``words`` and sizes; the vision
    tower is a ``SiglipVisionModel`` (no CLS token, no pooling head; features of its last layer, strategy
    ``full``) and the connector LLaVA-NeXT's projector with its ``image_newline``. One grid point of the image's
    own size (``image_grid_pinpoints = [[image_size, image_size]]``) makes an image the base view plus one
    tile: ``2·(image_size // patch_size)²`` features and one newline per tile row (32/8 → 36 ``<image>``
    tokens). Pixels are normalised with SigLIP's mean and std (0.5). Returns ``out_dir``.
    """
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        SiglipVisionConfig,
    )

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    out = Path(out_dir)
    tokenizer = build_word_tokenizer(words, style="llava")
    vision_config = SiglipVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        vision_use_head=False,
    )
    config = LlavaNextConfig(
        vision_config=vision_config,
        text_config=_tiny_llama_config(tokenizer, hidden, layers, heads, init_std),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=[[image_size, image_size]],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config.initializer_range = init_std
    model = _fresh_model(LlavaNextForConditionalGeneration, config, seed, dtype)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=[[image_size, image_size]],
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.debug("wrote tiny LLaVA-NeXT (%d parameters) to %s", sum(p.numel() for p in model.parameters()), out)
    return out


def build_tiny_qwen2vl(
    out_dir: str | Path,
    *,
    words: Sequence[str] = (),
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    vision_embed: int = 32,
    vision_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    merge_size: int = 2,
    init_std: float = 0.02,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tiny ``Qwen2VLForConditionalGeneration`` + ``Qwen2VLProcessor``.

    The image processor is pinned to ``image_size``² pixels (``min_pixels == max_pixels``), so a
    square image becomes an ``(image_size/patch_size)``² patch grid and
    ``(image_size/patch_size/merge_size)``² ``<|image_pad|>`` tokens. M-RoPE sections are derived from
    the head dimension. Returns ``out_dir``.
    """
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    if image_size % (patch_size * merge_size):
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size*merge_size")
    head_dim = hidden // heads
    if head_dim % 2:
        raise ValueError(f"hidden/heads = {head_dim} must be even for rotary embeddings")
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
    out = Path(out_dir)
    tokenizer = build_word_tokenizer(words, style="qwen2vl")
    ids = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": 512,
        "initializer_range": init_std,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    vision_config = {
        "depth": vision_layers,
        "embed_dim": vision_embed,
        "hidden_size": hidden,
        "num_heads": max(1, vision_embed // 16),
        "mlp_ratio": 2,
        "patch_size": patch_size,
        "spatial_merge_size": merge_size,
        "temporal_patch_size": 2,
        "initializer_range": init_std,
    }
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    config.initializer_range = init_std
    model = _fresh_model(Qwen2VLForConditionalGeneration, config, seed, dtype)
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=2,
    )
    video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=2,
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.debug("wrote tiny Qwen2-VL (%d parameters) to %s", sum(p.numel() for p in model.parameters()), out)
    return out
