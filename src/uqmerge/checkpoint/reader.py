"""Lazy reader of a Hugging Face checkpoint directory: headers up front, then one tensor (or row range) per read."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from uqmerge.checkpoint.safetensors_format import TensorInfo, read_header, read_tensor, read_tensor_rows
from uqmerge.core.errors import CheckpointError

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e


def load_pickled_state(path: Path) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict loaded with ``torch.load(weights_only=True)`` (memory-mapped), checked to be a dict."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load pickled weights with weights_only=True ({e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


class CheckpointReader:
    """Reads tensor metadata of a checkpoint dir eagerly and tensor data lazily, one tensor (or row range) per call.

    Supports sharded safetensors with ``model.safetensors.index.json``, a single ``model.safetensors``
    (or any single ``*.safetensors``), and, only with ``allow_pickle=True``, ``pytorch_model.bin`` files
    loaded with ``torch.load(weights_only=True, mmap=True)``.
    """

    def __init__(self, path: str | Path, *, allow_pickle: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a checkpoint directory (expected a Hugging Face model dir)")
        self.allow_pickle = allow_pickle
        self._pickles: dict[Path, dict[str, torch.Tensor]] = {}
        self.tensors: dict[str, TensorInfo] = self._index()

    @cached_property
    def config(self) -> dict[str, Any]:
        """The parsed ``config.json`` (empty dict when absent)."""
        cfg = self.path / "config.json"
        return _load_json(cfg) if cfg.exists() else {}

    def _index(self) -> dict[str, TensorInfo]:
        p = self.path
        if (p / SAFE_INDEX).exists():
            return self._from_index(p / SAFE_INDEX, safetensors=True)
        if (p / SAFE_SINGLE).exists():
            return read_header(p / SAFE_SINGLE)
        singles = sorted(p.glob("*.safetensors"))
        if len(singles) == 1:
            return read_header(singles[0])
        if len(singles) > 1:
            raise CheckpointError(f"{p}: several .safetensors files but no {SAFE_INDEX}; add the index file")
        if (p / PICKLE_INDEX).exists() or (p / PICKLE_SINGLE).exists():
            if not self.allow_pickle:
                raise CheckpointError(
                    f"{p}: only pickled .bin weights found; unpickling can run arbitrary code. Convert to "
                    "safetensors or pass --allow-pickle (loads with torch.load(weights_only=True))"
                )
            if (p / PICKLE_INDEX).exists():
                return self._from_index(p / PICKLE_INDEX, safetensors=False)
            return self._pickle_infos(p / PICKLE_SINGLE)
        raise CheckpointError(f"{p}: no weights found (expected {SAFE_INDEX} or {SAFE_SINGLE})")

    def _from_index(self, index_path: Path, *, safetensors: bool) -> dict[str, TensorInfo]:
        weight_map = _load_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: missing or empty 'weight_map'")
        infos: dict[str, TensorInfo] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = self.path / shard
            if not shard_path.exists():
                raise CheckpointError(f"{index_path}: shard {shard!r} listed in the index does not exist")
            shard_infos = read_header(shard_path) if safetensors else self._pickle_infos(shard_path)
            for name, shard_name in weight_map.items():
                if shard_name != shard:
                    continue
                if name not in shard_infos:
                    raise CheckpointError(f"{shard_path}: tensor {name!r} listed in {index_path.name} is missing")
                infos[name] = shard_infos[name]
        # Keep the on-disk order of the shards (and within each shard, by offset) for sequential reads.
        return dict(sorted(infos.items(), key=lambda kv: (str(kv[1].file), kv[1].start, kv[0])))

    def _pickle_infos(self, path: Path) -> dict[str, TensorInfo]:
        state = self._load_pickle(path)
        return {k: TensorInfo(k, path, v.dtype, tuple(v.shape)) for k, v in state.items()}

    def _load_pickle(self, path: Path) -> dict[str, torch.Tensor]:
        if path not in self._pickles:
            self._pickles[path] = load_pickled_state(path)
        return self._pickles[path]

    @property
    def names(self) -> list[str]:
        """Tensor names in on-disk order."""
        return list(self.tensors)

    def with_names(self, rename: Mapping[str, str]) -> CheckpointReader:
        """A view whose tensor ``n`` is called ``rename[n]`` (others keep their names); reads use the stored names."""
        view = copy.copy(self)
        view.tensors = {rename.get(n, n): info for n, info in self.tensors.items()}
        return view

    def info(self, name: str) -> TensorInfo:
        """Metadata of tensor ``name``; a CheckpointError naming the checkpoint if it is missing."""
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing") from None

    def read(self, name: str) -> torch.Tensor:
        """Read tensor ``name`` from disk (its stored dtype, on the CPU)."""
        info = self.info(name)
        if info.start >= 0:
            return read_tensor(info)
        return self._load_pickle(info.file)[info.name].clone()

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name`` (its stored dtype, on the CPU): ``read(name)[start:stop]``.

        For safetensors this reads only that contiguous byte range; pickles are sliced from their mmap.
        """
        info = self.info(name)
        if info.start >= 0:
            return read_tensor_rows(info, start, stop)
        if not info.shape or not 0 <= start <= stop <= info.shape[0]:
            raise CheckpointError(
                f"{info.file}: rows [{start}, {stop}) out of range for tensor {name!r} of shape {list(info.shape)}"
            )
        return self._load_pickle(info.file)[info.name][start:stop].clone()

    def total_bytes(self) -> int:
        """Total bytes of tensor data."""
        return sum(i.nbytes for i in self.tensors.values())

    def weight_files(self) -> list[Path]:
        """The files holding the weights (and the index), for fingerprinting or copying decisions."""
        files = {i.file for i in self.tensors.values()}
        for index in (SAFE_INDEX, PICKLE_INDEX):
            if (self.path / index).exists():
                files.add(self.path / index)
        return sorted(files)
