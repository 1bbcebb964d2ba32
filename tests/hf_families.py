"""Tiny random transformers checkpoints of many MLLM families, their experts and hand-written expected classes."""

from __future__ import annotations

import importlib.util
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

# ---- tokenizers ---------------------------------------------------------------------------------------------

WORDS = ("what", "is", "in", "the", "image", "a", "red", "blue", "green", "square", "circle", "yes", "no", "one", "two")
"""Ordinary words of every tiny vocabulary (whitespace-split, word level)."""

FROZEN_COMPONENTS = ("vision_tower", "audio_tower")
"""Components that keep the base's values by default (the experts leave them untouched)."""


def word_tokenizer(
    specials: dict[str, str],
    named: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
):
    """A word-level fast tokenizer built offline.

    ``specials``: pad/unk/bos/eos tokens (``unk_token`` required); ``named``: multimodal tokens exposed as
    attributes (``tokenizer.image_token`` and ``tokenizer.image_token_id``); ``extra``: more special tokens.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    named = named or {}
    vocab: dict[str, int] = {}
    for token in (*specials.values(), *named.values(), *extra, *WORDS):
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    listed = [t for t in dict.fromkeys(extra) if t not in specials.values() and t not in named.values()]
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        **specials,
        extra_special_tokens=dict(named),
        additional_special_tokens=listed,
        clean_up_tokenization_spaces=False,
    )


_LLAMA_SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
_QWEN_SPECIALS = {"pad_token": "<|endoftext|>", "unk_token": "<unk>", "eos_token": "<|im_end|>"}
_GEMMA_SPECIALS = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}
_QWEN_VISION = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
_CHAT_TEMPLATE = (
    "{%- for message in messages -%}{{- message['role'] + ': ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}{{- '\\n' -}}{%- endfor -%}"
)


def _ids(tokenizer, **names: str) -> dict[str, int]:
    return {key: tokenizer.convert_tokens_to_ids(token) for key, token in names.items()}


def _specials(tokenizer) -> dict[str, int | None]:
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _text(vocab: int, tokenizer=None, **kw) -> dict[str, Any]:
    """A tiny decoder: hidden 32, 2 layers, 2 heads of 16, one KV head, untied head."""
    cfg: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
    }
    if tokenizer is not None:
        cfg.update(_specials(tokenizer))
    cfg.update(kw)
    return cfg


def _vocab(tokenizer, multiple: int = 8) -> int:
    n = len(tokenizer)
    return -(-n // multiple) * multiple


_SIGLIP = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}


# ---- builders: each returns (config, processor-or-tokenizer, extra objects to save) -------------------------

Parts = tuple[Any, Any, tuple[Any, ...]]


def _qwen_vision_processor(tokenizer, video_cls: str = "Qwen3VLVideoProcessor", patch: int = 8, merge: int = 2):
    import transformers as tf

    pixels = (patch * merge * 2) ** 2
    size = {"shortest_edge": pixels, "longest_edge": pixels}
    image = tf.Qwen2VLImageProcessor(size=size, patch_size=patch, merge_size=merge, temporal_patch_size=2)
    video = getattr(tf, video_cls)(size=size, patch_size=patch, merge_size=merge, temporal_patch_size=2)
    return image, video


def _build_qwen3_vl() -> Parts:
    import transformers as tf

    tok = word_tokenizer(_QWEN_SPECIALS, _QWEN_VISION)
    image, video = _qwen_vision_processor(tok)
    processor = tf.Qwen3VLProcessor(
        image_processor=image, tokenizer=tok, video_processor=video, chat_template=_CHAT_TEMPLATE
    )
    ids = _ids(
        tok,
        image_token_id="<|image_pad|>",
        video_token_id="<|video_pad|>",
        vision_start_token_id="<|vision_start|>",
        vision_end_token_id="<|vision_end|>",
    )
    config = tf.Qwen3VLConfig(
        text_config=_text(
            _vocab(tok), tok, rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 2, 2]}
        ),
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "patch_size": 8,
            "out_hidden_size": 32,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [0],
        },
        **ids,
    )
    return config, processor, ()


def _build_qwen3_5() -> Parts:
    import transformers as tf

    tok = word_tokenizer(_QWEN_SPECIALS, _QWEN_VISION)
    image, video = _qwen_vision_processor(tok)
    processor = tf.Qwen3VLProcessor(
        image_processor=image, tokenizer=tok, video_processor=video, chat_template=_CHAT_TEMPLATE
    )
    ids = _ids(
        tok,
        image_token_id="<|image_pad|>",
        video_token_id="<|video_pad|>",
        vision_start_token_id="<|vision_start|>",
        vision_end_token_id="<|vision_end|>",
    )
    text = _text(
        _vocab(tok),
        tok,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=2,
        layer_types=["linear_attention", "full_attention"],
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1e4,
            "mrope_section": [2, 1, 1],
            "partial_rotary_factor": 0.5,
        },
    )
    vision = {
        "depth": 1,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_heads": 2,
        "patch_size": 8,
        "out_hidden_size": 32,
        "num_position_embeddings": 16,
    }
    return tf.Qwen3_5Config(text_config=text, vision_config=vision, **ids), processor, ()


def _build_gemma3() -> Parts:
    import transformers as tf

    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = word_tokenizer(_GEMMA_SPECIALS, named)
    image = tf.Gemma3ImageProcessor(size={"height": 32, "width": 32})
    processor = tf.Gemma3Processor(
        image_processor=image, tokenizer=tok, image_seq_length=4, chat_template=_CHAT_TEMPLATE
    )
    ids = _ids(
        tok,
        boi_token_index="<start_of_image>",
        eoi_token_index="<end_of_image>",
        image_token_index="<image_soft_token>",
    )
    config = tf.Gemma3Config(
        text_config=_text(_vocab(tok), tok, query_pre_attn_scalar=16, sliding_window=16),
        vision_config={**_SIGLIP, "image_size": 32, "patch_size": 8},
        mm_tokens_per_image=4,
        tie_word_embeddings=False,
        **ids,
    )
    return config, processor, ()


def _build_gemma4() -> Parts:
    import transformers as tf

    named = {
        "boi_token": "<|image>",
        "eoi_token": "<image|>",
        "image_token": "<|image|>",
        "boa_token": "<|audio>",
        "eoa_token": "<audio|>",
        "audio_token": "<|audio|>",
    }
    tok = word_tokenizer(_GEMMA_SPECIALS, named, extra=("<|video|>",))
    processor = tf.Gemma4Processor(
        feature_extractor=tf.Gemma4AudioFeatureExtractor(),
        image_processor=tf.Gemma4ImageProcessor(patch_size=8, max_soft_tokens=70, pooling_kernel_size=2),
        tokenizer=tok,
        video_processor=tf.Gemma4VideoProcessor(patch_size=8, pooling_kernel_size=2),
        image_seq_length=70,
        chat_template=_CHAT_TEMPLATE,
    )
    ids = _ids(
        tok,
        boi_token_id="<|image>",
        eoi_token_id="<image|>",
        image_token_id="<|image|>",
        video_token_id="<|video|>",
        boa_token_id="<|audio>",
        eoa_token_index="<audio|>",
        audio_token_id="<|audio|>",
    )
    vocab = _vocab(tok)
    config = tf.Gemma4Config(
        text_config=_text(
            vocab,
            tok,
            vocab_size_per_layer_input=vocab,
            hidden_size_per_layer_input=8,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
        ),
        vision_config={
            **_SIGLIP,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "patch_size": 8,
            "position_embedding_size": 64,
        },
        audio_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "subsampling_conv_channels": [8, 4],
            "output_proj_dims": 16,
        },
        **ids,
    )
    return config, processor, ()


def _build_paligemma() -> Parts:
    import transformers as tf

    tok = word_tokenizer(_GEMMA_SPECIALS, {"image_token": "<image>"})
    image = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
    image.image_seq_length = 16
    processor = tf.PaliGemmaProcessor(image_processor=image, tokenizer=tok, chat_template=_CHAT_TEMPLATE)
    vocab = _vocab(tok)  # the processor added 1024 location and 128 segmentation tokens
    config = tf.PaliGemmaConfig(
        text_config={"model_type": "gemma", **_text(vocab, tok)},
        vision_config={**_SIGLIP, "image_size": 32, "patch_size": 8, "projection_dim": 32},
        image_token_index=tok.image_token_id,
        vocab_size=vocab,
        projection_dim=32,
        hidden_size=32,
    )
    return config, processor, ()


_IDEFICS_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")


def _build_idefics3() -> Parts:
    import transformers as tf

    tok = word_tokenizer(_LLAMA_SPECIALS, extra=_IDEFICS_TOKENS)
    image = tf.Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    processor = tf.Idefics3Processor(
        image_processor=image, tokenizer=tok, image_seq_len=4, chat_template=_CHAT_TEMPLATE
    )
    config = tf.Idefics3Config(
        text_config={"model_type": "llama", **_text(_vocab(tok), tok)},
        vision_config={**_SIGLIP, "image_size": 32, "patch_size": 8},
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    return config, processor, ()


def _build_smolvlm() -> Parts:
    """SmolVLM's processor needs ``num2words``: without it, the tokenizer and image/video processors are saved."""
    import transformers as tf

    tok = word_tokenizer(_LLAMA_SPECIALS, extra=(*_IDEFICS_TOKENS, "<video>"))
    tok.chat_template = _CHAT_TEMPLATE
    image = tf.SmolVLMImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    video = tf.SmolVLMVideoProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    if importlib.util.find_spec("num2words") is not None:
        front: Any = tf.SmolVLMProcessor(image_processor=image, tokenizer=tok, video_processor=video, image_seq_len=4)
        rest: tuple[Any, ...] = ()
    else:
        front, rest = tok, (image, video)
    config = tf.SmolVLMConfig(
        text_config={"model_type": "llama", **_text(_vocab(tok), tok)},
        vision_config={**_SIGLIP, "image_size": 32, "patch_size": 8},
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    return config, front, rest


MLLAMA_CROSS_ATTENTION_LAYERS = (1,)


def _build_mllama() -> Parts:
    import transformers as tf

    tok = word_tokenizer(_LLAMA_SPECIALS, {"image_token": "<|image|>"}, extra=("<|python_tag|>",))
    image = tf.MllamaImageProcessor(size={"height": 16, "width": 16}, max_image_tiles=2)
    processor = tf.MllamaProcessor(image_processor=image, tokenizer=tok, chat_template=_CHAT_TEMPLATE)
    vocab = _vocab(tok)
    config = tf.MllamaConfig(
        text_config=_text(vocab, tok, cross_attention_layers=list(MLLAMA_CROSS_ATTENTION_LAYERS)),
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 2,
            "image_size": 16,
            "patch_size": 8,
            "vision_output_dim": 32,
            "intermediate_layers_indices": [0],
            "max_num_tiles": 2,
            "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]],
        },
        image_token_index=tok.image_token_id,
    )
    return config, processor, ()


def _build_mistral3() -> Parts:
    import transformers as tf

    tok = word_tokenizer(_LLAMA_SPECIALS, extra=("[IMG]", "[IMG_BREAK]", "[IMG_END]"))
    image = tf.PixtralImageProcessor(size={"longest_edge": 32}, patch_size=8)
    processor = tf.PixtralProcessor(
        image_processor=image, tokenizer=tok, patch_size=8, spatial_merge_size=2, chat_template=_CHAT_TEMPLATE
    )
    config = tf.Mistral3Config(
        text_config={"model_type": "mistral", **_text(_vocab(tok), tok)},
        vision_config={"model_type": "pixtral", **_SIGLIP, "image_size": 32, "patch_size": 8, "head_dim": 8},
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
        tie_word_embeddings=False,
    )
    return config, processor, ()


_LLAMA4_TOKENS = (
    "<|image|>",
    "<|image_start|>",
    "<|image_end|>",
    "<|patch|>",
    "<|tile_x_separator|>",
    "<|tile_y_separator|>",
)


def _build_llama4() -> Parts:
    import transformers as tf

    tok = word_tokenizer(_LLAMA_SPECIALS, extra=_LLAMA4_TOKENS)
    image = tf.Llama4ImageProcessor(size={"height": 32, "width": 32}, max_patches=2)
    processor = tf.Llama4Processor(image_processor=image, tokenizer=tok, patch_size=8, chat_template=_CHAT_TEMPLATE)
    config = tf.Llama4Config(
        text_config=_text(
            _vocab(tok),
            tok,
            intermediate_size_mlp=64,
            num_local_experts=2,
            interleave_moe_layer_step=2,
            attention_chunk_size=64,
        ),
        vision_config={
            **_SIGLIP,
            "image_size": 32,
            "patch_size": 8,
            "vision_output_dim": 32,
            "projector_input_dim": 32,
            "projector_output_dim": 32,
        },
        **_ids(tok, boi_token_index="<|image_start|>", eoi_token_index="<|image_end|>", image_token_index="<|image|>"),
    )
    return config, processor, ()


def _build_glm4v() -> Parts:
    import transformers as tf

    glm = ("<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>")
    tok = word_tokenizer(_QWEN_SPECIALS, {"image_token": "<|image|>", "video_token": "<|video|>"}, extra=glm)
    size = {"shortest_edge": 32 * 32, "longest_edge": 32 * 32}
    processor = tf.Glm4vProcessor(
        image_processor=tf.Glm4vImageProcessor(size=size, patch_size=8, merge_size=2),
        tokenizer=tok,
        video_processor=tf.Glm4vVideoProcessor(size=size, patch_size=8, merge_size=2),
        chat_template=_CHAT_TEMPLATE,
    )
    ids = _ids(
        tok,
        image_token_id="<|image|>",
        video_token_id="<|video|>",
        image_start_token_id="<|begin_of_image|>",
        image_end_token_id="<|end_of_image|>",
        video_start_token_id="<|begin_of_video|>",
        video_end_token_id="<|end_of_video|>",
    )
    config = tf.Glm4vConfig(
        text_config=_text(
            _vocab(tok),
            tok,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e4,
                "mrope_section": [2, 1, 1],
                "partial_rotary_factor": 0.5,
            },
        ),
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "patch_size": 8,
            "image_size": 32,
            "out_hidden_size": 32,
        },
        **ids,
    )
    return config, processor, ()


def _build_aya_vision() -> Parts:
    import transformers as tf

    aya = (
        "<image>",
        "<|START_OF_IMG|>",
        "<|END_OF_IMG|>",
        "<|IMG_PATCH|>",
        "<|IMG_LINE_BREAK|>",
        "TILE",
        "TILE_GLOBAL",
    )
    tok = word_tokenizer(_LLAMA_SPECIALS, extra=aya)
    image = tf.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, max_patches=2)
    processor = tf.AyaVisionProcessor(
        image_processor=image,
        tokenizer=tok,
        patch_size=8,
        img_size=32,
        downsample_factor=2,
        chat_template=_CHAT_TEMPLATE,
    )
    config = tf.AyaVisionConfig(
        text_config={"model_type": "cohere2", **_text(_vocab(tok), tok)},
        vision_config={"model_type": "siglip_vision_model", **_SIGLIP, "image_size": 32, "patch_size": 8},
        image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
        downsample_factor=2,
        tie_word_embeddings=False,
    )
    return config, processor, ()


def _build_qwen2_5_omni_thinker() -> Parts:
    import transformers as tf

    named = {
        "image_token": "<|IMAGE|>",
        "audio_token": "<|AUDIO|>",
        "video_token": "<|VIDEO|>",
        "vision_bos_token": "<|vision_bos|>",
        "vision_eos_token": "<|vision_eos|>",
        "audio_bos_token": "<|audio_bos|>",
        "audio_eos_token": "<|audio_eos|>",
    }
    tok = word_tokenizer(_QWEN_SPECIALS, named, extra=("<|im_start|>",))
    image, video = _qwen_vision_processor(tok, video_cls="Qwen2VLVideoProcessor")
    processor = tf.Qwen2_5OmniProcessor(
        image_processor=image,
        video_processor=video,
        feature_extractor=tf.WhisperFeatureExtractor(feature_size=16),
        tokenizer=tok,
        chat_template=_CHAT_TEMPLATE,
    )
    ids = _ids(
        tok,
        audio_token_index="<|AUDIO|>",
        image_token_index="<|IMAGE|>",
        video_token_index="<|VIDEO|>",
        audio_start_token_id="<|audio_bos|>",
        audio_end_token_id="<|audio_eos|>",
        user_token_id="<|im_start|>",
    )
    config = tf.Qwen2_5OmniThinkerConfig(
        text_config=_text(
            _vocab(tok), tok, rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 2, 2]}
        ),
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "patch_size": 8,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [0],
            "window_size": 16,
        },
        audio_config={
            "num_mel_bins": 16,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "d_model": 16,
            "output_dim": 32,
            "max_source_positions": 32,
            "n_window": 8,
        },
        **ids,
    )
    return config, processor, ()


def _build_phi4_multimodal() -> Parts:
    import transformers as tf

    named = {"image_token": "<|image|>", "audio_token": "<|audio|>"}
    tok = word_tokenizer(_LLAMA_SPECIALS, named)
    processor = tf.Phi4MultimodalProcessor(
        image_processor=tf.Phi4MultimodalImageProcessor(),
        audio_processor=tf.Phi4MultimodalFeatureExtractor(feature_size=16),
        tokenizer=tok,
        chat_template=_CHAT_TEMPLATE,
    )
    text = _text(_vocab(tok), tok)
    text.pop("head_dim")
    config = tf.Phi4MultimodalConfig(
        **text,
        vision_config={
            **_SIGLIP,
            "image_size": 32,
            "patch_size": 8,
            "crop_size": 32,
            "image_token_id": tok.image_token_id,
        },
        audio_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_blocks": 1,
            "num_attention_heads": 2,
            "ext_pw_out_channel": 16,
            "depthwise_separable_out_channel": 16,
            "nemo_conv_channels": 16,
            "input_size": 16,
            "audio_token_id": tok.audio_token_id,
        },
    )
    return config, processor, ()


# ---- expected classification ----------------------------------------------------------------------------------

ROLES = (
    (r"(^|\.)lm_head\.weight$", "lm_head"),
    (r"\.(embed_tokens|embed_tokens_per_layer)\.weight$", "embeddings"),
    (r"\.(self_attn|linear_attn)\.", "attention"),
    (r"\.(mlp|feed_forward)\.", "mlp"),
    (r"norm\.weight$", "norm"),
    (r".", "other"),
)
"""Language-model roles by module path, first match wins: a norm inside a token mixer (self_attn.q_norm,
linear_attn.norm) is attention; Gemma 4's per-layer embedding table is embeddings; unmatched tensors are other."""


@dataclass(frozen=True)
class Family:
    """One transformers family: how to build it and the classification its tensors must get."""

    name: str
    model_class: str
    build_parts: Callable[[], Parts]
    components: tuple[tuple[str, str], ...]
    roles: tuple[tuple[str, str], ...] = ()
    notes: str = ""

    def expected(self, name: str) -> tuple[str, str | None]:
        """(component, role) of on-disk tensor ``name``; role None outside the language model."""
        component = next((c for p, c in self.components if re.search(p, name)), None)
        if component is None:
            raise AssertionError(f"{self.name}: the expected classification does not cover {name!r}")
        if component != "language_model":
            return component, None
        return component, next(r for p, r in (*self.roles, *ROLES) if re.search(p, name))


_QWEN_VL = (
    (r"^model\.visual\.(merger|deepstack_merger_list)\.", "projector"),
    (r"^model\.visual\.", "vision_tower"),
    (r"^(model\.language_model\.|lm_head\.weight$)", "language_model"),
)
_LEGACY_LLAVA = (
    (r"^vision_tower\.", "vision_tower"),
    (r"^multi_modal_projector\.", "projector"),
    (r"^language_model\.(model|lm_head)\.", "language_model"),
)
_IDEFICS = (
    (r"^model\.vision_model\.", "vision_tower"),
    (r"^model\.connector\.", "projector"),
    (r"^(model\.text_model\.|lm_head\.weight$)", "language_model"),
)
_CROSS = "|".join(str(i) for i in MLLAMA_CROSS_ATTENTION_LAYERS)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("qwen3_vl", "Qwen3VLForConditionalGeneration", _build_qwen3_vl, _QWEN_VL),
        Family(
            "qwen3_5",
            "Qwen3_5ForConditionalGeneration",
            _build_qwen3_5,
            _QWEN_VL,
            notes="linear_attn (Gated DeltaNet, layer_types 'linear_attention') is the token mixer of its layers: "
            "attention, its inner norm included, as q_norm inside self_attn is",
        ),
        Family("gemma3", "Gemma3ForConditionalGeneration", _build_gemma3, _LEGACY_LLAVA),
        Family(
            "gemma4",
            "Gemma4ForConditionalGeneration",
            _build_gemma4,
            (
                (r"^model\.vision_tower\.", "vision_tower"),
                (r"^model\.audio_tower\.", "audio_tower"),
                (r"^model\.embed_(vision|audio)\.", "projector"),
                (r"^model\.language_model\.", "language_model"),
            ),
            notes="Gemma4TextScaledWordEmbedding per-layer table = embeddings; per-layer gates/projections and "
            "layer_scalar = other",
        ),
        Family("paligemma", "PaliGemmaForConditionalGeneration", _build_paligemma, _LEGACY_LLAVA),
        Family("idefics3", "Idefics3ForConditionalGeneration", _build_idefics3, _IDEFICS),
        Family("smolvlm", "SmolVLMForConditionalGeneration", _build_smolvlm, _IDEFICS),
        Family(
            "mllama",
            "MllamaForConditionalGeneration",
            _build_mllama,
            (
                (r"^vision_model\.", "vision_tower"),
                (r"^multi_modal_projector\.", "projector"),
                (r"^language_model\.(model|lm_head)\.", "language_model"),
            ),
            roles=((rf"^language_model\.model\.layers\.({_CROSS})\.", "cross_attention"),),
            notes="every tensor of a cross-attention decoder layer (cross_attn, its gates, norms and MLP) is "
            "cross_attention",
        ),
        Family("mistral3", "Mistral3ForConditionalGeneration", _build_mistral3, _LEGACY_LLAVA),
        Family(
            "llama4",
            "Llama4ForConditionalGeneration",
            _build_llama4,
            (
                (r"^vision_model\.vision_adapter\.", "projector"),  # pixel-shuffle MLP into the projector
                (r"^vision_model\.", "vision_tower"),
                (r"^multi_modal_projector\.", "projector"),
                (r"^language_model\.(model|lm_head)\.", "language_model"),
            ),
        ),
        Family(
            "glm4v",
            "Glm4vForConditionalGeneration",
            _build_glm4v,
            (
                (r"^model\.visual\.merger\.", "projector"),
                (r"^model\.visual\.", "vision_tower"),  # incl. visual.downsample, the conv before the merger
                (r"^(model\.language_model\.|lm_head\.weight$)", "language_model"),
            ),
        ),
        Family("aya_vision", "AyaVisionForConditionalGeneration", _build_aya_vision, _LEGACY_LLAVA),
        Family(
            "qwen2_5_omni_thinker",
            "Qwen2_5OmniThinkerForConditionalGeneration",
            _build_qwen2_5_omni_thinker,
            (
                (r"^visual\.merger\.", "projector"),
                (r"^visual\.", "vision_tower"),
                (r"^audio_tower\.", "audio_tower"),  # incl. its output proj and ln_post
                (r"^(model\.|lm_head\.weight$)", "language_model"),
            ),
        ),
        Family(
            "phi4_multimodal",
            "Phi4MultimodalForCausalLM",
            _build_phi4_multimodal,
            (
                (r"^model\.embed_tokens_extend\.image_embed\.img_processor\.", "vision_tower"),
                (r"^model\.embed_tokens_extend\.image_embed\.", "projector"),
                (r"^model\.embed_tokens_extend\.audio_embed\.encoder\.", "audio_tower"),
                (r"^model\.embed_tokens_extend\.audio_embed\.", "projector"),
                (r"^(model\.|lm_head\.weight$)", "language_model"),
            ),
            notes="image_embed's img_projection_*, global/sub_img_feature_extensor and audio_embed's "
            "up/down_proj_for_(vision_)speech are projector",
        ),
    )
}
"""Every family, keyed by ``model_type``. Gemma 3n is absent: its vision tower needs ``timm``."""


# ---- building base and experts ----------------------------------------------------------------------------------


def build_base(family: Family, out_dir: Path, seed: int = 0) -> Path:
    """Write the family's tiny model with ``save_pretrained`` (fp32) and its processor or tokenizer."""
    import transformers as tf

    config, front, rest = family.build_parts()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(tf, family.model_class)(config).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    for obj in (front, *rest):
        obj.save_pretrained(out_dir)
    return out_dir


def state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``path``/model.safetensors, in fp32 where floating."""
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(path / "model.safetensors").items()}


def make_expert(family: Family, base_dir: Path, out_dir: Path, *, seed: int, scale: float = 0.05) -> Path:
    """Copy ``base_dir`` adding seeded noise (``scale`` × tensor std) to every floating tensor outside the towers.

    Uses this module's expected classification, so a vision or audio tower is left bit-identical.
    """
    shutil.copytree(base_dir, out_dir)
    tensors = load_file(base_dir / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and family.expected(name)[0] not in FROZEN_COMPONENTS:
            t32 = tensor.float()
            std = float(t32.std()) if t32.numel() > 1 else 0.0
            noise = torch.randn(t32.shape, generator=generator) * (scale * (std or 1.0))
            tensor = (t32 + noise).to(tensor.dtype)
        out[name] = tensor.contiguous()
    save_file(out, out_dir / "model.safetensors", metadata={"format": "pt"})
    return out_dir
