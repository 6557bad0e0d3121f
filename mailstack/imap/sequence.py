"""Sequence sets (RFC 9051 §9 sequence-set) and the saved result "$" (RFC 5182).

Invariant: ranges are never expanded into single numbers, so ``1:4294967295`` is cheap.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SeqRange:
    """One element of a sequence set; ``None`` stands for ``*`` (RFC 9051 §9 seq-number)."""

    start: int | None
    end: int | None

    def bounds(self, largest: int) -> tuple[int, int]:
        """Resolve ``*`` against ``largest`` and order the ends (``4:2`` == ``2:4``)."""
        a = largest if self.start is None else self.start
        b = largest if self.end is None else self.end
        return (a, b) if a <= b else (b, a)


@dataclass(frozen=True)
class SequenceSet:
    """A sequence-set (RFC 9051 §9) or ``$``, the saved search result (RFC 5182)."""

    ranges: tuple[SeqRange, ...] = ()
    saved: bool = False

    def intervals(self, largest: int) -> list[tuple[int, int]]:
        """Sorted, merged closed intervals, ``*`` resolved to ``largest``.

        Never expands ranges into single numbers, so ``1:4294967295`` costs nothing.
        """
        if self.saved:
            raise ValueError("'$' must be resolved by the session (RFC 5182)")
        spans = sorted(r.bounds(largest) for r in self.ranges)
        merged: list[tuple[int, int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    def contains(self, n: int, largest: int) -> bool:
        return any(a <= n <= b for a, b in self.intervals(largest))

    def iter_existing(self, largest: int, existing: list[int]) -> Iterator[int]:
        """Yield the members of sorted ``existing`` that fall in this set."""
        for a, b in self.intervals(largest):
            i = bisect.bisect_left(existing, a)
            while i < len(existing) and existing[i] <= b:
                yield existing[i]
                i += 1
