"""Stable seed derivation: every random draw in UQ gets its seed from a hash of named parts."""

from __future__ import annotations

import hashlib

_MASK_63 = (1 << 63) - 1


def derive_seed(*parts: object) -> int:
    """Return a 63-bit seed from ``parts`` (ints, strings) via SHA-256 of their ``repr``.

    Unlike Python's salted ``hash()``, the result is identical across processes, machines and Python
    versions, and it does not depend on the order in which other seeds were drawn.
    """
    digest = hashlib.sha256(repr(tuple(parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & _MASK_63
