"""Coverage sweep: the derived layout of every image-text-to-text model type of the installed transformers.

For each model type, its default config is built on the meta device (no weights), the tensor names that
``save_pretrained`` would write are produced by transformers' own reverse key conversion, and uqmerge's layout
detection classifies them. Prints one row per family: how many tensors went to each component, how many
language-model tensors got no role but ``other``, and what failed. ``--markdown`` writes the table for the docs.

A few default configs of transformers do not build a model at all (a value left None that ``__init__`` needs);
``CONFIG_FIXES`` sets just those values first, and the table says where it did. Some families need ``timm``
(``fast_vlm``, ``gemma3n``, ``perception_lm``: timm_wrapper vision towers); without it their rows fail with
transformers' message.

    python benchmarks/family_coverage.py [--markdown docs/coverage.md] [--only qwen3_vl,mllama]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

COMPONENT_ORDER = ("vision_tower", "audio_tower", "projector", "language_model")

# Config values without which transformers' own default config of a model type does not build a model (the class
# fails in __init__ on a value the default leaves None or sets inconsistently). Merged into the default config dict
# before building (sub-config dicts key by key). They only make the default buildable; the values are the released
# checkpoints' where one is known, and none is chosen for how tensors classify.
CONFIG_FIXES: dict[str, dict] = {
    # The SigLIP vision default sets hidden_size 1152 with 14 heads (1152 % 14 != 0); SigLIP-so400m has 16.
    "aya_vision": {"vision_config": {"num_attention_heads": 16}},
    # ChameleonImageVocabularyMapping(config.vocabulary_map) calls .get("<image>") on the default None (the token
    # ids of a vocabulary map only feed forward(), no tensor).
    "chameleon": {"vocabulary_map": {"<image>": 8711}},
    # The rotary embedding looks up rope_parameters[layer_type] for every layer type; the default is {} while all
    # layers are full_attention. The released checkpoint's full-attention layers have no RoPE (null).
    "cohere_compass": {"text_config": {"rope_parameters": {"full_attention": None}}},
    # Each decoder layer indexes mlp_layer_types[layer_idx], default None. One entry per default layer (32): the
    # first dense and the rest mixture-of-experts, the DeepSeek-V2 convention (first_k_dense_replace=1).
    "deepseek_ocr2": {"text_config": {"mlp_layer_types": ["dense"] + ["sparse"] * 31}},
    # Every text layer builds a router and experts from num_experts / top_k_experts / moe_intermediate_size, all
    # None by default. Gemma 4 26B-A4B's values (the default checkpoint name is diffusiongemma-26B-A4B).
    "diffusion_gemma": {"text_config": {"num_experts": 128, "top_k_experts": 8, "moe_intermediate_size": 704}},
    # Emu3ImageVocabularyMapping(config.vocabulary_map) calls .get("<image>") on the default None (the id only
    # feeds forward()).
    "emu3": {"vocabulary_map": {"<image>": 151851}},
    # The model builds one projector per deepstack_layer_map entry (len() of the default None), and the projector
    # splits downsample_rate ("q/k", default None). The released checkpoint's values.
    "granite4_vision": {"deepstack_layer_map": [[-19, 9], [-13, 6], [-7, 3], [-1, 0]], "downsample_rate": "4/8"},
    # The attention reads config.head_dim, which the text config defaults to None (its own fallback is
    # hidden_size // num_attention_heads = 4096 // 32).
    "hunyuan_vl": {"text_config": {"head_dim": 128}},
    # The projector reads vision_config.model_args["embed_dim"], but the timm_wrapper default is a resnet50 with no
    # model_args; the released checkpoint's vision tower is timm's vit_pe_core_large_patch14_336 (embed_dim 1024).
    "perception_lm": {
        "vision_config": {"architecture": "vit_pe_core_large_patch14_336", "model_args": {"embed_dim": 1024}}
    },
    # Every indexed-attention layer builds a QSA indexer from five indexer_* values, all None by default. The
    # released checkpoint's values, but indexer_head_dim 256 (not 128): the default RoPE is full width (rotary_dim =
    # head_dim = 256, no partial_rotary_factor) and validate_architecture wants it to fit the index head.
    "qwen4_exp": {
        "text_config": {
            "indexer_n_heads": 4,
            "indexer_kv_heads": 1,
            "indexer_head_dim": 256,
            "indexer_budget": 2048,
            "indexer_compress_ratio": 4,
        }
    },
}


# Failures checked by hand to lie in transformers itself, not in uqmerge; the row still fails, with this note.
KNOWN_ISSUES: dict[str, str] = {
    # The auto mapping names Gemma3ForConditionalGeneration for model_type shieldgemma2, but the conversion mapping
    # registered under model_type "shieldgemma2" (PrefixChange adding "model.") is meant for the
    # ShieldGemma2ForImageClassification wrapper. A tiny Gemma3ForConditionalGeneration with a ShieldGemma2Config,
    # save_pretrained and from_pretrained: 28 unexpected (model.model.language_model.model.*) and 29 missing keys.
    # The wrapper class (the released checkpoints' architectures) round-trips and classifies completely.
    "shieldgemma2": "transformers' own from_pretrained does not reload this class's save_pretrained output either",
}


def merge_fix(config: dict, fix: dict) -> dict:
    """``config`` with ``fix`` merged in: nested dicts (sub-configs) key by key, every other value replaced."""
    out = dict(config)
    for key, value in fix.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and out[key]:
            out[key] = merge_fix(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Row:
    """The outcome for one model type."""

    model_type: str
    class_name: str
    counts: Counter[str] = field(default_factory=Counter)
    other_role: int = 0
    unclassified: int = 0
    error: str = ""
    fixed: bool = False
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.error and not self.unclassified and sum(self.counts.values()) > 0


def saved_names(model) -> list[str]:
    """The tensor names ``save_pretrained`` writes for ``model`` (tied copies dropped, reverse key conversion)."""
    from transformers.core_model_loading import revert_weight_conversion

    state = model.state_dict()
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    state = {k: v for k, v in state.items() if k not in tied}
    return list(revert_weight_conversion(model, state))


def sweep_one(model_type: str, class_name: str) -> Row:
    """Classify the saved tensor names of ``model_type``'s default config with uqmerge's layout detection."""
    from transformers import CONFIG_MAPPING

    from uqmerge.checkpoint.architecture import DerivationUnavailable, build_meta_model
    from uqmerge.checkpoint.layouts import detect_layout
    from uqmerge.core.errors import LayoutError

    row = Row(model_type, class_name)
    start = time.perf_counter()
    try:
        config = CONFIG_MAPPING[model_type]().to_dict()
        if model_type in CONFIG_FIXES:
            config = merge_fix(config, CONFIG_FIXES[model_type])
            row.fixed = True
        config["architectures"] = [class_name]
        model = build_meta_model(config)
        names = saved_names(model)
        layout = detect_layout(config, source=model_type)
        for name in names:
            cls = layout.classify(name)
            if cls is None:
                row.unclassified += 1
                continue
            row.counts[cls.component] += 1
            row.other_role += cls.role == "other"
        if row.unclassified:
            example = next(n for n in names if layout.classify(n) is None)
            row.error = f"{row.unclassified} tensors unclassified (e.g. {example})"
    except (DerivationUnavailable, LayoutError) as e:
        row.error = str(e).splitlines()[0]
    except Exception as e:  # the sweep reports every failure and goes on
        row.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    if row.error and model_type in KNOWN_ISSUES:
        row.error += f"; {KNOWN_ISSUES[model_type]}"
    row.seconds = time.perf_counter() - start
    return row


def fix_keys(fix: dict, prefix: str = "") -> list[str]:
    """The dotted config keys ``fix`` sets (into sub-configs, not into values that are dicts themselves)."""
    keys = []
    for key, value in fix.items():
        if key.endswith("_config") and isinstance(value, dict):
            keys += fix_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def markdown(rows: list[Row], version: str) -> str:
    """The sweep as a markdown table with its summary line."""
    complete = sum(r.complete for r in rows)
    fixed = sum(r.fixed for r in rows)
    lines = [
        f"transformers {version}: {complete} of {len(rows)} image-text-to-text model types classify completely.",
        "",
        f"Config fix: {fixed} default configs do not build as transformers ships them; the sweep sets the few values"
        " named in `CONFIG_FIXES` (benchmarks/family_coverage.py) first.",
        "",
        "| model type | class | config fix | vision_tower | audio_tower | projector | language_model | LM role `other` "
        "| failure |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cells = [str(r.counts.get(c, 0)) for c in COMPONENT_ORDER]
        failure = r.error.replace("|", "/")
        fix = ", ".join(f"`{k}`" for k in fix_keys(CONFIG_FIXES[r.model_type])) if r.fixed else ""
        lines.append(
            f"| `{r.model_type}` | {r.class_name} | {fix} | {' | '.join(cells)} | {r.other_role} | {failure} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", type=Path, help="write the table to this file")
    parser.add_argument("--only", default="", help="comma-separated model types")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    wanted = {t for t in args.only.split(",") if t}
    rows = []
    for model_type, class_name in sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.items()):
        if wanted and model_type not in wanted:
            continue
        row = sweep_one(model_type, class_name)
        rows.append(row)
        status = ("ok" if row.complete else f"FAILED: {row.error}") + (" [config fix]" if row.fixed else "")
        counts = " ".join(f"{c}={row.counts.get(c, 0)}" for c in COMPONENT_ORDER)
        print(f"{model_type:28s} {counts} other_role={row.other_role} ({row.seconds:.1f} s) {status}", flush=True)
    table = markdown(rows, transformers.__version__)
    print(table.splitlines()[0])
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
