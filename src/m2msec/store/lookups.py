"""Counters of a store's credential lookups, read by the metrics (issue 14 item 1).

Each store that answers a handshake's key lookup (the psk-lookup-table,
:class:`m2msec.store.psk.SealedPskStore`; the MAF store's KmId lookup,
:class:`m2msec.maf.store.MafStore`) keeps one :class:`LookupStats`: how many lookups its
cache answered and how many went to the database, and, when a server sets ``observer``
(:meth:`m2msec.service.metrics.ServerMetrics.store_observer`), each lookup's duration.
No key identifier is kept: only counts and seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LookupStats"]


@dataclass(slots=True)
class LookupStats:
    """Cache hits and misses of a store's lookups, and an optional latency observer."""

    hits: int = 0
    misses: int = 0
    observer: Callable[[float], None] | None = None

    @staticmethod
    def start() -> float:
        return time.perf_counter()

    def done(self, started: float, *, hit: bool) -> None:
        """Count one lookup begun at ``started`` (:meth:`start`)."""
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        if self.observer is not None:
            self.observer(time.perf_counter() - started)
