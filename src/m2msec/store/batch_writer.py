"""Unacknowledged records written in batches by one background thread (group commit).

Some writes must not wait for the disk: the SA records of seed 003 7.3.1.1.2 are produced
on the handshake path (:mod:`m2msec.sa.store`), and a durable commit costs an fsync (about
2 ms here) whatever it holds. :class:`BatchWriter` takes them without blocking
(:meth:`BatchWriter.put` only appends to an in-memory queue) and one writer thread commits
what has queued up, up to ``max_batch`` items in one transaction: the items that arrive
while a commit runs make up the next one, and ``linger`` lets a lone item wait a little
for company, so a busy server pays one commit per batch, not per item.

How it differs from its siblings: :class:`m2msec.service.group_commit.GroupCommit` (the
MEF) and the MAF's journal (:mod:`m2msec.servers.maf_journal`) also batch, but every
submitter *awaits* its item's commit on an event loop (a 2001 is never sent before its key
is durable) and a failed batch fails its submitters. Here nobody waits, no event loop is
needed (callers may be any thread), and a failed batch is kept and retried:

- **Bounded queue, drop-oldest.** At most ``max_queue`` items wait; a put into a full
  queue drops the *oldest* item and counts it (:attr:`BatchWriter.dropped`), so the
  caller is never blocked and the newest state wins. The first drop is one WARNING
  line, then at most one line with the count per ``log_interval``.
- **Store outages.** A commit that fails puts its batch back at the head of the queue
  (in order) and is retried after a back-off (``retry_min`` doubling to ``retry_max``);
  :class:`~m2msec.store.outage.StoreOutage` logs one ERROR line when the outage starts,
  a summary per interval, one line when it ends: never a traceback per item.
- **Periodic work.** ``periodic`` (e.g. a retention prune) runs on the writer thread
  every ``period`` seconds, between batches; its failures count as outage failures.
- **Stopping.** :meth:`flush` waits until what was put before it is committed (or
  dropped); :meth:`close` flushes (at most ``timeout``) and stops the thread. A clean stop
  loses nothing; items still queued when the timeout ends (the store is down) are counted
  and named in one ERROR line. A crash (SIGKILL, power cut) loses what was not yet
  committed: the batch being committed and what queued behind it, normally the last
  ``linger`` seconds' worth, during an outage up to ``max_queue`` items.

``commit(items)`` runs only on the writer thread, in order; it must write all of its
items in one transaction or raise (then none is taken as written).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from m2msec.store.outage import StoreOutage

__all__ = ["BatchWriter"]

T = TypeVar("T")

log = logging.getLogger(__name__)


class BatchWriter(Generic[T]):
    """A bounded queue of items and the thread that commits them in batches (module doc).

    The thread starts with the writer (``start=False`` defers it to :meth:`start`).
    Counters, for stats and tests: :attr:`batches` (commits that succeeded),
    :attr:`written` (items in them), :attr:`dropped` (items dropped from a full queue),
    :attr:`refused` (items put after :meth:`close`), :attr:`lost` (items given up at
    close), and ``outage.errors`` (failed commits).
    """

    def __init__(
        self,
        commit: Callable[[Sequence[T]], None],
        *,
        label: str,
        max_queue: int = 10_000,
        max_batch: int = 512,
        linger: float = 0.0,
        periodic: Callable[[], None] | None = None,
        period: float = 3600.0,
        retry_min: float = 0.5,
        retry_max: float = 10.0,
        log_interval: float = 30.0,
        outage: StoreOutage | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
    ) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be at least 1")
        if linger < 0 or period <= 0 or retry_min <= 0 or retry_max < retry_min:
            raise ValueError("invalid linger, period or retry interval")
        self.label = label
        self._commit = commit
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.linger = linger
        self._periodic = periodic
        self.period = period
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._log_interval = log_interval
        self._log = logger if logger is not None else log
        self._clock = clock
        self.outage = outage if outage is not None else StoreOutage(label, logger=self._log)
        self._queue: collections.deque[T] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        # Items put and items finished (committed or dropped): flush waits on these.
        self._put = 0
        self._finished = 0
        self._flushing = 0
        self._stopping = False
        self._abandon = False  # close() gave up on the queue: start no more commits
        self._closed = False
        self._next_periodic = clock() + period
        self._drops_unlogged = 0
        self._last_drop_line: float | None = None
        self.batches = 0
        self.written = 0
        self.dropped = 0
        self.refused = 0
        self.lost = 0
        self._thread = threading.Thread(target=self._run, name=f"{label} writer", daemon=True)
        if start:
            self._thread.start()

    # -- the caller's side ------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (once; only needed with ``start=False``)."""
        if not self._thread.is_alive() and not self._closed:
            self._thread.start()

    def put(self, item: T) -> None:
        """Queue ``item`` for the next batch; never blocks on the store.

        A full queue drops its oldest item (counted in :attr:`dropped`); after
        :meth:`close` the item is refused (counted in :attr:`refused`), not raised."""
        with self._cond:
            if self._closed:
                self.refused += 1
                return
            if len(self._queue) >= self.max_queue:
                self._queue.popleft()
                self.dropped += 1
                self._finished += 1
                self._note_drop()
            self._queue.append(item)
            self._put += 1
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        """Items waiting for a commit (the batch being committed included)."""
        with self._cond:
            return self._put - self._finished

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every item put before this call is committed or dropped.

        Skips ``linger``. False if ``timeout`` seconds passed first (the store is down)."""
        with self._cond:
            target = self._put
            if self._finished >= target:
                return True
            if not self._thread.is_alive():
                return False
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._finished >= target, timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout: float = 10.0) -> int:
        """Refuse new items, commit the queued ones (for at most ``timeout`` seconds) and
        stop the thread; the number of items given up (0 after a clean stop). A commit
        still running when ``timeout`` ends is not interrupted: if it then fails, its
        items are counted in :attr:`lost` too."""
        with self._cond:
            if self._closed:
                return self.lost
            self._closed = True
        deadline = time.monotonic() + timeout
        drained = self.flush(timeout) if self._thread.is_alive() else False
        with self._cond:
            self._stopping = True
            self._abandon = not drained
            self._cond.notify_all()
        if self._thread.is_alive():
            # Drained: the thread ends at once. Not: only a commit already running may
            # hold it; it gets what is left of the timeout.
            self._thread.join(None if drained else max(0.05, deadline - time.monotonic()))
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self._finished += left
            self.lost += left
            self._cond.notify_all()
            lost, dropped = self.lost, self.dropped
        if lost:
            self._log.error(
                "%s: %d records not written at shutdown (%s)",
                self.label,
                lost,
                "the store is unavailable" if self.outage.down else "timeout",
            )
        if dropped:
            self._log.warning(
                "%s: %d records were dropped from the full queue", self.label, dropped
            )
        return lost

    # -- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        delay = self._retry_min
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                self._run_periodic()
                continue
            try:
                self._commit(batch)
            except Exception as exc:  # the store's failure, whatever its type
                self.outage.failed(exc)
                with self._cond:
                    if self._stopping:  # close() gave up waiting: these are lost
                        self.lost += len(batch)
                        self._finished += len(batch)
                        self._cond.notify_all()
                        return
                    self._queue.extendleft(reversed(batch))
                    # Items put meanwhile may have made the queue too long: drop oldest.
                    while len(self._queue) > self.max_queue:
                        self._queue.popleft()
                        self.dropped += 1
                        self._finished += 1
                        self._note_drop()
                    self._cond.notify_all()
                    # Back off, but wake for close (which then gives up what is left).
                    self._cond.wait_for(lambda: self._stopping, delay)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = self._retry_min
            self.outage.succeeded()
            with self._cond:
                self.batches += 1
                self.written += len(batch)
                self._finished += len(batch)
                self._cond.notify_all()

    def _take(self) -> list[T] | None:
        """The next batch; [] when the periodic work is due; None to stop."""
        with self._cond:
            while True:
                if self._stopping and (self._abandon or not self._queue):
                    return None
                wait = self._next_periodic - self._clock()
                if self._periodic is not None and wait <= 0 and not self._stopping:
                    return []  # due, even under a steady stream of items
                if self._queue:
                    break
                self._cond.wait(wait if self._periodic is not None else None)
            if self.linger and len(self._queue) < self.max_batch:
                deadline = self._clock() + self.linger
                while (
                    len(self._queue) < self.max_batch
                    and not (self._stopping or self._flushing or self._closed)
                    and (left := deadline - self._clock()) > 0
                ):
                    self._cond.wait(left)
            n = min(len(self._queue), self.max_batch)
            return [self._queue.popleft() for _ in range(n)]

    def _run_periodic(self) -> None:
        self._next_periodic = self._clock() + self.period
        if self._periodic is None:
            return
        try:
            self._periodic()
        except Exception as exc:
            self.outage.failed(exc)
        else:
            self.outage.succeeded()

    def _note_drop(self) -> None:
        # Caller holds the lock. One line at the first drop, then one per interval.
        self._drops_unlogged += 1
        now = self._clock()
        if self._last_drop_line is None:
            self._log.warning(
                "%s: queue full (%d records), dropping the oldest", self.label, self.max_queue
            )
        elif now - self._last_drop_line < self._log_interval:
            return
        else:
            self._log.warning(
                "%s: %d more records dropped from the full queue",
                self.label,
                self._drops_unlogged,
            )
        self._last_drop_line = now
        self._drops_unlogged = 0
