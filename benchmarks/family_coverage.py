"""Coverage sweep: the derived layout of every image-text-to-text model type of the installed transformers.

For each model type, its default config is built on the meta device (no weights), the tensor names that
``save_pretrained`` would write are produced by transformers' own reverse key conversion, and uqmerge's layout
detection classifies them. Prints one row per family: how many tensors went to each component, how many
language-model tensors got no role but ``other``, and what failed. ``--markdown`` writes the table for the docs.

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


@dataclass
class Row:
    """The outcome for one model type."""

    model_type: str
    class_name: str
    counts: Counter[str] = field(default_factory=Counter)
    other_role: int = 0
    unclassified: int = 0
    error: str = ""
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
            row.error = f"{row.unclassified} tensors unclassified"
    except (DerivationUnavailable, LayoutError) as e:
        row.error = str(e).splitlines()[0]
    except Exception as e:  # the sweep reports every failure and goes on
        row.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    row.seconds = time.perf_counter() - start
    return row


def markdown(rows: list[Row], version: str) -> str:
    """The sweep as a markdown table with its summary line."""
    complete = sum(r.complete for r in rows)
    lines = [
        f"transformers {version}: {complete} of {len(rows)} image-text-to-text model types classify completely.",
        "",
        "| model type | class | vision_tower | audio_tower | projector | language_model | LM role `other` | failure |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cells = [str(r.counts.get(c, 0)) for c in COMPONENT_ORDER]
        failure = r.error.replace("|", "/")
        lines.append(f"| `{r.model_type}` | {r.class_name} | {' | '.join(cells)} | {r.other_role} | {failure} |")
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
        status = "ok" if row.complete else f"FAILED: {row.error}"
        counts = " ".join(f"{c}={row.counts.get(c, 0)}" for c in COMPONENT_ORDER)
        print(f"{model_type:28s} {counts} other_role={row.other_role} ({row.seconds:.1f} s) {status}", flush=True)
    table = markdown(rows, transformers.__version__)
    print(table.splitlines()[0])
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
