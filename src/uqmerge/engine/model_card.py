"""The resolved recipe (`uqmerge_config.yml`) and the model card (`README.md`) written beside a merged checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from uqmerge import __version__

if TYPE_CHECKING:
    from uqmerge.engine.plan import MergePlan


def resolved_recipe(plan: MergePlan) -> dict[str, Any]:
    """The config as resolved: absolute paths, dtype, layout, and every method's parameters."""
    cfg = plan.config.model_dump(mode="json", exclude_defaults=False)
    cfg["base_model"] = str(plan.output.path.resolve())
    if plan.config.ancestor is not None:
        cfg["ancestor"] = str(plan.base.path.resolve())
    for entry, reader in zip(cfg["models"], plan.models, strict=True):
        entry["model"] = str(reader.path.resolve())
    cfg["dtype"] = str(plan.out_dtype).removeprefix("torch.")
    cfg["layout"] = plan.layout.name
    cfg["resolved_methods"] = {key: (r.describe() if r is not None else "keep_base") for key, r in plan.methods.items()}
    cfg["tensor_counts"] = plan.counts()
    if plan.maps:
        cfg["mapping"] = plan.mapping_summary()
    cfg["uqmerge_version"] = __version__
    return cfg


def merge_model_card(
    plan: MergePlan,
    recipe: dict[str, Any],
    *,
    library_name: str = "transformers",
    tags: Sequence[str] = ("merge", "uqmerge"),
    extra_sections: Sequence[str] = (),
) -> str:
    """A Hugging Face model card (markdown with YAML front matter) describing the merge.

    ``library_name`` and ``tags`` go into the front matter (a peft adapter is ``peft``); ``extra_sections`` are
    markdown blocks appended after the standard ones.
    """
    methods = {r.method.name: r.method for r in plan.methods.values() if r is not None}
    lines = [
        "---",
        f"library_name: {library_name}",
        f"tags: [{', '.join(tags)}]",
        f"base_model: {plan.output.path.name}",
        "---",
        f"# Merged model ({', '.join(sorted(methods))})",
        "",
        f"Made with uqmerge {__version__} from the base `{plan.output.path}` and {len(plan.models)} model(s):",
        "",
        *[f"- `{r.path}`" for r in plan.models],
        "",
        "## Methods",
        "",
        *[f"- **{m.name}**: {m.summary} — {m.paper} ({m.url})" for m in methods.values()],
        "",
        "## Tensors",
        "",
        "| component / method | tensors |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(plan.counts().items())],
        "",
        f"Layout: `{plan.layout.name}`; output dtype `{recipe['dtype']}`. The exact recipe is in `uqmerge_config.yml`.",
        "",
        *(
            [f"The methods follow {plan.config.compat}'s semantics (`compat: {plan.config.compat}`).", ""]
            if plan.config.compat != "uqmerge"
            else []
        ),
        *_mapping_section(plan),
        *extra_sections,
    ]
    return "\n".join(lines)


def _mapping_section(plan: MergePlan) -> list[str]:
    """What the cross-architecture maps did: per model, tensors mapped and kept; the target's kept tensors."""
    if not plan.maps:
        return []
    summary = plan.mapping_summary()
    lines = [
        "## Cross-architecture mapping",
        "",
        "| model | map | mapped | concatenated | kept |",
        "|---|---|---|---|---|",
    ]
    for m in summary["maps"]:
        lines.append(f"| `{m['source']}` | {m['how']} | {m['mapped']} | {m['concatenated']} | {len(m['kept'])} |")
    kept = summary["kept_from_target"]
    if kept:
        lines += [
            "",
            f"{len(kept)} tensor(s) that a map meant to cover are the target's (no counterpart or another shape; "
            "listed with reasons under `mapping` in `uqmerge_config.yml`).",
            "",
        ]
    else:
        lines.append("")
    return lines
