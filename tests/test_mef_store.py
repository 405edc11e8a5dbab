"""The MEF store (TS-0003 8.3.2.1, seed 004) on SQLite and on PostgreSQL (tests/pg.py);
targets per docs/readings.md A-27."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from m2msec.bindings.messages import OneM2MRequest
from m2msec.errors import ConfigurationError, DuplicateCredentialError, IdentifierError, StoreError
from m2msec.keyids import KeId
from m2msec.mef.records import (
    Bootstrap,
    Enrolee,
    Enrolment,
    EnrolmentTarget,
    MefAudit,
    MefEvent,
)
from m2msec.mef.service import EnroleeIdentity, MefPolicy, MefService
from m2msec.mef.store import MefStore
from m2msec.mef.wire import CredentialBody, fetch_path, parse_fetch_answer
from m2msec.store.db import SqliteDatabase
from tests.pg import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

KEK = bytes(range(32))
KPM = bytes.fromhex("00112233445566778899aabbccddeeff")
KE = bytes(range(100, 132))
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
GATEWAY = EnrolmentTarget.enrolee_b("/mn-cse-123456")
MAF = EnrolmentTarget.maf("maf.provider.com")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MefStore]:
    if request.param == "sqlite":
        target = str(tmp_path / "mef.db")
    else:
        target = request.getfixturevalue("pg_url")
    with MefStore(target, kek=KEK, home=tmp_path) as st:
        yield st


def enrolee(kpm_id: str = "kpm-1@mef.example.com", target: EnrolmentTarget = GATEWAY) -> Enrolee:
    return Enrolee(
        Bootstrap.PSK, kpm_id, "/mn-cse-1/Cdevice-1", target, timedelta(days=30), KPM, NOW
    )


def enrolment(rel: bytes = b"\x01" * 16, target: EnrolmentTarget = GATEWAY) -> Enrolment:
    return Enrolment(
        KeId(rel, "mef.example.com"),
        KE,
        "/mn-cse-1/Cdevice-1",
        target,
        NOW + timedelta(days=30),
        NOW,
    )


def test_enrolee_round_trip_and_listing_hides_kpm(store: MefStore) -> None:
    store.add_enrolee(enrolee())
    got = store.get_enrolee(Bootstrap.PSK, "kpm-1@mef.example.com")
    assert got is not None
    assert got.kpm == KPM
    assert got.target == GATEWAY and got.enrolee_id == "/mn-cse-1/Cdevice-1"
    assert got.lifetime == timedelta(days=30) and got.created_at == NOW
    assert KPM.hex() not in repr(got)
    [listed] = store.list_enrolees()
    assert listed.kpm is None and listed.target == GATEWAY
    assert store.get_enrolee(Bootstrap.PSK, "nobody") is None
    assert store.get_enrolee(Bootstrap.CERTIFICATE, "kpm-1@mef.example.com") is None


def test_duplicate_enrolee_and_replace(store: MefStore) -> None:
    store.add_enrolee(enrolee())
    with pytest.raises(DuplicateCredentialError):
        store.add_enrolee(enrolee(target=MAF))
    store.add_enrolee(enrolee(target=MAF), replace=True)
    got = store.get_enrolee(Bootstrap.PSK, "kpm-1@mef.example.com")
    assert got is not None and got.target == MAF


def test_certificate_enrolee_has_no_kpm(store: MefStore) -> None:
    cert = Enrolee(
        Bootstrap.CERTIFICATE, "/mn-cse-9", "/mn-cse-9", MAF, timedelta(hours=1), created_at=NOW
    )
    store.add_enrolee(cert)
    got = store.get_enrolee(Bootstrap.CERTIFICATE, "/mn-cse-9")
    assert got is not None and got.kpm is None and got.target == MAF


def test_enrolment_commit_with_audit_and_read_back(store: MefStore) -> None:
    who = enrolee()
    store.add_enrolee(who)
    record = MefAudit(MefEvent.ENROLLED, NOW, "psk:kpm-1", ke_id="x", target=str(GATEWAY))
    store.commit([(enrolment(), who)], [record])
    got = store.get_enrolment(KeId(b"\x01" * 16, "MEF.example.com"))  # FQDN in any case
    assert got is not None
    assert got.ke == KE and got.target == GATEWAY and got.expires_at == NOW + timedelta(days=30)
    assert KE.hex() not in repr(got)
    assert store.get_enrolment(KeId(b"\x02" * 16, "mef.example.com")) is None
    [(seq, audit)] = store.read_audit()
    assert audit["event"] == "enrolled" and audit["keId"] == "x"
    assert store.read_audit(after=seq) == []
    assert store.count_enrolments() == 1
    assert store.count_enrolments(live_at=NOW + timedelta(days=31)) == 0


def test_a_repeated_ke_id_writes_nothing(store: MefStore) -> None:
    who = enrolee()
    store.add_enrolee(who)
    store.commit([(enrolment(), who)])
    record = MefAudit(MefEvent.ENROLLED, NOW, "psk:kpm-1")
    with pytest.raises(DuplicateCredentialError):
        store.commit([(enrolment(b"\x03" * 16), who), (enrolment(), who)], [record])
    assert store.count_enrolments() == 1
    assert store.read_audit() == []


def test_remove_enrolee_erases_its_enrolments(store: MefStore) -> None:
    who = enrolee()
    store.add_enrolee(who)
    store.commit([(enrolment(), who)])
    assert store.remove_enrolee(Bootstrap.PSK, who.bootstrap_id) == (True, 1)
    assert store.get_enrolment(enrolment().ke_id) is None
    assert store.remove_enrolee(Bootstrap.PSK, who.bootstrap_id) == (False, 0)


def test_purge_expired(store: MefStore) -> None:
    who = enrolee()
    store.add_enrolee(who)
    store.commit([(enrolment(), who)])
    assert store.purge_expired(NOW + timedelta(days=29)) == 0
    assert store.purge_expired(NOW + timedelta(days=30)) == 1


def test_allowed_targets(store: MefStore) -> None:
    assert store.allow_target(GATEWAY)
    assert not store.allow_target(EnrolmentTarget.enrolee_b("//sp.example/mn-cse-123456"))
    assert store.allow_target(MAF)
    assert store.is_allowed_target(EnrolmentTarget.maf("MAF.provider.com"))
    assert not store.is_allowed_target(EnrolmentTarget.maf("other.provider.com"))
    assert store.list_targets() == [GATEWAY, MAF]
    assert store.remove_target(MAF) and not store.is_allowed_target(MAF)


def test_wrong_kek_is_refused(store: MefStore, tmp_path: Path) -> None:
    store.add_enrolee(enrolee())
    with pytest.raises(StoreError, match="key-encryption key"):
        MefStore(store.database, kek=bytes(32))


def test_kpm_and_ke_are_sealed_and_bound(tmp_path: Path) -> None:
    path = tmp_path / "mef.db"
    with MefStore(path, kek=KEK) as st:
        who = enrolee()
        st.add_enrolee(who)
        st.commit([(enrolment(), who)])
    raw = path.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("mef.db-*"))
    assert KPM not in raw and KE not in raw
    # Moving the enrolment to another target (or lengthening it) without the KEK fails.
    conn = sqlite3.connect(path)
    conn.execute("UPDATE enrolments SET target_id = '/mn-cse-evil'")
    conn.execute("UPDATE enrolees SET target_kind = 'maf', target_id = 'maf.evil.com'")
    conn.commit()
    conn.close()
    with MefStore(path, kek=KEK) as st:
        with pytest.raises(StoreError, match="cannot unseal"):
            st.get_enrolment(enrolment().ke_id)
        with pytest.raises(StoreError, match="cannot unseal"):
            st.get_enrolee(Bootstrap.PSK, "kpm-1@mef.example.com")


def test_store_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "d" / "mef.db"
    with MefStore(path, kek=KEK) as st:
        # Ke is acknowledged only after it is on disk (issue 11: the SIGKILL test).
        assert isinstance(st.database, SqliteDatabase) and st.database.synchronous == "FULL"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_postgres_tables_live_in_their_schema(pg_url: str, tmp_path: Path) -> None:
    with MefStore(pg_url, kek=KEK, home=tmp_path) as st:
        st.add_enrolee(enrolee())
        assert "m2msec_mef" in st.location
    with psycopg.connect(pg_url) as conn:
        n = conn.execute("SELECT count(*) FROM m2msec_mef.enrolees").fetchone()
    assert n is not None and n[0] == 1


def test_records_validate_their_fields() -> None:
    with pytest.raises(IdentifierError):
        enrolee(kpm_id="has space")
    with pytest.raises(IdentifierError):
        Enrolee(Bootstrap.PSK, "k", "not an id", GATEWAY, timedelta(days=1), KPM)
    with pytest.raises(ConfigurationError, match="octets"):
        Enrolee(Bootstrap.PSK, "k", "/mn-cse-1", GATEWAY, timedelta(days=1), b"short")
    with pytest.raises(ConfigurationError, match="positive"):
        Enrolee(Bootstrap.PSK, "k", "/mn-cse-1", GATEWAY, timedelta(0), KPM)
    light = EnrolmentTarget.enrolee_b("/mn-cse-1/Clight-AE1")  # as it authenticates
    with pytest.raises(ConfigurationError, match="A-27"):
        Enrolee(Bootstrap.PSK, "k", "/mn-cse-1", light, timedelta(days=1), KPM)
    with pytest.raises(ConfigurationError, match="no Kpm"):
        Enrolee(Bootstrap.CERTIFICATE, "/mn-cse-1", "/mn-cse-1", MAF, timedelta(days=1), KPM)
    assert EnrolmentTarget.enrolee_b("/mn-cse-1/Clight-AE1", "light.example.com").suid == 22
    assert MAF.suid == 21
    with pytest.raises(ConfigurationError, match="NAF FQDN"):
        EnrolmentTarget(MAF.kind, "maf.provider.com", "naf.example.com")
    with pytest.raises(IdentifierError):
        Enrolee(Bootstrap.CERTIFICATE, "//sp/mn-cse-1", "/mn-cse-1", MAF, timedelta(days=1))


def test_concurrent_commits_all_survive(store: MefStore) -> None:
    who = enrolee()
    store.add_enrolee(who)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            store.commit(
                [(enrolment(bytes([i]) * 16), who)], [MefAudit(MefEvent.ENROLLED, NOW, "t")]
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(1, 13)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count_enrolments() == 12
    for i in range(1, 13):
        got = store.get_enrolment(KeId(bytes([i]) * 16, "mef.example.com"))
        assert got is not None and got.ke == KE
    assert len(store.read_audit()) == 12


def test_service_enrol_and_fetch_on_either_backend(store: MefStore) -> None:
    store.add_enrolee(enrolee())
    store.allow_target(GATEWAY)
    mef = MefService(MefPolicy("mef.example.com"), store, clock=lambda: NOW)
    who = EnroleeIdentity(Bootstrap.PSK, "kpm-1@mef.example.com")
    post = OneM2MRequest("POST", "/mef/enrolment", (), b"", None, "r1", None, None, None)
    assert mef.enrol(post, who, bytes(range(48))).rsc == 2001
    ke_id = KeId(bytes(range(16)), "mef.example.com")
    get = OneM2MRequest("GET", fetch_path(ke_id, 22), (), b"", None, "r2", None, None, None)
    response = mef.fetch_credentials(get, GATEWAY)
    got = parse_fetch_answer(json.loads(response.body))
    assert isinstance(got, CredentialBody) and len(got.credential) == 32


# -- MefStore.enrol: the Enrolee re-checked in the commit's transaction ----------------------


def test_enrol_stores_only_while_the_enrolee_is_as_read(store: MefStore) -> None:
    """An enrolment whose Enrolee was removed, or replaced (another Kpm, another target)
    after its handshake read it, stores neither its Ke nor its audit record; the others of
    the same transaction are stored."""
    read = enrolee()
    store.add_enrolee(read)
    store.add_enrolee(enrolee("kpm-2@mef.example.com"))
    other = store.get_enrolee(Bootstrap.PSK, "kpm-2@mef.example.com")
    assert other is not None
    audit = MefAudit(MefEvent.ENROLLED, NOW, "psk:kpm-1")
    assert store.enrol([(enrolment(), read, audit)]) == [True]
    assert store.count_enrolments() == 1 and len(store.read_audit()) == 1

    changed = Enrolee(
        Bootstrap.PSK, read.bootstrap_id, read.enrolee_id, GATEWAY, read.lifetime, KPM[::-1], NOW
    )
    store.add_enrolee(changed, replace=True)  # another Kpm
    batch = [(enrolment(b"\x02" * 16), read, audit), (enrolment(b"\x03" * 16), other, audit)]
    assert store.enrol(batch) == [False, True]
    assert store.get_enrolment(enrolment(b"\x02" * 16).ke_id) is None
    assert store.get_enrolment(enrolment(b"\x03" * 16).ke_id) is not None
    assert len(store.read_audit()) == 2

    retargeted = enrolee(read.bootstrap_id, MAF)
    store.add_enrolee(retargeted, replace=True)
    assert store.enrol([(enrolment(b"\x04" * 16), changed, audit)]) == [False]
    assert store.enrol([(enrolment(b"\x05" * 16), retargeted, audit)]) == [True]

    store.remove_enrolee(Bootstrap.PSK, read.bootstrap_id)
    assert store.enrol([(enrolment(b"\x06" * 16), retargeted, audit)]) == [False]
    assert store.count_enrolments() == 1  # the other Enrolee's; the removed one's erased
    events = [r["event"] for _, r in store.read_audit()]
    assert events == ["enrolled"] * 3 + ["enrolee-removed"]  # the removal is audited


def test_enrol_refuses_a_row_edited_without_the_kek(tmp_path: Path) -> None:
    path = tmp_path / "mef.db"
    with MefStore(path, kek=KEK) as st:
        st.add_enrolee(enrolee())
        read = st.get_enrolee(Bootstrap.PSK, "kpm-1@mef.example.com")
        assert read is not None
        with sqlite3.connect(path) as raw:  # the same values, another sealed Kpm
            raw.execute("UPDATE enrolees SET kpm = kpm || x'00'")
        with pytest.raises(StoreError):
            st.enrol([(enrolment(), read, MefAudit(MefEvent.ENROLLED, NOW, "psk:kpm-1"))])
        assert st.count_enrolments() == 0


def test_enrol_waits_for_a_concurrent_removal_on_postgres(pg_url: str, tmp_path: Path) -> None:
    """FOR SHARE: an Enrolee being removed by another process (its DELETE not committed
    yet) holds the enrolment back until the removal commits, and then the enrolment is
    refused; without the lock it would see the old row and store a Ke for an Enrolee
    that no longer exists."""
    with MefStore(pg_url, kek=KEK, home=tmp_path) as st:
        st.add_enrolee(enrolee())
        read = st.get_enrolee(Bootstrap.PSK, "kpm-1@mef.example.com")
        assert read is not None
        audit = MefAudit(MefEvent.ENROLLED, NOW, "psk:kpm-1")
        result: list[list[bool]] = []
        with psycopg.connect(pg_url) as other:
            other.execute(
                "DELETE FROM m2msec_mef.enrolees WHERE bootstrap_key = %s",
                ("psk:kpm-1@mef.example.com",),
            )  # in psycopg's implicit transaction: not committed
            worker = threading.Thread(
                target=lambda: result.append(st.enrol([(enrolment(), read, audit)]))
            )
            worker.start()
            worker.join(0.5)
            assert worker.is_alive(), "the enrolment did not wait for the removal"
            other.commit()
        worker.join(10)
        assert result == [[False]]
        assert st.count_enrolments() == 0 and st.read_audit() == []
