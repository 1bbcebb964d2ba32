"""The digest of a config: what ``--resume`` compares to refuse a run or search whose config changed."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel


def config_digest(config: BaseModel) -> str:
    """SHA-256 of the config's JSON form (keys sorted): everything that determines the run's numbers."""
    return hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
