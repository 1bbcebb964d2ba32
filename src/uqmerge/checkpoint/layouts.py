"""Layouts: how every tensor of a checkpoint is classified into a component (and a language-model role).

A layout is either derived from the transformers model class (:mod:`uqmerge.checkpoint.architecture`, the default)
or built in as regex rules in ``layouts.json``: those marked ``override`` replace the derivation for their model
types; the others are used where the derivation is unavailable (transformers not installed, a model type it does
not know). User ``layout_rules`` come first in either.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from uqmerge.core.errors import LayoutError

if TYPE_CHECKING:
    from uqmerge.checkpoint.architecture import DerivedClasses

COMPONENTS = ("vision_tower", "audio_tower", "projector", "language_model")
ROLES = ("embeddings", "lm_head", "attention", "cross_attention", "mlp", "norm", "other")
# Components whose tensors keep the base's values unless `components:` says otherwise (frozen encoders).
ENCODER_COMPONENTS = ("vision_tower", "audio_tower")


@dataclass(frozen=True)
class Rule:
    """A regex over on-disk tensor names and the component (and optional role) it assigns."""

    pattern: str
    component: str
    role: str | None = None

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None


@dataclass(frozen=True)
class Classification:
    """Where a tensor belongs: ``component`` and, for the language model, its ``role``."""

    component: str
    role: str | None = None

    @property
    def key(self) -> str:
        """``component`` or ``component.role``, as used in ``components:`` config overrides."""
        return f"{self.component}.{self.role}" if self.role else self.component


@dataclass(frozen=True)
class Layout:
    """A named architecture layout: ordered component rules and the language-model role rules."""

    name: str
    description: str
    rules: tuple[Rule, ...]
    role_rules: tuple[Rule, ...]
    module_names: tuple[tuple[str, str], ...] = ()
    derived: DerivedClasses | None = None

    def with_extra_rules(self, extra: Sequence[Rule]) -> Layout:
        """A copy whose user rules take precedence over the built-in (or derived) ones."""
        return Layout(
            self.name, self.description, (*extra, *self.rules), self.role_rules, self.module_names, self.derived
        )

    def module_name(self, key: str) -> str:
        """The transformers-5 in-memory parameter name of on-disk key ``key``.

        Derived layouts use the model class's own key conversion; built-in ones their first matching rename.
        """
        if self.derived is not None:
            return self.derived.to_module(key)
        for pattern, replacement in self.module_names:
            if re.search(pattern, key):
                return re.sub(pattern, replacement, key, count=1)
        return key

    def classify(self, name: str) -> Classification | None:
        """The component (and LM role) of tensor ``name``, or None if no rule matches."""
        for rule in self.rules:
            if rule.matches(name):
                if rule.role is not None or rule.component != "language_model":
                    return Classification(rule.component, rule.role)
                role = next((r.role for r in self.role_rules if r.matches(name)), None)
                return Classification(rule.component, role) if role else None
        if self.derived is not None:
            return self.derived.classify(name)
        return None

    def classify_all(self, names: Iterable[str]) -> dict[str, Classification]:
        """Classify every name; a LayoutError lists all unclassified tensors."""
        result: dict[str, Classification] = {}
        unclassified = []
        for name in names:
            c = self.classify(name)
            if c is None:
                unclassified.append(name)
            else:
                result[name] = c
        if unclassified:
            shown = "\n  ".join(unclassified[:20])
            more = f"\n  … and {len(unclassified) - 20} more" if len(unclassified) > 20 else ""
            what = (
                f"are not parameters of {self.derived.class_name} (after its key conversion)"
                if self.derived is not None
                else "match no rule"
            )
            fix = (
                "Check that config.json describes these weights, set `layout:` to a built-in layout "
                f"({', '.join(layout_names())}) to classify by name rules, or add rules"
                if self.derived is not None
                else "Add rules"
            )
            raise LayoutError(
                f"layout {self.name!r}: {len(unclassified)} tensors {what}:\n  {shown}{more}\n"
                f"{fix} in the config, e.g. layout_rules: [{{pattern: '^my_adapter\\.', component: projector}}]"
            )
        return result


@cache
def _data() -> dict[str, Any]:
    return json.loads(resources.files("uqmerge.checkpoint").joinpath("layouts.json").read_text())


def _rules(raw: Sequence[Mapping[str, str]], component: str | None = None) -> tuple[Rule, ...]:
    return tuple(Rule(r["pattern"], r.get("component", component or ""), r.get("role")) for r in raw)


def layout_names() -> list[str]:
    """Names of the built-in layouts."""
    return sorted(_data()["layouts"])


def get_layout(name: str) -> Layout:
    """The built-in layout called ``name``."""
    data = _data()
    try:
        raw = data["layouts"][name]
    except KeyError:
        raise LayoutError(f"unknown layout {name!r}; known: {', '.join(layout_names())}") from None
    renames = tuple((r["pattern"], r["replace"]) for r in raw.get("module_names", []))
    roles = _rules(data["language_model_roles"], "language_model")
    return Layout(name, raw["description"], _rules(raw["rules"]), roles, renames)


def language_model_role_rules() -> tuple[Rule, ...]:
    """The name-based language-model role rules (``language_model_roles`` in layouts.json)."""
    return _rules(_data()["language_model_roles"], "language_model")


def derived_layout(config: Mapping[str, Any]) -> Layout:
    """The layout derived from ``config.json``'s model class (DerivationUnavailable says why there is none)."""
    from uqmerge.checkpoint.architecture import derive_classes

    roles = language_model_role_rules()
    derived = derive_classes(config, roles)
    description = f"derived from transformers' {derived.class_name} (module tree on the meta device)"
    return Layout(f"derived:{derived.class_name}", description, (), roles, (), derived)


def _builtin_for(config: Mapping[str, Any], *, override: bool) -> Layout | None:
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    entries = [(n, raw) for n, raw in _data()["layouts"].items() if bool(raw.get("override")) == override]
    for name, raw in entries:
        if model_type in raw.get("model_types", []):
            return get_layout(name)
    for name, raw in entries:
        suffixes = tuple(raw.get("architecture_suffixes", []))
        if suffixes and any(a.endswith(suffixes) for a in architectures):
            return get_layout(name)
    return None


def detect_layout(config: Mapping[str, Any], *, source: str = "config.json") -> Layout:
    """The layout of a model's ``config.json``: a built-in override, else derived from its class, else built in."""
    from uqmerge.checkpoint.architecture import DerivationUnavailable

    override = _builtin_for(config, override=True)
    if override is not None:
        return override
    try:
        return derived_layout(config)
    except DerivationUnavailable as e:
        reason = str(e)
    fallback = _builtin_for(config, override=False)
    if fallback is not None:
        return fallback
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    raise LayoutError(
        f"{source}: no layout for model_type={model_type!r} architectures={architectures} (cannot derive one: "
        f"{reason}); set `layout:` in the config to one of {', '.join(layout_names())} and add `layout_rules:`."
    )
