"""Tiny models of different architectures on one tiny Qwen2 (or Llama) language model, and synthetic remote-code
checkpoints (CogVLM, mPLUG-Owl2) written under their key names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

VOCAB = 64


def qwen2_text(vocab: int = VOCAB, hidden: int = 32) -> dict[str, Any]:
    """The shared tiny Qwen2 text config: hidden 32, 2 layers, 2 heads, one KV head, untied head."""
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }


def _save(model: Any, out: Path, seed: int) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in model.parameters():  # every tensor random, so equal values across models mean a real copy
            p.data.normal_(0, 0.05)
    model.eval().save_pretrained(out)
    return out


def qwen2_lm(out: Path, seed: int, vocab: int = VOCAB, hidden: int = 32) -> Path:
    import transformers as tf

    return _save(tf.Qwen2ForCausalLM(tf.Qwen2Config(**qwen2_text(vocab, hidden))), out, seed)


def qwen2_vl(out: Path, seed: int) -> Path:
    import transformers as tf

    text = {
        **qwen2_text(),
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
    }
    vision = {
        "depth": 1,
        "embed_dim": 16,
        "hidden_size": 32,
        "num_heads": 1,
        "mlp_ratio": 2,
        "patch_size": 8,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    config = tf.Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=False,
        image_token_id=60,
        video_token_id=61,
        vision_start_token_id=62,
        vision_end_token_id=63,
    )
    return _save(tf.Qwen2VLForConditionalGeneration(config), out, seed)


def llava_onevision(out: Path, seed: int, vocab: int = VOCAB) -> Path:
    import transformers as tf

    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "image_size": 32,
        "patch_size": 8,
    }
    config = tf.LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", **qwen2_text(vocab)},
        vision_config=vision,
        tie_word_embeddings=False,
        image_token_index=60,
        video_token_index=61,
    )
    return _save(tf.LlavaOnevisionForConditionalGeneration(config), out, seed)


def qwen2_audio(out: Path, seed: int) -> Path:
    import transformers as tf

    audio = {
        "d_model": 16,
        "encoder_layers": 1,
        "encoder_attention_heads": 1,
        "encoder_ffn_dim": 32,
        "num_mel_bins": 16,
        "max_source_positions": 50,
    }
    config = tf.Qwen2AudioConfig(
        text_config={"model_type": "qwen2", **qwen2_text()}, audio_config=audio, audio_token_index=60
    )
    return _save(tf.Qwen2AudioForConditionalGeneration(config), out, seed)


def llama_text() -> dict[str, Any]:
    """The shared tiny text config as a Llama with two KV heads (the LLaVA side of the Llama pairs)."""
    return {"model_type": "llama", **qwen2_text(), "num_key_value_heads": 2}


def clip_vision() -> dict[str, Any]:
    """A tiny CLIP vision tower on 32×32 images."""
    return {
        "model_type": "clip_vision_model",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "image_size": 32,
        "patch_size": 8,
    }


def tiny_llava(out: Path, seed: int) -> Path:
    """A tiny LLaVA-1.5 (Llama text, CLIP vision) saved by transformers: legacy names ``language_model.model.*``."""
    import transformers as tf

    config = tf.LlavaConfig(text_config=llama_text(), vision_config=clip_vision(), image_token_index=60)
    return _save(tf.LlavaForConditionalGeneration(config), out, seed)


def state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def write_synthetic(out: Path, tensors: dict[str, torch.Tensor], model_type: str) -> Path:
    """A remote-code checkpoint: ``tensors`` in model.safetensors, a config.json naming ``model_type``."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "model.safetensors")
    config = {"model_type": model_type, "architectures": [f"{model_type}ForCausalLM"], "torch_dtype": "float32"}
    (out / "config.json").write_text(json.dumps(config))
    return out


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * 0.05


def _outer_llm(llava: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random embeddings, final norm and head of ``llava``'s shapes under the remote-code names ``model.*``."""
    return {
        "model.embed_tokens.weight": _rand(g, *llava["language_model.model.embed_tokens.weight"].shape),
        "model.norm.weight": _rand(g, *llava["language_model.model.norm.weight"].shape),
        "lm_head.weight": _rand(g, *llava["language_model.lm_head.weight"].shape),
    }


def cogvlm_state(llava: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A CogVLM-style state dict sized after ``llava``'s language model: a language and a visual expert per block
    (fused QKV, dense, MLP), shared layer norms, an EVA-like vision tower."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    prefix = "language_model.model.layers."
    layers = sorted({int(k[len(prefix) :].split(".")[0]) for k in llava if k.startswith(prefix)})
    for i in layers:
        src = f"{prefix}{i}."
        q, k, v = (llava[f"{src}self_attn.{p}_proj.weight"] for p in "qkv")
        for expert in ("language", "vision"):
            out[f"model.layers.{i}.self_attn.{expert}_expert_query_key_value.weight"] = _rand(
                g, q.shape[0] + k.shape[0] + v.shape[0], q.shape[1]
            )
            out[f"model.layers.{i}.self_attn.{expert}_expert_dense.weight"] = _rand(
                g, *llava[f"{src}self_attn.o_proj.weight"].shape
            )
            for proj in ("gate_proj", "up_proj", "down_proj"):
                out[f"model.layers.{i}.mlp.{expert}_mlp.{proj}.weight"] = _rand(
                    g, *llava[f"{src}mlp.{proj}.weight"].shape
                )
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"model.layers.{i}.{norm}.weight"] = _rand(g, *llava[f"{src}{norm}.weight"].shape)
    out.update(_outer_llm(llava, g))
    out["model.vision.patch_embedding.proj.weight"] = _rand(g, 16, 3, 8, 8)
    out["model.vision.transformer.layers.0.attention.query_key_value.weight"] = _rand(g, 48, 16)
    return out


def mplug_owl2_state(llava: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """An mPLUG-Owl2-style state dict sized after ``llava``'s language model: two copies (``multiway.0``/``.1``) of
    each layer's K, V and layer norms, one Q, O and MLP, a vision model and a visual abstractor."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    prefix = "language_model.model.layers."
    for key, tensor in llava.items():
        if not key.startswith(prefix):
            continue
        rest = key[len("language_model.") :]
        multiway = any(p in key for p in (".k_proj.", ".v_proj.", "input_layernorm", "post_attention_layernorm"))
        if multiway:
            stem, leaf = rest.rsplit(".", 1)
            for copy in (0, 1):
                out[f"{stem}.multiway.{copy}.{leaf}"] = _rand(g, *tensor.shape)
        else:
            out[rest] = _rand(g, *tensor.shape)
    out.update(_outer_llm(llava, g))
    out["model.vision_model.embeddings.patch_embed.weight"] = _rand(g, 16, 3, 8, 8)
    out["model.visual_abstractor.encoder.layers.0.crossattention.attention.query.weight"] = _rand(g, 16, 16)
    return out
