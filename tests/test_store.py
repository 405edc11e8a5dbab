"""The SQLite psk-lookup-table (TS-0003 8.2.2.1 / TR-0038 7.1.2): sealing, files, processes."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from m2msec.errors import (
    ConfigurationError,
    DuplicateCredentialError,
    IdentifierError,
    StoreError,
)
from m2msec.paths import data_dir, default_store_path
from m2msec.store import PskEntry, SqlitePskStore, open_store
from m2msec.store import psk as sqlite_module
from m2msec.store.importer import (
    PskImportError,
    load_psk_file,
    parse_psk_csv,
    parse_psk_toml,
)
from m2msec.store.seal import SEAL_OVERHEAD, Sealer, load_kek

SRC = Path(__file__).resolve().parents[1] / "src"

# TR-0038 7.1.2: the home gateway's psk-lookup-table.
AE1 = PskEntry(
    "AE123456789012-Light@in.provider.com", bytes.fromhex("1a2b3c4d5e6f7a8b"), "Clight-AE1"
)
AE2 = PskEntry(
    "AE123456789015-Light@in.provider.com", bytes.fromhex("12345678abcdefab"), "Clight-AE2"
)
KEK_A = bytes(range(32))
KEK_B = bytes(range(1, 33))


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the real home directory or a real KEK."""
    monkeypatch.setenv("M2MSEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("M2MSEC_KEK", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "psk.db"


def _env_for_child(kek: bytes) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env["M2MSEC_KEK"] = kek.hex()
    return env


# -- round trip ------------------------------------------------------------------------------


def test_tr0038_rows_round_trip(db: Path) -> None:
    with SqlitePskStore(db) as store:
        store.add(AE1)
        store.add(AE2)
        assert store.count() == 2
        assert store.get(AE1.kpsa_id) == AE1
        assert store.get(AE2.kpsa_id) == AE2
        assert store.get("AE123456789013-Light@in.provider.com") is None
        # Octet-exact: the FQDN's case matters for a psk_identity.
        assert store.get("AE123456789012-Light@IN.provider.com") is None
    # Persisted, and read back through the KEK file beside the database.
    with SqlitePskStore(db) as store:
        got = store.get(AE1.kpsa_id)
        assert got is not None
        assert got.kpsa == bytes.fromhex("1a2b3c4d5e6f7a8b")
        assert got.entity_id == "Clight-AE1"
        infos = list(store.list())
    assert [(i.kpsa_id, i.entity_id, i.expires_at, i.key_length) for i in infos] == [
        (AE1.kpsa_id, "Clight-AE1", None, 8),
        (AE2.kpsa_id, "Clight-AE2", None, 8),
    ]
    assert not any(hasattr(i, "kpsa") for i in infos)


def test_entry_without_entity_and_64_octet_key(db: Path) -> None:
    entry = PskEntry("dev-1@mn.example.org", bytes(range(64)))
    with SqlitePskStore(db) as store:
        store.add(entry)
        assert store.get(entry.kpsa_id) == entry


def test_expiry_round_trip_and_purge(db: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    past = PskEntry("old@in.provider.com", b"k" * 16, "Cold", now - timedelta(days=1))
    future = PskEntry("new@in.provider.com", b"k" * 16, "Cnew", now + timedelta(days=1))
    naive = PskEntry("naive@in.provider.com", b"k" * 16, None, datetime(2031, 5, 6, 7, 8, 9))
    with SqlitePskStore(db) as store:
        store.add_many([past, future, naive])
        got = store.get(past.kpsa_id)
        # The store hands expired rows back; the framework decides.
        assert got == past
        assert got is not None and got.expired()
        assert store.get(future.kpsa_id) == future
        # No UTC offset means UTC (oneM2M timestamps are UTC).
        got = store.get(naive.kpsa_id)
        assert got is not None
        assert got.expires_at == datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
        assert store.purge_expired() == 1
        assert store.get(past.kpsa_id) is None
        assert store.count() == 2


def test_validation_errors_never_show_the_key(db: Path) -> None:
    long_key = bytes.fromhex("ab" * 65)
    with SqlitePskStore(db) as store:
        with pytest.raises(ConfigurationError) as info:
            store.add(PskEntry(AE1.kpsa_id, long_key))
        assert "ab" * 4 not in str(info.value)
        with pytest.raises(ConfigurationError):
            store.add(PskEntry(AE1.kpsa_id, b""))
        with pytest.raises(IdentifierError):
            store.add(PskEntry("x" * 120 + "@provider.com", b"k" * 16))
        with pytest.raises(IdentifierError):
            store.add(PskEntry("", b"k" * 16))
        assert store.count() == 0


def test_duplicate_add_and_replace(db: Path) -> None:
    with SqlitePskStore(db) as store:
        store.add(AE1)
        assert store.get(AE1.kpsa_id) == AE1  # now cached
        with pytest.raises(DuplicateCredentialError, match="AE123456789012-Light"):
            store.add(PskEntry(AE1.kpsa_id, b"n" * 16, "Cother"))
        assert store.get(AE1.kpsa_id) == AE1
        replacement = PskEntry(AE1.kpsa_id, b"n" * 16, "Cother")
        store.add(replacement, replace=True)
        assert store.get(AE1.kpsa_id) == replacement  # the cache was invalidated
        assert store.count() == 1


def test_remove(db: Path) -> None:
    with SqlitePskStore(db) as store:
        store.add_many([AE1, AE2])
        assert store.get(AE1.kpsa_id) is not None
        assert store.remove(AE1.kpsa_id) is True
        assert store.get(AE1.kpsa_id) is None
        assert store.remove(AE1.kpsa_id) is False
        assert [i.kpsa_id for i in store.list()] == [AE2.kpsa_id]


def test_add_many_progress_and_chunks(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "_CHUNK", 4)
    rows = [PskEntry(f"AE{i:04d}@in.provider.com", os.urandom(16), f"C{i}") for i in range(10)]
    seen: list[int] = []
    with SqlitePskStore(db) as store:
        assert store.add_many(reversed(rows), progress=seen.append) == 10
        assert seen == [4, 8, 10]
        assert [i.kpsa_id for i in store.list()] == [r.kpsa_id for r in rows]
        for row in rows:
            assert store.get(row.kpsa_id) == row


@pytest.mark.parametrize("position", [0, 5, 9])
def test_add_many_duplicate_names_it_and_writes_nothing(
    db: Path, monkeypatch: pytest.MonkeyPatch, position: int
) -> None:
    monkeypatch.setattr(sqlite_module, "_CHUNK", 4)
    rows = [PskEntry(f"AE{i:04d}@in.provider.com", os.urandom(16)) for i in range(10)]
    with SqlitePskStore(db) as store:
        store.add(AE1)
        rows.insert(position, PskEntry(AE1.kpsa_id, b"z" * 16))
        with pytest.raises(DuplicateCredentialError, match="AE123456789012-Light"):
            store.add_many(rows)
        assert store.count() == 1
        # A duplicate inside the input, across a chunk boundary.
        fresh = [r for r in rows if r.kpsa_id != AE1.kpsa_id]
        with pytest.raises(DuplicateCredentialError, match="AE0002@"):
            store.add_many([*fresh[:4], *fresh[6:9], PskEntry("AE0002@in.provider.com", b"y" * 8)])
        assert store.count() == 1
        assert store.get(AE1.kpsa_id) == AE1
        written = store.add_many(rows, replace=True)
        assert written == 11
        assert store.count() == 11


def test_add_many_rolls_back_on_bad_row_and_callback_error(db: Path) -> None:
    def entries() -> list[PskEntry]:
        return [AE1, PskEntry("bad@in.provider.com", b""), AE2]

    with SqlitePskStore(db) as store:
        with pytest.raises(ConfigurationError):
            store.add_many(entries())
        assert store.count() == 0

        def stop(_done: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            store.add_many([AE1, AE2], progress=stop)
        assert store.count() == 0
        assert store.add_many([AE1, AE2]) == 2


def test_lru_cache_is_bounded(db: Path) -> None:
    rows = [PskEntry(f"AE{i:04d}@in.provider.com", os.urandom(16)) for i in range(20)]
    with SqlitePskStore(db, cache_size=5) as store:
        store.add_many(rows)
        for row in rows:
            assert store.get(row.kpsa_id) == row
        assert len(store._cache) == 5
        # Unknown identities (a peer's guesses) are not cached and evict nothing.
        for i in range(50):
            assert store.get(f"unknown{i}@in.provider.com") is None
        assert list(store._cache) == [r.kpsa_id for r in rows[-5:]]
    with SqlitePskStore(db, cache_size=0) as store:
        assert store.get(rows[0].kpsa_id) == rows[0]
        assert len(store._cache) == 0


def test_get_with_identity_that_is_not_text(db: Path) -> None:
    with SqlitePskStore(db) as store:
        # A psk_identity decoded with surrogateescape cannot be a stored KpsaId.
        assert store.get("AE1\udcff@in.provider.com") is None
        assert store.remove("AE1\udcff@in.provider.com") is False


def test_closed_store(db: Path) -> None:
    store = SqlitePskStore(db)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get(AE1.kpsa_id)


# -- files and sealing --------------------------------------------------------------------------


def test_files_are_private_whatever_the_umask(db: Path) -> None:
    old = os.umask(0)
    try:
        with SqlitePskStore(db) as store:
            store.add(AE1)
            wal = Path(f"{db}-wal")
            assert wal.exists()
            assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE((db.parent / "kek").stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert len((db.parent / "kek").read_text().strip()) == 64


def test_group_readable_store_warns(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    SqlitePskStore(db).close()
    db.chmod(0o644)
    (db.parent / "kek").chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="m2msec"):
        SqlitePskStore(db).close()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "psk.db is accessible by group/others" in messages
    assert "kek is accessible by group/others" in messages


def test_raw_keys_never_reach_the_database_files(db: Path) -> None:
    keys = [AE1.kpsa, AE2.kpsa] + [os.urandom(32) for _ in range(50)]
    entries = [AE1, AE2] + [
        PskEntry(f"dev{i}@in.provider.com", k, f"Cdev{i}") for i, k in enumerate(keys[2:])
    ]
    store = SqlitePskStore(db, cache_size=0)
    store.add_many(entries[:30])
    for entry in entries[30:]:
        store.add(entry)
    store.add(PskEntry(AE1.kpsa_id, AE1.kpsa, "Clight-AE1"), replace=True)

    def all_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name != "kek")

    blob = all_bytes()  # WAL not yet checkpointed: the keys went through it
    assert Path(f"{db}-wal").stat().st_size > 0
    assert b"Clight-AE1" in blob  # we are reading the right files
    for key in keys:
        for form in (key, key.hex().encode(), key.hex().upper().encode()):
            assert form not in blob
    store.close()
    blob = all_bytes()
    for key in keys:
        assert key not in blob and key.hex().encode() not in blob


def test_seal_format() -> None:
    sealer = Sealer(KEK_A)
    sealed = sealer.seal(b"k" * 16, b"aad")
    assert sealed[0] == 1
    assert len(sealed) == SEAL_OVERHEAD + 16 == 1 + 12 + 16 + 16
    assert sealer.unseal(sealed, b"aad", what="x") == b"k" * 16
    assert sealer.seal(b"k" * 16, b"aad") != sealed  # fresh nonce each time
    with pytest.raises(StoreError, match="cannot unseal x: wrong key-encryption key"):
        sealer.unseal(sealed, b"other", what="x")
    with pytest.raises(StoreError, match="version 2"):
        sealer.unseal(b"\x02" + sealed[1:], b"aad", what="x")
    with pytest.raises(StoreError, match="truncated"):
        sealer.unseal(sealed[:20], b"aad", what="x")
    assert KEK_A.hex() not in repr(sealer)
    with pytest.raises(ConfigurationError):
        Sealer(b"short")


def test_wrong_kek_gives_a_clear_error(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SqlitePskStore(db, kek=KEK_A) as store:
        store.add(AE1)
    with pytest.raises(StoreError, match="wrong key-encryption key") as info:
        SqlitePskStore(db, kek=KEK_B)
    assert KEK_A.hex() not in str(info.value) and KEK_B.hex() not in str(info.value)
    monkeypatch.setenv("M2MSEC_KEK", KEK_B.hex())
    with pytest.raises(StoreError, match="wrong key-encryption key"):
        SqlitePskStore(db)
    monkeypatch.setenv("M2MSEC_KEK", KEK_A.hex())
    with SqlitePskStore(db) as store:
        assert store.get(AE1.kpsa_id) == AE1
    assert not (db.parent / "kek").exists()  # the environment's KEK: no file written


def test_bad_kek_in_environment_is_not_echoed(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2MSEC_KEK", "deadbeef" * 7 + "zz")
    with pytest.raises(ConfigurationError, match="M2MSEC_KEK must hold 64 hexadecimal") as info:
        SqlitePskStore(db)
    assert "deadbeef" not in str(info.value)


def test_lost_kek_file_is_not_silently_replaced(db: Path) -> None:
    with SqlitePskStore(db) as store:
        store.add(AE1)
    (db.parent / "kek").unlink()
    with pytest.raises(StoreError, match="no key-encryption key"):
        SqlitePskStore(db)
    assert not (db.parent / "kek").exists()


def test_sealed_key_cannot_move_to_another_row(db: Path) -> None:
    with SqlitePskStore(db, kek=KEK_A) as store:
        store.add_many([AE1, AE2])
    raw = sqlite3.connect(db)
    with raw:
        raw.execute(
            "UPDATE psk SET kpsa = (SELECT kpsa FROM psk WHERE kpsa_id = ?) WHERE kpsa_id = ?",
            (AE1.kpsa_id, AE2.kpsa_id),
        )
    raw.close()
    with SqlitePskStore(db, kek=KEK_A, cache_size=0) as store:
        assert store.get(AE1.kpsa_id) == AE1
        with pytest.raises(StoreError, match="cannot unseal the Kpsa of 'AE123456789015"):
            store.get(AE2.kpsa_id)


@pytest.mark.parametrize(
    ("column", "value"), [("entity_id", "/mn-cse-123456"), ("expires_at", 4102444800)]
)
def test_row_edited_in_the_database_fails_to_unseal(db: Path, column: str, value: object) -> None:
    # Re-binding a key to another entity (or extending it) needs the KEK.
    with SqlitePskStore(db, kek=KEK_A) as store:
        store.add(AE1)
    raw = sqlite3.connect(db)
    with raw:
        raw.execute(f"UPDATE psk SET {column} = ?", (value,))
    raw.close()
    with SqlitePskStore(db, kek=KEK_A) as store, pytest.raises(StoreError, match="cannot unseal"):
        store.get(AE1.kpsa_id)


def test_kek_file_created_once_by_racing_openers(tmp_path: Path) -> None:
    path = tmp_path / "race" / "psk.db"
    errors: list[BaseException] = []
    stores: list[SqlitePskStore] = []
    barrier = threading.Barrier(8)

    def opener(i: int) -> None:
        try:
            barrier.wait()
            store = SqlitePskStore(path)
            store.add(PskEntry(f"AE{i}@in.provider.com", bytes([i]) * 16))
            stores.append(store)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for store in stores:
        for i in range(8):
            got = store.get(f"AE{i}@in.provider.com")
            assert got is not None and got.kpsa == bytes([i]) * 16
        store.close()
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    assert len(load_kek(path.parent / "kek", create=False)) == 32


def test_newer_schema_is_refused(db: Path) -> None:
    SqlitePskStore(db).close()
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SqlitePskStore(db)


def test_schema_and_pragmas(db: Path) -> None:
    SqlitePskStore(db).close()
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION
    sql = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'psk'").fetchone()[0]
    assert "WITHOUT ROWID" in sql
    raw.close()


# -- threads and processes ------------------------------------------------------------------


def test_lookups_from_threads_during_a_large_import(db: Path) -> None:
    rows = [PskEntry(f"AE{i:06d}@in.provider.com", os.urandom(16)) for i in range(30_000)]
    with SqlitePskStore(db, cache_size=100) as store:
        store.add_many(rows[:1000])
        stop = threading.Event()
        failures: list[str] = []

        def reader() -> None:
            i = 0
            while not stop.is_set():
                row = rows[i % 1000]
                if store.get(row.kpsa_id) != row:
                    failures.append(row.kpsa_id)
                i += 7

        readers = [threading.Thread(target=reader) for _ in range(3)]
        for t in readers:
            t.start()
        store.add_many(rows[1000:])
        stop.set()
        for t in readers:
            t.join()
        assert failures == []
        assert store.count() == 30_000


def test_other_process_changes_seen_after_cache_ttl(db: Path) -> None:
    replacement = PskEntry(AE1.kpsa_id, b"r" * 16, "Cnew")
    with SqlitePskStore(db, kek=KEK_A, cache_ttl=0.5) as store:
        store.add(AE1)
        assert store.get(AE1.kpsa_id) == AE1  # cached now
        child = textwrap.dedent(
            f"""
            from m2msec.store import PskEntry, SqlitePskStore
            with SqlitePskStore({str(db)!r}) as s:
                s.add(PskEntry({AE1.kpsa_id!r}, b"r" * 16, "Cnew"), replace=True)
                s.add(PskEntry({AE2.kpsa_id!r}, {AE2.kpsa!r}, "Clight-AE2"))
            """
        )
        changed_at = time.monotonic()
        subprocess.run([sys.executable, "-c", child], env=_env_for_child(KEK_A), check=True)
        # A KpsaId we never had is looked up in SQLite: visible at once.
        assert store.get(AE2.kpsa_id) == AE2
        # A cached one is refreshed within cache_ttl.
        deadline = changed_at + 0.5 + 1.0
        while store.get(AE1.kpsa_id) != replacement:
            assert time.monotonic() < deadline, "change by another process not seen"
            time.sleep(0.05)
    with SqlitePskStore(db, kek=KEK_A, cache_ttl=0) as store:
        assert store.get(AE1.kpsa_id) == replacement
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from m2msec.store import SqlitePskStore\n"
                f"SqlitePskStore({str(db)!r}).remove({AE1.kpsa_id!r})",
            ],
            env=_env_for_child(KEK_A),
            check=True,
        )
        # cache_ttl=0: checked on every lookup, so a removal elsewhere is seen at once.
        assert store.get(AE1.kpsa_id) is None


def test_import_killed_midway_leaves_the_store_consistent(db: Path) -> None:
    with SqlitePskStore(db, kek=KEK_A) as store:
        store.add(AE1)
    n = 300_000
    child = textwrap.dedent(
        f"""
        import os, sys
        from m2msec.store import PskEntry, SqlitePskStore
        store = SqlitePskStore({str(db)!r})
        rows = (PskEntry(f"AE{{i:07d}}@in.provider.com", os.urandom(16)) for i in range({n}))
        store.add_many(rows, progress=lambda done: print(done, flush=True))
        print("committed", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        env=_env_for_child(KEK_A),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    assert first.isdigit(), first
    while int(proc.stdout.readline().strip() or 0) < 30_000:
        pass  # let several chunks reach the WAL
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    with SqlitePskStore(db, kek=KEK_A) as store:
        assert store.count() in (1, n + 1)  # all of the transaction or none of it
        assert store.count() == 1  # killed long before the commit
        assert store.get(AE1.kpsa_id) == AE1
        assert store.add_many([AE2]) == 1


# -- open_store and paths -------------------------------------------------------------------


def test_open_store_forms(tmp_path: Path) -> None:
    default = open_store(None, kek=KEK_A)
    try:
        assert isinstance(default, SqlitePskStore)
        assert default.path == tmp_path / "home" / "m2msec.db"
        assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
    finally:
        default.close()
    url = open_store(f"sqlite://{tmp_path}/url%20store/a.db", kek=KEK_A)
    assert isinstance(url, SqlitePskStore) and url.path == tmp_path / "url store" / "a.db"
    url.close()
    plain = open_store(str(tmp_path / "plain.db"), kek=KEK_A)
    assert isinstance(plain, SqlitePskStore) and plain.path == tmp_path / "plain.db"
    plain.close()
    # A PostgreSQL URL is a PostgreSQL store (tests/test_store_pg.py); nothing listens here.
    with pytest.raises(StoreError, match=r"cannot open store postgresql://m2m:\*\*\*@127"):
        open_store("postgresql://m2m:secret@127.0.0.1:1/m2msec")
    with pytest.raises(ConfigurationError, match="sqlite:///absolute"):
        open_store("sqlite://host/x.db")
    with pytest.raises(ConfigurationError, match="unsupported"):
        open_store("redis://localhost")


def test_data_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert data_dir() == tmp_path / "home"
    monkeypatch.delenv("M2MSEC_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "m2msec"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert data_dir() == tmp_path / "user" / ".local" / "share" / "m2msec"
    assert not data_dir().exists()
    path = default_store_path(create=True)
    assert path == tmp_path / "user" / ".local" / "share" / "m2msec" / "m2msec.db"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


# -- importer -------------------------------------------------------------------------------

TR0038_CSV = """\
kpsa_id,kpsa,entity_id,expires_at
AE123456789012-Light@in.provider.com,1a2b3c4d5e6f7a8b,Clight-AE1,
AE123456789015-Light@in.provider.com,12345678ABCDEFAB,Clight-AE2,2030-01-01T00:00:00+01:00
"""


def test_import_csv_tr0038(tmp_path: Path, db: Path) -> None:
    path = tmp_path / "psk.csv"
    path.write_text("\ufeff" + TR0038_CSV, encoding="utf-8")  # with a spreadsheet's BOM
    result = load_psk_file(path)
    assert result.short_keys == 2
    assert result.entries == [
        AE1,
        PskEntry(AE2.kpsa_id, AE2.kpsa, "Clight-AE2", datetime(2029, 12, 31, 23, tzinfo=UTC)),
    ]
    with SqlitePskStore(db) as store:
        assert store.add_many(result.entries) == 2
        assert store.get(AE1.kpsa_id) == AE1


def test_import_toml(tmp_path: Path) -> None:
    path = tmp_path / "psk.toml"
    path.write_text(
        textwrap.dedent(
            """
            [[psk]]
            kpsa_id = "AE123456789012-Light@in.provider.com"
            kpsa = "1a2b3c4d5e6f7a8b"
            entity_id = "Clight-AE1"

            [[psk]]
            kpsa_id = "gw@in.provider.com"
            kpsa = "00112233445566778899aabbccddeeff"
            entity_id = "/mn-cse-123456"
            expires_at = 2030-01-01T00:00:00
            """
        )
    )
    result = load_psk_file(path)
    assert result.short_keys == 1
    assert result.entries[0] == AE1
    assert result.entries[1].expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert result.entries[1].entity_id == "/mn-cse-123456"


def test_import_reports_every_bad_row(tmp_path: Path) -> None:
    secret = "0badc0ffee0badc0ffee"
    text = (
        "kpsa_id,kpsa,entity_id,expires_at\n"
        "AE123456789012-Light@in.provider.com,1a2b3c4d5e6f7a8b,Clight-AE1,\n"  # line 2 ok
        "not-a-kpsa-id,1a2b3c4d,,\n"  # line 3
        f"dev@in.provider.com,{secret}zz,,\n"  # line 4
        "dev2@in.provider.com,,,\n"  # line 5
        "dev3@in.provider.com,01,bad entity,soon\n"  # line 6: two problems
        "\n"
        "AE123456789012-Light@in.provider.com,01,,\n"  # line 8: duplicate of line 2
        f"dev4@in.provider.com,{'ab' * 65},,\n"  # line 9: too long
        f"{secret},x\n"  # line 10: shifted columns
    )
    with pytest.raises(PskImportError) as info:
        parse_psk_csv(text, source="psk.csv")
    problems = info.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "line 3",
        "line 4",
        "line 5",
        "line 6",
        "line 6",
        "line 8",
        "line 9",
        "line 10",
    ]
    assert "already given at line 2" in problems[5]
    message = str(info.value)
    assert message.startswith("psk.csv: 8 problem(s), nothing imported:")
    assert secret not in message and "abab" not in message


def test_import_csv_header_and_toml_problems() -> None:
    with pytest.raises(PskImportError, match="missing column"):
        parse_psk_csv("kpsa_id,entity_id\nx@y.com,Cx\n")
    with pytest.raises(PskImportError, match="unknown column"):
        parse_psk_csv("kpsa_id,kpsa,psk_identity\n")
    with pytest.raises(PskImportError, match="empty"):
        parse_psk_csv("")
    with pytest.raises(PskImportError) as info:
        parse_psk_toml(
            '[[psk]]\nkpsa_id = "a@b.com"\nkpsa = 5\n'
            '[[psk]]\nkpsa_id = "c@d.com"\nkpsa = "0102"\nexpires_at = 2030-01-01\nkey = "x"\n'
        )
    assert [p.split(":")[0] for p in info.value.problems] == [
        "[[psk]] #1",
        "[[psk]] #2",
        "[[psk]] #2",
    ]
    with pytest.raises(PskImportError, match="line 1"):
        parse_psk_toml("[[psk]\n")
    assert parse_psk_toml("").entries == []


def test_import_format_from_suffix(tmp_path: Path) -> None:
    path = tmp_path / "psk.txt"
    path.write_text(TR0038_CSV)
    with pytest.raises(ConfigurationError, match=r"\.csv or \.toml"):
        load_psk_file(path)
    assert len(load_psk_file(path, fmt="csv").entries) == 2
