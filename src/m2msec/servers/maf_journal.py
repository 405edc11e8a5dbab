"""The MAF's journal: group commit of store writes and audit records (TS-0003 8.8.2).

Every write of the MAF procedures (key registrations above all) and every audit record
goes through one :class:`MafJournal`, which commits what has queued up in one store
transaction (each request in its own savepoint, the batch's audit records in the
``audit`` table of the same transaction), copies the records to the ``audit.log`` file,
and only then lets the requests be answered: a 2001 CREATED is never sent for a key that
is not committed, and concurrent requests share the cost of the commit (group commit).
Durability and the inline/worker-thread choice are described in :mod:`m2msec.servers.maf`
and docs/maf.md. asyncio lives here, not in :mod:`m2msec.maf.service`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from m2msec.errors import StoreError
from m2msec.maf.audit import AuditLog
from m2msec.maf.service import AuditFor, Outcome
from m2msec.maf.store import MafStore, MafWriter
from m2msec.store.outage import StoreOutage

__all__ = ["MAX_BATCH", "SHUTDOWN_GRACE", "MafJournal"]

log = logging.getLogger(__name__)

#: Most jobs the journal commits in one transaction.
MAX_BATCH: Final = 512
#: How long close() lets queued writes finish.
SHUTDOWN_GRACE: Final = 5.0


@dataclass(slots=True, eq=False)
class _Job:
    op: Callable[[MafWriter], Any] | None
    audit: AuditFor
    future: asyncio.Future[Outcome] | None
    #: The op is one SQL statement (atomic by itself): no savepoint needed around it.
    atomic: bool = False


class MafJournal:
    """Group commit of store writes and audit records (module documentation).

    Jobs queue in a list; whenever no commit is running, everything queued (up to
    :data:`MAX_BATCH`) becomes the next transaction, and the jobs that arrive meanwhile
    make up the one after it. No task sits in between: a request's future is resolved by
    the callback that ends its batch.

    ``inline`` commits on the event loop's thread, in a callback run once the loop has
    served what is ready (so that the requests of one loop iteration share the commit):
    only sensible when commits do not fsync (durability "normal"). Otherwise each batch
    runs in the journal's one worker thread while the loop goes on serving (and queueing
    the next batch).
    """

    def __init__(
        self,
        store: MafStore,
        audit: AuditLog,
        *,
        inline: bool = False,
        outage: StoreOutage | None = None,
    ) -> None:
        self.outage = outage if outage is not None else StoreOutage("MAF store", logger=log)
        self.store = store
        self.audit = audit
        self.inline = inline
        self.batches = 0
        self.jobs = 0
        self._pending: list[_Job] = []
        self._busy = False  # a batch is scheduled or being committed
        self._waited = False  # inline: the next batch has waited one loop iteration
        self._running = False
        self._idle: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        if not self.inline:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="maf-journal")
        self._running = True

    async def submit(
        self, op: Callable[[MafWriter], Any] | None, audit: AuditFor, *, atomic: bool = False
    ) -> Outcome:
        """Run ``op`` in the next group transaction; return its result or the exception it
        raised (a failed commit raises StoreError here) once commit and audit are written.

        A cancelled caller does not take its job back: it is committed all the same."""
        if not self._running or self._loop is None:
            raise StoreError("the MAF journal is not running")
        future: asyncio.Future[Outcome] = self._loop.create_future()
        self._enqueue(_Job(op, audit, future, atomic))
        return await future

    def note(self, records: Sequence[dict[str, str | int]]) -> None:
        """Queue audit records nobody waits for (handshake refusals)."""
        if self._running:
            self._enqueue(_Job(None, lambda _r: records, None))

    async def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Commit what is queued (for at most ``grace`` seconds), then stop."""
        if not self._running:
            return
        self._running = False
        assert self._idle is not None
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.error("MAF journal: %d writes not committed at shutdown", len(self._pending))
        pending, self._pending = self._pending, []
        for job in pending:
            _finish(job, StoreError("the MAF is shutting down"), error=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def _enqueue(self, job: _Job) -> None:
        self._pending.append(job)
        if not self._busy:
            self._busy = True
            assert self._loop is not None and self._idle is not None
            self._idle.clear()
            self._loop.call_soon(self._next_batch)

    def _next_batch(self) -> None:
        if self.inline and not self._waited and len(self._pending) < MAX_BATCH:
            # One more loop iteration first: requests whose bytes arrive in its poll join
            # this commit (an inline commit holds the loop, so grouping is what saves).
            self._waited = True
            assert self._loop is not None
            self._loop.call_soon(self._next_batch)
            return
        self._waited = False
        batch = self._pending[:MAX_BATCH]
        del self._pending[:MAX_BATCH]
        if not batch:
            self._busy = False
            assert self._idle is not None
            self._idle.set()
            return
        if self.inline:
            try:
                outcomes = self._commit(batch)
            except Exception as exc:
                self._failed(batch, exc)
            else:
                self._done(batch, outcomes)
            self._after_batch()
            return
        assert self._loop is not None and self._executor is not None
        work = self._loop.run_in_executor(self._executor, self._commit, batch)
        work.add_done_callback(lambda f: self._thread_done(batch, f))

    def _thread_done(self, batch: list[_Job], work: asyncio.Future[list[Outcome]]) -> None:
        exc = work.exception() if not work.cancelled() else StoreError("commit cancelled")
        if exc is None:
            self._done(batch, work.result())
        else:
            self._failed(batch, exc)
        self._after_batch()

    def _after_batch(self) -> None:
        # Jobs that queued meanwhile form the next batch (group commit); without any, the
        # journal goes idle. The next batch starts at once on the loop: the jobs queued
        # while this one was committed already shared the wait.
        if self._pending:
            if self.inline:
                assert self._loop is not None
                self._loop.call_soon(self._next_batch)
            else:
                self._next_batch()
        else:
            self._busy = False
            assert self._idle is not None
            self._idle.set()

    def _done(self, batch: list[_Job], outcomes: list[Outcome]) -> None:
        self.batches += 1
        self.jobs += len(batch)
        self.outage.succeeded()
        for job, outcome in zip(batch, outcomes, strict=True):
            _finish(job, outcome)

    def _failed(self, batch: list[_Job], exc: BaseException) -> None:
        self.outage.failed(exc)  # one line per outage, not one per batch
        failure = exc if isinstance(exc, StoreError) else StoreError(str(exc))
        for job in batch:
            _finish(job, failure, error=True)

    def _commit(self, batch: list[_Job]) -> list[Outcome]:
        outcomes: list[Outcome] = [None] * len(batch)
        records: list[dict[str, str | int]] = []
        with self.store.writer() as w:
            for i, job in enumerate(batch):
                if job.op is not None:
                    try:
                        if job.atomic:
                            outcomes[i] = job.op(w)
                        else:
                            with w.savepoint():
                                outcomes[i] = job.op(w)
                    except StoreError:
                        raise  # the database itself failed: fail the batch
                    except Exception as exc:
                        outcomes[i] = exc
                records.extend(job.audit(outcomes[i]))
            w.append_audit(records)
        # The file is a copy for operators (tail -f); the audit table is the record.
        try:
            self.audit.write(records)
        except StoreError as exc:
            log.error("%s", exc)
        return outcomes


def _finish(job: _Job, outcome: Outcome, *, error: bool = False) -> None:
    if job.future is None or job.future.done():
        return
    if error:
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)
