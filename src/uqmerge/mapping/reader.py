"""A model of another architecture read under the target's tensor names, through a :class:`~.spec.TensorMap`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from uqmerge.checkpoint.lora import ModelReader
from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.checkpoint.safetensors_format import TensorInfo
from uqmerge.mapping.spec import Concat, Copy, TensorMap


class MappedReader:
    """Offers what the merge engine reads from a model (``path``, ``config``, ``names``, ``tensors``, ``info``,
    ``read``, ``read_rows``) with the target's names: mapped tensors come from ``source`` (copied or concatenated),
    all others from ``fallback`` (the target itself, or the task vectors' base, so they contribute nothing)."""

    def __init__(self, source: CheckpointReader, tmap: TensorMap, fallback: ModelReader, names: list[str]) -> None:
        self.source = source
        self.map = tmap
        self.fallback = fallback
        self.path: Path = source.path
        self.tensors: dict[str, TensorInfo] = {n: self._info(n) for n in names}

    @property
    def config(self) -> dict[str, Any]:
        return self.source.config

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def is_mapped(self, name: str) -> bool:
        """Whether tensor ``name`` comes from the source (else from the fallback)."""
        return name in self.map.entries

    def _info(self, name: str) -> TensorInfo:
        op = self.map.entries.get(name)
        if op is None:
            return self.fallback.info(name)
        first = self.source.info(op.sources[0])
        return replace(first, name=name, shape=self.fallback.info(name).shape)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            return self.fallback.info(name)  # the fallback's error names the missing tensor

    def read(self, name: str) -> torch.Tensor:
        op = self.map.entries.get(name)
        if op is None:
            return self.fallback.read(name)
        if isinstance(op, Copy):
            return self.source.read(op.source)
        return torch.cat([self.source.read(n) for n in op.sources], dim=op.dim)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        op = self.map.entries.get(name)
        if op is None:
            return self.fallback.read_rows(name, start, stop)
        if isinstance(op, Copy):
            return self.source.read_rows(op.source, start, stop)
        if op.dim not in (0, -len(self.tensors[name].shape)):
            return self.read(name)[start:stop]
        return _concat_rows(self.source, op, start, stop)

    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.tensors.values())

    def weight_files(self) -> list[Path]:
        return self.source.weight_files()


def _concat_rows(source: CheckpointReader, op: Concat, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of the row-wise concatenation of ``op.sources``, reading only the rows it needs."""
    parts = []
    offset = 0
    for name in op.sources:
        rows = source.info(name).shape[0]
        lo, hi = max(start, offset), min(stop, offset + rows)
        if lo < hi:
            parts.append(source.read_rows(name, lo - offset, hi - offset))
        offset += rows
    if not parts:
        shape = source.info(op.sources[0]).shape
        return torch.empty((0, *shape[1:]), dtype=source.info(op.sources[0]).dtype)
    return torch.cat(parts, dim=0)
