"""Store outages logged once, not once per request (issue 9 item 4).

A store that cannot be read or written (SQLite disk full, PostgreSQL down) fails every
request until it comes back. :class:`StoreOutage` turns that into one ERROR line with the
cause when the outage starts, at most one summary line with a count per ``interval``
seconds while it lasts, and one "recovered" line; never a traceback. ``errors`` counts
every failure, for the servers' stats (``store_errors``). One instance per store and server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["StoreOutage"]


class StoreOutage:
    """Rate-limited outage log and failure counter for one store (module docstring)."""

    def __init__(
        self,
        label: str,
        *,
        logger: logging.Logger | None = None,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.label = label
        self._on_failure = on_failure
        self.errors = 0
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._down = False
        self._since_line = 0
        self._outage_errors = 0
        self._last_line = 0.0

    @property
    def down(self) -> bool:
        return self._down

    def failed(self, exc: BaseException) -> None:
        """Count one failed read or write; log only at the start and once per interval."""
        if self._on_failure is not None:
            self._on_failure()  # e.g. the server's stats.store_errors
        with self._lock:
            self.errors += 1
            self._outage_errors += 1
            now = self._clock()
            if not self._down:
                self._down = True
                self._last_line = now
                self._since_line = 0
                self._log.error("%s unavailable: %s", self.label, exc)
                return
            self._since_line += 1
            if now - self._last_line >= self._interval:
                self._log.error(
                    "%s still unavailable: %d failures in the last %.0f s (last: %s)",
                    self.label,
                    self._since_line,
                    now - self._last_line,
                    exc,
                )
                self._last_line = now
                self._since_line = 0

    def succeeded(self) -> None:
        """A read or write worked: end the outage, if there was one, with one line."""
        if not self._down:  # the fast path takes no lock
            return
        with self._lock:
            if self._down:
                self._down = False
                self._log.warning(
                    "%s recovered after %d failures", self.label, self._outage_errors
                )
                self._outage_errors = 0
