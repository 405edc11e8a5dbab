"""The MAF store (TS-0003 8.8): SQLite, secrets sealed at rest, transactions, caches."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from m2msec.errors import (
    ConfigurationError,
    DuplicateCredentialError,
    IdentifierError,
    StoreError,
    UnknownCredentialError,
)
from m2msec.maf.store import (
    ClientRegistration,
    MafStore,
    NewKey,
    default_maf_store_path,
    km_aad,
    open_maf_store,
    parse_km_id,
    parse_relative_key_id,
)
from m2msec.store.seal import Sealer, load_kek
from m2msec.store.sqlite import SqlitePskStore

KM_ID = "AE123456789012-Light@maf.in.provider.com"
KM = bytes.fromhex("a1" * 32)
NOW = datetime(2030, 1, 1, tzinfo=UTC)
TARGET = "//in.provider.com/in-cse"


def new_key(i: int, *, km: str = KM_ID.lower(), hours: float = 1, **kw: object) -> NewKey:
    fields: dict[str, object] = {
        "relative_id": i.to_bytes(16, "big"),
        "kc": bytes([i % 251 + 1]) * 32,
        "expires_at": NOW + timedelta(hours=hours),
        "km_id": km,
        "suid": 32,
        "target_ids": (TARGET,),
        "admin_fqdn": "admin.in.provider.com",
    }
    fields.update(kw)
    return NewKey(**fields)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "maf" / "maf.db"


@pytest.fixture
def store(db: Path) -> MafStore:
    st = MafStore(db, cache_ttl=0)
    st.add_client(KM_ID, KM, "Clight-AE1")
    return st


def test_clients_round_trip(store: MafStore) -> None:
    cred = store.get_client(KM_ID.upper())  # KmId compares case-insensitively (10.6)
    assert cred is not None
    assert (cred.km_id, cred.canonical, cred.km) == (KM_ID, KM_ID.lower(), KM)
    assert cred.entity_id == "Clight-AE1" and cred.enabled
    assert KM.hex() not in repr(cred)
    [info] = store.list_clients()
    assert (info.km_id, info.key_octets, info.has_config) == (KM_ID, 32, False)
    with pytest.raises(DuplicateCredentialError):
        store.add_client(KM_ID.lower(), KM)
    store.set_client_config(KM_ID, {"fqdn": "maf.in.provider.com"})
    store.add_client(KM_ID, b"\x02" * 16, replace=True)  # keeps the configuration
    assert store.get_client_config(KM_ID) == {"fqdn": "maf.in.provider.com"}
    cred = store.get_client(KM_ID)
    assert cred is not None and cred.km == b"\x02" * 16 and cred.entity_id is None
    assert store.set_client_enabled(KM_ID, False)
    cred = store.get_client(KM_ID)
    assert cred is not None and not cred.enabled
    with pytest.raises(UnknownCredentialError):
        store.set_client_config("nobody@maf.in.provider.com", {})


@pytest.mark.parametrize(
    ("km_id", "km", "entity", "error"),
    [
        ("no-at-sign", KM, None, IdentifierError),
        ("x@-bad-.com", KM, None, IdentifierError),
        ("x@maf.in.provider.com", b"\x01" * 15, None, ConfigurationError),
        ("x@maf.in.provider.com", b"\x01" * 65, None, ConfigurationError),
        ("x@maf.in.provider.com", KM, "bad id!", IdentifierError),
    ],
)
def test_client_validation(
    store: MafStore, km_id: str, km: bytes, entity: str | None, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        store.add_client(km_id, km, entity)
    assert km.hex() not in str(info.value)


def test_gba_btid_as_km_id_is_taken_verbatim(store: MafStore) -> None:
    # docs/readings.md A-25: a B-TID (base64 with '+', '/', '=') as KmId.
    btid = "dGVzdA+/=@bsf.in.provider.com"
    assert parse_km_id(btid).verbatim
    store.add_client(btid, KM)
    assert store.get_client(btid) is not None


def test_keys_round_trip_and_listing(store: MafStore) -> None:
    assert store.register_keys([new_key(1), new_key(2, labels=("a", "b"))]) == [True, True]
    key = store.get_key(parse_relative_key_id(b"\x00" * 15 + b"\x02").upper())
    assert key is not None and key.kc == bytes([3]) * 32 and key.labels == ("a", "b")
    assert key.live(NOW) and not key.live(NOW + timedelta(hours=1))
    assert "03" * 32 not in repr(key)
    # A RelativeKeyID in use is refused without writing anything.
    taken = new_key(1, kc=b"\x09" * 32)
    assert store.register_keys([taken, new_key(3)]) == [False, True]
    first = store.get_key(taken.relative_id)
    assert first is not None and first.kc == bytes([2]) * 32
    with pytest.raises(DuplicateCredentialError, match="already in use"):
        store.register_key(taken)
    listed = list(store.list_keys())
    assert [k.relative_id for k in listed] == [new_key(i).relative_hex for i in (1, 2, 3)]
    assert all(k.kc is None for k in listed)  # listing never unseals
    assert store.count_keys() == 3 and store.count_keys(live_at=NOW + timedelta(hours=2)) == 0
    assert store.get_key("zz") is None and store.get_key(b"\x05" * 16) is None


def test_list_keys_pages(store: MafStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("m2msec.maf.store._LIST_PAGE", 7)
    store.register_keys([new_key(i) for i in range(1, 23)])
    store.add_client("other@maf.in.provider.com", KM)
    store.register_keys([new_key(i, km="other@maf.in.provider.com") for i in range(30, 35)])
    assert len(list(store.list_keys())) == 27
    assert len(list(store.list_keys(km_id="OTHER@maf.in.provider.com"))) == 5
    assert all(k.kc is not None for k in store.list_keys(unseal=True))


def test_update_deregister_and_purge(store: MafStore) -> None:
    store.register_key(new_key(1))
    with store.writer() as w:
        updated = w.update_key(
            new_key(1).relative_id,
            expires_at=NOW + timedelta(hours=5),
            labels=("x",),
            target_ids=("/in-cse2",),
        )
    assert updated is not None and updated.kc == bytes([2]) * 32
    assert updated.target_ids == ("/in-cse2",) and updated.labels == ("x",)
    assert store.deregister_key(new_key(1).relative_id)
    assert not store.deregister_key(new_key(1).relative_id)  # once only
    gone = store.get_key(new_key(1).relative_id)
    assert gone is not None and gone.deregistered and gone.kc is None
    with store.writer() as w:
        assert w.update_key(new_key(1).relative_id, labels=None) is None
    store.register_key(new_key(2, hours=1))
    assert store.purge(NOW + timedelta(hours=3)) == 1  # the second key only
    assert store.purge(NOW + timedelta(hours=6)) == 1
    assert store.count_keys() == 0


def test_registrations_and_removal(store: MafStore) -> None:
    reg = ClientRegistration("r1", KM_ID.lower(), NOW + timedelta(days=1), "Admin.Example")
    with store.writer() as w:
        w.insert_registration(reg, now=NOW)
        with pytest.raises(DuplicateCredentialError):
            w.insert_registration(reg)
    assert store.live_registration(KM_ID.lower(), "admin.example", NOW) == store.get_registration(
        "r1"
    )
    assert store.live_registration(KM_ID.lower(), "admin.example", NOW + timedelta(days=2)) is None
    store.register_keys([new_key(1, reg_id="r1"), new_key(2), new_key(3, reg_id="r1")])
    with store.writer() as w:
        assert w.update_registration("r1", labels=("l",)) is not None
        assert w.delete_registration("r1") == (True, 2)
        assert w.delete_registration("r1") == (False, 0)
    assert store.live_registration(KM_ID.lower(), "admin.example", NOW) is None
    live = [k for k in store.list_keys() if not k.deregistered]
    assert [k.relative_id for k in live] == [new_key(2).relative_hex]
    found, keys = store.remove_client(KM_ID)
    assert (found, keys) == (True, 1)
    assert store.get_client(KM_ID) is None
    assert store.remove_client(KM_ID) == (False, 0)


def test_entity_b_list(store: MafStore) -> None:
    assert store.list_entity_b() == ()
    assert store.add_entity_b(TARGET)
    assert not store.add_entity_b(TARGET)
    assert store.add_entity_b("/in-cse2")
    assert store.list_entity_b() == (TARGET, "/in-cse2")  # sorted as text
    assert store.remove_entity_b("/in-cse2") and not store.remove_entity_b("/in-cse2")
    with pytest.raises(IdentifierError):
        store.add_entity_b("not an id")


def test_savepoint_rolls_back_one_operation(store: MafStore) -> None:
    with store.writer() as w:
        assert w.insert_key(new_key(1))
        with pytest.raises(RuntimeError), w.savepoint():
            w.insert_key(new_key(2))
            raise RuntimeError("this operation fails")
        assert w.insert_key(new_key(3))
    assert [k.relative_id for k in store.list_keys()] == [
        new_key(1).relative_hex,
        new_key(3).relative_hex,
    ]
    with pytest.raises(RuntimeError), store.writer() as w:
        w.insert_key(new_key(4))
        raise RuntimeError("the whole transaction fails")
    assert store.get_key(new_key(4).relative_id) is None


def test_files_private_and_keys_sealed(db: Path, store: MafStore) -> None:
    kc = bytes.fromhex("5a" * 16 + "c3" * 16)
    store.register_key(new_key(1, kc=kc))
    store.close()
    for name in ("maf.db", "kek"):
        assert stat.S_IMODE((db.parent / name).stat().st_mode) == 0o600
    data = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith("maf.db"))
    for secret in (kc, KM):
        assert secret not in data and secret.hex().encode() not in data


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
def test_edited_rows_no_longer_unseal(db: Path, store: MafStore, sql: str, what: str) -> None:
    store.register_key(new_key(1))
    store.close()
    with sqlite3.connect(db) as conn:
        conn.execute(sql)
        conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'config-version'")
    with MafStore(db) as again, pytest.raises(StoreError, match=f"cannot unseal the {what}"):
        again.get_key(new_key(1).relative_id) if what == "key value" else again.get_client(KM_ID)


def test_wrong_kek_and_lost_kek(db: Path, store: MafStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.close()
    monkeypatch.setenv("M2MSEC_KEK", "00" * 32)
    with pytest.raises(StoreError, match="wrong key-encryption key"):
        MafStore(db)
    monkeypatch.delenv("M2MSEC_KEK")
    (db.parent / "kek").unlink()
    with pytest.raises(StoreError, match="no key-encryption key"):
        MafStore(db)


def test_refuses_a_psk_store_and_newer_schemas(tmp_path: Path) -> None:
    SqlitePskStore(tmp_path / "psk.db").close()
    with pytest.raises(StoreError, match="psk-lookup-table"):
        MafStore(tmp_path / "psk.db")
    MafStore(tmp_path / "maf.db").close()
    with sqlite3.connect(tmp_path / "maf.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        MafStore(tmp_path / "maf.db")


def test_open_maf_store_forms(tmp_path: Path) -> None:
    with open_maf_store(None) as st:
        assert st.path == default_maf_store_path()
        assert st.path.parent == Path(os.environ["M2MSEC_HOME"])
    with open_maf_store(f"sqlite://{tmp_path}/u.db") as st:
        assert st.path == tmp_path / "u.db"
    with open_maf_store(tmp_path / "p.db") as st:
        assert st.path == tmp_path / "p.db"
    for url, message in [
        # A working PostgreSQL store is tested in tests/test_maf_store_pg.py.
        ("postgresql://maf@db/maf?nosuchoption=1", "invalid PostgreSQL MAF store URL"),
        ("postgres://db/maf?bogus=1", "PostgreSQL"),
        ("sqlite://host/x.db", "sqlite:///absolute"),
        ("mysql://db/maf", "unsupported"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            open_maf_store(url)
    with pytest.raises(ConfigurationError, match="synchronous"):
        MafStore(tmp_path / "s.db", synchronous="off")


def test_caches_follow_other_processes(db: Path, store: MafStore) -> None:
    cached = MafStore(db, cache_ttl=3600)  # a server that would never re-read on its own
    try:
        assert cached.get_client(KM_ID) is not None
        assert cached.list_entity_b() == ()
        # Writes through this object drop its cache at once.
        cached.add_entity_b(TARGET)
        assert cached.list_entity_b() == (TARGET,)
        assert cached.get_client(KM_ID) is not None
        # Writes by another connection are seen once cache_ttl has passed.
        store.remove_client(KM_ID)
        assert cached.get_client(KM_ID) is not None  # stale within cache_ttl, by design
        cached._cache_ttl = 0
        assert cached.get_client(KM_ID) is None
        # Key writes do not drop the client cache (every registration would, otherwise).
        store.add_client(KM_ID, KM)
        assert cached.get_client(KM_ID) is not None
        version = cached._config_version
        store.register_key(new_key(1))
        cached.get_client(KM_ID)
        assert cached._config_version == version
    finally:
        cached.close()


def test_concurrent_writers_and_readers(db: Path, store: MafStore) -> None:
    """Threads writing batches and reading at once; another process writes too."""
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        try:
            for i in range(20):
                keys = [new_key(base + i * 10 + j) for j in range(10)]
                assert all(store.register_keys(keys))
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(300):
                assert store.get_client(KM_ID) is not None
                store.get_key(new_key(1000).relative_id)
        except BaseException as exc:
            errors.append(exc)

    code = (
        "import sys\n"
        "from datetime import UTC, datetime, timedelta\n"
        "from m2msec.maf.store import MafStore, NewKey\n"
        "with MafStore(sys.argv[1]) as st:\n"
        "    for i in range(50):\n"
        "        st.register_key(NewKey((90000 + i).to_bytes(16, 'big'), b'\\x01' * 32,\n"
        "            datetime.now(UTC) + timedelta(hours=1), 'x@y.com', 32, ('/in-cse',), 'a.b'))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)], env=os.environ.copy())
    threads = [threading.Thread(target=writer, args=(n * 1000,)) for n in (1, 2, 3)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert proc.wait(60) == 0
    assert not errors, errors
    assert store.count_keys() == 3 * 200 + 50
    assert all(k.kc is not None for k in store.list_keys(unseal=True))


def test_closed_store(store: MafStore) -> None:
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.count_keys()


def _schema_2_kc_aad(rel: str, km_id: str, suid: int, targets: str, expires: int) -> bytes:
    """The associated data schema 2 sealed a Kc with (whole-second expiry), spelt out here
    so that a change to maf/store.py's kc_aad cannot hide a break of old rows."""

    def lp(data: bytes) -> bytes:
        return len(data).to_bytes(2, "big") + data

    return (
        b"m2msec/maf/kc\x00"
        + lp(rel.encode())
        + lp(km_id.encode())
        + suid.to_bytes(2, "big")
        + lp(targets.encode())
        + expires.to_bytes(8, "big", signed=True)
    )


def test_schema_2_store_migrates_and_its_kc_rows_still_open(db: Path, store: MafStore) -> None:
    """Schema 3 keeps an expiry's microseconds (issue 9 item 7); a schema-2 file, its Kc
    sealed with the old associated data, opens, migrates, and its keys still unseal."""
    old = new_key(1)
    store.register_key(old)
    reg = ClientRegistration("reg1", KM_ID.lower(), NOW + timedelta(hours=2), "a.example", None)
    with store.writer() as w:
        w.insert_registration(reg, now=NOW)
    store.close()
    rel = old.relative_id.hex()
    expires = int(old.expires_at.timestamp())
    aad = _schema_2_kc_aad(rel, old.km_id, old.suid, f'["{TARGET}"]', expires)
    sealed = Sealer(load_kek(db.parent / "kek", create=False)).seal(old.kc, aad)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE keys SET kc = ? WHERE rel_id = ?", (sealed, rel))
        conn.execute("ALTER TABLE keys DROP COLUMN expires_us")
        conn.execute("ALTER TABLE registrations DROP COLUMN expires_us")
        conn.execute("PRAGMA user_version = 2")
    precise = NOW + timedelta(seconds=6.5, microseconds=1)
    with MafStore(db) as st:
        key = st.get_key(old.relative_id)
        assert key is not None and key.kc == old.kc and key.expires_at == old.expires_at
        got = st.get_registration("reg1")
        assert got is not None and got.expires_at == reg.expires_at
        st.register_key(new_key(2, expires_at=precise))
        with st.writer() as w:
            w.update_registration("reg1", expires_at=precise)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
    with MafStore(db) as st:
        fresh = st.get_key(new_key(2).relative_id)
        assert fresh is not None and fresh.expires_at == precise and fresh.kc == new_key(2).kc
        got = st.get_registration("reg1")
        assert got is not None and got.expires_at == precise
        assert st.count_keys(live_at=precise - timedelta(microseconds=1)) == 2
        assert st.count_keys(live_at=precise) == 1  # the old key lives an hour longer


def test_schema_1_entity_b_rows_read_as_in_cse(tmp_path: Path) -> None:
    """Schema 2 adds entity_b.kind; rows of a version-1 store were IN-CSEs (seed 001)."""
    db = tmp_path / "maf.db"
    with MafStore(db) as st:
        st.add_entity_b("/in-cse")
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE entity_b DROP COLUMN kind")
        conn.execute("ALTER TABLE keys DROP COLUMN expires_us")  # schema 3's columns
        conn.execute("ALTER TABLE registrations DROP COLUMN expires_us")
        conn.execute("PRAGMA user_version = 1")
    with MafStore(db) as st:
        assert st.entity_b_kinds() == {"/in-cse": "in-cse"}
        assert st.list_entity_b() == ("/in-cse",)
        with pytest.raises(ConfigurationError, match="IN-CSE"):
            st.add_entity_b("/in-cse/Cae", kind="ae")
        assert st.add_entity_b("/in-cse/Cae", kind="ae", allow_non_in=True)
        assert st.entity_b_kinds()["/in-cse/Cae"] == "ae"


# The tables as the MAF store wrote them before it moved onto store/db.py's Database
# (issue 10), schema 3: config-version an integer in meta, audit.seq a plain rowid.
_SCHEMA_3_FILE = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE clients (km_id TEXT PRIMARY KEY, km_id_text TEXT NOT NULL, km BLOB NOT NULL, "
    "entity_id TEXT, created INTEGER NOT NULL, enabled INTEGER NOT NULL DEFAULT 1, config TEXT) "
    "WITHOUT ROWID",
    "CREATE TABLE entity_b (entity_id TEXT PRIMARY KEY, created INTEGER NOT NULL, "
    "kind TEXT NOT NULL DEFAULT 'in-cse') WITHOUT ROWID",
    "CREATE TABLE registrations (reg_id TEXT PRIMARY KEY, km_id TEXT NOT NULL, expires_at "
    "INTEGER NOT NULL, labels TEXT, admin_fqdn TEXT NOT NULL, created INTEGER NOT NULL, "
    "expires_us INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    "CREATE TABLE keys (rel_id TEXT PRIMARY KEY, kc BLOB, expires_at INTEGER NOT NULL, km_id "
    "TEXT NOT NULL, suid INTEGER NOT NULL, target_ids TEXT NOT NULL, labels TEXT, admin_fqdn "
    "TEXT NOT NULL, reg_id TEXT, created INTEGER NOT NULL, deregistered INTEGER NOT NULL "
    "DEFAULT 0, expires_us INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    "CREATE TABLE audit (seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, record TEXT NOT NULL)",
    "INSERT INTO meta (name, value) VALUES ('config-version', 0)",
    "PRAGMA user_version = 3",
)


def test_file_of_the_previous_store_opens_and_its_caches_follow(tmp_path: Path) -> None:
    """A schema-3 file written before the Database port opens; its integer config-version
    is taken over, so a cache still drops when another store object removes a client."""
    db = tmp_path / "maf.db"
    kek = bytes.fromhex("5c" * 32)
    sealer = Sealer(kek)
    with sqlite3.connect(db) as conn:
        for statement in _SCHEMA_3_FILE:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO meta (name, value) VALUES ('kek-check', ?)",
            (
                sealer.seal(
                    b"m2msec MAF key-encryption key check, version 1",
                    b"m2msec/maf/meta/kek-check",
                ),
            ),
        )
        conn.execute(
            "INSERT INTO clients (km_id, km_id_text, km, created) VALUES (?, ?, ?, 0)",
            (KM_ID.lower(), KM_ID, sealer.seal(KM, km_aad(KM_ID.lower(), None))),
        )
    conn.close()
    with MafStore(db, kek=kek, cache_ttl=0) as cached, MafStore(db, kek=kek) as other:
        cred = cached.get_client(KM_ID)
        assert cred is not None and cred.km == KM
        other.register_key(new_key(1))
        with other.writer() as w:
            w.append_audit([{"event": "key-issued"}, {"event": "key-retrieved"}])
        assert [seq for seq, _ in cached.read_audit()] == [1, 2]
        other.remove_client(KM_ID)
        assert cached.get_client(KM_ID) is None
        key = cached.get_key(new_key(1).relative_id)
        assert key is not None and key.deregistered
