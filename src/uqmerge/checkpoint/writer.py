"""Atomic sharded safetensors writer: tensors stream into pre-laid-out shards in a temp dir, renamed when done."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import torch

from uqmerge.checkpoint.reader import SAFE_INDEX, SAFE_SINGLE, WEIGHT_SUFFIXES
from uqmerge.checkpoint.safetensors_format import build_header, dtype_size
from uqmerge.core.errors import OutputError

log = logging.getLogger(__name__)

TensorSpec = tuple[str, torch.dtype, tuple[int, ...]]
# Base-model files never copied to a merged output: weights (rewritten) and the card (regenerated).
_SKIP_AUX = {SAFE_INDEX, "pytorch_model.bin.index.json", "README.md"}


def check_output_dir(out_dir: Path, *, force: bool) -> None:
    """Refuse a non-empty output dir unless ``force``; the check runs before any work."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise OutputError(f"{out_dir}: output directory is not empty; choose another or pass --force to replace it")


def move_into_place(tmp_dir: Path, out_dir: Path, *, force: bool) -> Path:
    """Rename the finished ``tmp_dir`` to ``out_dir``, replacing an empty (or, with ``force``, any) directory there."""
    if out_dir.exists():
        check_output_dir(out_dir, force=force)
        trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, trash / "old")
        os.replace(tmp_dir, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, out_dir)
    return out_dir


def assign_shards(specs: list[TensorSpec], max_shard_size: int) -> list[list[TensorSpec]]:
    """Split tensors, in order, into shards of at most ``max_shard_size`` bytes (a larger tensor gets its own)."""
    if max_shard_size <= 0:
        raise OutputError(f"max shard size must be positive bytes, got {max_shard_size}")
    shards: list[list[TensorSpec]] = [[]]
    used = 0
    for spec in specs:
        n = dtype_size(spec[1]) * math.prod(spec[2])
        if shards[-1] and used + n > max_shard_size:
            shards.append([])
            used = 0
        shards[-1].append(spec)
        used += n
    return shards


class ShardedWriter:
    """Writes a planned set of tensors as HF safetensors shards, atomically.

    All names, dtypes and shapes are known before the first write, so every shard's header is written up
    front and each tensor's bytes go straight to their offset: memory holds one tensor at a time. Files go
    to a temp dir beside ``out_dir``; :meth:`commit` checks every tensor was written and renames it into
    place; any exception (or :meth:`abort`) deletes the temp dir, so a failed merge leaves nothing behind.
    """

    def __init__(
        self, out_dir: str | Path, specs: list[TensorSpec], *, max_shard_size: int, force: bool = False
    ) -> None:
        self.out_dir = Path(out_dir)
        check_output_dir(self.out_dir, force=force)
        self.force = force
        self.specs = {name: (dtype, shape) for name, dtype, shape in specs}
        if len(self.specs) != len(specs):
            raise OutputError("duplicate tensor names in the output plan")
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.tmp-", dir=self.out_dir.parent))
        self._fds: dict[Path, int] = {}
        self._where: dict[str, tuple[Path, int]] = {}
        self._written: set[str] = set()
        self.weight_map: dict[str, str] = {}
        self.total_size = 0
        try:
            self._layout(assign_shards(specs, max_shard_size))
        except BaseException:
            self.abort()
            raise

    def _layout(self, shards: list[list[TensorSpec]]) -> None:
        n = len(shards)
        for i, shard in enumerate(shards, start=1):
            fname = SAFE_SINGLE if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
            path = self.tmp_dir / fname
            header, offsets = build_header(shard)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds[path] = fd
            os.pwrite(fd, header, 0)
            end = len(header)
            for name, dtype, shape in shard:
                self._where[name] = (path, offsets[name])
                self.weight_map[name] = fname
                nbytes = dtype_size(dtype) * math.prod(shape)
                self.total_size += nbytes
                end = max(end, offsets[name] + nbytes)
            os.ftruncate(fd, end)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor (dtype and shape must match the plan)."""
        if name not in self.specs:
            raise OutputError(f"tensor {name!r} is not in the output plan")
        if name in self._written:
            raise OutputError(f"tensor {name!r} written twice")
        dtype, shape = self.specs[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise OutputError(
                f"tensor {name!r}: got {tensor.dtype} {list(tensor.shape)}, planned {dtype} {list(shape)}"
            )
        path, offset = self._where[name]
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.size:
            written = os.pwrite(self._fds[path], memoryview(data), offset)
            if written != data.size:
                raise OutputError(f"{path}: short write for tensor {name!r}")
        self._written.add(name)

    def add_file(self, name: str, content: str | bytes) -> None:
        """Add a small file (recipe, model card, config) to the output."""
        mode = "wb" if isinstance(content, bytes) else "w"
        with (self.tmp_dir / name).open(mode) as f:
            f.write(content)

    def copy_aux_files(self, source_dir: Path) -> list[str]:
        """Copy config, tokenizer, processor, chat template, generation config (all non-weight files)."""
        copied = []
        for item in sorted(source_dir.iterdir()):
            if item.name in _SKIP_AUX or item.name.endswith(WEIGHT_SUFFIXES) or item.name.startswith("."):
                continue
            if item.is_file():
                shutil.copy2(item, self.tmp_dir / item.name)
                copied.append(item.name)
            elif item.is_dir():
                log.debug("not copying sub-directory %s of the base model", item)
        return copied

    def commit(self) -> Path:
        """Finish: verify every planned tensor was written, write the index, rename into place."""
        missing = sorted(set(self.specs) - self._written)
        if missing:
            self.abort()
            raise OutputError(f"{len(missing)} planned tensors were never written, e.g. {missing[:5]}")
        self._close()
        if len(set(self.weight_map.values())) > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": self.weight_map}
            (self.tmp_dir / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        for fd_path in list(self.tmp_dir.iterdir()):
            if fd_path.suffix == ".safetensors":
                with fd_path.open("rb") as f:
                    os.fsync(f.fileno())
        return move_into_place(self.tmp_dir, self.out_dir, force=self.force)

    def _close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def abort(self) -> None:
        """Discard everything written so far."""
        self._close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
