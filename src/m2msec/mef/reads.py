"""The Enrolee each bootstrap handshake read (TS-0003 8.3.2.1, seed 004; docs/performance.md).

The Pre-Provisioned Symmetric Key bootstrap reads the Enrolee's Bootstrap Instruction
Configuration once, in the PSK lookup of its handshake (KpmID -> Kpm,
:meth:`m2msec.mef.service.MefService.kpm_for`). :class:`BootstrapReads` keeps that read, so
that the Enrolment Exchange on the same session plans its enrolment from the very
configuration whose Kpm authenticated it, without a second store read; the commit then
re-checks, in its transaction, that this configuration is still the one stored
(:meth:`m2msec.mef.store.MefStore.enrol`).

A read is kept for ``window`` seconds (the handshake deadline and a margin: a session asks
for its read as soon as its handshake is done, :meth:`BootstrapReads.claim`), by KpmID, at
most ``capacity`` of them (the oldest go first). Reads are by KpmID, not by connection, so
two handshakes of one KpmID at once share an entry; when the configuration read changes
while an earlier read is still within its window, a session of that KpmID cannot tell
which of the two its handshake used, and :meth:`claim` refuses (:class:`ChangedDuringBootstrap`)
until every handshake that read the old one is over. A session that finds no read (its
entry pushed out by ``capacity``, or a certificate bootstrap) reads the store instead.

Thread-safe: reads are kept from the store's worker threads and claimed on the event loop.
Holds Kpm in memory only as long as the store's own read did (never logged, never in
``repr``).
"""

from __future__ import annotations

import dataclasses
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from m2msec.mef.records import Enrolee

__all__ = ["BootstrapReads", "ChangedDuringBootstrap", "same_configuration"]


class ChangedDuringBootstrap(Exception):
    """The Enrolee's configuration changed while handshakes of its KpmID were running."""


@dataclass(slots=True)
class _Read:
    enrolee: Enrolee = field(repr=False)
    at: float
    changed_until: float = float("-inf")


class BootstrapReads:
    """The last Enrolee read for each KpmID within ``window`` seconds (module docstring)."""

    def __init__(
        self,
        window: float,
        *,
        capacity: int = 8192,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window <= 0 or capacity < 1:
            raise ValueError("window and capacity must be positive")
        self.window = window
        self.capacity = capacity
        self._clock = clock
        self._reads: OrderedDict[str, _Read] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._reads)

    def __repr__(self) -> str:
        return f"BootstrapReads({len(self._reads)} reads, window {self.window:g} s)"

    def keep(self, kpm_id: str, enrolee: Enrolee) -> None:
        """A handshake's PSK lookup read ``enrolee`` for ``kpm_id``."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            old = self._reads.pop(kpm_id, None)
            read = _Read(enrolee, now)
            if old is not None:
                read.changed_until = old.changed_until
                if not same_configuration(old.enrolee, enrolee):
                    # Handshakes that read ``old`` may run until ``now + window``.
                    read.changed_until = now + self.window
            self._reads[kpm_id] = read
            while len(self._reads) > self.capacity:
                self._reads.popitem(last=False)

    def claim(self, kpm_id: str) -> Enrolee | None:
        """The configuration the handshake of ``kpm_id`` that just finished read, or None
        (not kept: read the store). Raises :class:`ChangedDuringBootstrap`."""
        now = self._clock()
        with self._lock:
            read = self._reads.get(kpm_id)
            if read is None or now - read.at > self.window:
                return None
            if now < read.changed_until:
                raise ChangedDuringBootstrap(kpm_id)
            return read.enrolee

    def _expire(self, now: float) -> None:
        # Oldest first: an entry moves to the end whenever it is read again.
        while self._reads:
            first = next(iter(self._reads.values()))
            if now - first.at <= self.window:
                return
            self._reads.popitem(last=False)


#: What an Enrolee is configured with, Kpm aside (compared on its own, in constant time).
_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Enrolee) if f.name != "kpm")


def same_configuration(a: Enrolee | None, b: Enrolee) -> bool:
    """Whether two reads of an Enrolee hold one configuration: every field equal, Kpm
    included (a replaced Kpm is a change), Kpm compared in constant time."""
    if a is None:
        return False
    same_kpm = hmac.compare_digest(a.kpm or b"", b.kpm or b"")
    return same_kpm and all(getattr(a, f) == getattr(b, f) for f in _FIELDS)
