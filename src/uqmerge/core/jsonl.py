"""JSONL reading: one JSON value a line, errors naming the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from uqmerge.core.errors import DataError


def jsonl_rows(file: Path, what: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of a JSONL ``file``; DataErrors name ``what`` and the line."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read {what} {file}: {e}") from e
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{file}:{lineno}: invalid JSON ({e.msg})") from e
