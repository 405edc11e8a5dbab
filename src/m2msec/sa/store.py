"""The SA records that last: both sides' SA parameters and their history (seed 003 7.3.1.1.2).

Seed 003 7.3.1.1.2.2 (Initiator's SA Management) and 7.3.1.1.2.4 (Responder's SA
Management) each "stores the SA keys and parameters"; :class:`SaRecordStore` keeps the
parameters (:class:`~m2msec.sa.records.SaRecord`, never a key) beyond the process, with an
append-only history, so that an operator can answer "who was associated when, with
what" (issue 12 item 2; docs/sa.md section 6).

- **Where**: SQLite by default (``<data dir>/sa.db``, created 0600), a path or
  ``sqlite:///...``, or ``postgresql://...`` (the ``m2msec_sa`` schema), through the one
  access layer :mod:`m2msec.store.db`; tables in :mod:`m2msec.sa.store_schema`. No key is
  stored, so no key-encryption key is needed (:func:`m2msec.store.schema.open_tables`).
- **Writes never wait** (ISSUE-NOTES "Issue 9": the handshake path stays fast):
  :meth:`SaRecordStore.record` is the ``RecordSink`` of :mod:`m2msec.sa.management`; it
  turns the record into rows and queues them on a :class:`~m2msec.store.batch_writer.BatchWriter`,
  whose thread commits batches (group commit). The queue is bounded (``max_queue``): when
  full, the oldest queued event is dropped and counted. :meth:`flush` waits for what was
  recorded; :meth:`close` / :meth:`aclose` drain the queue, so a clean stop loses nothing.
  A crash loses what was not yet committed: normally the last ``linger`` (50 ms) of
  events, during a store outage up to ``max_queue`` events.
- **Store outages** (disk full, PostgreSQL down): one ERROR line when it starts, a
  summary per 30 s, one line when it ends (:class:`~m2msec.store.outage.StoreOutage`); the
  events stay queued (bounded) and are retried with back-off.
- **Retention**: :meth:`prune` deletes history older than ``retention`` (default
  :data:`DEFAULT_RETENTION`, 90 days) and the records of SAs that ended (or whose key
  expired) that long ago; the writer runs it every ``prune_interval`` (one hour). Live
  records are kept however old.
- **A restart after a crash**: records carry their ``owner`` (the ``owner`` given here);
  :meth:`SaRecordStore.close_stale` closes those of one owner left live (their sessions
  died with the process), so that "live" means live.
- **Queries** stream in pages of ``page_size`` rows (constant memory, no transaction held
  between pages): :meth:`get`, :meth:`list`, :meth:`history`, :meth:`who_was_associated`.

Times are UTC datetimes (microseconds kept); naive ones are taken as UTC, as in the other
stores.
"""

# The SQL is formatted with the dialect's placeholder, fixed clauses and integers only;
# every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from m2msec.errors import StoreError
from m2msec.paths import state_path
from m2msec.sa.records import SaId, SaRecord, SaRole, SaState
from m2msec.sa.store_schema import (
    PG_SCHEMA,
    SCHEMA_VERSION,
    SaEvent,
    SaSql,
    event_from_row,
    history_row,
    migrations,
    record_from_row,
    record_row,
)
from m2msec.store.batch_writer import BatchWriter
from m2msec.store.db import Closing, Database, open_database, to_micros
from m2msec.store.outage import StoreOutage
from m2msec.store.schema import open_tables

__all__ = [
    "DEFAULT_RETENTION",
    "DEFAULT_SA_STORE_NAME",
    "PruneResult",
    "SaEvent",
    "SaRecordStore",
    "SaStoreStats",
]

log = logging.getLogger(__name__)

#: How long history and ended SAs' records are kept by default.
DEFAULT_RETENTION: Final = timedelta(days=90)
#: The SQLite file in the data directory when no location is given.
DEFAULT_SA_STORE_NAME: Final = "sa.db"
#: Rows deleted per statement by :meth:`SaRecordStore.prune` (short write locks).
PRUNE_CHUNK: Final = 5000

_Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one :meth:`SaRecordStore.prune` deleted."""

    history: int
    records: int


@dataclass(frozen=True, slots=True)
class SaStoreStats:
    """The writer's counters (for metrics): events queued now, committed, in how many
    transactions, dropped from a full queue, refused after close, lost at close, failed
    commits."""

    queued: int
    written: int
    batches: int
    dropped: int
    refused: int
    lost: int
    store_errors: int


class SaRecordStore(Closing):
    """The SA records and their history, written in batches (module docstring).

    ``location``: None (``<data dir>/sa.db``), a path, ``sqlite:///...``,
    ``postgresql://...`` or an open :class:`~m2msec.store.db.Database`. ``retention`` None
    keeps everything. ``clock`` gives the time of each event (UTC).
    """

    def __init__(
        self,
        location: str | os.PathLike[str] | Database | None = None,
        *,
        retention: timedelta | None = DEFAULT_RETENTION,
        max_queue: int = 10_000,
        max_batch: int = 512,
        linger: float = 0.05,
        prune_interval: float = 3600.0,
        retry_min: float = 0.5,
        retry_max: float = 10.0,
        page_size: int = 500,
        busy_timeout: float = 5.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Callable[[], datetime] | None = None,
        outage: StoreOutage | None = None,
        owner: str | None = None,
    ) -> None:
        if retention is not None and retention <= timedelta(0):
            raise ValueError("retention must be positive (or None to keep everything)")
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if location is None:
            location = state_path(DEFAULT_SA_STORE_NAME, create=True)
        # Nothing is connected before every setting is checked (the writer checks its own).
        db = open_database(
            location, pg_schema=PG_SCHEMA, busy_timeout=busy_timeout, synchronous=synchronous
        )
        self._db = db
        self._sql = SaSql(db)
        self.retention = retention
        self.page_size = page_size
        #: Written into every record this store keeps (see :meth:`close_stale`).
        self.owner = owner
        self._clock = clock if clock is not None else _utc_now
        self._label = label = f"SA record store {db.label}"
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._closed = False
        self._writer: BatchWriter[_Row] = BatchWriter(
            self._commit,
            label=label,
            max_queue=max_queue,
            max_batch=max_batch,
            linger=linger,
            periodic=self._prune_periodically if retention is not None else None,
            period=prune_interval,
            retry_min=retry_min,
            retry_max=retry_max,
            outage=outage if outage is not None else StoreOutage(label, logger=log),
            logger=log,
            start=False,
        )
        self._wconn, self._rconn = open_tables(
            db, migrations=migrations(db), version=SCHEMA_VERSION, label=label, connections=2
        )
        self._writer.start()

    @property
    def database(self) -> Database:
        """Where the tables live, and their dialect."""
        return self._db

    @property
    def outage(self) -> StoreOutage:
        return self._writer.outage

    # -- writing (the RecordSink of m2msec.sa.management) --------------------------------

    def record(self, rec: SaRecord, event: str) -> None:
        """Queue ``rec``, as it is after ``event``, for the next batch; never waits.

        The event's time is now (``clock``). The current record of ``(rec.sa_id,
        rec.role)`` becomes ``rec``, and ``event`` is appended to the history. A record
        whose fields the database could not hold raises TypeError here (a caller's bug);
        after :meth:`close` the event is refused and counted, not raised."""
        self._writer.put(record_row(rec, event, self._clock(), self.owner))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event recorded before this call is committed (or dropped);
        False if ``timeout`` seconds passed first (the store is unavailable)."""
        return self._writer.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued (for at most ``timeout`` seconds), stop the writer and
        close the connections. Events that could not be written are logged as one line
        and counted in ``stats().lost``."""
        if self._closed:
            return
        self._writer.close(timeout)
        with self._wlock, self._rlock:
            self._closed = True
            self._wconn.close()
            self._rconn.close()

    async def aclose(self, timeout: float = 10.0) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.to_thread(self.close, timeout)

    def stats(self) -> SaStoreStats:
        w = self._writer
        return SaStoreStats(
            queued=w.queued,
            written=w.written,
            batches=w.batches,
            dropped=w.dropped,
            refused=w.refused,
            lost=w.lost,
            store_errors=w.outage.errors,
        )

    def _commit(self, rows: Sequence[_Row]) -> None:
        # On the writer thread: one transaction for the batch. A connection the server
        # closed (PostgreSQL restarted) is replaced and the batch tried once more at once;
        # any other failure goes to the writer, which keeps the batch and retries later.
        db, sql = self._db, self._sql
        history = [history_row(r) for r in rows]
        with self._wlock:
            for attempt in (1, 2):
                if self._closed:
                    raise StoreError(f"{self._label} is closed")
                self._wconn = db.reconnected(self._wconn)
                try:
                    with db.transaction(self._wconn) as conn:
                        cur = conn.cursor()
                        try:
                            cur.executemany(sql.upsert, rows)
                            cur.executemany(sql.append, history)
                        finally:
                            cur.close()
                    return
                except db.errors:
                    if attempt == 2 or db.usable(self._wconn):
                        raise

    def close_stale(self, role: SaRole, cause: str, now: datetime | None = None) -> int:
        """Close every record of :attr:`owner` in ``role`` that is still live: a process
        starting after a crash, whose predecessor's sessions died with it. Each gets a
        ``closed`` history event with ``cause``; returns how many. Runs in one transaction
        (not through the batch queue); raises StoreError. Nothing without an owner."""
        if self.owner is None:
            return 0
        at = to_micros(now if now is not None else self._clock())
        mine = (self.owner, SaRole(role).value)
        sql = self._sql
        with self._wlock:
            if self._closed:
                raise StoreError(f"{self._label} is closed")
            try:
                self._wconn = self._db.reconnected(self._wconn)
                with self._db.transaction(self._wconn) as conn:
                    conn.execute(sql.close_stale_history, (at, cause, *mine))
                    n = int(conn.execute(sql.close_stale, (cause, at, at, at, *mine)).rowcount)
            except self._db.errors as exc:
                raise self._error("close the stale records of", exc) from None
        if n:
            log.warning(
                "%s: %d SA records of %s were still live from an earlier run: closed",
                self._label,
                n,
                self.owner,
            )
        return n

    # -- retention ----------------------------------------------------------------------

    def prune(self, now: datetime | None = None) -> PruneResult:
        """Delete history older than ``retention`` before ``now`` (default: the clock), and
        the records of SAs that ended, or whose key expired, before then. Live records
        stay. Nothing is deleted when ``retention`` is None. Raises StoreError."""
        if self.retention is None:
            return PruneResult(0, 0)
        cutoff = to_micros((now if now is not None else self._clock()) - self.retention)
        sql = self._sql
        history = self._delete_chunks(sql.prune_history, (cutoff, PRUNE_CHUNK))
        records = self._delete_chunks(sql.prune_records, (cutoff, cutoff, PRUNE_CHUNK))
        if history or records:
            log.info(
                "%s: pruned %d history events and %d records older than %s",
                self._label,
                history,
                records,
                self.retention,
            )
        return PruneResult(history, records)

    def _delete_chunks(self, statement: str, args: tuple[Any, ...]) -> int:
        db, total = self._db, 0
        while True:
            with self._wlock:
                if self._closed:
                    raise StoreError(f"{self._label} is closed")
                try:
                    self._wconn = db.reconnected(self._wconn)
                    with db.transaction(self._wconn) as conn:
                        n = int(conn.execute(statement, args).rowcount)
                except db.errors as exc:
                    raise self._error("prune", exc) from None
            total += n
            if n < PRUNE_CHUNK:
                return total

    def _prune_periodically(self) -> None:
        self.prune()  # a failure is counted by the writer's outage log

    # -- queries ------------------------------------------------------------------------

    def get(self, sa_id: SaId | str, role: SaRole | None = None) -> SaRecord | None:
        """The current record of ``sa_id`` (hex accepted); of ``role`` if given, else the
        one changed last (a store both sides of one SA write to holds two)."""
        key = (SaId.from_hex(sa_id) if isinstance(sa_id, str) else sa_id).hex()
        if role is None:
            rows = self._page(self._sql.get + " LIMIT 1", (key,))
        else:
            rows = self._page(self._sql.get_role, (key, SaRole(role).value))
        return record_from_row(rows[0]) if rows else None

    def list(
        self,
        peer: str | None = None,
        state: SaState | None = None,
        live_only: bool = False,
        limit: int | None = None,
        after: SaRecord | None = None,
    ) -> Iterator[SaRecord]:
        """The records, oldest established first (then by SA identifier and role),
        filtered by ``peer`` (its identity), ``state`` and ``live_only``; at most ``limit``.

        Streams in pages: pass the last record of one page as ``after`` to get the next.
        """
        p = self._sql.p
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if peer is not None:
            where.append(f"peer_id = {p}")
            args.append(peer)
        if state is not None:
            where.append(f"state = {p}")
            args.append(SaState(state).value)
        if live_only:
            where.append(f"state IN ({self._sql.live_states})")
        if after is not None:
            where.append(f"(established_at, sa_id, role) > ({p}, {p}, {p})")
            args += [to_micros(after.established_at), after.sa_id.hex(), after.role.value]
        return self._stream_records(where, args, limit)

    def who_was_associated(
        self,
        at: datetime,
        *,
        until: datetime | None = None,
        peer: str | None = None,
        limit: int | None = None,
    ) -> Iterator[SaRecord]:
        """The SAs that were live at ``at``, or at any time in ``[at, until)`` with
        ``until``: established by then, not ended before, key not expired before; SAs
        that failed to establish never count. Answers only as far back as
        ``retention`` keeps records; an SA left live by a crash counts until pruned or
        ended (docs/sa.md section 6)."""
        p = self._sql.p
        start = to_micros(at)
        end = to_micros(until) if until is not None else start + 1
        if end <= start:
            raise ValueError("until must be later than at")
        where = [
            f"established_at < {p}",
            f"state <> '{SaState.FAILED.value}'",
            f"(ended_at IS NULL OR ended_at > {p})",
            f"(expires_at IS NULL OR expires_at > {p})",
        ]
        args: builtins.list[Any] = [end, start, start]
        if peer is not None:
            where.append(f"peer_id = {p}")
            args.append(peer)
        return self._stream_records(where, args, limit)

    def history(
        self,
        sa_id: SaId | str | None = None,
        *,
        peer: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        after: SaEvent | None = None,
    ) -> Iterator[SaEvent]:
        """The events of one SA (``sa_id``) or of every SA with ``peer`` (or of all), at
        or after ``since`` and before ``until``, in the order they were committed; at most
        ``limit``. Streams in pages; ``after`` continues after a previous page's last."""
        p = self._sql.p
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if sa_id is not None:
            where.append(f"sa_id = {p}")
            args.append((SaId.from_hex(sa_id) if isinstance(sa_id, str) else sa_id).hex())
        if peer is not None:
            where.append(f"peer_id = {p}")
            args.append(peer)
        if since is not None:
            where.append(f"at >= {p}")
            args.append(to_micros(since))
        if until is not None:
            where.append(f"at < {p}")
            args.append(to_micros(until))
        return self._stream_events(where, args, limit, after.event_id if after else None)

    def _stream_records(
        self, where: builtins.list[str], args: builtins.list[Any], limit: int | None
    ) -> Iterator[SaRecord]:
        p, columns = self._sql.p, self._sql.record_columns
        cursor: tuple[int, str, str] | None = None
        left = limit
        while left is None or left > 0:
            n = self.page_size if left is None else min(self.page_size, left)
            clauses, values = builtins.list(where), builtins.list(args)
            if cursor is not None:
                clauses.append(f"(established_at, sa_id, role) > ({p}, {p}, {p})")
                values += cursor
            sql = (
                f"SELECT {columns} FROM sa_records"
                + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
                + f" ORDER BY established_at, sa_id, role LIMIT {n:d}"
            )
            rows = self._page(sql, tuple(values))
            for row in rows:
                yield record_from_row(row)
            if len(rows) < n:
                return
            last = rows[-1]
            cursor = (int(last[10]), last[0], last[1])
            if left is not None:
                left -= len(rows)

    def _stream_events(
        self,
        where: builtins.list[str],
        args: builtins.list[Any],
        limit: int | None,
        after: int | None,
    ) -> Iterator[SaEvent]:
        p, columns = self._sql.p, self._sql.history_columns
        left = limit
        while left is None or left > 0:
            n = self.page_size if left is None else min(self.page_size, left)
            clauses, values = builtins.list(where), builtins.list(args)
            if after is not None:
                clauses.append(f"id > {p}")
                values.append(after)
            sql = (
                f"SELECT {columns} FROM sa_history"
                + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
                + f" ORDER BY id LIMIT {n:d}"
            )
            rows = self._page(sql, tuple(values))
            for row in rows:
                yield event_from_row(row)
            if len(rows) < n:
                return
            after = int(rows[-1][0])
            if left is not None:
                left -= len(rows)

    def _page(self, sql: str, args: tuple[Any, ...]) -> builtins.list[Any]:
        db = self._db
        with self._rlock:
            for attempt in (1, 2):
                if self._closed:
                    raise StoreError(f"{self._label} is closed")
                try:
                    self._rconn = db.reconnected(self._rconn)
                    return builtins.list(self._rconn.execute(sql, args).fetchall())
                except db.errors as exc:
                    # A read is repeated once on a new connection if the server closed
                    # this one (a restart between two queries is no error to report).
                    if attempt == 2 or db.usable(self._rconn):
                        raise self._error("read", exc) from None
        raise AssertionError("unreachable")

    def _error(self, action: str, exc: Exception) -> StoreError:
        return StoreError(f"cannot {action} {self._label}: {self._db.message(exc)}")

    def __repr__(self) -> str:
        return f"SaRecordStore({self._db.label!r})"


def _utc_now() -> datetime:
    return datetime.now(UTC)
