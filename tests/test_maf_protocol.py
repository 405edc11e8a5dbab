"""The MAF procedures' rules (TS-0003 8.8.2), sans-IO: parsing, routing, decisions.

The store is a real :class:`MafStore` in a temporary file; no network is involved.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from m2msec.bindings.messages import OneM2MRequest
from m2msec.crypto.keyexport import split_export
from m2msec.errors import IdentifierError
from m2msec.maf import protocol as p
from m2msec.maf import requests as rq
from m2msec.maf import rules
from m2msec.maf.store import ClientRegistration, MafStore, NewKey

FQDN = "maf.in.provider.com"
SP = "in.provider.com"
KM_ID = "ae1@maf.in.provider.com"
KM = bytes(range(32))
NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
POLICY = p.MafPolicy(FQDN, SP)
IN_CSE = "//in.provider.com/in-cse"


def request(
    method: str = "POST",
    target: str = "/maf/keys",
    body: Any = None,
    *,
    rid: str | None = "r-1",
    content_type: str | None = "application/json",
) -> OneM2MRequest:
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    return OneM2MRequest(
        method=method,
        target=target,
        headers=(),
        body=data,
        origin="ae1",
        request_id=rid,
        release_version="3",
        content_type=content_type,
        resource_type=None,
    )


def reg_body(**fields: Any) -> dict[str, Any]:
    body = {
        "mafFQDN": FQDN,
        "expirationTime": "20300101T130000",
        "adminFQDN": "admin.in.provider.com",
        "SUID": 32,
        "targetIDs": [IN_CSE],
    }
    body.update(fields)
    return {"mafKeyReg": {k: v for k, v in body.items() if v is not None}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MafStore]:
    with MafStore(tmp_path / "maf.db", cache_ttl=0) as st:
        st.add_client(KM_ID, KM, "/mn-cse-123456/Clight-AE1")
        st.add_entity_b(IN_CSE)
        yield st


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20300101T120000", NOW),
        ("20300101T120000,5", NOW + timedelta(microseconds=500_000)),
        ("20300101T120000.000001", NOW + timedelta(microseconds=1)),
    ],
)
def test_timestamps(text: str, expected: datetime) -> None:
    assert p.parse_m2m_time(text) == expected
    # Round trip: the fraction is written only when there is one (TS-0004 6.3.3).
    assert p.parse_m2m_time(p.format_m2m_time(expected)) == expected
    assert p.format_m2m_time(NOW) == "20300101T120000"
    assert p.format_m2m_time(NOW + timedelta(microseconds=500_000)) == "20300101T120000,500000"


@pytest.mark.parametrize("bad", ["2030-01-01T12:00:00", "20301301T000000", "x", 20300101, ""])
def test_bad_timestamps(bad: Any) -> None:
    with pytest.raises(p.MafRefusal) as info:
        p.parse_m2m_time(bad)
    assert info.value.rsc == 4000


@pytest.mark.parametrize(
    "zoned", ["20300101T000000+02:00", "20300101T120000Z", "20300101T110000-0100"]
)
def test_zoned_expiration_time_is_refused_4000(zoned: str) -> None:
    """TS-0004 6.3.3 times are UTC with no zone designator: the server refuses, not converts."""
    with pytest.raises(p.MafRefusal, match="time zone designator") as info:
        rq.parse_key_registration(request(body=reg_body(expirationTime=zoned)), POLICY)
    assert info.value.rsc == 4000


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("//in.provider.com/in-cse", "//in.provider.com/in-cse"),
        # DNS carries no letter case (docs/readings.md A-05).
        ("//IN.Provider.com/IN-CSE", "//in.provider.com/in-cse"),
        ("/in-cse", "//in.provider.com/in-cse"),
        ("in-cse", "//in.provider.com/in-cse"),
        ("/mn-cse/Clight-AE1", "//in.provider.com/mn-cse/Clight-AE1"),
        ("//other.sp.com/Sapp", "//other.sp.com/Sapp"),
    ],
)
def test_canonical_entity(text: str, canonical: str) -> None:
    assert p.canonical_entity(text, SP) == canonical


def test_canonical_entity_keeps_ae_case_and_refuses_bare_c_stems() -> None:
    assert p.canonical_entity("/mn/Clight", SP) != p.canonical_entity("/mn/CLIGHT", SP)
    with pytest.raises(IdentifierError):
        p.canonical_entity("Clight-AE1", SP)


def test_policy_checks_the_fqdn_fits_a_key_identifier() -> None:
    assert str(POLICY.kc_id("ab" * 16)) == f"{'ab' * 16}@{FQDN}"
    with pytest.raises(IdentifierError):
        p.MafPolicy("a" * 60 + "." + "b" * 60 + ".example", SP)  # KcId > 128 octets


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("method", "target", "procedure", "param"),
    [
        ("POST", "/maf/clients", rq.Procedure.CLIENT_REGISTRATION, None),
        ("GET", "/maf/clients/r1/config", rq.Procedure.CONFIG_RETRIEVAL, "r1"),
        ("PUT", "/maf/clients/r1", rq.Procedure.REGISTRATION_UPDATE, "r1"),
        ("DELETE", "/maf/clients/r1", rq.Procedure.DEREGISTRATION, "r1"),
        ("POST", "/maf/keys", rq.Procedure.KEY_REGISTRATION, None),
        ("GET", "/maf/keys/ABCD", rq.Procedure.KEY_RETRIEVAL, "abcd"),
        ("PUT", "/maf/keys/abcd?x=1", rq.Procedure.KEY_UPDATE, "abcd"),
        ("DELETE", "/maf/keys/abcd", rq.Procedure.KEY_DEREGISTRATION, "abcd"),
    ],
)
def test_routes(method: str, target: str, procedure: rq.Procedure, param: str | None) -> None:
    assert rq.route(method, target) == rq.Route(procedure, param)


@pytest.mark.parametrize(
    ("method", "target", "rsc"),
    [
        ("GET", "/", 4004),
        ("GET", "/maf", 4004),
        ("GET", "/maf/keys/abcd/extra", 4004),
        ("GET", "/other/keys", 4004),
        ("GET", "/maf/keys", 4005),
        ("PATCH", "/maf/keys/abcd", 4005),
        ("POST", "/maf/clients/r1", 4005),
        ("GET", "/maf/keys/abc", 4000),  # odd number of hex digits
        ("GET", "/maf/keys/" + "ab" * 65, 4000),
        ("PUT", "/maf/clients/a%20b", 4000),
    ],
)
def test_route_refusals(method: str, target: str, rsc: int) -> None:
    with pytest.raises(p.MafRefusal) as info:
        rq.route(method, target)
    assert info.value.rsc == rsc


def test_request_id_and_body() -> None:
    with pytest.raises(p.MafRefusal, match="X-M2M-RI"):
        rq.request_id(request(rid=None))
    with pytest.raises(p.MafRefusal, match="X-M2M-RI"):
        rq.request_id(request(rid="  "))
    assert rq.request_id(request(rid="abc")) == "abc"
    with pytest.raises(p.MafRefusal, match="Content-Type"):
        rq.json_body(request(body=reg_body(), content_type="text/plain"), "mafKeyReg")
    with pytest.raises(p.MafRefusal, match="not valid JSON"):
        rq.json_body(request(body=b"{nope"), "mafKeyReg")
    with pytest.raises(p.MafRefusal, match="needs a JSON body"):
        rq.json_body(request(body=None), "mafKeyReg")
    assert (
        rq.json_body(request(body=reg_body(), content_type="application/vnd.x+json"), "mafKeyReg")[
            "SUID"
        ]
        == 32
    )


# ----------------------------------------------------------------------------- parsing


def test_parse_key_registration() -> None:
    req = rq.parse_key_registration(request(body=reg_body(labels=["a"])), POLICY)
    assert req.suid == 32 and req.target_ids == (IN_CSE,)
    assert req.canonical_targets == (IN_CSE,) and req.labels == ("a",)
    assert req.key_value is None and req.expires == NOW + timedelta(hours=1)
    own = rq.parse_key_registration(request(body=reg_body(keyValue="AB" * 32)), POLICY)
    assert own.key_value == bytes.fromhex("ab" * 32)
    assert "ab" * 32 not in repr(own).lower()  # never in a repr
    esdata = rq.parse_key_registration(
        request(body=reg_body(SUID=34, targetIDs=[IN_CSE, "/in-cse2"])), POLICY
    )
    assert esdata.canonical_targets == (IN_CSE, "//in.provider.com/in-cse2")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mafFQDN": None}, "mafFQDN is missing"),
        ({"mafFQDN": "MAF.IN.PROVIDER.COM."}, "FQDN"),
        ({"expirationTime": None}, "expirationTime is missing"),
        ({"adminFQDN": None}, "adminFQDN is missing"),
        ({"adminFQDN": "-bad-"}, "FQDN"),
        ({"SUID": None}, "SUID is missing"),
        ({"SUID": True}, "integer"),
        ({"SUID": 22}, "not a MAF-distributed key"),
        ({"targetIDs": None}, "targetIDs is missing"),
        ({"targetIDs": "//in.provider.com/in-cse"}, "list"),
        ({"targetIDs": [IN_CSE, IN_CSE]}, "exactly one"),
        ({"SUID": 33, "targetIDs": []}, "exactly one"),
        ({"SUID": 34, "targetIDs": []}, "1 to 64"),
        ({"labels": "x"}, "labels must be a list"),
        ({"labels": [""]}, "1 to 256"),
        ({"labels": ["x"] * 65}, "at most 64"),
        ({"keyValue": 5}, "hex string"),
        ({"keyValue": "00" * 65}, "16 to 64"),
    ],
)
def test_parse_key_registration_refusals(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(p.MafRefusal, match=message) as info:
        rq.parse_key_registration(request(body=reg_body(**fields)), POLICY)
    assert info.value.rsc == 4000


def test_parse_client_registration_and_updates() -> None:
    body = {
        "mafClientReg": {
            "mafFQDN": FQDN,
            "expirationTime": "20300201T000000",
            "adminFQDN": "admin.in.provider.com",
        }
    }
    req = rq.parse_client_registration(request(body=body), POLICY)
    assert req.labels is None and req.admin_fqdn == "admin.in.provider.com"
    upd = rq.parse_registration_update(request(body={"mafClientReg": {"labels": []}}), POLICY)
    assert upd.expires is None and upd.has_labels and upd.labels == ()
    with pytest.raises(p.MafRefusal, match="give expirationTime, labels or both"):
        rq.parse_registration_update(request(body={"mafClientReg": {"mafFQDN": FQDN}}), POLICY)
    key_upd = rq.parse_key_update(
        request(body={"mafKeyReg": {"targetIDs": ["/in-cse2", IN_CSE]}}), POLICY
    )
    assert key_upd.canonical_targets == ("//in.provider.com/in-cse2", IN_CSE)
    with pytest.raises(p.MafRefusal, match="give expirationTime, labels or targetIDs"):
        rq.parse_key_update(request(body={"mafKeyReg": {}}), POLICY)


# ----------------------------------------------------------------------------- rules


def test_assign_expiry() -> None:
    life = timedelta(hours=24)
    assert rules.assign_expiry(NOW + timedelta(hours=1), NOW, life) == NOW + timedelta(hours=1)
    assert rules.assign_expiry(NOW + timedelta(days=9), NOW, life) == NOW + life
    cap = NOW + timedelta(minutes=5)
    assert rules.assign_expiry(NOW + timedelta(hours=1), NOW, life, cap) == cap
    odd = NOW + timedelta(hours=1, microseconds=7)
    assert rules.assign_expiry(odd, NOW, life) == odd  # the fraction is kept (issue 9 item 7)
    for bad in (NOW, NOW - timedelta(seconds=1)):
        with pytest.raises(p.MafRefusal, match="not in the future"):
            rules.assign_expiry(bad, NOW, life)
    with pytest.raises(p.MafRefusal, match="already passed"):
        rules.assign_expiry(NOW + timedelta(hours=1), NOW, life, NOW - timedelta(seconds=1))


def test_plan_key_registration_from_the_exporter(store: MafStore) -> None:
    km = store.get_client(KM_ID)
    assert km is not None
    req = rq.parse_key_registration(request(body=reg_body()), POLICY)
    exported = bytes(range(48))
    plan = rules.plan_key_registration(
        store, POLICY, km, req, NOW, exported=exported, random_id=b"\x00" * 16
    )
    rel, kc = split_export(exported)
    assert (plan.relative_id, plan.kc) == (rel, kc)
    assert plan.km_id == KM_ID and plan.reg_id is None
    body = rules.key_registration_body(plan, km)["mafKeyReg"]
    assert body["relativeKeyID"] == rel.hex() and body["sourceMAFClientID"] == KM_ID
    assert "keyValue" not in body
    # The session's exported key was already used: 4105 (run a new MAF Handshake).
    with pytest.raises(p.MafRefusal) as info:
        rules.plan_key_registration(store, POLICY, km, req, NOW, exported=None, random_id=b"")
    assert info.value.rsc == p.CONFLICT


def test_plan_key_registration_rules(store: MafStore) -> None:
    km = store.get_client(KM_ID)
    assert km is not None
    own = rq.parse_key_registration(request(body=reg_body(keyValue="11" * 32)), POLICY)
    rid = bytes(range(16))
    plan = rules.plan_key_registration(store, POLICY, km, own, NOW, exported=None, random_id=rid)
    assert (plan.relative_id, plan.kc) == (rid, b"\x11" * 32)
    stranger = rq.parse_key_registration(
        request(body=reg_body(targetIDs=["//in.provider.com/nope"])), POLICY
    )
    with pytest.raises(p.MafRefusal) as info:
        rules.plan_key_registration(store, POLICY, km, stranger, NOW, exported=None, random_id=rid)
    assert info.value.rsc == 4103 and "not authorised" in info.value.message
    assert "//in.provider.com/nope is not an allowed Entity B" in info.value.audit
    # A live registration for the same admin caps the key's lifetime.
    cap = NOW + timedelta(minutes=10)
    with store.writer() as w:
        w.insert_registration(
            ClientRegistration("reg1", km.canonical, cap, "ADMIN.in.provider.com", None, NOW)
        )
    capped = rules.plan_key_registration(store, POLICY, km, own, NOW, exported=None, random_id=rid)
    assert capped.expires_at == cap and capped.reg_id == "reg1"
    # An expired registration does not.
    later = NOW + timedelta(minutes=20)
    free = rules.plan_key_registration(store, POLICY, km, own, later, exported=None, random_id=rid)
    assert free.reg_id is None and free.expires_at == NOW + timedelta(hours=1)


def _store_key(store: MafStore, rel: bytes, *, target: str = IN_CSE, hours: int = 1) -> None:
    store.register_key(
        NewKey(
            rel,
            b"\x42" * 32,
            NOW + timedelta(hours=hours),
            KM_ID,
            32,
            (target,),
            "admin.in.provider.com",
        )
    )


def test_decide_retrieval(store: MafStore) -> None:
    rel = b"\x01" * 16
    _store_key(store, rel)
    key = rules.decide_retrieval(store, POLICY, "/in-cse", rel.hex(), NOW)
    assert key.kc == b"\x42" * 32
    # The retriever may be named in any form that normalises to the same identity.
    assert rules.decide_retrieval(store, POLICY, "//IN.provider.com/in-cse", rel.hex(), NOW)
    body = rules.retrieval_body(key, store.get_client(KM_ID))["mafKey"]
    assert body["keyValue"] == "42" * 32 and body["entityID"] == "/mn-cse-123456/Clight-AE1"
    cases: list[tuple[str, str, datetime, int, str]] = [
        ("/in-cse", "02" * 16, NOW, 4004, "unknown key"),
        ("/in-cse", rel.hex(), NOW + timedelta(hours=1), 4004, "expired key"),
        ("/other", rel.hex(), NOW, 4103, "is not an allowed Entity B"),
        ("/mn-cse/Cae", rel.hex(), NOW, 4103, "is not an allowed Entity B"),
    ]
    for who, rid, now, rsc, audit in cases:
        with pytest.raises(p.MafRefusal) as info:
            rules.decide_retrieval(store, POLICY, who, rid, now)
        assert (info.value.rsc, audit in info.value.audit) == (rsc, True), info.value.audit
    store.add_entity_b("/other")
    with pytest.raises(p.MafRefusal, match="not a target") as info:
        rules.decide_retrieval(store, POLICY, "/other", rel.hex(), NOW)
    assert info.value.audit == "retriever //in.provider.com/other is not in targetIDs"
    store.deregister_key(rel)
    with pytest.raises(p.MafRefusal) as info:
        rules.decide_retrieval(store, POLICY, "/in-cse", rel.hex(), NOW)
    assert (info.value.rsc, info.value.message, info.value.audit) == (
        4004,
        "no such key",
        "de-registered key",
    )


def test_owned_key_and_registration(store: MafStore) -> None:
    rel = b"\x07" * 16
    _store_key(store, rel)
    store.add_client("other@maf.in.provider.com", b"\x09" * 16)
    me, other = store.get_client(KM_ID), store.get_client("other@maf.in.provider.com")
    assert me is not None and other is not None
    assert rules.owned_key(store, me, rel.hex(), NOW).relative_id == rel.hex()
    with pytest.raises(p.MafRefusal) as info:
        rules.owned_key(store, other, rel.hex(), NOW)
    assert (info.value.rsc, info.value.audit) == (4004, "key of another KmId")
    with store.writer() as w:
        w.insert_registration(
            ClientRegistration("r9", me.canonical, NOW + timedelta(hours=1), "a.example", None)
        )
    assert rules.owned_registration(store, me, "r9", NOW).reg_id == "r9"
    for who, now, audit in [
        (other, NOW, "registration of another KmId"),
        (me, NOW + timedelta(hours=2), "expired"),
    ]:
        with pytest.raises(p.MafRefusal) as info:
            rules.owned_registration(store, who, "r9", now)
        assert (info.value.rsc, info.value.audit) == (4004, audit)


def test_plan_updates(store: MafStore) -> None:
    rel = b"\x05" * 16
    _store_key(store, rel)
    key = store.get_key(rel)
    assert key is not None
    req = rq.parse_key_update(
        request(body={"mafKeyReg": {"expirationTime": "20300105T000000", "labels": ["z"]}}), POLICY
    )
    changes, body = rules.plan_key_update(store, POLICY, key, req, NOW)
    assert changes == {"expires_at": NOW + timedelta(hours=24), "labels": ("z",)}
    assert body == {"mafKeyReg": {"expirationTime": "20300102T120000", "labels": ["z"]}}
    two = rq.parse_key_update(request(body={"mafKeyReg": {"targetIDs": [IN_CSE, IN_CSE]}}), POLICY)
    with pytest.raises(p.MafRefusal, match="exactly one identity for SUID 32"):
        rules.plan_key_update(store, POLICY, key, two, NOW)
    reg = ClientRegistration("r", KM_ID, NOW + timedelta(days=40), "a.example")
    upd = rq.RegUpdateRequest(NOW + timedelta(days=90), None, False)
    expires, body = rules.plan_registration_update(POLICY, reg, upd, NOW)
    assert expires == NOW + timedelta(days=30)
    assert body == {"mafClientReg": {"expirationTime": "20300131T120000"}}


def test_answers_echo_the_request() -> None:
    req = request(rid="xyz")
    ok = p.maf_response(2001, {"a": 1}, req)
    assert ok.status == 201 and ok.rsc == 2001 and json.loads(ok.body) == {"a": 1}
    assert ("X-M2M-RI", "xyz") in ok.headers and ("X-M2M-RVI", "3") in ok.headers
    deleted = p.maf_response(2002, None, req)
    assert deleted.status == 200 and deleted.body == b""
    assert all(k.lower() != "content-type" for k, _ in deleted.headers)
    refusal = p.refusal_response(p.MafRefusal(4105, "taken", audit="secret detail"), req)
    assert refusal.status == 409 and json.loads(refusal.body) == {"m2m:dbg": "taken"}
    assert b"secret detail" not in refusal.body
