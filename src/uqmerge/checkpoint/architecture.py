"""Layouts derived from the transformers model class: every tensor placed by the module tree built on the meta device.

A checkpoint's ``config.json`` names its model class. Built on the meta device (no memory, no weights), the class's
module tree says where each parameter lives. The modality encoders are the modules that transformers' own
``get_encoder(modality=…)`` looks for (``vision_tower``, ``visual``, ``vision_model``, …) and any sub-model whose
class or config is a vision or audio model. The language model is ``get_decoder()`` plus the output embeddings.
Projectors are what joins them: modules named like one wherever they sit (Qwen-VL's ``merger`` inside the vision
tower, Qwen3-VL's ``deepstack_merger_list``, Llama 4's ``vision_adapter``, Gemma's ``embed_vision``), every module
inside the language model that holds an encoder (Phi-4-multimodal's ``embed_tokens_extend``), and everything
outside the encoders and the language model (Q-Formers, ``image_newline``). On-disk names are mapped to the
in-memory ones by the class's own checkpoint conversion mapping, so legacy and transformers-5 key names both
classify.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

from uqmerge.checkpoint.layouts import Classification

logger = logging.getLogger(__name__)

# The module names transformers' get_encoder(modality=...) tries, plus a few families' own spellings.
VISION_MODULE_NAMES = frozenset(
    {"vision_tower", "visual", "vision_model", "vision_encoder", "image_tower", "vision_backbone", "img_processor"}
)
AUDIO_MODULE_NAMES = frozenset({"audio_tower", "audio_encoder", "speech_encoder", "audio_model"})
# Modules that map encoder features into the language model's space, wherever they sit.
PROJECTOR_MODULE_NAMES = frozenset(
    {
        "merger",
        "deepstack_merger_list",
        "projector",
        "multi_modal_projector",
        "mm_projector",
        "connector",
        "vision_adapter",
        "adapter",
        "visual_projection",
        "embed_vision",
        "embed_audio",
    }
)
# Class-name fragments that give a language-model role; the first module on a tensor's path that matches decides.
# Token mixers without attention (gated delta nets, Mamba) count as attention.
ROLE_CLASS_HINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cross_attention", ("CrossAttention",)),
    ("lm_head", ("LMHead", "PredictionHead", "MLMHead")),
    ("attention", ("Attention", "Attn", "DeltaNet", "Mamba", "Mixer")),
    ("mlp", ("MLP", "Mlp", "FeedForward", "MoE", "Moe", "Experts", "Expert", "FFN", "Ffn", "Intermediate", "Output")),
    ("norm", ("Norm",)),
    ("embeddings", ("Embedding",)),
)
# Name rules that may name a role where classes say nothing (an output head or embedding is found by module).
NAME_ROLES = ("attention", "mlp", "norm")


class DerivationUnavailable(Exception):
    """The layout cannot be derived (transformers missing, unknown model type, class fails to build); says why."""


@dataclass(frozen=True)
class DerivedClasses:
    """The classification of every in-memory parameter and buffer of one model class, and its key conversion."""

    class_name: str
    classes: Mapping[str, Classification]
    to_module: Callable[[str], str]
    llm_names: Mapping[str, str] = field(default_factory=dict)
    """In-memory name → name relative to the language model (``layers.0.mlp.up_proj.weight``, ``lm_head.weight``)."""

    def classify(self, key: str) -> Classification | None:
        """The class of on-disk key ``key`` (after the class's key conversion), or None if it is no parameter."""
        return self.classes.get(self.to_module(key))


def _language_model_path(model: Any, paths: Mapping[int, str]) -> str:
    try:
        decoder = model.get_decoder()
    except Exception:  # transformers' lookup is best-effort and raises for a few exotic classes
        return ""
    return paths.get(id(decoder), "") if decoder is not None else ""


def _encoder_kind(name: str, module: Any, model: Any) -> str:
    """``vision``, ``audio`` or ``""`` for the module at ``name``: by attribute name, else by its sub-model's class."""
    from transformers import PreTrainedModel

    attr = name.rsplit(".", 1)[-1]
    if attr in VISION_MODULE_NAMES:
        return "vision"
    if attr in AUDIO_MODULE_NAMES:
        return "audio"
    if isinstance(module, PreTrainedModel) and module is not model:
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_MAPPING_NAMES

        model_type = getattr(module.config, "model_type", "") or ""
        label = f"{type(module).__name__} {model_type}".lower()
        if "audio" in label or "speech" in label:
            return "audio"
        if "vision" in label or "vq" in label or model_type in MODEL_FOR_IMAGE_MAPPING_NAMES:
            return "vision"
    return ""


@dataclass(frozen=True)
class _Roots:
    """Where the parts of a model sit in its module tree (dotted paths; ``""`` is the model itself)."""

    vision: tuple[str, ...]
    audio: tuple[str, ...]
    language_models: tuple[str, ...]
    head: str | None
    input_embeddings: str | None


def _text_encoder_path(model: Any, paths: Mapping[int, str], decoder: str) -> str | None:
    """The text encoder of an encoder-decoder language model (T5Gemma 2, UDOP, BLIP), if any."""
    try:
        encoder = model.get_encoder()
    except Exception:  # best-effort lookup, as for the decoder
        return None
    path = paths.get(id(encoder)) if encoder is not None and encoder is not model else None
    if not path or path == decoder or _under(decoder, path):
        return None
    return path


def _module_roots(model: Any) -> _Roots:
    """The vision and audio encoders, language model(s), output head and input embeddings of ``model``."""
    paths = {id(m): name for name, m in model.named_modules()}
    decoder = _language_model_path(model, paths)
    vision: list[str] = []
    audio: list[str] = []
    for name, module in model.named_modules():
        # Outermost encoders only, and never a module that holds the language model (the whole VLM).
        if not name or any(_under(name, root) for root in (*vision, *audio)):
            continue
        if decoder and _under(decoder, name):
            continue
        kind = _encoder_kind(name, module, model)
        if kind == "vision":
            vision.append(name)
        elif kind == "audio":
            audio.append(name)
    language_models = [decoder]
    text_encoder = _text_encoder_path(model, paths, decoder)
    if text_encoder is not None and not any(_under(text_encoder, r) for r in (*vision, *audio)):
        language_models.append(text_encoder)
    head = model.get_output_embeddings()
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # some encoder-decoder classes do not say
        embeddings = None
    return _Roots(
        tuple(vision),
        tuple(audio),
        tuple(language_models),
        paths.get(id(head)) if head is not None else None,
        paths.get(id(embeddings)) if embeddings is not None else None,
    )


def _under(name: str, root: str) -> bool:
    return root == "" or name == root or name.startswith(root + ".")


def _role(model: Any, name: str, language_model: str, role_rules: Iterable[Any]) -> str:
    """The language-model role of parameter ``name``: from the classes of the modules that hold it, else its name."""
    parts = name.split(".")
    start = len(language_model.split(".")) if language_model else 0
    module = model.get_submodule(language_model) if language_model else model
    for part in parts[start:-1]:
        module = module.get_submodule(part)
        class_name = type(module).__name__
        # A whole decoder layer only says something when it is a cross-attention layer (Mllama).
        whole_layer = class_name.endswith(("Layer", "Block"))
        for role, hints in ROLE_CLASS_HINTS[:1] if whole_layer else ROLE_CLASS_HINTS:
            if any(h in class_name for h in hints):
                return role
    return next((r.role for r in role_rules if r.role in NAME_ROLES and r.matches(name)), None) or "other"


def _prefixes(name: str) -> list[str]:
    """The module paths holding parameter ``name``, outermost first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def classify_model(model: Any, role_rules: Iterable[Any]) -> dict[str, Classification]:
    """Component and role of every state-dict entry (parameters and persistent buffers) of ``model``."""
    role_rules = list(role_rules)
    roots = _module_roots(model)
    encoders = [(root, "vision_tower") for root in roots.vision] + [(root, "audio_tower") for root in roots.audio]
    # Modules inside a language model that also hold an encoder are the multimodal side (Phi-4-mm's embedders).
    containers = {
        prefix
        for root, _ in encoders
        for prefix in _prefixes(root + ".x")[:-1]
        for lm in roots.language_models
        if lm and _under(prefix, lm) and prefix != lm
    }
    out: dict[str, Classification] = {}
    for name in model.state_dict(keep_vars=True):
        encoder = next(((root, comp) for root, comp in encoders if _under(name, root)), None)
        language_model = next((lm for lm in roots.language_models if _under(name, lm)), None)
        named_projector = any(p.rsplit(".", 1)[-1] in PROJECTOR_MODULE_NAMES for p in _prefixes(name))
        if encoder is not None:
            out[name] = Classification("projector" if named_projector else encoder[1])
        elif roots.head is not None and _under(name, roots.head):
            out[name] = Classification("language_model", "lm_head")
        elif roots.input_embeddings is not None and _under(name, roots.input_embeddings):
            out[name] = Classification("language_model", "embeddings")
        elif named_projector or any(_under(name, c) for c in containers) or language_model is None:
            out[name] = Classification("projector")
        else:
            out[name] = Classification("language_model", _role(model, name, language_model, role_rules))
    return out


LM_HEAD = "lm_head"
"""The relative name of the output head in :func:`language_model_names`, whatever the class calls it."""


def language_model_names(model: Any, classes: Mapping[str, Classification]) -> dict[str, str]:
    """Each language-model tensor's name relative to the decoder (``layers.0.self_attn.q_proj.weight``), the
    output head's under ``lm_head``; equal relative names in two classes hold the same LLM parameter.

    The decoder is ``get_decoder()``, so a causal LM (``model.layers.*``) and an MLLM holding it
    (``model.language_model.layers.*``) give the same names. Projector-side modules inside the decoder are left out.
    """
    roots = _module_roots(model)
    decoder = roots.language_models[0]
    out: dict[str, str] = {}
    for name, cls in classes.items():
        if cls.component != "language_model":
            continue
        if roots.head is not None and _under(name, roots.head):
            out[name] = LM_HEAD + name[len(roots.head) :]
        elif decoder and _under(name, decoder):
            out[name] = name[len(decoder) + 1 :]
        elif roots.input_embeddings is not None and _under(name, roots.input_embeddings):
            out[name] = "embed_tokens" + name[len(roots.input_embeddings) :]
        elif not decoder:
            out[name] = name
    return out


def _model_class(config: Any, architectures: list[str]) -> type:
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

    for arch in architectures:
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type):
            return cls
    for auto in (AutoModelForImageTextToText, AutoModelForCausalLM, AutoModel):
        try:
            return auto._model_mapping[type(config)]
        except KeyError:
            continue
    raise DerivationUnavailable(f"transformers has no model class for {type(config).__name__}")


def _key_converter(model: Any) -> Callable[[str], str]:
    """On-disk key → in-memory parameter name, by the class's checkpoint conversion mapping (legacy names too)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model, add_legacy=True)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    known = dict.fromkeys(model.state_dict(keep_vars=True), True)
    prefix = model.base_model_prefix or None

    @cache
    def to_module(key: str) -> str:
        if key in known:
            return key
        renamed, _ = rename_source_key(key, renamings, converters, base_model_prefix=prefix, meta_state_dict=known)
        return renamed

    return to_module


def build_meta_model(config_dict: Mapping[str, Any]) -> Any:
    """The model class of ``config.json`` built on the meta device (DerivationUnavailable says why it cannot be)."""
    try:
        import torch
        from transformers import CONFIG_MAPPING
        from transformers import logging as hf_logging
    except ImportError as e:
        raise DerivationUnavailable(f"transformers is not installed ({e})") from None
    model_type = config_dict.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise DerivationUnavailable(f"transformers {_version()} does not know model_type={model_type!r}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        config = CONFIG_MAPPING[model_type].from_dict(dict(config_dict))
        cls = _model_class(config, list(config_dict.get("architectures") or []))
        with torch.device("meta"):
            return cls._from_config(config)
    except DerivationUnavailable:
        raise
    except Exception as e:  # a class that cannot be built from this config (missing backend, bad config)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DerivationUnavailable(f"cannot build model_type={model_type!r} on the meta device: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _version() -> str:
    import transformers

    return transformers.__version__


@lru_cache(maxsize=16)
def _derive_cached(config_json: str, role_rules: tuple[Any, ...]) -> DerivedClasses:
    model = build_meta_model(json.loads(config_json))
    classes = classify_model(model, role_rules)
    return DerivedClasses(type(model).__name__, classes, _key_converter(model), language_model_names(model, classes))


def derive_classes(config_dict: Mapping[str, Any], role_rules: tuple[Any, ...]) -> DerivedClasses:
    """The derived classification of ``config.json``'s model class (cached per config)."""
    return _derive_cached(json.dumps(config_dict, sort_keys=True, default=str), role_rules)
