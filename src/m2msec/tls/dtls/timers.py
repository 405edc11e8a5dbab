"""The retransmission timers of a DTLS server's half-open handshakes (RFC 6347 4.2.4).

Each handshake in progress has one timer: when its engine's retransmission timer or
handshake deadline is next due (:meth:`~m2msec.tls.dtls.engine.DTLSEngine.timeout`).
:class:`HandshakeTimers` keeps them in one heap, so the server's next deadline costs
O(log n) rather than a scan of every handshake per datagram. Re-arming or cancelling a
timer only marks its old heap entry stale (one live token per peer); stale entries are
dropped when they surface and shed in bulk once they outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools

from m2msec.tls.dtls.records import Address

__all__ = ["HandshakeTimers"]


class HandshakeTimers:
    """One timer per peer address, on the server's clock, in a heap with lazy deletion."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Address]] = []
        self._tokens = itertools.count()
        self._live: dict[Address, int] = {}  # each peer's live token

    def arm(self, addr: Address, due: float | None) -> None:
        """Set the timer of ``addr`` to ``due`` (None: no timer runs)."""
        if due is None:
            self._live.pop(addr, None)
            return
        self._live[addr] = token = next(self._tokens)
        heapq.heappush(self._heap, (due, token, addr))
        if len(self._heap) > 4 * len(self._live) + 64:  # shed stale entries
            self._heap = [e for e in self._heap if self._is_live(e)]
            heapq.heapify(self._heap)

    def cancel(self, addr: Address) -> None:
        self._live.pop(addr, None)

    def next_due(self) -> float | None:
        """The earliest live timer, or None."""
        heap = self._heap
        while heap and not self._is_live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> set[Address]:
        """The peers whose timer is due at ``now``; those timers no longer run."""
        due: set[Address] = set()
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._is_live(entry):
                del self._live[entry[2]]
                due.add(entry[2])
        return due

    def _is_live(self, entry: tuple[float, int, Address]) -> bool:
        return self._live.get(entry[2]) == entry[1]
