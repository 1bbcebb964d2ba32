"""Destinations for merged tensors: the sink interface and the atomic on-disk sink."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
import yaml

from uqmerge.checkpoint.writer import ShardedWriter
from uqmerge.engine.model_card import merge_model_card, resolved_recipe
from uqmerge.engine.plan import MergePlan

RECIPE_FILE = "uqmerge_config.yml"


class TensorSink(Protocol):
    """Receives each merged tensor once, in plan order; ``close`` finalises, ``abort`` discards."""

    def write(self, name: str, tensor: torch.Tensor) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class DiskSink:
    """Writes an HF checkpoint dir atomically: shards, index, base's aux files, config dtype, recipe, card."""

    def __init__(self, plan: MergePlan, out_dir: str | Path, *, max_shard_size: int, force: bool = False) -> None:
        self.plan = plan
        self.writer = ShardedWriter(out_dir, plan.output_specs(), max_shard_size=max_shard_size, force=force)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.writer.write(name, tensor)

    def close(self) -> None:
        try:
            self.writer.copy_aux_files(self.plan.output.path)
            self._write_config()
            recipe = resolved_recipe(self.plan)
            self.writer.add_file(RECIPE_FILE, yaml.safe_dump(recipe, sort_keys=False))
            self.writer.add_file("README.md", merge_model_card(self.plan, recipe))
        except BaseException:
            self.writer.abort()
            raise
        self.writer.commit()

    def abort(self) -> None:
        self.writer.abort()

    def _write_config(self) -> None:
        config = dict(self.plan.output.config)
        if not config:
            return
        dtype_name = str(self.plan.out_dtype).removeprefix("torch.")
        for key in ("dtype", "torch_dtype"):
            if key in config:
                config[key] = dtype_name
        if "dtype" not in config and "torch_dtype" not in config:
            config["dtype"] = dtype_name
        self.writer.add_file("config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
