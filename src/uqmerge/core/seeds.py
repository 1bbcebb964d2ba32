"""Stable seeds: every random stream in uqmerge is seeded by :func:`stable_seed` of named parts."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_MASK_63 = (1 << 63) - 1


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from SHA-256 of ``repr(parts)`` (ints and strings).

    Unlike Python's salted ``hash()``, the result is the same across processes, machines and Python versions,
    and a stream keyed by its own parts (say, seed, item id, draw index) does not depend on which other streams
    were drawn before it or in what order.
    """
    digest = hashlib.sha256(repr(tuple(parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & _MASK_63


def stable_unit(*parts: object) -> float:
    """A number in [0, 1) from :func:`stable_seed` of ``parts``."""
    return stable_seed(*parts) / float(1 << 63)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
