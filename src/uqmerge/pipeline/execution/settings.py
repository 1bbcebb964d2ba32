"""The ``execution:`` block of a run or search config and the ``--ray ADDRESS`` option."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from uqmerge.core.errors import ConfigError

_HOST_PORT = re.compile(r"[A-Za-z0-9_.\-\[\]:]+:\d+")


def check_ray_address(address: str | None) -> str | None:
    """``None`` (start a local cluster), ``auto``, ``ray://HOST:PORT`` or a ``HOST:PORT`` GCS address."""
    if address is None or address == "auto" or address.startswith("ray://") or _HOST_PORT.fullmatch(address):
        return address
    raise ValueError(
        f"{address!r} is not a Ray address; use null (a local cluster), auto, ray://HOST:PORT or HOST:PORT"
    )


class ExecutionSettings(BaseModel):
    """Where the parallel work of a run (candidates' UQ, search points) is computed.

    The backend does not change a single number, so this block is not part of the config's digest or record:
    a run started locally may be resumed on Ray and the other way round.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local", "ray"] = "local"
    address: str | None = None
    gpus_per_worker: float = Field(1.0, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0)
    workers: int | None = Field(None, ge=1)
    max_restarts: int = Field(3, ge=0)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return check_ray_address(v)

    def with_ray(self, address: str) -> ExecutionSettings:
        """These settings on the Ray backend at ``--ray ADDRESS`` (``local``: a cluster started on this machine)."""
        try:
            checked = check_ray_address(None if address == "local" else address)
        except ValueError as e:
            raise ConfigError(f"--ray: {e} (or local)") from None
        return self.model_copy(update={"backend": "ray", "address": checked})
