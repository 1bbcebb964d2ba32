"""The map of a shared language model, derived from both model classes: equal relative names and shapes, 1:1."""

from __future__ import annotations

from uqmerge.checkpoint.architecture import LM_HEAD, DerivationUnavailable
from uqmerge.checkpoint.layouts import derived_layout
from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.core.errors import MappingError
from uqmerge.mapping.spec import Copy, TensorMap

_HEAD = f"{LM_HEAD}.weight"
_EMBEDDINGS = "embed_tokens.weight"


def language_model_keys(reader: CheckpointReader) -> dict[str, str]:
    """Relative name (:func:`~uqmerge.checkpoint.architecture.language_model_names`) → on-disk key of every
    language-model tensor of ``reader``, from its transformers class."""
    try:
        derived = derived_layout(reader.config).derived
    except DerivationUnavailable as e:
        raise MappingError(
            f"{reader.path}: cannot derive its language model from the model class ({e}); give the model a "
            "mapping file (`mapping:` in its `models:` entry)"
        ) from None
    assert derived is not None  # a derived layout always carries its classes
    out: dict[str, str] = {}
    for key in reader.names:
        relative = derived.llm_names.get(derived.to_module(key))
        if relative is not None:
            out[relative] = key
    return out


def _ties_embeddings(reader: CheckpointReader) -> bool:
    config = reader.config
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))


def derive_map(target: CheckpointReader, source: CheckpointReader) -> TensorMap:
    """Each target language-model tensor ← the source's tensor of the same relative name and shape.

    The two must hold the same language model: the same relative names, and the same shapes except for the
    vocabulary rows of the embeddings and the head (another vocabulary: those keep the target's values and are
    listed in ``kept``). A source with tied embeddings and no stored head gives its input embeddings for the
    target's head. Anything else (a tensor without counterpart, another shape) is a MappingError naming it.
    """
    wanted = language_model_keys(target)
    available = language_model_keys(source)
    if _HEAD not in available and _EMBEDDINGS in available and _ties_embeddings(source):
        available[_HEAD] = available[_EMBEDDINGS]
    tmap = TensorMap(source.path, target.path, "derived: shared language model")
    problems = [f"{available[r]!r} has no counterpart" for r in available if r not in wanted and r != _HEAD]
    for relative, key in wanted.items():
        source_key = available.get(relative)
        if source_key is None:
            problems.append(f"{key!r} has no counterpart {relative!r}")
            continue
        want, got = target.info(key).shape, source.info(source_key).shape
        if want == got:
            tmap.entries[key] = Copy(source_key)
        elif relative in (_HEAD, _EMBEDDINGS) and want[1:] == got[1:]:
            tmap.kept[key] = f"shape {list(got)} in the source ({source_key!r}) vs {list(want)}: another vocabulary"
        else:
            problems.append(f"{key!r} is {list(want)} but the source's {source_key!r} is {list(got)}")
    if problems or not tmap.entries:
        shown = "; ".join(problems[:3]) or f"no tensor of {len(wanted)} matches"
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise MappingError(
            f"{source.path}: its language model differs from that of {target.path}: {shown}{more}; the two do not "
            "share a language model. Give a mapping file (`mapping:`) if they do under other names"
        )
    return tmap
