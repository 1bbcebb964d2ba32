"""On-disk UQ cache keyed by a model-directory fingerprint, the scored data and the UQ config.

The key covers everything that determines the numbers: the model fingerprint, each prepared dataset's
name (every draw is keyed by it), item count and content digest (ids, texts, options after sampling and
padding, answers, image bytes; :meth:`~uqmerge.uq.data.UQDataset.identity`), the UQ config except
``batch_size`` and ``save_probs`` (neither changes the numbers), device type, dtype and library versions.

The model fingerprint hashes every top-level file of the checkpoint directory (weights, index,
config, tokenizer, processor, chat template; ``README.md`` and dot-files excluded) with SHA-256 of the
full content, plus file names and sizes. Content hashes of large files are memoised in
``<cache>/file-hashes.json`` under (absolute path, size, mtime), so a rerun on an unchanged model
re-reads nothing. Results live in ``<cache>/results/<key>.json``, written atomically.

The cache directory is, in order: the ``cache_dir`` argument, ``$UQMERGE_CACHE``, or
``~/.cache/uqmerge/uq``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from uqmerge.core.errors import UQMergeError
from uqmerge.core.files import atomic_write_text
from uqmerge.uq.results import UQResult

logger = logging.getLogger(__name__)

CACHE_ENV = "UQMERGE_CACHE"
KEY_SCHEME = 2
"""Version of what the key covers and of how the numbers are drawn (2: per-row MC-dropout masks)."""
_CHUNK = 8 << 20
_MEMO_MIN_BYTES = 1 << 20
_SKIPPED_FILES = frozenset({"README.md"})


def default_cache_dir() -> Path:
    """``$UQMERGE_CACHE`` if set, else ``~/.cache/uqmerge/uq``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "uqmerge" / "uq"


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's content, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _HashMemo:
    """Content hashes of large files keyed by (absolute path, size, mtime_ns)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, str] = {}
        self.dirty = False
        if path is not None and path.exists():
            try:
                self.entries = dict(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                logger.warning("ignoring unreadable hash memo %s", path)

    def digest(self, file: Path) -> str:
        stat = file.stat()
        if stat.st_size < _MEMO_MIN_BYTES or self.path is None:
            return sha256_file(file)
        key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in self.entries:
            self.entries[key] = sha256_file(file)
            self.dirty = True
        return self.entries[key]

    def save(self) -> None:
        if self.dirty and self.path is not None:
            atomic_write_text(self.path, json.dumps(self.entries, indent=0, sort_keys=True))
            self.dirty = False


def fingerprint_model_dir(model_dir: str | Path, *, cache_dir: Path | None = None) -> str:
    """SHA-256 over (name, size, content hash) of every top-level file of a checkpoint directory."""
    root = Path(model_dir)
    if not root.is_dir():
        raise UQMergeError(f"model directory {root} does not exist")
    memo = _HashMemo(cache_dir / "file-hashes.json" if cache_dir is not None else None)
    files = sorted(
        p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in _SKIPPED_FILES
    )
    if not any(p.suffix == ".safetensors" or p.suffix == ".bin" for p in files):
        raise UQMergeError(f"{root} holds no weights (*.safetensors); is it a model directory?")
    h = hashlib.sha256()
    for file in files:
        h.update(f"{file.name}\0{file.stat().st_size}\0{memo.digest(file)}\n".encode())
    try:
        memo.save()
    except OSError as e:
        logger.warning("cannot write hash memo in %s: %s", cache_dir, e)
    return h.hexdigest()


def cache_key(
    *,
    model_fingerprint: str,
    datasets: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    environment: Mapping[str, str],
) -> str:
    """SHA-256 of the canonical JSON of everything that determines the numbers (``datasets``: each dataset's
    :meth:`~uqmerge.uq.data.UQDataset.identity`, in scoring order)."""
    payload = {
        "scheme": KEY_SCHEME,
        "model": model_fingerprint,
        "data": [dict(d) for d in datasets],
        "config": dict(config),
        "environment": dict(environment),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


class UQCache:
    """Results stored as ``<root>/results/<key>.json``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def path_for(self, key: str) -> Path:
        return self.root / "results" / f"{key}.json"

    def load(self, key: str) -> UQResult | None:
        """The cached result for ``key``, or None (a corrupt entry is logged and ignored)."""
        path = self.path_for(key)
        if not path.exists():
            return None
        try:
            result = UQResult.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValidationError, ValueError) as e:
            logger.warning("ignoring unreadable UQ cache entry %s: %s", path, e)
            return None
        result._cache_hit = True
        return result

    def store(self, key: str, result: UQResult) -> Path:
        """Write ``result`` atomically; return its path."""
        path = self.path_for(key)
        atomic_write_text(path, result.to_json())
        return path
