"""MefService on a real SQLite store (TS-0003 8.3.2.1, seed 004; docs/mef.md section 4;
docs/readings.md A-28)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from m2msec.bindings.messages import HttpResponse, OneM2MRequest
from m2msec.errors import StoreError
from m2msec.keyids import KeId
from m2msec.mef.records import Bootstrap, Enrolee, EnrolmentTarget
from m2msec.mef.service import EnroleeIdentity, MefPolicy, MefService
from m2msec.mef.store import MefStore
from m2msec.mef.wire import (
    CredentialBody,
    EnrolmentBody,
    EnrolmentRequestBody,
    FetchFailure,
    fetch_path,
    parse_fetch_answer,
)

KEK = bytes(range(32))
KPM = bytes.fromhex("00112233445566778899aabbccddeeff")
EXPORT = bytes(range(48))  # RelativeKeID 00..0f, Ke 10..2f
KE = EXPORT[16:]
KE_ID = KeId(EXPORT[:16], "mef.example.com")
GATEWAY = EnrolmentTarget.enrolee_b("/mn-cse-123456")
MAF = EnrolmentTarget.maf("maf.provider.com")
DEVICE = EnroleeIdentity(Bootstrap.PSK, "kpm-1@mef.example.com")
MAF_DEVICE = EnroleeIdentity(Bootstrap.PSK, "kpm-2@mef.example.com")
KPSA_LABEL = b"oneM2M Enrolment Key to Provisioned Secure Connection Key derivation"
KM_LABEL = b"oneM2M Enrolment Key to Master Credential derivation"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 10, 0, 0, 500_000, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MefStore]:
    with MefStore(tmp_path / "mef.db", kek=KEK) as st:
        for who, target in ((DEVICE, GATEWAY), (MAF_DEVICE, MAF)):
            st.add_enrolee(
                Enrolee(
                    who.bootstrap,
                    who.bootstrap_id,
                    "/mn-cse-123456/Cdevice-1",
                    target,
                    timedelta(days=30),
                    KPM,
                )
            )
        st.allow_target(GATEWAY)
        st.allow_target(MAF)
        yield st


@pytest.fixture
def mef(store: MefStore, clock: Clock) -> MefService:
    return MefService(MefPolicy("mef.example.com"), store, clock=clock)


def request(
    method: str,
    target: str,
    body: dict[str, Any] | None = None,
    origin: str | None = None,
    rid: str | None = "r-1",
) -> OneM2MRequest:
    data = b"" if body is None else json.dumps(body).encode()
    return OneM2MRequest(method, target, (), data, origin, rid, None, "application/json", None)


def answer(response: HttpResponse) -> dict[str, Any]:
    value = json.loads(response.body)
    assert isinstance(value, dict)
    return value


def enrol(
    mef: MefService,
    who: EnroleeIdentity = DEVICE,
    body: dict[str, Any] | None = None,
    exported: bytes | None = EXPORT,
) -> HttpResponse:
    return mef.enrol(request("POST", "/mef/enrolment", body), who, exported)


def fetch(
    mef: MefService,
    target: EnrolmentTarget,
    suid: int,
    ke_id: KeId = KE_ID,
    origin: str | None = None,
) -> HttpResponse:
    return mef.fetch_credentials(request("GET", fetch_path(ke_id, suid), origin=origin), target)


def test_kpm_lookup_for_the_bootstrap_handshake(mef: MefService) -> None:
    assert mef.kpm_for("kpm-1@mef.example.com") == KPM
    assert mef.kpm_for("unknown") is None


def test_enrolment_commits_then_answers(mef: MefService, store: MefStore, clock: Clock) -> None:
    response = enrol(mef, body=EnrolmentRequestBody(GATEWAY).to_json())
    assert response.status == 201 and response.rsc == 2001
    got = EnrolmentBody.parse(answer(response))
    assert got.ke_id == KE_ID and got.target == GATEWAY
    assert got.enrolee_id == "/mn-cse-123456/Cdevice-1"
    assert got.expires == datetime(2026, 12, 31, 10, 0, tzinfo=UTC)  # whole seconds
    stored = store.get_enrolment(KE_ID)
    assert stored is not None and stored.ke == KE and stored.expires_at == got.expires
    assert ("X-M2M-RI", "r-1") in response.headers
    assert KE.hex() not in response.body.decode()
    [(_, record)] = store.read_audit()
    assert record["event"] == "enrolled" and record["keId"] == str(KE_ID)
    assert mef.stats["enrolments"] == 1


def test_enrolment_without_body_takes_the_configured_target(mef: MefService) -> None:
    assert enrol(mef).rsc == 2001


def test_enrolee_and_target_derive_the_same_kpsa(mef: MefService) -> None:
    enrol(mef)
    response = fetch(mef, GATEWAY, 22, origin="/mn-cse-123456")
    assert response.status == 200 and response.rsc == 2000
    got = parse_fetch_answer(answer(response))
    assert isinstance(got, CredentialBody)
    expected = hmac.new(KE, KPSA_LABEL + b"/mn-cse-123456", hashlib.sha256).digest()
    assert got.credential == expected
    assert got.enrolee_id == "/mn-cse-123456/Cdevice-1"
    assert got.expires == datetime(2026, 12, 31, 10, 0, tzinfo=UTC)  # Ke's lifetime
    assert got.ke_id == KE_ID and got.suid == 22


def test_an_ae_enrolee_b_gets_kpsa(mef: MefService, store: MefStore) -> None:
    light = EnrolmentTarget.enrolee_b("/mn-cse-123456/Clight-AE1", "light.provider.com")
    who = EnroleeIdentity(Bootstrap.PSK, "kpm-3@mef.example.com")
    store.add_enrolee(
        Enrolee(who.bootstrap, who.bootstrap_id, "/Sdevice", light, timedelta(days=1), KPM)
    )
    store.allow_target(light)
    assert enrol(mef, who).rsc == 2001
    # The AE authenticated by its certificate: no NAF FQDN in its identity.
    response = fetch(mef, EnrolmentTarget.enrolee_b("/mn-cse-123456/Clight-AE1"), 22)
    got = parse_fetch_answer(answer(response))
    assert isinstance(got, CredentialBody) and got.enrolee_id == "/Sdevice"
    message = KPSA_LABEL + b"/mn-cse-123456/Clight-AE1"
    assert got.credential == hmac.new(KE, message, hashlib.sha256).digest()


def test_a_maf_target_gets_km(mef: MefService) -> None:
    enrol(mef, MAF_DEVICE)
    response = fetch(mef, EnrolmentTarget.maf("MAF.provider.com"), 21)
    got = parse_fetch_answer(answer(response))
    assert isinstance(got, CredentialBody)
    assert got.credential == hmac.new(KE, KM_LABEL + b"maf.provider.com", hashlib.sha256).digest()


def refused(response: HttpResponse, rsc: int) -> str:
    assert response.rsc == rsc, response.body
    got = parse_fetch_answer(answer(response))
    assert isinstance(got, FetchFailure)
    assert KE.hex() not in response.body.decode()
    return got.error


def test_another_target_learns_nothing(mef: MefService, store: MefStore) -> None:
    enrol(mef)  # for the gateway
    # The MAF is an allowed target, but not this enrolment's: same answer as an unknown KeID.
    other = refused(fetch(mef, MAF, 21), 4004)
    unknown = refused(fetch(mef, MAF, 21, KeId(b"\x09" * 16, "mef.example.com")), 4004)
    assert other == unknown
    records = [r for _, r in store.read_audit() if r["event"] == "fetch-refused"]
    assert [r["rsc"] for r in records] == [4004, 4004]
    assert "enrolled for" in str(records[0]["reason"])
    assert "unknown KeID" in str(records[1]["reason"])


def test_a_target_not_allowed_is_refused(mef: MefService, store: MefStore) -> None:
    enrol(mef)
    stranger = EnrolmentTarget.enrolee_b("/mn-cse-999")
    refused(fetch(mef, stranger, 22), 4103)
    store.remove_target(GATEWAY)
    refused(fetch(mef, GATEWAY, 22), 4103)


def test_wrong_suid(mef: MefService) -> None:
    enrol(mef)
    assert "SUID 21" in refused(fetch(mef, GATEWAY, 21), 4103)
    response = mef.fetch_credentials(request("GET", f"/fetchCredentials/{KE_ID}/32"), GATEWAY)
    refused(response, 4000)


def test_expired_ke(mef: MefService, clock: Clock) -> None:
    enrol(mef)
    clock.now += timedelta(days=30)
    refused(fetch(mef, GATEWAY, 22), 4004)


def test_ke_id_of_another_mef(mef: MefService) -> None:
    enrol(mef)
    refused(fetch(mef, GATEWAY, 22, KeId(KE_ID.relative_bytes, "mef.other.com")), 4004)


def test_origin_must_be_the_authenticated_target(mef: MefService) -> None:
    enrol(mef)
    refused(fetch(mef, GATEWAY, 22, origin="/mn-cse-other"), 4106)
    refused(fetch(mef, GATEWAY, 22, origin="not an id"), 4106)
    assert fetch(mef, GATEWAY, 22, origin="//sp.example/mn-cse-123456").rsc == 2000


def test_fetch_request_checks(mef: MefService) -> None:
    path = fetch_path(KE_ID, 22)
    refused(mef.fetch_credentials(request("POST", path), GATEWAY), 4005)
    refused(mef.fetch_credentials(request("GET", path, rid=None), GATEWAY), 4000)
    refused(mef.fetch_credentials(request("GET", "/fetchCredentials/x"), GATEWAY), 4000)


def test_enrolment_refusals(mef: MefService, store: MefStore) -> None:
    assert enrol(mef, EnroleeIdentity(Bootstrap.CERTIFICATE, "/mn-cse-7")).rsc == 4103
    assert enrol(mef, body=EnrolmentRequestBody(MAF).to_json()).rsc == 4103
    assert enrol(mef, body={"mefEnrolReq": {"mafID": 3}}).rsc == 4000
    assert enrol(mef, exported=None).rsc == 4105
    assert mef.enrol(request("GET", "/mef/enrolment"), DEVICE, EXPORT).rsc == 4005
    assert mef.enrol(request("POST", "/mef/other"), DEVICE, EXPORT).rsc == 4004
    assert store.count_enrolments() == 0
    events = [r["event"] for _, r in store.read_audit()]
    assert events == ["enrolment-refused"] * 6
    assert mef.stats["enrolments_refused"] == 6


def test_an_export_of_another_length_is_a_server_fault(mef: MefService) -> None:
    assert enrol(mef, exported=EXPORT[:32]).rsc == 5000


def test_a_repeated_export_is_refused(mef: MefService, store: MefStore) -> None:
    assert enrol(mef).rsc == 2001
    assert enrol(mef).rsc == 4105
    assert store.count_enrolments() == 1


def test_store_failure_answers_5000_and_no_success(
    mef: MefService, store: MefStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(store, "commit", broken)
    monkeypatch.setattr(store, "enrol", broken)
    assert enrol(mef).rsc == 5000
    assert store.count_enrolments() == 0
    assert mef.stats["store_errors"] >= 1


def test_fetch_without_audit_is_no_fetch(
    mef: MefService, store: MefStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    enrol(mef)

    def broken(*args: object, **kwargs: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(store, "commit", broken)
    response = fetch(mef, GATEWAY, 22)
    refused(response, 5000)


def test_keys_never_in_logs(mef: MefService, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    enrol(mef)
    fetch(mef, GATEWAY, 22)
    fetch(mef, MAF, 21)
    kpsa = hmac.new(KE, KPSA_LABEL + b"/mn-cse-123456", hashlib.sha256).hexdigest()
    for secret in (KE.hex(), KPM.hex(), kpsa):
        assert secret not in caplog.text
    assert str(KE_ID) in caplog.text
