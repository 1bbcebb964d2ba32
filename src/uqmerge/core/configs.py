"""Config files: YAML mappings read with one-line errors, validated by pydantic models that name each key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from uqmerge.core.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: the key path and what is wrong."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key (not allowed here)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return f"{source}: invalid config\n" + "\n".join(lines)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping; a ConfigError names the file on failure."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{p}: cannot read YAML ({e})") from e
    if data is None:
        raise ConfigError(f"{p}: the file is empty; expected a YAML mapping such as `merge_method: linear`")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return data


def validate_config(model: type[ConfigT], data: dict[str, Any], source: str) -> ConfigT:
    """``model`` validated from ``data``; a ConfigError lists every problem with its key path in ``source``."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
