"""The safetensors container format: header parsing with validation, and header building for streaming writes.

The ``safetensors`` library reads through mmap and writes whole dicts; the engine needs positional reads of
one tensor or of a range of its rows (so untouched file pages never count toward resident memory) and
streaming writes of tensors produced one at a time, so it speaks the (documented, tiny) container format
directly. Files written here are read back with the ``safetensors`` library in the tests.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from uqmerge.core.errors import CheckpointError

DTYPE_BY_CODE: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODE_BY_DTYPE: dict[torch.dtype, str] = {v: k for k, v in DTYPE_BY_CODE.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and absolute byte range (``start`` is -1 for pickles)."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int = -1
    end: int = -1

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_size(self.dtype)


def dtype_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header; a CheckpointError names the file and the defect."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(f"{path}: corrupt safetensors file (shorter than its 8-byte header length)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(size - 8, _MAX_HEADER_BYTES):
                raise CheckpointError(
                    f"{path}: corrupt safetensors header (declared length {header_len} bytes, file is {size})"
                )
            header_bytes = f.read(header_len)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from e
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header (not valid JSON: {e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + header_len
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPE_BY_CODE[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r} ({e!r})") from e
        info = TensorInfo(name, path, dtype, shape, data_start + begin, data_start + end)
        if end < begin or info.end > size or end - begin != info.nbytes:
            raise CheckpointError(
                f"{path}: corrupt safetensors header: tensor {name!r} has byte range [{begin}, {end}) "
                f"inconsistent with shape {list(shape)} {entry['dtype']} or file size {size}"
            )
        infos[name] = info
    return infos


def row_numel(shape: tuple[int, ...]) -> int:
    """Elements in one row (one index of the first dimension) of a tensor of ``shape`` with at least one dim."""
    return math.prod(shape[1:])


def _pread_tensor(info: TensorInfo, offset: int, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """A new CPU tensor of ``shape`` and ``info.dtype`` filled from ``info.file`` at absolute ``offset``.

    Positional reads (no mmap) straight into the tensor's memory, repeated while the kernel returns short
    counts (Linux reads at most ~2 GB per call).
    """
    tensor = torch.empty(shape, dtype=info.dtype)
    if tensor.numel() == 0:
        return tensor
    buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    done = 0
    try:
        with info.file.open("rb") as f:
            while done < len(buffer):
                got = os.preadv(f.fileno(), [buffer[done:]], offset + done)
                if got <= 0:
                    break
                done += got
    except OSError as e:
        raise CheckpointError(f"{info.file}: cannot read {what} of tensor {info.name!r} ({e})") from e
    if done != len(buffer):
        raise CheckpointError(f"{info.file}: truncated data for tensor {info.name!r}")
    return tensor


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """Read one tensor with a positional read (no mmap), returning a CPU tensor that owns its memory."""
    return _pread_tensor(info, info.start, info.shape, "the data")


def read_tensor_rows(info: TensorInfo, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` (first-dimension indices) of one tensor, by a positional read of that byte range.

    safetensors stores tensors row-major and contiguous, so a row range is one contiguous byte range: the
    result equals ``read_tensor(info)[start:stop]`` and owns its memory. A CheckpointError names the tensor
    for a 0-D tensor or a range outside ``[0, shape[0]]``.
    """
    if not info.shape:
        raise CheckpointError(f"{info.file}: tensor {info.name!r} is 0-D and has no rows; read it whole")
    if not 0 <= start <= stop <= info.shape[0]:
        raise CheckpointError(
            f"{info.file}: rows [{start}, {stop}) out of range for tensor {info.name!r} with {info.shape[0]} rows"
        )
    row_bytes = row_numel(info.shape) * dtype_size(info.dtype)
    return _pread_tensor(
        info, info.start + start * row_bytes, (stop - start, *info.shape[1:]), f"rows [{start}, {stop})"
    )


def build_header(entries: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> tuple[bytes, dict[str, int]]:
    """Header bytes (length prefix included, padded to 8) for tensors laid out contiguously in order.

    Returns the bytes and each tensor's absolute file offset.
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    relative: dict[str, int] = {}
    for name, dtype, shape in entries:
        nbytes = math.prod(shape) * dtype_size(dtype)
        header[name] = {
            "dtype": CODE_BY_DTYPE[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        relative[name] = offset
        offset += nbytes
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    prefix = struct.pack("<Q", len(body))
    start = len(prefix) + len(body)
    return prefix + body, {name: start + off for name, off in relative.items()}
