"""maf/wire.py: one MAF wire format for both roles (TS-0003 8.8.2, TS-0004 6.3.3; issue 10).

Entity A (frameworks/maf/) and the MAF server (maf/protocol.py) must accept and refuse
the same time values, treat a naive datetime the same way, and read each other's messages.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from m2msec.bindings.messages import OneM2MRequest
from m2msec.frameworks import maf as client
from m2msec.keyids import KcId
from m2msec.maf import protocol as server
from m2msec.maf import requests as rq
from m2msec.maf import rules, wire
from m2msec.maf.store import ClientRegistration, MafKey, MasterCredential, NewKey

FQDN = "maf.in.provider.com"
POLICY = server.MafPolicy(FQDN, "in.provider.com")
WHEN = datetime(2030, 1, 1, 13, 0, tzinfo=UTC)


def as_request(body: object) -> OneM2MRequest:
    return OneM2MRequest(
        method="POST",
        target="/maf/keys",
        headers=(),
        body=json.dumps(body).encode(),
        origin="ae1",
        request_id="r-1",
        release_version="3",
        content_type="application/json",
        resource_type=None,
    )


def key_registration(expiration: object) -> OneM2MRequest:
    return as_request(
        {
            "mafKeyReg": {
                "mafFQDN": FQDN,
                "expirationTime": expiration,
                "adminFQDN": "admin.in.provider.com",
                "SUID": 32,
                "targetIDs": ["//in.provider.com/in-cse"],
            }
        }
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("20300101T130000", WHEN),
        ("20300101T130000,5", WHEN + timedelta(milliseconds=500)),
        ("20300101T130000.623456", WHEN + timedelta(microseconds=623456)),
        ("20300101T130000+02:00", None),  # a zone: refused by both (the server took it)
        ("20300101T130000Z", None),
        (" 20300101T130000", None),  # padding: the client stripped it, the server refused
        ("20300101T130000\n", None),
        ("2030-01-01T13:00:00", None),
        (20300101, None),
    ],
)
def test_both_roles_accept_and_refuse_the_same_times(text: object, value: object) -> None:
    if value is None:
        with pytest.raises(server.MafRefusal) as refused:
            rq.parse_key_registration(key_registration(text), POLICY)
        assert refused.value.rsc == 4000
        with pytest.raises(client.MafError):
            client.parse_time(text)
    else:
        assert rq.parse_key_registration(key_registration(text), POLICY).expires == value
        assert client.parse_time(text) == value


def test_a_naive_datetime_is_refused_by_both_roles() -> None:
    naive = datetime(2030, 1, 1, 13, 0)  # naive on purpose
    with pytest.raises(wire.WireError, match="timezone-aware"):
        client.format_time(naive)  # Entity A writing an expirationTime
    with pytest.raises(wire.WireError, match="timezone-aware"):
        server.format_m2m_time(naive)  # the MAF writing one


def test_kc_id_only_through_ids() -> None:
    kc = POLICY.kc_id("AB" * 16)
    assert isinstance(kc, KcId) and kc == KcId.parse(f"{'ab' * 16}@{FQDN}")
    assert str(kc) == f"{'ab' * 16}@{FQDN}"


def test_key_retrieval_answer_built_by_the_maf_read_by_entity_b() -> None:
    kc = bytes(range(32))
    expires = WHEN + timedelta(seconds=6.5)
    key = MafKey(
        "ab" * 16, kc, expires, "ae1@" + FQDN, 32, ("//in.provider.com/in-cse",),
        "admin.in.provider.com", ("light",), None, WHEN, False,
    )  # fmt: skip
    body = rules.retrieval_body(key, None)
    assert body["mafKey"]["expirationTime"] == "20300101T130006,500000"
    got = wire.MafKeyBody.parse(json.loads(json.dumps(body))["mafKey"])
    assert got.relative_id == bytes.fromhex("ab" * 16) and got.key_value == kc
    assert (got.expires, got.suid, got.labels) == (expires, 32, ("light",))
    assert got.source_client_id == "ae1@" + FQDN and got.entity_id is None
    assert kc.hex() not in repr(got)
    for broken, reason in (
        ({"keyValue": "00"}, "keyValue"),
        ({"sourceMAFClientID": ""}, "sourceMAFClientID"),
        ({"expirationTime": "20300101T130006Z"}, "time zone designator"),
        ({"labels": "light"}, "labels"),
    ):
        with pytest.raises(wire.WireError, match=reason):
            wire.MafKeyBody.parse({**body["mafKey"], **broken})


def test_key_registration_answer_built_by_the_maf_read_by_entity_a() -> None:
    expires = WHEN + timedelta(seconds=6.5)
    key = NewKey(
        relative_id=bytes.fromhex("cd" * 16), kc=bytes(32), expires_at=expires,
        km_id="ae1@" + FQDN, suid=32, target_ids=("//in.provider.com/in-cse",),
        admin_fqdn="admin.in.provider.com", labels=None,
    )  # fmt: skip
    km = MasterCredential("AE1@" + FQDN, "ae1@" + FQDN, bytes(32), None, True)
    body = json.loads(json.dumps(rules.key_registration_body(key, km)))
    assert "keyValue" not in json.dumps(body)  # Kc never travels back
    got = wire.MafKeyRegBody.parse(body["mafKeyReg"])
    assert (got.relative_id, got.expires, got.suid) == (bytes.fromhex("cd" * 16), expires, 32)
    assert got.target_ids == ("//in.provider.com/in-cse",) and got.labels is None
    assert (got.source_client_id, got.admin_fqdn) == ("AE1@" + FQDN, "admin.in.provider.com")
    for broken, reason in (
        ({"relativeKeyID": "zz"}, "relativeKeyID"),
        ({"SUID": "32"}, "SUID"),
        ({"targetIDs": "//in.provider.com/in-cse"}, "targetIDs"),
        ({"expirationTime": "20300101T130006+02:00"}, "time zone designator"),
    ):
        with pytest.raises(wire.WireError, match=reason):
            wire.MafKeyRegBody.parse({**body["mafKeyReg"], **broken})


def test_key_registration_request_built_by_entity_a_read_by_the_maf() -> None:
    expires = WHEN + timedelta(seconds=6.5)
    body = wire.key_registration_request(
        FQDN, expires, "admin.in.provider.com", 32, ["//in.provider.com/in-cse"],
        ["light"], bytes(range(32)),
    )  # fmt: skip
    assert body["mafKeyReg"].keys() <= wire.KEY_REG_REQUEST_FIELDS
    got = rq.parse_key_registration(as_request(body), POLICY)
    assert (got.expires, got.suid, got.labels) == (expires, 32, ("light",))
    assert got.key_value == bytes(range(32)) and got.admin_fqdn == "admin.in.provider.com"


def test_client_registration_answer_built_by_the_maf_read_by_entity_a() -> None:
    expires = WHEN + timedelta(days=1, microseconds=5)
    reg = ClientRegistration("reg1", "ae1@" + FQDN, expires, "admin.in.provider.com", None)
    km = MasterCredential("AE1@" + FQDN, "ae1@" + FQDN, bytes(32), None, True)
    body = json.loads(json.dumps(rules.client_registration_body(reg, km)))
    got = wire.MafClientRegBody.parse(body["mafClientReg"])
    assert (got.reg_id, got.expires, got.client_id) == ("reg1", expires, "AE1@" + FQDN)
    assert got.admin_fqdn == "admin.in.provider.com" and got.labels is None
    with pytest.raises(wire.WireError, match="mafClientRegID"):
        wire.MafClientRegBody.parse({**body["mafClientReg"], "mafClientRegID": ""})


def test_client_registration_request_built_by_entity_a_read_by_the_maf() -> None:
    expires = WHEN + timedelta(hours=2, microseconds=250000)
    body = wire.client_registration_request(FQDN, expires, "admin.in.provider.com", ["home"])
    assert body["mafClientReg"].keys() <= wire.CLIENT_REG_REQUEST_FIELDS
    got = rq.parse_client_registration(as_request(body), POLICY)
    assert (got.expires, got.admin_fqdn) == (expires, "admin.in.provider.com")
    assert got.labels == ("home",)
