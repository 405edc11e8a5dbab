"""sa.store on PostgreSQL (the ``m2msec_sa`` schema), on the private server of tests/pg.py.

The contract of tests/test_sa_store.py (``check_*``) over a ``postgresql://`` URL; two
stores sharing one database (two gateways); the writer's connection killed by the server
(reconnect, nothing lost) and a longer outage (one log line, events kept queued and
written once the table is back).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import psycopg
import pytest

from m2msec.sa.records import SaRole
from m2msec.sa.store import SaRecordStore
from m2msec.store.db import PostgresDatabase
from tests.pg import pg_server, pg_url  # noqa: F401 - fixtures
from tests.test_sa_store import (
    Clock,
    check_history,
    check_list_and_pages,
    check_record_get,
    check_retention,
    check_streaming,
    check_who_was_associated,
    make_record,
    sa_id,
)


@pytest.fixture
def store(pg_url: str) -> Iterator[SaRecordStore]:  # noqa: F811 - the fixture
    st = SaRecordStore(pg_url, retry_min=0.05, retry_max=0.2)
    yield st
    st.close(timeout=2)


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True)


def test_in_its_own_schema(store: SaRecordStore, pg_url: str) -> None:  # noqa: F811
    assert isinstance(store.database, PostgresDatabase)
    assert store.database.schema == "m2msec_sa"
    store.record(make_record(1), "established")
    assert store.flush(10)
    with _admin(pg_url) as conn:
        row = conn.execute("SELECT COUNT(*) FROM m2msec_sa.sa_history").fetchone()
        assert row is not None and row[0] == 1


def test_record_get(store: SaRecordStore) -> None:
    check_record_get(store)


def test_list_and_pages(store: SaRecordStore) -> None:
    check_list_and_pages(store)


def test_list_streams_in_pages(pg_url: str) -> None:  # noqa: F811
    with SaRecordStore(pg_url, page_size=3) as st:
        check_streaming(st)


def test_history(pg_url: str) -> None:  # noqa: F811
    clock = Clock()
    with SaRecordStore(pg_url, clock=clock, page_size=2) as st:
        check_history(st, clock)


def test_who_was_associated(pg_url: str) -> None:  # noqa: F811
    clock = Clock()
    with SaRecordStore(pg_url, clock=clock) as st:
        check_who_was_associated(st, clock)


def test_retention(pg_url: str) -> None:  # noqa: F811
    clock = Clock()
    with SaRecordStore(pg_url, clock=clock) as st:
        check_retention(st, clock)


def test_two_stores_share_one_database(pg_url: str) -> None:  # noqa: F811
    """Two gateways (or a gateway and the CLI) on one database see each other's records."""
    with SaRecordStore(pg_url) as one, SaRecordStore(pg_url) as two:
        for n in range(0, 400, 2):
            one.record(make_record(n), "established")
        for n in range(1, 400, 2):
            two.record(make_record(n, role=SaRole.INITIATOR), "established")
        assert one.flush(20) and two.flush(20)
        assert len(list(one.list())) == 400
        assert two.get(sa_id(2)) is not None and one.get(sa_id(3), SaRole.INITIATOR)
        assert one.stats().batches + two.stats().batches < 40  # batched on both


def test_writer_reconnects_after_its_connection_is_killed(
    store: SaRecordStore,
    pg_url: str,  # noqa: F811
) -> None:
    store.record(make_record(0), "established")
    assert store.flush(10)
    with _admin(pg_url) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    for n in range(1, 101):
        store.record(make_record(n), "established")
    assert store.flush(20)
    assert len(list(store.history())) == 101  # the read connection reconnects too
    # A connection the server closed is replaced at once: no outage to report.
    assert store.stats().store_errors == 0 and not store.outage.down


def test_outage_one_log_line_nothing_lost(
    store: SaRecordStore,
    pg_url: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store.record(make_record(0), "established")
    assert store.flush(10)
    with _admin(pg_url) as admin:
        admin.execute("ALTER TABLE m2msec_sa.sa_history RENAME TO sa_history_away")
        try:
            for n in range(1, 201):
                store.record(make_record(n), "established")
            deadline = time.monotonic() + 10
            while store.stats().store_errors < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert store.stats().store_errors >= 4 and store.outage.down
            assert not store.flush(0.2)
        finally:
            admin.execute("ALTER TABLE m2msec_sa.sa_history_away RENAME TO sa_history")
    assert store.flush(20)
    assert len(list(store.history())) == 201
    assert len(list(store.list())) == 201  # the failed batches' records were rolled back
    ours = [r for r in caplog.records if r.name.startswith("m2msec")]
    errors = [r for r in ours if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "unavailable" in errors[0].getMessage()
    assert all(r.exc_info is None for r in ours)
    assert any("recovered" in r.getMessage() for r in ours)
