"""The MAF store on PostgreSQL (TS-0003 8.8): the SQLite store's tests again, sharing, races.

A real PostgreSQL server (tests/pg.py: a private cluster started with initdb + pg_ctl, Debian
package ``postgresql``) and psycopg 3. The backend-neutral tests of tests/test_maf_store.py
and a few end-to-end tests of tests/test_maf_server.py are imported and run here against a
PostgreSQL store (their ``store`` / ``maf`` fixtures are overridden below).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import tests.test_maf_server as maf_tests
from m2msec.cli.main import app
from m2msec.errors import ConfigurationError, DuplicateCredentialError, StoreError
from m2msec.maf.store import (
    ClientRegistration,
    MafStore,
    kc_aad,
    km_aad,
    open_maf_store,
    redact_url,
)
from m2msec.servers.maf import MafServer
from m2msec.store.db import PostgresDatabase
from m2msec.store.seal import Sealer
from tests.interop import free_port, wait_listening
from tests.pg import PgServer, pg_server, pg_url
from tests.test_maf_cli import _wide, runner, test_clients
from tests.test_maf_crash import load, start_maf, write_config
from tests.test_maf_server import (
    IN_CSE,
    Clock,
    Maf,
    Pki,
    entity_b,
    maf_config,
    make_pki,
    pki,
    provision,
    retrieve,
    test_entity_b_kind_is_honoured,
    test_exported_key_registration,
    test_key_value_registration_and_retrieval,
    test_one_exported_key_per_session,
)
from tests.test_maf_store import (
    KM,
    KM_ID,
    NOW,
    TARGET,
    new_key,
    test_client_validation,
    test_clients_round_trip,
    test_closed_store,
    test_entity_b_list,
    test_gba_btid_as_km_id_is_taken_verbatim,
    test_keys_round_trip_and_listing,
    test_list_keys_pages,
    test_registrations_and_removal,
    test_savepoint_rolls_back_one_operation,
    test_update_deregister_and_purge,
)

# Re-exported so that pytest collects them in this module, with the fixtures below.
__all__ = [
    "_wide",
    "pg_server",
    "pg_url",
    "pki",
    "runner",
    "test_client_validation",
    "test_clients",
    "test_clients_round_trip",
    "test_closed_store",
    "test_entity_b_kind_is_honoured",
    "test_entity_b_list",
    "test_exported_key_registration",
    "test_gba_btid_as_km_id_is_taken_verbatim",
    "test_key_value_registration_and_retrieval",
    "test_keys_round_trip_and_listing",
    "test_list_keys_pages",
    "test_one_exported_key_per_session",
    "test_registrations_and_removal",
    "test_savepoint_rolls_back_one_operation",
    "test_update_deregister_and_purge",
]

KEK_HEX = "4b" * 32


@pytest.fixture
def store(pg_url: str, tmp_path: Path) -> Iterator[MafStore]:
    st = open_maf_store(pg_url, cache_ttl=0)
    assert isinstance(st.database, PostgresDatabase)
    st.add_client(KM_ID, KM, "Clight-AE1")
    try:
        yield st
    finally:
        st.close()


@pytest.fixture
def db(pg_url: str) -> str:
    """tests/test_maf_cli.py's ``--store``: here a PostgreSQL URL."""
    return pg_url


@pytest.fixture
async def maf(pg_url: str, tmp_path: Path, pki: Pki) -> AsyncIterator[Maf]:
    """tests/test_maf_server.py's MAF, on a PostgreSQL store."""
    directory = tmp_path / "maf"
    store = MafStore(pg_url, cache_ttl=0, home=directory)
    provision(store)
    clock = Clock()
    server = MafServer(maf_config(directory, pki), store, clock=clock)
    await server.start()
    env = Maf(server, store, directory, pki, clock)
    try:
        yield env
    finally:
        for client in env.clients:
            client.conn.abort()
        await server.close()
        store.close()


def raw(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run SQL on the store's tables behind its back (another database user would)."""
    with psycopg.connect(url, autocommit=True, options="-c search_path=m2msec_maf") as conn:
        cur = conn.execute(sql, args)
        return cur.fetchall() if cur.description else []


# ----------------------------------------------------------------------------- opening


def test_open_forms_and_url_errors(pg_url: str, pg_server: PgServer) -> None:
    with open_maf_store(pg_url.replace("postgresql://", "postgres://", 1)) as st:
        assert isinstance(st.database, PostgresDatabase) and st.synchronous == "full"
        assert st.path.parent == Path(os.environ["M2MSEC_HOME"])
        assert (st.path.parent / "kek").exists()  # a new database: a new KEK file
    with open_maf_store(pg_url, synchronous="normal") as st:
        assert st.synchronous == "normal"
        row = st._wconn.execute("SHOW synchronous_commit").fetchone()
        assert row[0] == "off"
    with pytest.raises(ConfigurationError, match="invalid PostgreSQL MAF store URL"):
        open_maf_store(pg_url + "?nosuchoption=1")
    with pytest.raises(ConfigurationError, match="schema name"):
        MafStore(pg_url, schema="x; DROP TABLE keys")
    with pytest.raises(ConfigurationError, match="synchronous"):
        MafStore(pg_url, synchronous="off")
    # A server that is not there: a StoreError naming the URL, never its password.
    dead = f"postgresql://maf:s3cret-pw@127.0.0.1:{free_port()}/maf"
    with pytest.raises(StoreError, match="cannot open MAF store") as info:
        open_maf_store(dead, connect_timeout=2)
    assert "s3cret-pw" not in str(info.value) and "maf:***@127.0.0.1" in str(info.value)
    assert redact_url(dead) == dead.replace("s3cret-pw", "***")
    assert redact_url("postgresql:///m?host=/run&password=pw1") == (
        "postgresql:///m?host=/run&password=***"
    )
    # Options of the URL are kept beside ours.
    with open_maf_store(pg_url + "?options=-c%20statement_timeout%3D4321") as st:
        assert st._rconn.execute("SHOW statement_timeout").fetchone()[0] == "4321ms"
        assert st._rconn.execute("SHOW search_path").fetchone()[0] == "m2msec_maf"


def test_schema_of_its_own_and_newer_versions_refused(pg_url: str) -> None:
    with MafStore(pg_url, kek=bytes.fromhex(KEK_HEX)) as st:
        st.register_key(new_key(1))
    with MafStore(pg_url, schema="other_maf", kek=bytes.fromhex(KEK_HEX)) as other:
        assert other.count_keys() == 0  # a second MAF store in the same database
    tables = {
        r[0]
        for r in raw(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = %s", "m2msec_maf")
    }
    assert {"meta", "clients", "entity_b", "registrations", "keys", "audit"} <= tables
    raw(pg_url, "UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        MafStore(pg_url, kek=bytes.fromhex(KEK_HEX))


def test_schema_1_upgraded_entity_b_rows_read_as_in_cse(pg_url: str) -> None:
    with MafStore(pg_url, kek=bytes.fromhex(KEK_HEX)) as st:
        st.add_entity_b(TARGET)
    raw(pg_url, "ALTER TABLE entity_b DROP COLUMN kind")
    raw(pg_url, "ALTER TABLE keys DROP COLUMN expires_us")  # schema 3's columns
    raw(pg_url, "ALTER TABLE registrations DROP COLUMN expires_us")
    raw(pg_url, "UPDATE schema_version SET version = 1")
    with MafStore(pg_url, kek=bytes.fromhex(KEK_HEX)) as st:
        assert st.entity_b_kinds() == {TARGET: "in-cse"}
        assert st.add_entity_b("/in-cse/Cae", kind="ae", allow_non_in=True)
        assert st.entity_b_kinds()["/in-cse/Cae"] == "ae"
    assert raw(pg_url, "SELECT version FROM schema_version") == [(3,)]


def test_schema_2_upgraded_and_its_kc_rows_still_open(pg_url: str) -> None:
    """Schema 3 keeps an expiry's microseconds (issue 9 item 7); rows of schema 2 still open."""
    with MafStore(pg_url, kek=bytes.fromhex(KEK_HEX)) as st:
        st.add_client(KM_ID, KM)
        st.register_key(new_key(1))  # whole seconds: sealed exactly as schema 2 did
    raw(pg_url, "ALTER TABLE keys DROP COLUMN expires_us")
    raw(pg_url, "ALTER TABLE registrations DROP COLUMN expires_us")
    raw(pg_url, "UPDATE schema_version SET version = 2")
    precise = new_key(2).expires_at + timedelta(microseconds=623456)
    with MafStore(pg_url, kek=bytes.fromhex(KEK_HEX)) as st:
        key = st.get_key(new_key(1).relative_id)
        assert key is not None and key.kc == new_key(1).kc
        assert key.expires_at == new_key(1).expires_at
        st.register_key(new_key(2, expires_at=precise))
    assert raw(pg_url, "SELECT version FROM schema_version") == [(3,)]
    with MafStore(pg_url, kek=bytes.fromhex(KEK_HEX)) as st:
        fresh = st.get_key(new_key(2).relative_id)
        assert fresh is not None and fresh.expires_at == precise


# The layout maf/store_pg.py created before the MAF store moved onto store/db.py's
# Database (issue 10): its version in a meta row, no schema_version table.
_LEGACY_DDL = (
    'CREATE TABLE meta (name TEXT COLLATE "C" PRIMARY KEY, value BYTEA, counter BIGINT)',
    """CREATE TABLE clients (km_id TEXT COLLATE "C" PRIMARY KEY, km_id_text TEXT COLLATE "C"
       NOT NULL, km BYTEA NOT NULL, entity_id TEXT COLLATE "C", created BIGINT NOT NULL,
       enabled INTEGER NOT NULL DEFAULT 1, config TEXT)""",
    """CREATE TABLE entity_b (entity_id TEXT COLLATE "C" PRIMARY KEY, created BIGINT NOT NULL,
       kind TEXT NOT NULL DEFAULT 'in-cse')""",
    """CREATE TABLE registrations (reg_id TEXT COLLATE "C" PRIMARY KEY, km_id TEXT COLLATE "C"
       NOT NULL, expires_at BIGINT NOT NULL, expires_us INTEGER NOT NULL DEFAULT 0,
       labels TEXT, admin_fqdn TEXT COLLATE "C" NOT NULL, created BIGINT NOT NULL)""",
    "CREATE INDEX registrations_km ON registrations (km_id)",
    """CREATE TABLE keys (rel_id TEXT COLLATE "C" PRIMARY KEY, kc BYTEA, expires_at BIGINT
       NOT NULL, km_id TEXT COLLATE "C" NOT NULL, suid INTEGER NOT NULL, target_ids TEXT
       NOT NULL, labels TEXT, admin_fqdn TEXT COLLATE "C" NOT NULL, reg_id TEXT COLLATE "C",
       created BIGINT NOT NULL, deregistered INTEGER NOT NULL DEFAULT 0,
       expires_us INTEGER NOT NULL DEFAULT 0)""",
    "CREATE TABLE audit (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "time BIGINT NOT NULL, record TEXT NOT NULL)",
    "INSERT INTO meta (name, counter) VALUES ('config-version', 0)",
)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_schema_made_by_the_old_postgresql_store_opens_and_migrates(
    pg_url: str, version: int
) -> None:
    """A PostgreSQL MAF schema of maf/store_pg.py (schema 1, 2 or 3) is taken over: its
    version moves to schema_version, the missing columns are added, its rows still unseal."""
    kek = bytes.fromhex(KEK_HEX)
    sealer = Sealer(kek)
    key = new_key(1)
    rel, expires = key.relative_hex, int(key.expires_at.timestamp())
    targets = f'["{TARGET}"]'
    canonical = KM_ID.lower()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA m2msec_maf")
        conn.execute("SET search_path TO m2msec_maf")
        for statement in _LEGACY_DDL:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO meta (name, counter) VALUES ('schema-version', %s)", (version,)
        )
        conn.execute(
            "INSERT INTO meta (name, value) VALUES ('kek-check', %s)",
            (sealer.seal(b"m2msec MAF key-encryption key check, version 1",
                         b"m2msec/maf/meta/kek-check"),),
        )
        conn.execute(
            "INSERT INTO clients (km_id, km_id_text, km, entity_id, created) "
            "VALUES (%s, %s, %s, NULL, 0)",
            (canonical, KM_ID, sealer.seal(KM, km_aad(canonical, None))),
        )
        conn.execute(
            "INSERT INTO keys (rel_id, kc, expires_at, km_id, suid, target_ids, admin_fqdn, "
            "created) VALUES (%s, %s, %s, %s, 32, %s, 'admin.in.provider.com', 0)",
            (rel, sealer.seal(key.kc, kc_aad(rel, canonical, 32, targets, expires)), expires,
             canonical, targets),
        )
        conn.execute("INSERT INTO entity_b (entity_id, created) VALUES (%s, 0)", (TARGET,))
        if version < 3:
            conn.execute("ALTER TABLE keys DROP COLUMN expires_us")
            conn.execute("ALTER TABLE registrations DROP COLUMN expires_us")
        if version < 2:
            conn.execute("ALTER TABLE entity_b DROP COLUMN kind")
    precise = NOW + timedelta(hours=3, microseconds=250)
    with MafStore(pg_url, kek=kek) as st:
        got = st.get_key(key.relative_id)
        assert got is not None and got.kc == key.kc and got.expires_at == key.expires_at
        cred = st.get_client(KM_ID)
        assert cred is not None and cred.km == KM
        assert st.entity_b_kinds() == {TARGET: "in-cse"}
        with st.writer() as w:
            w.insert_registration(ClientRegistration("r1", canonical, precise, "a.example"))
        st.register_key(new_key(2, expires_at=precise))
    assert raw(pg_url, "SELECT version FROM schema_version") == [(3,)]
    assert raw(pg_url, "SELECT name FROM meta WHERE name = 'schema-version'") == []
    with MafStore(pg_url, kek=kek) as st:
        fresh = st.get_key(new_key(2).relative_id)
        assert fresh is not None and fresh.expires_at == precise
        reg = st.get_registration("r1")
        assert reg is not None and reg.expires_at == precise
    raw(pg_url, "DELETE FROM schema_version")
    raw(pg_url, "INSERT INTO meta (name, counter) VALUES ('schema-version', 99)")
    with pytest.raises(StoreError, match="schema version 99"):
        MafStore(pg_url, kek=kek)


# ----------------------------------------------------------------------------- sealing


def test_keys_sealed_at_rest(store: MafStore, pg_url: str) -> None:
    kc = bytes.fromhex("5a" * 16 + "c3" * 16)
    store.register_key(new_key(1, kc=kc))
    [(sealed_kc,)] = raw(pg_url, "SELECT kc FROM keys")
    [(sealed_km,)] = raw(pg_url, "SELECT km FROM clients")
    for secret, sealed in ((kc, bytes(sealed_kc)), (KM, bytes(sealed_km))):
        assert secret not in sealed and len(sealed) == len(secret) + 29
    dump = repr(raw(pg_url, "SELECT * FROM keys")) + repr(raw(pg_url, "SELECT * FROM audit"))
    assert kc.hex() not in dump and KM.hex() not in dump


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("UPDATE keys SET target_ids = '[\"//in.provider.com/evil\"]'", "key value"),
        ("UPDATE keys SET expires_at = expires_at + 86400", "key value"),
        ("UPDATE keys SET expires_us = 250000", "key value"),  # the fraction is sealed too
        ("UPDATE keys SET km_id = 'other@maf.in.provider.com'", "key value"),
        ("UPDATE clients SET entity_id = '/mn-cse/Cevil'", "Km"),
    ],
)
def test_edited_rows_no_longer_unseal(store: MafStore, pg_url: str, sql: str, what: str) -> None:
    store.register_key(new_key(1))
    raw(pg_url, sql)
    raw(pg_url, "UPDATE meta SET value = 'edited' WHERE name = 'config-version'")
    with pytest.raises(StoreError, match=f"cannot unseal the {what}"):
        store.get_key(new_key(1).relative_id) if what == "key value" else store.get_client(KM_ID)


def test_kek_shared_by_instances(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instances on other hosts (other homes) need the same KEK; a wrong or missing one is
    refused at open."""
    monkeypatch.setenv("M2MSEC_KEK", KEK_HEX)
    with MafStore(pg_url, home=tmp_path / "host1") as first:
        first.add_client(KM_ID, KM)
    assert not (tmp_path / "host1" / "kek").exists()  # the KEK came from the environment
    with MafStore(pg_url, home=tmp_path / "host2") as second:
        cred = second.get_client(KM_ID)
        assert cred is not None and cred.km == KM
    monkeypatch.setenv("M2MSEC_KEK", "00" * 32)
    with pytest.raises(StoreError, match="wrong key-encryption key"):
        MafStore(pg_url, home=tmp_path / "host3")
    monkeypatch.delenv("M2MSEC_KEK")
    with pytest.raises(StoreError, match="no key-encryption key"):
        MafStore(pg_url, home=tmp_path / "host4")


# ----------------------------------------------------------------------------- sharing


def test_two_instances_share_clients_and_keys(pg_url: str, tmp_path: Path) -> None:
    kek = bytes.fromhex(KEK_HEX)
    with (
        MafStore(pg_url, kek=kek, home=tmp_path / "a", cache_ttl=0) as a,
        MafStore(pg_url, kek=kek, home=tmp_path / "b", cache_ttl=3600) as b,
    ):
        a.add_client(KM_ID, KM)
        assert b.get_client(KM_ID) is not None and b.list_entity_b() == ()
        a.add_entity_b(TARGET)
        a.remove_client(KM_ID)
        assert b.get_client(KM_ID) is not None  # cached within cache_ttl, by design
        b._cache_ttl = 0
        assert b.get_client(KM_ID) is None and b.list_entity_b() == (TARGET,)
        # Keys are never cached: a de-registration by one instance is seen by the other.
        a.register_key(new_key(1))
        key = b.get_key(new_key(1).relative_id)
        assert key is not None and key.live(new_key(1).expires_at.replace(year=2029))
        assert b.deregister_key(new_key(1).relative_id)
        gone = a.get_key(new_key(1).relative_id)
        assert gone is not None and gone.deregistered and gone.kc is None


def test_revocations_through_one_instance_stop_the_other_within_cache_ttl(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ISSUE-NOTES issue 7: a removal through one MAF instance stops another instance on
    the same PostgreSQL store serving what was removed once its cache lifetime has passed:
    a removed or disabled MAF Client, a removed Entity B, a deleted client registration.
    The other instance's clock is driven by hand, so nothing here waits."""
    kek = bytes.fromhex(KEK_HEX)
    clock = [1000.0]
    monkeypatch.setattr("m2msec.maf.store.time.monotonic", lambda: clock[0])
    canonical = KM_ID.lower()
    reg = ClientRegistration("r1", canonical, NOW + timedelta(days=1), "admin.in.provider.com")
    with (
        MafStore(pg_url, kek=kek, home=tmp_path / "a", cache_ttl=0) as a,
        MafStore(pg_url, kek=kek, home=tmp_path / "b", cache_ttl=2.0) as b,
    ):
        a.add_client(KM_ID, KM)
        a.add_client("other@maf.in.provider.com", KM)
        a.add_entity_b(TARGET)
        with a.writer() as w:
            w.insert_registration(reg)

        def served() -> tuple[bool, bool, bool, bool]:
            return (
                b.get_client(KM_ID) is not None,
                (cred := b.get_client("other@maf.in.provider.com")) is not None and cred.enabled,
                TARGET in b.list_entity_b(),
                b.live_registration(canonical, "admin.in.provider.com", NOW) is not None,
            )

        assert served() == (True, True, True, True)  # now cached in b
        a.set_client_enabled("other@maf.in.provider.com", False)
        a.remove_entity_b(TARGET)
        with a.writer() as w:
            assert w.delete_registration("r1") == (True, 0)
        a.remove_client(KM_ID)
        clock[0] += 1.9
        assert served() == (True, True, True, True)  # within b's cache lifetime, by design
        clock[0] += 0.2
        assert served() == (False, False, False, False)


def test_same_relative_key_id_from_two_instances(pg_url: str, tmp_path: Path) -> None:
    """The database enforces the RelativeKeyID: the second writer waits for the first
    transaction and gets "taken" (the server's 4105 path), not an error."""
    kek = bytes.fromhex(KEK_HEX)
    a = MafStore(pg_url, kek=kek, home=tmp_path / "a")
    b = MafStore(pg_url, kek=kek, home=tmp_path / "b")
    inserted = threading.Event()
    results: dict[str, Any] = {}

    def first() -> None:
        with a.writer() as w:
            results["a"] = w.insert_key(new_key(7, kc=b"\x0a" * 32))
            w.append_audit([{"event": "key-issued", "n": 1}])
            inserted.set()
            time.sleep(0.5)  # b's insert is now waiting on this transaction

    def second() -> None:
        inserted.wait(10)
        started = time.monotonic()
        with b.writer() as w:
            results["b"] = w.insert_key(new_key(7, kc=b"\x0b" * 32))
            results["b-other"] = w.insert_key(new_key(8))  # the rest of the batch commits
        results["waited"] = time.monotonic() - started

    try:
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert (results["a"], results["b"], results["b-other"]) == (True, False, True)
        assert results["waited"] > 0.2
        key = b.get_key(new_key(7).relative_id)
        assert key is not None and key.kc == b"\x0a" * 32
        with pytest.raises(DuplicateCredentialError, match="already in use"):
            b.register_key(new_key(7))
        assert a.count_audit() == 1 and a.count_keys() == 2
    finally:
        a.close()
        b.close()


def test_concurrent_registrations_from_two_instances(pg_url: str, tmp_path: Path) -> None:
    """Four threads on two instances register overlapping RelativeKeyIDs in batches: each
    one is stored exactly once and every stored key unseals."""
    kek = bytes.fromhex(KEK_HEX)
    stores = [MafStore(pg_url, kek=kek, home=tmp_path / n) for n in "ab"]
    won: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(st: MafStore, offset: int) -> None:
        try:
            for batch in range(20):
                ids = [1 + (batch * 10 + j + offset) % 300 for j in range(10)]
                ok = st.register_keys([new_key(i) for i in ids])
                with lock:
                    won.extend(i for i, flag in zip(ids, ok, strict=True) if flag)
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=writer, args=(stores[n % 2], n * 5)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(won) == len(set(won))  # nobody "won" a RelativeKeyID twice
        assert stores[0].count_keys() == len(won)
        assert all(k.kc is not None for k in stores[1].list_keys(unseal=True))
    finally:
        for st in stores:
            st.close()


def test_reconnects_after_the_server_drops_it(store: MafStore, pg_server: PgServer) -> None:
    store.register_key(new_key(1))
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'm2msec-maf' AND pid <> pg_backend_pid()"
        )
    # The operation that meets the broken connection fails with a StoreError...
    with pytest.raises(StoreError, match="cannot read MAF store"):
        store.count_keys()
    with pytest.raises(StoreError, match="cannot write MAF store"):
        store.register_key(new_key(2))
    # ... and the next ones run on fresh connections.
    assert store.count_keys() == 1
    store.register_key(new_key(3))
    assert store.count_keys() == 2


# ----------------------------------------------------------------------------- crashes


def _write_config(path: Path, pki: Pki, url: str, port: int, rport: int, audit: Path) -> None:
    write_config(path, pki, Path("unused"), port, rport)
    text = path.read_text().replace('store = "unused"', f'store = "{url}"')
    text = text.replace("[certificates]", f'audit_log = "{audit}"\n[certificates]')
    path.write_text(text)


async def test_two_mafs_sigkilled_during_registrations_lose_no_confirmed_key(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``m2msec maf serve`` processes share one PostgreSQL store (as two hosts would:
    same KEK from the environment) and are killed (SIGKILL) under load, repeatedly. Every key
    answered 2001 by either is then retrievable from the other with its value, logged as
    issued, and no stored key is half-written."""
    monkeypatch.setenv("M2MSEC_KEK", KEK_HEX)
    pki_ = make_pki(tmp_path / "pki")
    with MafStore(pg_url) as st:
        st.add_client(maf_tests.KM_ID, maf_tests.KM)  # Entity A of load()
        st.add_entity_b(IN_CSE)
    ports = [(free_port(), free_port()) for _ in range(2)]
    configs = []
    for n, (port, rport) in enumerate(ports):
        configs.append(tmp_path / f"maf{n}.toml")
        _write_config(configs[n], pki_, pg_url, port, rport, tmp_path / f"audit{n}.log")
    rng = random.Random(os.getpid())
    confirmed: dict[str, bytes] = {}
    for _ in range(3):
        procs = [await start_maf(configs[n], ports[n][0]) for n in range(2)]
        before = len(confirmed)
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(load(ports[i % 2][0], confirmed, stop, random.Random(rng.random())))
            for i in range(8)
        ]
        try:
            for _ in range(1000):
                if len(confirmed) - before >= 10:
                    break
                await asyncio.sleep(0.01)
            for proc in procs:
                await asyncio.sleep(rng.uniform(0.0, 0.2))
                proc.send_signal(signal.SIGKILL)
            for proc in procs:
                await proc.wait()
        finally:
            stop.set()
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await asyncio.gather(*workers, return_exceptions=True)
        assert all(proc.returncode == -signal.SIGKILL for proc in procs)
        assert len(confirmed) - before >= 10, "no load reached the MAFs before the kill"

    proc = await start_maf(configs[1], ports[1][0])
    try:
        await wait_listening(ports[1][1], timeout=10)
        b = await entity_b(ports[1][1], pki_.creds["/in-cse"])
        for rel, kc in confirmed.items():
            response = await retrieve(b, rel)
            assert response.rsc == 2000, (rel, response.body)
            assert response.json()["mafKey"]["keyValue"] == kc.hex()
        await b.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 15)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    with MafStore(pg_url) as st:
        rows = {k.relative_id: k for k in st.list_keys(unseal=True)}
        records = [r for _, r in st.read_audit(limit=None)]
    assert all(k.kc is not None and len(k.kc) == 32 for k in rows.values())
    for rel, kc in confirmed.items():
        assert rows[rel].kc == kc
    issued = {str(r["kcId"]).split("@")[0] for r in records if r["event"] == "key-issued"}
    assert issued == set(rows)  # each key committed with its audit record, nothing else


async def test_server_never_commits_on_the_loop_with_postgresql(
    pg_url: str, tmp_path: Path, pki: Pki
) -> None:
    """durability "normal" commits on the event loop's thread with SQLite (no fsync, no
    I/O wait); with PostgreSQL every commit is a network round trip, so it stays in a worker
    thread, and a Key Registration + Retrieval works."""
    directory = tmp_path / "maf"
    store = MafStore(pg_url, cache_ttl=0, home=directory, synchronous="normal")
    provision(store)
    server = MafServer(maf_config(directory, pki, durability="normal"), store)
    await server.start()
    try:
        assert server._journal is not None and not server._journal.inline
        a = await maf_tests.entity_a(server.client_port)
        response = await maf_tests.register(a)
        assert response.rsc == 2001, response.body
        rel = response.json()["mafKeyReg"]["relativeKeyID"]
        port = server.retrieval_port
        assert port is not None
        b = await entity_b(port, pki.creds["/in-cse"])
        got = await retrieve(b, rel)
        assert got.rsc == 2000 and got.json()["mafKey"]["keyValue"] == exported_kc(a)
        a.conn.abort()
        b.conn.abort()
    finally:
        await server.close()
        store.close()


def exported_kc(client: Any) -> str:
    return str(maf_tests.exported(client.conn)[1].hex())


def test_cli_never_prints_the_password(runner: Any, pg_url: str) -> None:
    url = pg_url.replace("postgres@", "postgres:Pw-0f-the-db@", 1)  # trust auth: accepted
    result = runner.invoke(app, ["maf", "add-client", KM_ID, "--key", KM.hex(), "--store", url])
    assert result.exit_code == 0, result.output
    for command in ("list-clients", "list-entity-b", "keys"):
        result = runner.invoke(app, ["maf", command, "--store", url])
        assert result.exit_code == 0, result.output
        assert "Pw-0f-the-db" not in result.output and "postgres:***@" in result.output
