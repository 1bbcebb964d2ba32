"""Mapping files: YAML rules from a target architecture's tensor names to another's (shipped ones by name).

Rules are tried in order on each target tensor name (the whole name must match ``target``); the first that
matches decides: ``source`` (1:1; several targets may name one source), ``concat`` (a list of sources joined along
``dim``) or ``keep: true``. Source templates use the target match's groups as ``{1}`` or ``{name}``. ``renumber``
shifts a layer-index group past the target layers that have no source counterpart (Mllama's cross-attention
layers). With ``language_model: derive``, target tensors that no rule matches are mapped as for two classes that
share a language model (:func:`uqmerge.mapping.derive.derive_map`); without it they keep the target's value.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.core.configs import read_yaml, validate_config
from uqmerge.core.errors import ConfigError, MappingError
from uqmerge.mapping.derive import derive_map
from uqmerge.mapping.spec import Concat, Copy, SourceOp, TensorMap


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Renumber(_Strict):
    """Layer index ``group`` of the target minus the number of ``skip`` layers before it; skipped layers match not."""

    group: int | str
    skip: list[int] | str = Field(description="layer indices, or a dotted key of the target's config.json")


class MapRule(_Strict):
    """One rule: a regex over target names and where such a tensor comes from."""

    target: str
    source: str | None = None
    concat: list[str] | None = Field(None, min_length=2)
    dim: int = 0
    keep: bool = False
    optional: bool = False
    renumber: Renumber | None = None

    @field_validator("target")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"invalid regular expression {v!r}: {e}") from e
        return v

    @model_validator(mode="after")
    def _one_action(self) -> MapRule:
        given = [k for k in ("source", "concat") if getattr(self, k) is not None] + (["keep"] if self.keep else [])
        if len(given) != 1:
            raise ValueError(f"rule {self.target!r}: give exactly one of source, concat, keep: true (got {given})")
        return self


class MappingFile(_Strict):
    """A mapping file: a description, optional derivation of the shared language model, and rules."""

    description: str = ""
    language_model: Literal["derive"] | None = None
    rules: list[MapRule] = Field(default_factory=list)


@cache
def shipped_mappings() -> dict[str, Path]:
    """The mapping files shipped with uqmerge, by name (file stem)."""
    folder = resources.files("uqmerge.mapping").joinpath("maps")
    return {Path(f.name).stem: Path(str(f)) for f in folder.iterdir() if f.name.endswith((".yaml", ".yml"))}


def resolve_mapping(name_or_path: str) -> Path:
    """A mapping file path: an existing file, else a shipped mapping's name; a ConfigError lists those."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = shipped_mappings()
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise ConfigError(
        f"mapping {name_or_path!r} is neither a file nor a shipped mapping; shipped: {', '.join(sorted(shipped))}"
    )


def load_mapping_file(name_or_path: str) -> MappingFile:
    """Read and validate a mapping file (a ConfigError names the file and key on error)."""
    return _read(resolve_mapping(name_or_path))


def _read(path: Path) -> MappingFile:
    return validate_config(MappingFile, read_yaml(path), str(path))


def _config_value(config: dict[str, Any], dotted: str, source: Path) -> list[int]:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise MappingError(f"{source}/config.json: no key {dotted!r} (named by a mapping rule's renumber.skip)")
        value = value[part]
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise MappingError(f"{source}/config.json: {dotted!r} is not a list of layer indices")
    return value


def _groups(
    match: re.Match[str], renumber: Renumber | None, skip: list[int]
) -> tuple[list[str], dict[str, str]] | None:
    """The match's groups for the source templates, renumbered; None when the layer is one of ``skip``."""
    positional = [match.group(0), *(g or "" for g in match.groups())]
    named = {k: v or "" for k, v in match.groupdict().items()}
    if renumber is None:
        return positional, named
    group = renumber.group
    index = int(match.group(group))
    if index in skip:
        return None
    shifted = str(index - sum(s < index for s in skip))
    if isinstance(group, int):
        positional[group] = shifted
    else:
        named[group] = shifted
        positional[match.re.groupindex[group]] = shifted
    return positional, named


def _source_op(rule: MapRule, groups: tuple[list[str], dict[str, str]]) -> SourceOp:
    positional, named = groups
    try:
        if rule.source is not None:
            return Copy(rule.source.format(*positional, **named))
        assert rule.concat is not None
        return Concat(tuple(t.format(*positional, **named) for t in rule.concat), rule.dim)
    except (IndexError, KeyError) as e:
        raise MappingError(
            f"mapping rule {rule.target!r}: its source template names group {e}, which it lacks"
        ) from None


def _shape_problem(op: SourceOp, want: tuple[int, ...], source: CheckpointReader) -> str | None:
    shapes = [source.info(n).shape for n in op.sources]
    if isinstance(op, Copy):
        return None if shapes[0] == want else f"shape {list(shapes[0])} in the source vs {list(want)}"
    dim = op.dim if op.dim >= 0 else len(want) + op.dim
    others_agree = all(
        len(s) == len(want) and all(s[d] == want[d] for d in range(len(want)) if d != dim) for s in shapes
    )
    if others_agree and sum(s[dim] for s in shapes) == want[dim]:
        return None
    return f"concatenation of shapes {[list(s) for s in shapes]} along dim {op.dim} does not give {list(want)}"


def map_from_file(target: CheckpointReader, source: CheckpointReader, name_or_path: str) -> TensorMap:
    """The map a mapping file gives from ``source`` onto ``target``'s tensor names."""
    path = resolve_mapping(name_or_path)
    spec = _read(path)
    compiled = [(rule, re.compile(rule.target)) for rule in spec.rules]
    skips = {
        id(rule): _config_value(target.config, rule.renumber.skip, target.path)
        if isinstance(rule.renumber.skip, str)
        else list(rule.renumber.skip)
        for rule, _ in compiled
        if rule.renumber is not None
    }
    tmap = TensorMap(source.path, target.path, f"mapping file {path}")
    unmatched = []
    for name in target.names:
        for rule, pattern in compiled:
            match = pattern.fullmatch(name)
            groups = _groups(match, rule.renumber, skips.get(id(rule), [])) if match else None
            if groups is not None:
                break
        else:
            unmatched.append(name)
            continue
        if rule.keep:
            tmap.kept_by_rule += 1
            continue
        op = _source_op(rule, groups)
        missing = [n for n in op.sources if n not in source.tensors]
        if missing:
            if rule.optional:
                tmap.kept[name] = f"no {missing[0]!r} in the source (optional rule {rule.target!r})"
                continue
            raise MappingError(
                f"{path}: rule {rule.target!r} maps {name!r} from {missing[0]!r}, which {source.path} lacks; fix the "
                "rule or mark it `optional: true`"
            )
        problem = _shape_problem(op, target.info(name).shape, source)
        if problem:
            tmap.kept[name] = problem
        else:
            tmap.entries[name] = op
    if spec.language_model == "derive" and unmatched:
        derived = derive_map(target, source)
        for name in unmatched:
            if name in derived.entries:
                tmap.entries[name] = derived.entries[name]
            elif name in derived.kept:
                tmap.kept[name] = derived.kept[name]
        tmap.how += " + derived language model"
    if not tmap.entries:
        raise MappingError(f"{path}: maps no tensor of {source.path} onto {target.path}; check its rules")
    return tmap
