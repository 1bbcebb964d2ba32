"""Tensor maps as data: each target tensor is a copy of one source tensor or a concatenation of several."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Copy:
    """The target tensor is source tensor ``source`` (several targets may copy one source: a duplicated block)."""

    source: str

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,)


@dataclass(frozen=True)
class Concat:
    """The target tensor is the concatenation of ``sources`` along ``dim`` (a fused QKV from q, k and v)."""

    sources: tuple[str, ...]
    dim: int = 0


SourceOp = Copy | Concat


@dataclass
class TensorMap:
    """How the target's tensors are read from the source; a target tensor not in ``entries`` keeps its own value.

    ``kept`` says why each target tensor that the map meant to cover is not mapped (no counterpart, a shape
    mismatch such as another vocabulary); ``kept_by_rule`` counts the tensors a mapping file's ``keep`` rules
    leave to the target; ``how`` names where the map came from.
    """

    source: Path
    target: Path
    how: str
    entries: dict[str, SourceOp] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    kept_by_rule: int = 0

    def summary(self) -> dict[str, Any]:
        """A JSON-ready account of the map: counts, and every kept tensor with its reason."""
        return {
            "source": str(self.source),
            "target": str(self.target),
            "how": self.how,
            "mapped": len(self.entries),
            "concatenated": sum(isinstance(op, Concat) for op in self.entries.values()),
            "kept": dict(self.kept),
            "kept_by_rule": self.kept_by_rule,
        }
