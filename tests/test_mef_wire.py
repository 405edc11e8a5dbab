"""MEF messages for both roles (TS-0003 8.3.2.1 tables 8.3.2.1-5/-6; docs/mef.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from m2msec.keyids import KeId
from m2msec.mef.records import EnrolmentTarget
from m2msec.mef.wire import (
    CredentialBody,
    EnrolmentBody,
    EnrolmentRequestBody,
    FetchFailure,
    FetchRequest,
    WireError,
    fetch_path,
    parse_fetch_answer,
    parse_fetch_path,
)

KE_ID = KeId(bytes(range(16)), "mef.example.com")
EXPIRES = datetime(2026, 12, 31, 10, 0, tzinfo=UTC)
SECRET = bytes(range(200, 232))


def wire(value: dict[str, object]) -> dict[str, object]:
    """Through JSON text, as the other end reads it."""
    out = json.loads(json.dumps(value))
    assert isinstance(out, dict)
    return out


@pytest.mark.parametrize(
    "target",
    [
        EnrolmentTarget.maf("maf.provider.com"),
        EnrolmentTarget.enrolee_b("/mn-cse-123456"),
        EnrolmentTarget.enrolee_b("/mn-cse-1/Clight-AE1", "light.provider.com"),
    ],
)
def test_enrolment_messages_round_trip(target: EnrolmentTarget) -> None:
    request = EnrolmentRequestBody(target)
    assert EnrolmentRequestBody.parse(wire(request.to_json())) == request
    answer = EnrolmentBody(KE_ID, target, "/mn-cse-1/Cdevice", EXPIRES)
    got = EnrolmentBody.parse(wire(answer.to_json()))
    assert got == answer and got.target.naf_fqdn == target.naf_fqdn


def test_enrolment_answer_wire_form() -> None:
    gateway = EnrolmentTarget.enrolee_b("/mn-cse-123456")
    answer = EnrolmentBody(KE_ID, gateway, "/mn-cse-1/Cd", EXPIRES)
    assert answer.to_json() == {
        "mefEnrol": {
            "keID": "000102030405060708090a0b0c0d0e0f@mef.example.com",
            "enroleeBID": "/mn-cse-123456",
            "enroleeID": "/mn-cse-1/Cd",
            "expirationTime": "20261231T100000",
        }
    }


def test_enrolment_request_without_target() -> None:
    assert EnrolmentRequestBody.parse({"mefEnrolReq": {}}).target is None
    assert EnrolmentRequestBody().to_json() == {"mefEnrolReq": {}}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"mefEnrolReq": []},
        {"mefEnrolReq": {"mafID": "maf.example.com", "enroleeBID": "/mn-cse-1"}},
        {"mefEnrolReq": {"mafID": 7}},
        {"mefEnrolReq": {"mafID": "/not-an-fqdn"}},
        {"mefEnrolReq": {"enroleeBID": "Clight"}},  # a C-stem without its CSE
        {"mefEnrolReq": {"enroleeBID": "/mn-cse-1", "nafFQDN": "-bad-"}},
        {"mefEnrolReq": {"enroleeBID": "/mn-cse-1", "extra": 1}},
    ],
)
def test_bad_enrolment_requests(body: dict[str, object]) -> None:
    with pytest.raises(WireError):
        EnrolmentRequestBody.parse(body)


def test_fetch_path_round_trip() -> None:
    path = fetch_path(KE_ID, 22)
    assert path == "/fetchCredentials/000102030405060708090a0b0c0d0e0f@mef.example.com/22"
    assert parse_fetch_path(path) == FetchRequest(KE_ID, 22)
    # Upper-case hexBinary and a percent-encoded '@' are the same KeID.
    upper = "/fetchCredentials/000102030405060708090A0B0C0D0E0F%40mef.example.com/21"
    assert parse_fetch_path(upper) == FetchRequest(KE_ID, 21)


@pytest.mark.parametrize(
    "path",
    [
        "/fetchCredentials/",
        "/fetchCredentials/00@mef.example.com",
        "/fetchCredentials/00@mef.example.com/",
        "/fetchCredentials/00@mef.example.com/23",  # not 21 or 22
        "/fetchCredentials/00@mef.example.com/x",
        "/fetchCredentials/00@mef.example.com/21?x=1",
        "/fetchCredentials/a/b@mef.example.com/21",
        "/fetchCredentials/zz@mef.example.com/21",
        "/fetchCredentials/00/21",
        "/mef/fetchCredentials/00@mef.example.com/21",
    ],
)
def test_bad_fetch_paths(path: str) -> None:
    with pytest.raises(WireError):
        parse_fetch_path(path)


def test_credential_answer_round_trip_and_repr() -> None:
    answer = CredentialBody(KE_ID, 21, SECRET, "/mn-cse-1/Cdevice", EXPIRES)
    body = wire(answer.to_json())
    assert body["fetchCredentials"] == {
        "status": True,
        "keID": str(KE_ID),
        "SUID": 21,
        "credential": SECRET.hex(),
        "enroleeID": "/mn-cse-1/Cdevice",
        "lifetime": "20261231T100000",
    }
    assert parse_fetch_answer(body) == answer
    assert SECRET.hex() not in repr(answer)


def test_failure_answer() -> None:
    body = wire(FetchFailure("no such enrolment").to_json())
    assert body["fetchCredentials"] == {"status": False, "errorString": "no such enrolment"}
    assert body["m2m:dbg"] == "no such enrolment"
    assert parse_fetch_answer(body) == FetchFailure("no such enrolment")


@pytest.mark.parametrize(
    "change",
    [
        {"credential": "00"},
        {"credential": "zz" * 32},
        {"SUID": 32},
        {"SUID": True},
        {"lifetime": "2026-12-31T10:00:00Z"},
        {"keID": "nope"},
        {"status": "yes"},
    ],
)
def test_bad_credential_answers(change: dict[str, object]) -> None:
    body = wire(CredentialBody(KE_ID, 21, SECRET, "/mn-cse-1/Cd", EXPIRES).to_json())
    inner = body["fetchCredentials"]
    assert isinstance(inner, dict)
    inner.update(change)
    with pytest.raises(WireError):
        parse_fetch_answer(body)
