"""The identity registry (m2msec.store.registry): which credential owns an AE-ID/CSE-ID."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from m2msec.store import PskEntry, SqlitePskStore
from m2msec.store.registry import IdentityRegistry, credential_key


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "gw.db"
    with SqlitePskStore(path, kek=b"k" * 32) as store:
        store.add(PskEntry("dev-a", b"a" * 16, entity_id="Clight-AE1"))
        store.add(PskEntry("dev-b", b"b" * 16))
    return path


def test_psk_entity_id_is_an_implicit_owner(db: Path) -> None:
    with IdentityRegistry(db) as reg:
        assert reg.owner_of("Clight-AE1") == "psk:dev-a"
        assert reg.owner_of("Cother") is None


def test_psk_forms_map_normalised_ids_to_row_spellings(db: Path) -> None:
    forms = lambda e: (e, e.rsplit("/", 1)[-1])  # noqa: E731
    with IdentityRegistry(db, psk_forms=forms) as reg:
        assert reg.owner_of("/mn-cse-123456/Clight-AE1") == "psk:dev-a"


def test_record_is_first_come_and_idempotent(db: Path) -> None:
    b = credential_key("psk", "dev-b")
    with IdentityRegistry(db) as reg:
        assert reg.record("/mn-cse-123456/CAE2", b)
        assert reg.record("/mn-cse-123456/CAE2", b)
        assert not reg.record("/mn-cse-123456/CAE2", "maf:0123")
        assert reg.owner_of("/mn-cse-123456/CAE2") == b
        assert reg.recorded_for(b) == "/mn-cse-123456/CAE2"
        assert list(reg.list()) == [("/mn-cse-123456/CAE2", b, "registration")]
    # Survives a reopen: it is in the store, not in memory.
    with IdentityRegistry(db) as reg:
        assert reg.owner_of("/mn-cse-123456/CAE2") == b
        assert reg.forget("/mn-cse-123456/CAE2")
        assert reg.owner_of("/mn-cse-123456/CAE2") is None


def test_credential_key_rejects_unknown_framework() -> None:
    assert credential_key("maf", "11-ab") == "maf:11-ab"
    with pytest.raises(ValueError):
        credential_key("x", "y")


def test_version_1_store_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    raw.execute(
        "CREATE TABLE psk (kpsa_id TEXT PRIMARY KEY, entity_id TEXT, kpsa BLOB NOT NULL,"
        " expires_at INTEGER) WITHOUT ROWID"
    )
    raw.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    SqlitePskStore(path, kek=b"k" * 32).close()
    with IdentityRegistry(path) as reg:
        assert reg.owner_of("Cx") is None
        assert reg.record("Cx", "psk:x")
