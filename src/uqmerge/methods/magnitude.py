"""Exact selection of a tensor's largest-magnitude entries, from the whole tensor or from its blocks in order.

The rank order is the one TIES and Breadcrumbs define: descending magnitude, and among equal magnitudes the
lower flat (row-major) index ranks higher. A set of top-ranked entries is described by a :class:`MagnitudeCut`
(a threshold key plus the flat index where entries equal to it stop counting), so a block of rows can apply it
without seeing the rest of the tensor. :class:`MagnitudeSelector` finds cuts exactly by radix selection over
the magnitudes' bit patterns, either in one call on a whole tensor or streamed over blocks in two (rarely
three) passes, with memory independent of the tensor's size. It replaces a full stable argsort (≈ 12 s for
32.8M entries on 2 CPU cores; ``torch.kthvalue`` ≈ 1–2 s plus 12 bytes of temporaries per entry) by a few
histogram passes (≈ 0.5 s, no per-entry temporaries beyond one block).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

_LOW_BITS = 16
_HIGH_BINS = 1 << 15  # keys are non-negative int32, so key >> 16 < 2**15
_LOW_BINS = 1 << _LOW_BITS
_LOW_MASK = _LOW_BINS - 1
_BATCH = 1 << 16  # entries gathered from small blocks before one histogram update


def magnitude_keys(tensor: Tensor) -> Tensor:
    """Int32 keys ordered as |x|: the bit pattern of |x| in fp32 (−0 equals +0, NaN ranks above +inf).

    fp16 and bf16 convert to fp32 exactly; fp64 entries are ranked by their fp32 rounding.
    """
    return tensor.to(torch.float32).abs().view(torch.int32)


@dataclass(frozen=True)
class MagnitudeCut:
    """The ``count`` top-ranked entries of a tensor of ``numel`` entries.

    Entry j (flat index) is inside iff its key (:func:`magnitude_keys`) is above ``key``, or equals ``key`` and
    j < ``index_limit``. ``count`` 0 is the empty set and ``count`` ≥ ``numel`` the whole tensor.
    """

    count: int
    numel: int
    key: int = 0
    index_limit: int = 0

    def mask(self, keys: Tensor, offset: int = 0) -> Tensor:
        """Membership of the entries whose ``keys`` are given: a block whose first entry has flat index ``offset``."""
        return self.bit_mask(keys, offset) != 0

    def bit_mask(self, keys: Tensor, offset: int = 0) -> Tensor:
        """:meth:`mask` as int32: −1 (all bits set) inside, 0 outside.

        ANDed with an fp32 tensor's bits it keeps the entries inside and makes the others +0.0, exactly as
        ``torch.where(mask, x, 0.0)`` does, at a tenth of the cost (a bool ``where`` is not vectorised on CPU).
        """
        if self.count <= 0:
            return torch.zeros_like(keys)
        if self.count >= self.numel:
            return torch.full_like(keys, -1)
        flat = keys.reshape(-1)
        out = torch.empty_like(flat)
        limit = min(max(self.index_limit - offset, 0), flat.numel())
        # Sign bit of key − 1 − k: set iff k ≥ key (before the limit, equal keys count); of key − k: iff k > key.
        if self.key == 0:
            out[:limit] = 1
        else:
            torch.sub(flat[:limit], self.key - 1, out=out[:limit])
        torch.sub(flat[limit:], self.key, out=out[limit:])
        return out.neg_().bitwise_right_shift_(31).reshape(keys.shape)


class _Appender:
    """Values appended into one preallocated buffer: many small appends make a single allocation, so they do not
    pin the heap between the large, short-lived temporaries of the blocks around them."""

    def __init__(self, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        self.buffer = torch.empty(capacity, dtype=dtype, device=device)
        self.size = 0

    def append(self, values: Tensor) -> bool:
        """Append ``values`` (flattened); False, appending nothing, when they do not fit."""
        k = values.numel()
        if self.size + k > self.buffer.numel():
            return False
        self.buffer[self.size : self.size + k] = values.reshape(-1)
        self.size += k
        return True

    def values(self) -> Tensor:
        return self.buffer[: self.size]


class _Histogram:
    """Counts of non-negative integer values below ``bins``, updated in batches so tiny blocks stay cheap."""

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.counts: Tensor | None = None
        self._pending: _Appender | None = None

    def add(self, values: Tensor) -> None:
        if values.numel() >= _BATCH:
            self._count(values.reshape(-1))
            return
        if self._pending is None:
            self._pending = _Appender(_BATCH, values.dtype, values.device)
        if not self._pending.append(values):
            self._flush()
            self._pending.append(values)

    def total(self) -> Tensor:
        self._flush()
        if self.counts is None:
            return torch.zeros(self.bins, dtype=torch.int64)
        return self.counts

    def _flush(self) -> None:
        if self._pending is not None and self._pending.size:
            self._count(self._pending.values())
            self._pending.size = 0

    def _count(self, values: Tensor) -> None:
        counts = torch.bincount(values, minlength=self.bins)
        self.counts = counts if self.counts is None else self.counts.add_(counts)


def _top_bin(hist: Tensor, rank: int) -> tuple[int, int, int]:
    """Where the ``rank``-th largest (1-based) value counted in ``hist`` lies.

    Returns (its bin, entries in higher bins, entries in its bin).
    """
    prefix = hist.cpu().cumsum(0)  # prefix[b] = entries in bins <= b
    total = int(prefix[-1])
    b = int(torch.searchsorted(prefix, total - rank, right=True))
    return b, total - int(prefix[b]), int(hist[b])


class MagnitudeSelector:
    """Exact :class:`MagnitudeCut` s of one tensor at the given counts, from its entries' keys in flat order.

    Call :meth:`observe` on the keys of every block, in flat order with each block's flat offset, then
    :meth:`end_pass`; repeat while it returns True, then read :meth:`cuts`. Pass 1 histograms the high 15 bits
    of the keys to find the bin holding each cut; pass 2 histograms the low 16 bits inside those bins to find
    the exact key, keeping the bins' entries and positions while they are few (at most ``max_kept``, default
    numel/128 + 4096); when more entries equal that key than the cut takes, the last position taken comes from
    the kept entries or else from pass 3, which counts the equal entries block by block. Keys holding the whole
    tensor (offset 0) are finished within one :meth:`observe`. Memory: 0.8 MB of histograms per cut plus the
    kept bin entries (12 bytes each).
    """

    def __init__(self, numel: int, counts: Sequence[int], *, max_kept: int | None = None) -> None:
        self.numel = numel
        self.counts = tuple(counts)
        self._targets = sorted({c for c in self.counts if 0 < c < numel})
        self._cuts: dict[int, MagnitudeCut] = {}
        self._phase = "high" if self._targets else "done"
        self._high: _Histogram | None = None
        self._bin: dict[int, int] = {}
        self._above: dict[int, int] = {}
        self._low: dict[int, _Histogram] = {}
        self._kept: dict[int, tuple[_Appender, _Appender] | None] = {}
        self._room = numel // 128 + 4096 if max_kept is None else max_kept
        self._pending: dict[int, tuple[int, int]] = {}
        self._seen: dict[int, int] = {}

    @property
    def done(self) -> bool:
        """True once every cut is known."""
        return self._phase == "done"

    def observe(self, keys: Tensor, offset: int) -> None:
        """Take the keys of one block whose first entry has flat index ``offset`` (no-op once done)."""
        if self._phase == "high" and offset == 0 and keys.numel() == self.numel:
            while self._phase != "done":  # the whole tensor: run every pass now
                self._observe(keys, 0)
                self._finish_pass()
            return
        self._observe(keys, offset)

    def end_pass(self) -> bool:
        """Close the current pass over all blocks; True when another pass is needed."""
        self._finish_pass()
        return self._phase != "done"

    def cuts(self) -> list[MagnitudeCut]:
        """The cut for each requested count, in the order given."""
        if self._phase != "done":
            raise RuntimeError("MagnitudeSelector.cuts() called before the selection finished")
        out = []
        for count in self.counts:
            if count <= 0 or count >= self.numel:
                out.append(MagnitudeCut(max(count, 0), self.numel))
            else:
                out.append(self._cuts[count])
        return out

    # ------------------------------------------------------------------------------------------------ passes

    def _observe(self, keys: Tensor, offset: int) -> None:
        flat = keys.reshape(-1)
        if self._phase == "high":
            if self._high is None:
                self._high = _Histogram(_HIGH_BINS)
            self._high.add(flat >> _LOW_BITS)
        elif self._phase == "low":
            high = flat >> _LOW_BITS
            for b, hist in self._low.items():
                positions = (high == b).nonzero().reshape(-1)
                entries = flat.index_select(0, positions)
                hist.add(entries & _LOW_MASK)
                self._keep_bin_entries(b, entries, positions, offset)
        elif self._phase == "ties":
            for count, (key, need) in list(self._pending.items()):
                at = flat == key
                seen = self._seen[count]
                equal = int(at.sum())
                if seen < need <= seen + equal:
                    position = int(at.nonzero()[need - seen - 1, 0])
                    self._cuts[count] = MagnitudeCut(count, self.numel, key, offset + position + 1)
                    del self._pending[count]
                self._seen[count] = seen + equal

    def _keep_bin_entries(self, b: int, entries: Tensor, positions: Tensor, offset: int) -> None:
        kept = self._kept[b]
        if kept is None:
            return
        if not kept[0].append(entries):
            self._kept[b] = None  # too many: resolve ties in a third pass instead
            return
        kept[1].append(positions + offset)

    def _finish_pass(self) -> None:
        if self._phase == "high":
            self._finish_high()
        elif self._phase == "low":
            self._finish_low()
        elif self._phase == "ties":
            if self._pending:
                raise RuntimeError(f"MagnitudeSelector: ties pass ended with unresolved cuts {sorted(self._pending)}")
            self._phase = "done"

    def _finish_high(self) -> None:
        if self._high is None:
            raise RuntimeError("MagnitudeSelector: a pass ended without any block observed")
        high = self._high.total()
        seen = int(high.sum())
        if seen != self.numel:
            raise RuntimeError(f"MagnitudeSelector: observed {seen} entries, expected {self.numel}")
        for count in self._targets:
            b, above, _ = _top_bin(high, count)
            self._bin[count], self._above[count] = b, above
            if b not in self._low:
                self._low[b] = _Histogram(_LOW_BINS)
                device = high.device
                self._kept[b] = (_Appender(self._room, torch.int32, device), _Appender(self._room, torch.int64, device))
        self._high = None
        self._phase = "low"

    def _finish_low(self) -> None:
        lows = {b: hist.total() for b, hist in self._low.items()}
        kept = {b: None if k is None else (k[0].values(), k[1].values()) for b, k in self._kept.items()}
        for count in self._targets:
            b, above = self._bin[count], self._above[count]
            low, above_in_bin, equal = _top_bin(lows[b], count - above)
            key = (b << _LOW_BITS) | low
            need = count - above - above_in_bin
            if need == equal:
                self._cuts[count] = MagnitudeCut(count, self.numel, key, self.numel)
            elif kept[b] is not None:
                entries, positions = kept[b]
                position = int(positions[entries == key][need - 1])
                self._cuts[count] = MagnitudeCut(count, self.numel, key, position + 1)
            else:
                self._pending[count] = (key, need)
                self._seen[count] = 0
        self._low.clear()
        self._kept.clear()
        self._phase = "ties" if self._pending else "done"


def select_magnitude_cuts(keys: Tensor, counts: Sequence[int]) -> list[MagnitudeCut]:
    """Exact cuts of a whole tensor's ``keys`` (:func:`magnitude_keys`) at each of ``counts``."""
    selector = MagnitudeSelector(keys.numel(), counts)
    selector.observe(keys, 0)
    selector.end_pass()
    return selector.cuts()
