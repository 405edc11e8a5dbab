"""sa.store: the SA records that last (issue 12 item 2), on SQLite.

Record and read back, list with filters and pages, history, "who was associated when",
retention, draining on close, the 0600 file, batching (many events in few real commits, the
caller never waiting for the disk), store outages (one log line, nothing lost, bounded
queue dropping the oldest) and close during an outage. tests/test_sa_store_pg.py runs the
contract part (``check_*``) on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from m2msec.errors import StoreError
from m2msec.sa.records import Direction, SaId, SaRecord, SaRole, SaState, key_fingerprint
from m2msec.sa.store import DEFAULT_RETENTION, SaRecordStore
from m2msec.store.db import Connection, SqliteDatabase

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
HOUR = timedelta(hours=1)


def sa_id(n: int) -> SaId:
    return SaId(n.to_bytes(4, "big") + b"\xa5" * 12)


def make_record(n: int, **changes: object) -> SaRecord:
    rec = SaRecord(
        sa_id=sa_id(n),
        role=SaRole.RESPONDER,
        framework="provisioned",
        local_id="/mn-cse-123456",
        peer_id=f"C-light-{n % 3}",
        protocol="TLSv1.2",
        cipher_suite="PSK-AES128-CCM8",
        key_id=f"kpsa-{n}@home.example",
        key_fingerprint=key_fingerprint(bytes([n % 256]) * 16),
        direction=Direction.BOTH,
        established_at=T0 + n * timedelta(minutes=1),
        state=SaState.ESTABLISHED,
        expires_at=T0 + timedelta(days=30),
        peer_address=f"127.0.0.1:{40000 + n}",
    )
    return dataclasses.replace(rec, **changes)  # type: ignore[arg-type]


class Clock:
    """The event times the store stamps (settable)."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


OpenStore = Callable[..., SaRecordStore]


@pytest.fixture
def open_sa(tmp_path: Path) -> Iterator[OpenStore]:
    stores: list[SaRecordStore] = []

    def opener(location: object = None, **options: object) -> SaRecordStore:
        st = SaRecordStore(location or tmp_path / "sa.db", **options)  # type: ignore[arg-type]
        stores.append(st)
        return st

    yield opener
    for st in stores:
        st.close(timeout=1)


# -- the contract (also run on PostgreSQL) -----------------------------------------------


def check_record_get(st: SaRecordStore) -> None:
    rec = make_record(1, updated_at=T0 + HOUR, cause=None, replaced_by=None)
    st.record(rec, "established")
    assert st.flush(10)
    assert st.get(rec.sa_id) == rec  # every field, microseconds included
    assert st.get(str(rec.sa_id)) == rec  # the hex the operator types
    assert st.get(rec.sa_id, SaRole.INITIATOR) is None
    assert st.get(sa_id(999)) is None
    # The initiator's record of the same SA is a second row; the responder's is unchanged.
    mine = make_record(1, role=SaRole.INITIATOR, local_id=None, key_fingerprint=None)
    st.record(mine, "established")
    replaced = make_record(
        1, state=SaState.UPDATED, replaced_by=sa_id(2), cause="rekeyed", updated_at=T0
    )
    st.record(replaced, "updated")
    assert st.flush(10)
    assert st.get(rec.sa_id, SaRole.INITIATOR) == mine
    assert st.get(rec.sa_id, SaRole.RESPONDER) == replaced
    assert st.get(rec.sa_id) == replaced  # the one changed last
    # A naive time is UTC.
    naive = make_record(3, established_at=datetime(2025, 1, 1, 8, 0))
    st.record(naive, "established")
    assert st.flush(10)
    got = st.get(naive.sa_id)
    assert got is not None and got.established_at == datetime(2025, 1, 1, 8, 0, tzinfo=UTC)


def check_list_and_pages(st: SaRecordStore) -> None:
    recs = [make_record(n) for n in range(10)]
    for rec in recs:
        st.record(rec, "established")
    st.record(dataclasses.replace(recs[4], state=SaState.REMOVED, cause="operator"), "removed")
    st.record(dataclasses.replace(recs[7], state=SaState.CLOSED), "closed")
    assert st.flush(10)
    assert [r.sa_id for r in st.list()] == [r.sa_id for r in recs]  # oldest first
    assert [r.sa_id for r in st.list(peer="C-light-1")] == [sa_id(1), sa_id(4), sa_id(7)]
    assert [r.sa_id for r in st.list(state=SaState.REMOVED)] == [sa_id(4)]
    live = [r.sa_id for r in st.list(live_only=True)]
    assert live == [sa_id(n) for n in range(10) if n not in (4, 7)]
    assert [r.sa_id for r in st.list(peer="C-light-1", live_only=True)] == [sa_id(1)]
    # Paging by hand: limit, then after the last record of a page.
    page1 = list(st.list(limit=4))
    page2 = list(st.list(limit=4, after=page1[-1]))
    page3 = list(st.list(limit=4, after=page2[-1]))
    assert [r.sa_id for r in page1 + page2 + page3] == [r.sa_id for r in recs]
    assert len(page3) == 2
    # Equal established_at: SA identifier, then role, decides the order.
    twin = make_record(20, established_at=recs[0].established_at)
    st.record(twin, "established")
    assert st.flush(10)
    first = list(st.list(limit=2))
    assert [r.sa_id for r in first] == sorted([recs[0].sa_id, twin.sa_id])


def check_streaming(st: SaRecordStore) -> None:
    """The iterator reads a page at a time (page_size 3) and holds no snapshot: a record
    committed while the caller is between pages is seen in a later page."""
    for n in range(7):
        st.record(make_record(n), "established")
    assert st.flush(10)
    it = st.list()
    seen = [next(it).sa_id for _ in range(3)]  # the first page
    st.record(make_record(50), "established")  # established later than all of them
    assert st.flush(10)
    seen += [r.sa_id for r in it]
    assert seen == [sa_id(n) for n in range(7)] + [sa_id(50)]
    assert list(st.list(limit=5)) == list(st.list())[:5]


def check_history(st: SaRecordStore, clock: Clock) -> None:
    a, b = make_record(1), make_record(4)  # both peer C-light-1
    c = make_record(2)  # C-light-2
    clock.now = T0
    st.record(a, "initiate-sa-received")
    st.record(a, "established")
    clock.now = T0 + HOUR
    st.record(c, "established")
    st.record(b, "established")
    clock.now = T0 + 2 * HOUR
    st.record(dataclasses.replace(a, state=SaState.REMOVED, cause="psk removed"), "removed")
    assert st.flush(10)
    events = list(st.history(a.sa_id))
    assert [(e.event, e.state) for e in events] == [
        ("initiate-sa-received", SaState.ESTABLISHED),
        ("established", SaState.ESTABLISHED),
        ("removed", SaState.REMOVED),
    ]
    assert events[-1].cause == "psk removed" and events[-1].at == T0 + 2 * HOUR
    assert {(e.peer_id, e.framework, e.key_id) for e in events} == {
        ("C-light-1", "provisioned", "kpsa-1@home.example")
    }
    assert [e.sa_id for e in st.history(str(a.sa_id))] == [a.sa_id] * 3
    by_peer = list(st.history(peer="C-light-1"))
    assert [(e.sa_id, e.event) for e in by_peer] == [
        (a.sa_id, "initiate-sa-received"),
        (a.sa_id, "established"),
        (b.sa_id, "established"),
        (a.sa_id, "removed"),
    ]
    window = list(st.history(since=T0 + HOUR, until=T0 + 2 * HOUR))
    assert [e.sa_id for e in window] == [c.sa_id, b.sa_id]
    first = list(st.history(limit=2))
    rest = list(st.history(after=first[-1]))
    assert [e.event_id for e in first + rest] == [e.event_id for e in st.history()]
    assert len(first + rest) == 5


def check_who_was_associated(st: SaRecordStore, clock: Clock) -> None:
    # a: live T0..T0+2h (removed then); b: from T0+1h, still live; c: failed at T0+30min;
    # d: key expired at T0+90min (never closed); e: established at T0+3h.
    a = make_record(1, established_at=T0)
    b = make_record(2, established_at=T0 + HOUR)
    c = make_record(3, established_at=T0 + HOUR / 2, state=SaState.FAILED, cause="x")
    d = make_record(4, established_at=T0, expires_at=T0 + 1.5 * HOUR)
    e = make_record(5, established_at=T0 + 3 * HOUR)
    clock.now = T0
    for rec in (a, d):
        st.record(rec, "established")
    clock.now = T0 + HOUR / 2
    st.record(c, "failed")
    clock.now = T0 + HOUR
    st.record(b, "established")
    clock.now = T0 + 2 * HOUR
    st.record(dataclasses.replace(a, state=SaState.REMOVED), "removed")
    clock.now = T0 + 3 * HOUR
    st.record(e, "established")
    assert st.flush(10)

    def at(t: datetime, **kw: object) -> set[SaId]:
        return {r.sa_id for r in st.who_was_associated(t, **kw)}  # type: ignore[arg-type]

    assert at(T0 - HOUR) == set()
    assert at(T0) == {a.sa_id, d.sa_id}
    assert at(T0 + HOUR / 2) == {a.sa_id, d.sa_id}  # c failed: never associated
    assert at(T0 + 1.75 * HOUR) == {a.sa_id, b.sa_id}  # d's key expired
    assert at(T0 + 2.5 * HOUR) == {b.sa_id}  # a removed at 2h
    assert at(T0 + 4 * HOUR) == {b.sa_id, e.sa_id}
    assert at(T0 + 4 * HOUR, peer="C-light-2") == {b.sa_id, e.sa_id}
    assert at(T0 + 4 * HOUR, peer="C-light-1") == set()
    # A window: anyone live at some time in [2.5h, 3.5h).
    assert at(T0 + 2.5 * HOUR, until=T0 + 3.5 * HOUR) == {b.sa_id, e.sa_id}
    assert at(T0 - HOUR, until=T0 + 10 * HOUR) == {a.sa_id, b.sa_id, d.sa_id, e.sa_id}
    with pytest.raises(ValueError, match="later"):
        list(st.who_was_associated(T0, until=T0))
    # The end of an SA is its first non-live event: a later one does not move it.
    clock.now = T0 + 5 * HOUR
    st.record(dataclasses.replace(a, state=SaState.CLOSED), "closed")
    assert st.flush(10)
    assert at(T0 + 2.5 * HOUR) == {b.sa_id}


def check_retention(st: SaRecordStore, clock: Clock) -> None:
    days = timedelta(days=1)
    old_closed = make_record(1, established_at=T0 - 100 * days)
    old_live = make_record(2, established_at=T0 - 100 * days, expires_at=None)
    old_expired = make_record(3, established_at=T0 - 100 * days, expires_at=T0 - 95 * days)
    recent_closed = make_record(4, established_at=T0 - 100 * days)
    clock.now = T0 - 100 * days
    for rec in (old_closed, old_live, old_expired, recent_closed):
        st.record(rec, "established")
    clock.now = T0 - 99 * days
    st.record(dataclasses.replace(old_closed, state=SaState.CLOSED), "closed")
    clock.now = T0 - 10 * days
    st.record(dataclasses.replace(recent_closed, state=SaState.CLOSED), "closed")
    assert st.flush(10)
    assert st.retention == timedelta(days=90)
    result = st.prune(T0)
    # History: the five events before T0-90d go; the recent "closed" stays.
    assert result.history == 5
    assert [e.event for e in st.history()] == ["closed"]
    # Records: ended (or key expired) more than 90 days ago go; live and recent stay.
    assert result.records == 2
    assert {r.sa_id for r in st.list()} == {old_live.sa_id, recent_closed.sa_id}
    assert st.prune(T0).history == 0


# -- SQLite ---------------------------------------------------------------------------------


def test_record_get(open_sa: OpenStore) -> None:
    check_record_get(open_sa())


def test_list_and_pages(open_sa: OpenStore) -> None:
    check_list_and_pages(open_sa())


def test_list_streams_in_pages(open_sa: OpenStore) -> None:
    check_streaming(open_sa(page_size=3))


def test_history(open_sa: OpenStore) -> None:
    clock = Clock()
    check_history(open_sa(clock=clock, page_size=2), clock)


def test_who_was_associated(open_sa: OpenStore) -> None:
    clock = Clock()
    check_who_was_associated(open_sa(clock=clock), clock)


def test_retention(open_sa: OpenStore) -> None:
    clock = Clock()
    check_retention(open_sa(clock=clock), clock)


def test_retention_default_and_none(open_sa: OpenStore, tmp_path: Path) -> None:
    assert open_sa().retention == DEFAULT_RETENTION == timedelta(days=90)
    clock = Clock(T0 - timedelta(days=400))
    keep = open_sa(tmp_path / "keep.db", retention=None, clock=clock)
    keep.record(make_record(1, state=SaState.CLOSED), "closed")
    assert keep.flush(10)
    assert keep.prune(T0).history == 0 and len(list(keep.history())) == 1
    with pytest.raises(ValueError, match="positive"):
        SaRecordStore(tmp_path / "bad.db", retention=timedelta(0))


def test_the_writer_prunes_periodically(open_sa: OpenStore) -> None:
    clock = Clock(T0 - timedelta(days=200))
    st = open_sa(clock=clock, prune_interval=0.05)
    st.record(make_record(1, state=SaState.CLOSED), "closed")
    assert st.flush(10)
    assert len(list(st.history())) == 1
    clock.now = T0  # 200 days later: the next periodic prune removes it
    deadline = time.monotonic() + 10
    # History goes first, then the records (two transactions): wait for both.
    while (list(st.history()) or list(st.list())) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(st.history()) == [] and list(st.list()) == []


def test_close_drains_the_queue(tmp_path: Path) -> None:
    # A long linger and a batch bigger than the queue: without close's drain nothing
    # would be committed yet.
    st = SaRecordStore(tmp_path / "sa.db", linger=30.0, max_batch=5000)
    for n in range(1000):
        st.record(make_record(n), "established")
    assert st.stats().written == 0
    st.close()
    assert st.stats().written == 1000 and st.stats().lost == 0
    st.record(make_record(5000), "late")  # after close: refused, counted, not raised
    assert st.stats().refused == 1
    with SaRecordStore(tmp_path / "sa.db") as again:
        assert len(list(again.history())) == 1000
        assert len(list(again.list())) == 1000


async def test_aclose_drains_without_blocking_the_loop(tmp_path: Path) -> None:
    st = SaRecordStore(tmp_path / "sa.db", linger=30.0)
    for n in range(100):
        st.record(make_record(n), "established")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await st.aclose()
    ticker.cancel()
    assert ticks > 0
    with SaRecordStore(tmp_path / "sa.db") as again:
        assert len(list(again.history())) == 100


def test_store_file_is_private_and_defaults_to_the_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("M2MSEC_HOME", str(home))
    with SaRecordStore() as st:
        st.record(make_record(1), "established")
        assert st.flush(10)
        assert st.database.label == str(home / "sa.db")
    for name in ("sa.db", "sa.db-wal", "sa.db-shm"):
        path = home / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert stat.S_IMODE((home / "sa.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    with sqlite3.connect(home / "sa.db") as conn:  # the sqlite:/// URL opens the same file
        assert conn.execute("SELECT COUNT(*) FROM sa_history").fetchone()[0] == 1
    with SaRecordStore(f"sqlite://{home}/sa.db") as again:
        assert again.get(sa_id(1)) is not None


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    SaRecordStore(tmp_path / "sa.db").close()
    with sqlite3.connect(tmp_path / "sa.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        SaRecordStore(tmp_path / "sa.db")


def test_a_bad_record_fails_at_the_caller_not_in_the_batch(open_sa: OpenStore) -> None:
    st = open_sa()
    with pytest.raises(TypeError, match="peer_id"):
        st.record(make_record(1, peer_id=None), "established")
    with pytest.raises(TypeError, match="peer_id"):
        st.record(make_record(1, peer_id="\udcff"), "established")  # not UTF-8
    st.record(make_record(2), "established")
    assert st.flush(10) and st.stats().queued == 0 and st.stats().store_errors == 0


# -- batching ----------------------------------------------------------------------------


class CountingSqlite(SqliteDatabase):
    """A SQLite database that counts the transactions committed through it."""

    commits = 0

    def transaction(
        self, conn: Connection, *, exclusive: bool = False
    ) -> AbstractContextManager[Connection]:
        CountingSqlite.commits += 1
        return super().transaction(conn, exclusive=exclusive)


def test_many_records_few_commits(tmp_path: Path) -> None:
    db = CountingSqlite(tmp_path / "sa.db")
    with SaRecordStore(db) as st:
        CountingSqlite.commits = 0
        for n in range(3000):
            st.record(make_record(n), "established")
        assert st.flush(30)
        stats = st.stats()
        assert stats.written == 3000
        # max_batch 512: at least 6 commits; far fewer than one per event.
        assert 6 <= CountingSqlite.commits <= 30
        assert stats.batches == CountingSqlite.commits
        assert len(list(st.list())) == 3000


def test_record_does_not_wait_for_the_store(tmp_path: Path) -> None:
    """While another process holds SQLite's write lock, record() still returns at once:
    the events queue (a blocked record() would leave the thread running)."""
    with SaRecordStore(tmp_path / "sa.db", busy_timeout=0.05, retry_min=0.05) as st:
        st.record(make_record(0), "established")
        assert st.flush(10)
        holder = sqlite3.connect(tmp_path / "sa.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            caller = threading.Thread(
                target=lambda: [st.record(make_record(n), "established") for n in range(200)]
            )
            caller.start()
            caller.join(5)
            assert not caller.is_alive()
            assert st.stats().queued >= 199
            assert not st.flush(0.3)  # nothing can be committed while the lock is held
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert st.flush(10)
        assert len(list(st.list())) == 200


# -- outages ---------------------------------------------------------------------------------


def _lock_store(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_outage_one_log_line_nothing_lost(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "sa.db"
    with SaRecordStore(path, busy_timeout=0.02, retry_min=0.02, retry_max=0.05) as st:
        holder = _lock_store(path)
        for n in range(300):
            st.record(make_record(n), "established")
        deadline = time.monotonic() + 10
        while st.stats().store_errors < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert st.stats().store_errors >= 5  # retried, again and again
        assert st.outage.down
        holder.execute("ROLLBACK")
        holder.close()
        assert st.flush(10)
        assert not st.outage.down
        assert len(list(st.history())) == 300 and st.stats().dropped == 0
    lines = [r for r in caplog.records if r.name.startswith("m2msec")]
    errors = [r for r in lines if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "unavailable" in errors[0].getMessage() and "locked" in errors[0].getMessage()
    assert all(r.exc_info is None for r in lines)  # never a traceback
    assert any("recovered" in r.getMessage() for r in lines)


def test_full_queue_drops_the_oldest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "sa.db"
    with SaRecordStore(path, busy_timeout=0.02, retry_min=0.02, max_queue=10) as st:
        holder = _lock_store(path)
        for n in range(25):
            st.record(make_record(n), f"event-{n}")
        stats = st.stats()
        assert stats.dropped == 15 and stats.queued == 10
        holder.execute("ROLLBACK")
        holder.close()
        assert st.flush(10)
        assert [e.event for e in st.history()] == [f"event-{n}" for n in range(15, 25)]
    drops = [r for r in caplog.records if "dropping the oldest" in r.getMessage()]
    assert len(drops) == 1


def test_close_during_an_outage_gives_up_in_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sa.db"
    st = SaRecordStore(path, busy_timeout=0.02, retry_min=0.02)
    holder = _lock_store(path)
    try:
        for n in range(50):
            st.record(make_record(n), "established")
        started = time.monotonic()
        st.close(timeout=0.5)
        assert time.monotonic() - started < 5
        assert st.stats().lost == 50
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    lost = [r for r in caplog.records if "not written at shutdown" in r.getMessage()]
    assert len(lost) == 1 and "50 records" in lost[0].getMessage()
