"""The CSE security gateway: pure originator rules, then end to end with ACME behind it.

End-to-end tests follow TR-0038 7.1.2: the lights ADN-AE1/ADN-AE2 hold (KpsaID, Kpsa)
rows of table 7.1.2-1 and reach the home gateway MN-CSE ``mn-cse-123456`` (ACME, plain
HTTP behind our gateway) over TLS-PSK with our own :class:`PskInitiator`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest

from m2msec.app_rules import AppRule, wildcard_match
from m2msec.bindings.messages import OneM2MRequest
from m2msec.config import ConfigurationError, parse_config
from m2msec.errors import HandshakeError
from m2msec.frameworks.provisioned import PskInitiator
from m2msec.ids import CseId
from m2msec.servers.association import Association
from m2msec.servers.forwarding import forwarded_headers
from m2msec.servers.gateway import Gateway
from m2msec.servers.registration import aei_from_response
from m2msec.servers.request_checks import Forward, Refuse, Rule, check_request
from m2msec.service.onem2m_client import OneM2MClient
from m2msec.store.base import PskEntry
from m2msec.store.sqlite import SqlitePskStore
from m2msec.tls.aio import connect
from m2msec.tls.context import Framework, PeerKind, SecurityContext
from tests.acme import AcmeCse, acme_fixture, ae_content
from tests.helpers import read_h11_request
from tests.slow_head import trickle_head

CSE = "/mn-cse-123456"
SNI = "mn-cse-123456.in.provider.com"
AE1 = ("AE123456789012-Light@in.provider.com", "1a2b3c4d5e6f7a8b", "Clight-AE1")
AE2 = ("AE123456789015-Light@in.provider.com", "12345678abcdefab", "Clight-AE2")
#: Its row ends an hour after the store is made (gateway_psk_store).
AE3 = ("AE123456789016-Light@in.provider.com", "00112233445566778899aabbccddeeff", "Clight-AE3")
# A row with no entity id binds its association to Credential-ID 12-<KpsaId>
# (docs/readings.md A-13).
CRED = ("AE123456789099-Light@in.provider.com", "ffeeddccbbaa99887766554433221100", None)
# A CSE peer (Mcc): the row binds a CSE-ID.
MN = ("mn-cse-123456@in.provider.com", "0f0e0d0c0b0a09080706050403020100", "/mn-cse-123456")

acme = acme_fixture()


# ----------------------------------------------------------------------------- pure rules

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def ctx(peer_id: str, kind: PeerKind, *, valid_until: datetime | None = None) -> SecurityContext:
    return SecurityContext(
        framework=Framework.PROVISIONED_PSK,
        local_id=CSE,
        peer_id=peer_id,
        peer_kind=kind,
        protocol="TLSv1.3",
        cipher_suite="TLS_AES_128_GCM_SHA256",
        key_id="k@in.provider.com",
        established_at=NOW,
        valid_until=valid_until,
        sa_id="00" * 16,
    )


def request(
    method: str = "GET", origin: str | None = "Clight-AE1", ty: int | None = None, **extra: str
) -> OneM2MRequest:
    headers = [("host", "gw")]
    if origin is not None:
        headers.append(("x-m2m-origin", origin))
    headers += [(k.replace("_", "-").lower(), v) for k, v in extra.items()]
    return OneM2MRequest(
        method=method,
        target="/~/mn-cse-123456/home-gw",
        headers=tuple(headers),
        body=b"{}",
        origin=origin,
        request_id="r",
        release_version="3",
        content_type=None if ty is None else f"application/json;ty={ty}",
        resource_type=ty,
    )


def assoc(peer_id: str, kind: PeerKind, **kw: Any) -> Association:
    return Association.from_context(ctx(peer_id, kind, **kw), CseId.parse(CSE))


# A stand-in for the identity registry of the registration branch (owner_of): which
# credential owns a normalised entity id.
_OWNERS = {"/mn-cse-123456": "key-mn", "/mn-cse-2": "key-mn2", "/mn-cse-123456/Cx": "key-ae"}


@pytest.mark.parametrize(
    ("origin", "strict", "ts_0004"),
    [
        ("/mn-cse-123456", 2, 2),  # its own CSE-ID
        ("/mn-cse-123456/Cxyz", 2, 2),  # an AE registered to it
        ("/mn-cse-3", 4106, 2),  # a transit CSE below it (registered to nobody here)
        ("/mn-cse-3/Cxyz", 4106, 2),  # an AE of that CSE (multi-hop MN-CSE chain)
        ("/Sxyz", 4106, 2),  # an S-stem AE it carries
        ("/mn-cse-2", 4106, 4106),  # another registree CSE's CSE-ID
        ("/mn-cse-2/Cxyz", 4106, 4106),  # a C-stem AE-ID under another registree CSE
        ("Cxyz", 4106, 4106),  # a CSE-relative C-stem
    ],
)
def test_cse_originators_follow_ts_0004_7_3_2_1(origin: str, strict: int, ts_0004: int) -> None:
    """TS-0004 7.3.2.1's CSE rules (default) and the "strict" option, registry faked."""
    a = Association.from_context(ctx("/mn-cse-123456", PeerKind.CSE), CseId.parse("/in-cse"))
    for mode, expected in (("strict", strict), ("ts-0004", ts_0004)):
        decision = check_request(
            a, request(origin=origin), NOW, cse_originators=mode, owner_of=_OWNERS.get
        )
        if expected == 2:
            assert decision == Forward(origin), (mode, origin)
        else:
            assert isinstance(decision, Refuse) and decision.rsc == expected, (mode, origin)
            assert decision.rule is Rule.OUTSIDE_CSE


def test_cse_originators_without_registry_refuse_only_the_c_stem() -> None:
    a = Association.from_context(ctx("/mn-cse-123456", PeerKind.CSE), CseId.parse("/in-cse"))
    assert check_request(a, request(origin="/mn-cse-2"), NOW) == Forward("/mn-cse-2")
    refused = check_request(a, request(origin="Cxyz"), NOW)
    assert isinstance(refused, Refuse) and refused.rsc == 4106


def test_cse_originators_option_is_checked() -> None:
    assert gw_config("http://127.0.0.1:1").cse_originators == "ts-0004"
    assert gw_config("http://127.0.0.1:1", cse_originators="strict").cse_originators == "strict"
    with pytest.raises(ConfigurationError, match="cse_originators"):
        gw_config("http://127.0.0.1:1", cse_originators="loose")


def test_ae_originator_is_its_stem() -> None:
    decision = check_request(assoc("Clight-AE1", PeerKind.AE), request(origin="Clight-AE1"), NOW)
    assert decision == Forward("Clight-AE1")


@pytest.mark.parametrize(
    "origin", ["/mn-cse-123456/Clight-AE1", "//m2m.example.com/mn-cse-123456/Clight-AE1"]
)
def test_ae_sp_relative_or_absolute_own_id_is_bad_request(origin: str) -> None:
    """TS-0004 7.3.2.1: a registree AE's From is its AE-ID-Stem; other forms are 4000."""
    a = Association.from_context(
        ctx("Clight-AE1", PeerKind.AE), CseId.parse("//m2m.example.com/mn-cse-123456")
    )
    for registration in (False, True):
        r = request("POST", origin, 2) if registration else request(origin=origin)
        decision = check_request(a, r, NOW)
        assert isinstance(decision, Refuse) and decision.rule is Rule.ORIGIN_NOT_STEM
        assert decision.rsc == 4000
    # ... but the context is bound to the Absolute AE-ID, and the backend is told that.
    assert a.absolute_id == "//m2m.example.com/mn-cse-123456/Clight-AE1"
    got = dict(forwarded_headers(request(origin="Clight-AE1"), a, "Clight-AE1"))
    assert got["X-M2MSec-Peer-ID"] == "//m2m.example.com/mn-cse-123456/Clight-AE1"


@pytest.mark.parametrize(
    ("origin", "rule"),
    [
        ("Clight-AE2", Rule.ORIGIN_MISMATCH),
        ("/other-cse/Clight-AE1", Rule.ORIGIN_MISMATCH),
        ("/mn-cse-123456", Rule.ORIGIN_MISMATCH),
        ("bad origin!", Rule.ORIGIN_MALFORMED),
        (None, Rule.ORIGIN_MISSING),
    ],
)
def test_ae_other_originators_refused(origin: str | None, rule: Rule) -> None:
    decision = check_request(assoc("Clight-AE1", PeerKind.AE), request(origin=origin), NOW)
    assert isinstance(decision, Refuse) and decision.rule is rule
    assert decision.rsc == {Rule.ORIGIN_MISSING: 4000, Rule.ORIGIN_MALFORMED: 4103}.get(rule, 4106)


@pytest.mark.parametrize("origin", [None, "", "C", "S"])
def test_ae_registration_gets_the_authenticated_stem(origin: str | None) -> None:
    decision = check_request(assoc("Clight-AE1", PeerKind.AE), request("POST", origin, ty=2), NOW)
    assert decision == Forward("Clight-AE1")


def test_ae_registration_with_another_stem_refused() -> None:
    decision = check_request(assoc("Clight-AE1", PeerKind.AE), request("POST", "Cother", 2), NOW)
    assert isinstance(decision, Refuse) and decision.rsc == 4106


def test_foreign_c_stem_cannot_register_here() -> None:
    a = assoc("/other-cse/Clight-AE1", PeerKind.AE)
    decision = check_request(a, request("POST", "C", ty=2), NOW)
    assert isinstance(decision, Refuse) and decision.rule is Rule.REGISTRATION_IDENTITY


def test_s_stem_registration() -> None:
    assert check_request(assoc("/Slamp", PeerKind.AE), request("POST", "S", 2), NOW) == Forward(
        "Slamp"
    )


@pytest.mark.parametrize(
    ("origin", "ok"),
    [
        ("/mn-cse-123456", True),
        ("/mn-cse-123456/Cxyz", True),
        ("/other-cse", False),
        ("/other-cse/Cxyz", False),
        ("Cxyz", False),  # a bare stem lies under the gateway's CSE, /in-cse
        ("/Sabc", False),
    ],
)
def test_cse_peer_originators(origin: str, ok: bool) -> None:
    a = Association.from_context(ctx("/mn-cse-123456", PeerKind.CSE), CseId.parse("/in-cse"))
    decision = check_request(a, request(origin=origin), NOW, cse_originators="strict")
    assert isinstance(decision, Forward) == ok, decision


def test_cse_peer_remote_cse_registration_needs_its_own_id() -> None:
    a = Association.from_context(ctx("/mn-cse-123456", PeerKind.CSE), CseId.parse("/in-cse"))
    assert isinstance(check_request(a, request("POST", "/mn-cse-123456", 16), NOW), Forward)
    decision = check_request(a, request("POST", "/mn-cse-123456/Cx", 16), NOW)
    assert isinstance(decision, Refuse) and decision.rule is Rule.CSE_REGISTRATION


def test_credential_peer_must_register_first_then_is_bound() -> None:
    a = assoc("12-" + CRED[0], PeerKind.CREDENTIAL)
    refused = check_request(a, request(origin="Cnew"), NOW)
    assert isinstance(refused, Refuse) and refused.rule is Rule.UNBOUND_CREDENTIAL
    for origin in ("C", "Cnew", "/mn-cse-123456/Cnew", "Snew", None):
        assert check_request(a, request("POST", origin, 2), NOW) == Forward(
            origin, bind_on_created=True
        )
    bad = check_request(a, request("POST", "/other-cse/Cnew", 2), NOW)
    assert isinstance(bad, Refuse) and bad.rule is Rule.REGISTRATION_IDENTITY
    assert a.bind_ae("Cnew") == "/mn-cse-123456/Cnew"
    assert a.kind is PeerKind.AE
    assert check_request(a, request(origin="Cnew"), NOW) == Forward("Cnew")
    assert isinstance(check_request(a, request(origin="Clight-AE1"), NOW), Refuse)


def test_credential_peer_cannot_register_an_ae_id_another_credential_owns() -> None:
    # Issue 9 item 1: the registry's owner decides, not a header the CSE ignores.
    a = assoc("12-" + CRED[0], PeerKind.CREDENTIAL)
    owners = {"/mn-cse-123456/Clight-AE1": "psk:" + AE1[0], "/mn-cse-123456/Cmine": None}
    own = "/mn-cse-123456/Cown"
    a.context = dataclasses.replace(a.context, key_id=CRED[0])
    owners[own] = "psk:" + CRED[0]
    decide = owners.get
    for origin in ("Clight-AE1", "/mn-cse-123456/Clight-AE1"):
        refused = check_request(a, request("POST", origin, 2), NOW, decide)
        assert isinstance(refused, Refuse), origin
        assert refused.rsc == 4103 and refused.rule is Rule.IDENTITY_OWNED
    for origin in ("Cmine", "Cown", "C"):
        assert check_request(a, request("POST", origin, 2), NOW, decide) == Forward(
            origin, bind_on_created=True
        )

def test_credential_registration_needs_a_service_subscribed_app_rule() -> None:
    a = assoc("12-" + CRED[0], PeerKind.CREDENTIAL)
    rules = (
        AppRule(("12-AE1234*-Light@in.provider.com",), ("Cdev*",), ("Nlight",)),
        AppRule(("11-*",), ("*",)),
    )
    body = json.dumps({"m2m:ae": {"api": "Nlight", "rr": True}}).encode()

    def decide(origin: str | None, api_body: bytes = body) -> Forward | Refuse:
        req = dataclasses.replace(request("POST", origin, 2), body=api_body)
        return check_request(a, req, NOW, None, rules)

    assert decide("Cdev1") == Forward("Cdev1", bind_on_created=True)
    for refused in (decide("Cother"), decide("Cdev1", b'{"m2m:ae": {"api": "Nx"}}')):
        assert isinstance(refused, Refuse) and refused.rsc == 4126
        assert refused.rule is Rule.APP_RULE
    b = assoc("12-someone-else", PeerKind.CREDENTIAL)
    nobody = check_request(b, request("POST", "Cdev1", 2), NOW, None, rules)
    assert isinstance(nobody, Refuse) and nobody.rsc == 4128
    nothing = check_request(b, request("POST", "Cdev1", 2), NOW, None, ())
    assert isinstance(nothing, Refuse) and nothing.rsc == 4128


def test_app_rule_wildcards() -> None:
    assert wildcard_match(["C123*X"], "C123abcX") and not wildcard_match(["C123*X"], "C123abc")
    assert wildcard_match(["S*"], "Sabc") and not wildcard_match(["S*"], "Cabc")
    assert wildcard_match(["*"], "anything") and not wildcard_match(["C.x"], "Cax")

def test_expired_association_needs_a_new_one() -> None:
    a = assoc("Clight-AE1", PeerKind.AE, valid_until=NOW - timedelta(seconds=1))
    decision = check_request(a, request(), NOW)
    assert isinstance(decision, Refuse)
    assert (decision.rsc, decision.rule, decision.close) == (4107, Rule.EXPIRED, True)


def test_service_peer_has_no_originator() -> None:
    decision = check_request(assoc("maf.in.provider.com", PeerKind.SERVICE), request(), NOW)
    assert isinstance(decision, Refuse) and decision.rule is Rule.SERVICE_PEER


def test_unmapped_method_refused() -> None:
    decision = check_request(assoc("Clight-AE1", PeerKind.AE), request("PATCH"), NOW)
    assert isinstance(decision, Refuse) and decision.rsc == 4000


def test_forwarded_headers_strip_forgeries_and_hop_by_hop() -> None:
    r = request(
        x_m2msec_peer_id="/mn-cse-123456/Cadmin",
        X_M2MSec_Framework="none",
        connection="keep-alive, x-secret",
        x_secret="1",
        keep_alive="5",
        accept="application/json",
    )
    headers = forwarded_headers(r, assoc("Clight-AE1", PeerKind.AE), "Clight-AE1")
    names = [k.lower() for k, _ in headers]
    assert "connection" not in names and "keep-alive" not in names and "x-secret" not in names
    assert "host" not in names
    got = dict((k.lower(), v) for k, v in headers)
    assert got["x-m2msec-peer-id"] == "/mn-cse-123456/Clight-AE1"
    assert got["x-m2msec-framework"] == "provisioned-psk"
    assert got["x-m2msec-key-id"] == "k@in.provider.com"
    assert names.count("x-m2msec-peer-id") == 1 and names.count("x-m2m-origin") == 1
    assert got["accept"] == "application/json"


def test_aei_read_from_json_answers_only() -> None:
    from m2msec.bindings.messages import HttpResponse

    body = json.dumps({"m2m:ae": {"aei": "Cabc", "api": "Nx"}}).encode()
    ok = HttpResponse(201, (("X-M2M-RSC", "2001"), ("Content-Type", "application/json")), body)
    assert aei_from_response(ok) == "Cabc"
    assert aei_from_response(HttpResponse(200, (("X-M2M-RSC", "2000"),), body)) is None
    cbor = HttpResponse(201, (("X-M2M-RSC", "2001"), ("Content-Type", "application/cbor")), body)
    assert aei_from_response(cbor) is None


# ----------------------------------------------------------------------------- fixtures


def gateway_psk_store(path: Path) -> SqlitePskStore:
    """A psk store holding the gateway tests' rows, AE3's ending in an hour."""
    store = SqlitePskStore(path)
    soon = datetime.now(UTC) + timedelta(hours=1)
    store.add_many(
        [
            PskEntry(kpsa_id, bytes.fromhex(kpsa), entity, soon if entity == AE3[2] else None)
            for kpsa_id, kpsa, entity in (AE1, AE2, AE3, CRED, MN)
        ]
    )
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlitePskStore]:
    s = gateway_psk_store(tmp_path / "psk.db")
    yield s
    s.close()


def gw_config(backend: str, cse_id: str = CSE, **gateway: Any) -> Any:
    data = {
        "gateway": {
            "listen": ["tls://127.0.0.1:0", "http://127.0.0.1:0"],
            "backend": backend,
            "cse_id": cse_id,
            "backend_timeout": 3.0,
            # CRED registers under TS-0001's serviceSubscribedAppRule (issue 9).
            "app_rule": [{"credentials": ["12-" + CRED[0]], "allowed_aes": ["C*"]}],
            **gateway,
        }
    }
    return parse_config(data)


@contextlib.asynccontextmanager
async def running(config: Any, store: SqlitePskStore, **kw: Any) -> AsyncIterator[Gateway]:
    gw = Gateway(config, store=store, **kw)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


@contextlib.asynccontextmanager
async def light(gw: Gateway, row: tuple[str, str, str | None]) -> AsyncIterator[OneM2MClient]:
    """An ADN-AE (Entity A) with one TR-0038 row, associated with the gateway."""
    initiator = PskInitiator(row[0], bytes.fromhex(row[1]), CSE, server_name=SNI)
    port = next(i.port for i in gw.listeners if i.framework == "provisioned-psk")
    conn = await connect("127.0.0.1", port, initiator.profile())
    client = OneM2MClient(conn)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


# ----------------------------------------------------------------------------- with ACME


async def test_adn_ae1_registers_creates_and_retrieves(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    async with running(gw_config(acme.url), store) as gw, light(gw, AE1) as ae1:
        r = await ae1.request("POST", acme.base, origin="Clight-AE1", content=ae_content("light1"),
                              ty=2)
        assert (r.status, r.rsc) == (201, 2001), r.body
        assert r.json()["m2m:ae"]["aei"] == "Clight-AE1"
        r = await ae1.request("POST", acme.base + "/light1", origin="Clight-AE1",
                              content={"m2m:cnt": {"rn": "state"}}, ty=3)
        assert r.rsc == 2001, r.body
        r = await ae1.request("POST", acme.base + "/light1/state",
                              origin="/mn-cse-123456/Clight-AE1",
                              content={"m2m:cin": {"con": "on"}}, ty=4)
        assert r.rsc == 4000, r.body  # TS-0004 7.3.2.1: a registree AE sends its stem
        r = await ae1.request("POST", acme.base + "/light1/state", origin="Clight-AE1",
                              content={"m2m:cin": {"con": "on"}}, ty=4)
        assert r.rsc == 2001, r.body
        r = await ae1.request("GET", acme.base + "/light1/state", origin="Clight-AE1")
        assert (r.status, r.rsc) == (200, 2000) and r.json()["m2m:cnt"]["cni"] == 1
        r = await ae1.request("GET", acme.base + "/light1/state/la", origin="Clight-AE1")
        assert r.rsc == 2000 and r.json()["m2m:cin"]["con"] == "on"
        assert r.headers["x-m2m-ri"].startswith("m2msec-")
        assert gw.stats.requests_forwarded == 5 and gw.stats.requests_refused == 1
    assert gw.stats.associations_established == 1


async def test_impersonation_is_refused_and_never_reaches_acme(
    acme: AcmeCse, store: SqlitePskStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="m2msec.servers.gateway")
    async with running(gw_config(acme.url), store) as gw, light(gw, AE1) as ae1:
        r = await ae1.request("POST", acme.base, origin="Clight-AE2",
                              content=ae_content("impostor"), ty=2)
        assert (r.status, r.rsc) == (403, 4106)
        assert "Clight-AE2" in r.json()["m2m:dbg"]
        r = await ae1.request("GET", acme.base, origin="Clight-AE2")
        assert r.rsc == 4106
        # The association survives a refusal.
        r = await ae1.request("GET", acme.base, origin="Clight-AE1")
        assert r.rsc in (2000, 4103) and r.headers.get("server", "").find("ACME") >= 0
    assert acme.retrieve(acme.base + "/impostor").status_code == 404
    assert gw.stats.refused_by_rule[Rule.ORIGIN_MISMATCH.value] == 2
    refusals = [m for m in caplog.messages if m.startswith("refused")]
    assert len(refusals) == 2
    assert all("Clight-AE2" in m and "originator-mismatch" in m for m in refusals)
    assert not any(AE1[1] in m for m in caplog.messages)  # never key material


async def test_plain_http_listener_answers_4107(acme: AcmeCse, store: SqlitePskStore) -> None:
    async with running(gw_config(acme.url), store) as gw:
        url = gw.listeners[1].url
        async with httpx.AsyncClient() as client:
            for _ in range(2):  # keep-alive on the plain listener too
                r = await client.post(
                    url + acme.base,
                    headers={"X-M2M-Origin": "Cplain", "X-M2M-RI": "p1", "X-M2M-RVI": "3",
                             "Content-Type": "application/json;ty=2"},
                    content=json.dumps(ae_content("plain")),
                )
                assert r.status_code == 403
                assert r.headers["x-m2m-rsc"] == "4107" and r.headers["x-m2m-ri"] == "p1"
                assert "m2m:dbg" in r.json()
        assert gw.stats.plain_requests_refused == 2 and gw.stats.requests_forwarded == 0
    assert acme.retrieve(acme.base + "/plain").status_code == 404


async def test_registration_with_c_gets_the_authenticated_ae_id(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    async with running(gw_config(acme.url), store) as gw, light(gw, AE2) as ae2:
        r = await ae2.request("POST", acme.base, origin="C", content=ae_content("light2"), ty=2)
        assert r.rsc == 2001, r.body
        assert r.json()["m2m:ae"]["aei"] == "Clight-AE2"
        r = await ae2.request("POST", acme.base + "/light2", origin="Clight-AE2",
                              content={"m2m:cnt": {"rn": "state"}}, ty=3)
        assert r.rsc == 2001
    assert acme.retrieve(acme.base + "/light2").json()["m2m:ae"]["aei"] == "Clight-AE2"


async def test_credential_bound_association_is_bound_at_registration(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    async with running(gw_config(acme.url), store) as gw, light(gw, CRED) as dev:
        r = await dev.request("GET", acme.base, origin="Cdevice")
        assert r.rsc == 4103  # nothing but AE registration before the binding
        r = await dev.request("POST", acme.base, origin="C", content=ae_content("device"), ty=2)
        assert r.rsc == 2001, r.body
        aei = r.json()["m2m:ae"]["aei"]
        assert aei.startswith("C")
        r = await dev.request("POST", acme.base + "/device", origin=aei,
                              content={"m2m:cnt": {"rn": "c"}}, ty=3)
        assert r.rsc == 2001, r.body
        r = await dev.request("GET", acme.base + "/device", origin="Clight-AE1")
        assert r.rsc == 4106
        assert gw.stats.registrations_bound == 1


async def test_backend_down_then_gateway_keeps_serving(store: SqlitePskStore) -> None:
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        async with running(gw_config(dead), store) as gw:
            for _ in range(2):
                async with light(gw, AE1) as ae1:
                    r = await ae1.request("GET", "/~/mn-cse-123456/home-gw", origin="Clight-AE1")
                    assert (r.status, r.rsc) == (404, 5103)
                    assert "cannot be reached" in r.json()["m2m:dbg"]
                    r = await ae1.request("GET", "/~/mn-cse-123456/home-gw", origin="Clight-AE1")
                    assert r.rsc == 5103
            assert gw.stats.backend_errors == 4
            assert gw.stats.associations_established == 2


async def test_expired_association_is_refused_and_closed(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    later = datetime.now(UTC) + timedelta(hours=2)  # past AE3's key lifetime
    clock_now = [datetime.now(UTC)]
    async with running(gw_config(acme.url), store, clock=lambda: clock_now[0]) as gw:
        async with light(gw, AE3) as ae3:
            r = await ae3.request("GET", acme.base, origin="Clight-AE3")
            assert r.rsc != 4107
            clock_now[0] = later
            r = await ae3.request("GET", acme.base, origin="Clight-AE3")
            assert (r.status, r.rsc) == (403, 4107)
            assert r.headers.get("connection") == "close"
            assert await ae3.conn.recv() == b""
        assert gw.stats.refused_by_rule[Rule.EXPIRED.value] == 1


async def test_unknown_psk_identity_is_refused(store: SqlitePskStore) -> None:
    async with running(gw_config("http://127.0.0.1:9"), store) as gw:
        with pytest.raises(HandshakeError):
            await connect(
                "127.0.0.1",
                gw.listeners[0].port,
                PskInitiator("nobody@in.provider.com", b"0123456789abcdef", CSE).profile(),
            )
        await asyncio.sleep(0.05)
        assert gw.stats.handshakes_failed == 1


# ----------------------------------------------------------------------------- echo backend


@dataclass
class Echo:
    """A tiny HTTP backend (h11 on asyncio) that records what reaches it."""

    seen: list[dict[str, Any]] = field(default_factory=list)
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        self.writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while True:
                message = await read_h11_request(conn, reader)
                if message is None:
                    return
                head, body = message
                headers = [(k.decode(), v.decode()) for k, v in head.headers]
                self.seen.append({"method": head.method.decode(), "target": head.target.decode(),
                                  "headers": headers, "body": body})
                origin = dict(headers).get("x-m2m-origin", "")
                payload = json.dumps({"m2m:ae": {"aei": origin or "Cassigned"}}).encode()
                writer.write(conn.send(h11.Response(status_code=201, headers=[
                    ("X-M2M-RSC", "2001"), ("X-M2M-RI", dict(headers).get("x-m2m-ri", "")),
                    ("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                    ("Connection", "keep-alive, X-Hop"), ("X-Hop", "secret"),
                    ("Keep-Alive", "timeout=5"), ("X-Backend", "echo"),
                ])) or b"")
                writer.write(conn.send(h11.Data(data=payload)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError):
            pass
        finally:
            writer.close()
            self.writers.discard(writer)
            self.tasks.discard(task)

    async def __aenter__(self) -> Echo:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()  # the handlers then read EOF and end by themselves
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)


async def test_backend_learns_the_authenticated_identity(store: SqlitePskStore) -> None:
    async with Echo() as echo, running(gw_config(echo.url), store) as gw, light(gw, AE1) as ae1:
        r = await ae1.request(
            "POST", "/~/mn-cse-123456/home-gw/light1?rcn=1", origin="Clight-AE1",
            content={"m2m:cin": {"con": "x"}}, ty=4,
            extra_headers={"X-M2MSec-Peer-ID": "/mn-cse-123456/CAdmin",
                           "x-m2msec-framework": "forged", "Connection": "X-Strip",
                           "X-Strip": "hop", "X-Custom": "kept"},
        )
        assert r.rsc == 2001 and r.status == 201
        assert r.headers["x-backend"] == "echo"
        assert "x-hop" not in r.headers and "keep-alive" not in r.headers
        (seen,) = echo.seen
        names = [k for k, _ in seen["headers"]]
        got = dict(seen["headers"])
        assert seen["method"] == "POST"
        assert seen["target"] == "/~/mn-cse-123456/home-gw/light1?rcn=1"
        assert json.loads(seen["body"]) == {"m2m:cin": {"con": "x"}}
        assert got["x-m2msec-peer-id"] == "/mn-cse-123456/Clight-AE1"
        assert names.count("x-m2msec-peer-id") == 1
        assert got["x-m2msec-framework"] == "provisioned-psk"
        assert got["x-m2msec-key-id"] == AE1[0]
        assert got["x-m2msec-peer-kind"] == "ae"
        assert len(got["x-m2msec-sa-id"]) == 32
        assert got["x-m2m-origin"] == "Clight-AE1"
        assert got["content-type"] == "application/json;ty=4"
        assert got["x-custom"] == "kept" and "x-strip" not in got
        assert AE1[1] not in json.dumps(seen["headers"])


async def test_credential_cannot_take_an_owned_ae_id_and_keeps_its_own(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    # Issue 9 item 1, end to end with ACME: B (no entity id) cannot take A's Clight-AE1.
    async with running(gw_config(acme.url), store) as gw:
        async with light(gw, CRED) as dev:
            r = await dev.request("POST", acme.base, origin="Clight-AE1",
                                  content=ae_content("stolen"), ty=2)
            assert r.rsc == 4103, r.body
            r = await dev.request("POST", acme.base, origin="Sstolen",
                                  content=ae_content("stolen"), ty=2)
            assert r.rsc == 4126, r.body  # its app rule allows C* only
            r = await dev.request("POST", acme.base, origin="Cregdev",
                                  content=ae_content("regdev"), ty=2)
            assert r.rsc == 2001, r.body
        assert acme.retrieve(acme.base + "/stolen").status_code == 404
        async with light(gw, AE1) as ae1:
            r = await ae1.request("POST", acme.base, origin="Clight-AE1",
                                  content=ae_content("light-own"), ty=2)
            # Forwarded: ACME decides (this module's ACME may hold Clight-AE1 already).
            assert r.rsc == 2001 or b"already registered" in r.body
        # B's next session acts as its recorded AE-ID, and only that.
        async with light(gw, CRED) as dev:
            r = await dev.request("GET", acme.base + "/regdev", origin="Cregdev")
            assert r.rsc == 2000, r.body
            r = await dev.request("GET", acme.base + "/regdev", origin="Clight-AE1")
            assert r.rsc in (4103, 4106)
        assert gw.registry is not None
        assert gw.registry.owner_of("/mn-cse-123456/Cregdev") == "psk:" + CRED[0]

async def test_maf_ida_is_recorded_as_owned_by_its_km(store: SqlitePskStore) -> None:
    gw = Gateway(gw_config("http://127.0.0.1:1"), store=store)
    maf_ctx = dataclasses.replace(
        ctx("/mn-cse-123456/Cphone", PeerKind.AE), framework=Framework.MAF, key_id="11-ab"
    )
    gw.open_association(maf_ctx, None)
    assert gw.registry is not None
    assert gw.registry.owner_of("/mn-cse-123456/Cphone") == "maf:/mn-cse-123456/Cphone"
    a = assoc("12-" + CRED[0], PeerKind.CREDENTIAL)
    a.context = dataclasses.replace(a.context, key_id=CRED[0])
    refused = check_request(a, request("POST", "Cphone", 2), NOW, gw.registry.owner_of)
    assert isinstance(refused, Refuse) and refused.rule is Rule.IDENTITY_OWNED
    gw.registry.close()

async def test_credential_headers_reach_the_backend(store: SqlitePskStore) -> None:
    async with Echo() as echo, running(gw_config(echo.url), store) as gw, light(gw, CRED) as dev:
        r = await dev.request("POST", "/~/mn-cse-123456/home-gw", origin="Cdev",
                              content=ae_content("dev"), ty=2)
        assert r.rsc == 2001
        r = await dev.request("GET", "/~/mn-cse-123456/home-gw/dev", origin="Cdev")
        first, second = (dict(s["headers"]) for s in echo.seen)
        assert first["x-m2msec-peer-id"] == "12-" + CRED[0]
        assert first["x-m2msec-peer-kind"] == "credential"
        assert second["x-m2msec-peer-id"] == "/mn-cse-123456/Cdev"
        assert second["x-m2msec-peer-kind"] == "ae"
        assert second["x-m2msec-credential-id"] == "12-" + CRED[0]


async def test_cse_peer_carries_transit_originators_by_default(store: SqlitePskStore) -> None:
    """TS-0004 7.3.2.1 (default cse_originators): an MN-CSE's transit originators reach the
    backend, a CSE-relative C-stem is 4106 (no registry wired in: rules needing it idle)."""
    async with Echo() as echo:
        config = gw_config(echo.url, cse_id="/in-cse")
        async with running(config, store) as gw, light(gw, MN) as mn:
            for origin, rsc in [("/mn-cse-7", 2001), ("/mn-cse-7/Cxyz", 2001), ("Cxyz", 4106)]:
                r = await mn.request("GET", "/~/in-cse/cse-in", origin=origin)
                assert r.rsc == rsc, origin
        assert [dict(s["headers"])["x-m2m-origin"] for s in echo.seen] == [
            "/mn-cse-7", "/mn-cse-7/Cxyz"]


async def test_cse_peer_may_speak_for_its_own_subtree(store: SqlitePskStore) -> None:
    config = gw_config("http://placeholder:1", cse_id="/in-cse")
    async with Echo() as echo:
        # The older rule, kept as [gateway] cse_originators = "strict".
        config = gw_config(echo.url, cse_id="/in-cse", cse_originators="strict")
        async with running(config, store) as gw, light(gw, MN) as mn:
            for origin, rsc in [("/mn-cse-123456", 2001), ("/mn-cse-123456/Cxyz", 2001),
                                ("/other-cse", 4106), ("Cxyz", 4106)]:
                r = await mn.request("GET", "/~/in-cse/cse-in", origin=origin)
                assert r.rsc == rsc, origin
        assert [dict(s["headers"])["x-m2m-origin"] for s in echo.seen] == [
            "/mn-cse-123456", "/mn-cse-123456/Cxyz"]
        assert dict(echo.seen[0]["headers"])["x-m2msec-peer-kind"] == "cse"


async def test_pipelined_requests_over_tls(store: SqlitePskStore) -> None:
    async with Echo() as echo, running(gw_config(echo.url), store) as gw:
        initiator = PskInitiator(AE1[0], bytes.fromhex(AE1[1]), CSE, server_name=SNI)
        conn = await connect("127.0.0.1", gw.listeners[0].port, initiator.profile())
        raw = b"".join(
            (f"GET /~/x/{i} HTTP/1.1\r\nHost: gw\r\nX-M2M-Origin: "
             f"{'Clight-AE1' if i != 1 else 'Clight-AE2'}\r\nX-M2M-RI: {i}\r\n\r\n").encode()
            for i in range(3)
        )
        await conn.send(raw)
        data = b""
        while data.count(b"HTTP/1.1 ") < 3:
            chunk = await asyncio.wait_for(conn.recv(), 5)
            assert chunk
            data += chunk
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
        assert statuses == [b"201", b"403", b"201"]
        assert [s["target"] for s in echo.seen] == ["/~/x/0", "/~/x/2"]
        await conn.close()


async def test_close_ends_idle_associations(store: SqlitePskStore) -> None:
    async with Echo() as echo:
        gw = Gateway(gw_config(echo.url), store=store)
        await gw.start()
        async with light(gw, AE1) as ae1:
            r = await ae1.request("GET", "/~/x", origin="Clight-AE1")
            assert r.rsc == 2001
            await asyncio.wait_for(gw.close(), 5)
            assert await asyncio.wait_for(ae1.conn.recv(), 5) == b""
        assert gw.stats.associations_closed == 1


# ----------------------------------------------------------------------------- certificates


async def test_certificate_listener_beside_psk(tmp_path: Path, store: SqlitePskStore) -> None:
    from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator
    from m2msec.pki.authority import CertificateAuthority, write_credential

    domain = "in.provider.com"
    authority = CertificateAuthority.init(tmp_path / "ca", domain=domain)
    key, cert = write_credential(authority.issue(CSE), tmp_path / "gateway")
    ae = authority.issue("/mn-cse-123456/Clight-AE7")
    async with Echo() as echo:
        config = parse_config(
            {
                "gateway": {
                    "listen": ["tls://127.0.0.1:0?framework=certificate",
                               "tls://127.0.0.1:0?framework=psk"],
                    "backend": echo.url,
                    "cse_id": CSE,
                    "in_domain": domain,
                },
                "psk": {"store": str(store.path)},
                "certificates": {
                    "cert": str(cert), "key": str(key), "ca": str(authority.cert_path)
                },
            }
        )
        async with running(config, store) as gw:
            assert [i.framework for i in gw.listeners] == ["certificate", "provisioned-psk"]
            assert gw.url(1).endswith("?framework=psk")
            initiator = CertificateInitiator(
                CertificateCredential(ae.cert_pem, ae.key_pem, authority.cert_pem), CSE,
                in_domain=domain,
            )
            conn = await connect("127.0.0.1", gw.listeners[0].port, initiator.profile())
            client = OneM2MClient(conn)
            r = await client.request("POST", "/~/mn-cse-123456/home-gw", origin="C",
                                     content=ae_content("lamp"), ty=2)
            assert r.rsc == 2001
            r = await client.request("GET", "/~/mn-cse-123456/home-gw", origin="Clight-AE1")
            assert r.rsc == 4106
            await conn.close()
            async with light(gw, AE1) as ae1:  # the PSK listener serves beside it
                assert (await ae1.request("GET", "/~/x", origin="Clight-AE1")).rsc == 2001
        first = dict(echo.seen[0]["headers"])
        assert first["x-m2m-origin"] == "Clight-AE7"  # "C" replaced by the proven AE-ID-Stem
        assert first["x-m2msec-framework"] == "certificate"
        assert first["x-m2msec-peer-id"] == "//in.provider.com/mn-cse-123456/Clight-AE7"
        assert len(first["x-m2msec-key-id"]) == 64  # SHA-256 fingerprint


async def _s_client(port: int, key: Path, cert: Path, ca: Path, *extra: str) -> str:
    from tests.interop import require

    proc = await asyncio.create_subprocess_exec(
        require("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-cert", str(cert),
        "-key", str(key), "-CAfile", str(ca), "-tls1_2", *extra,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(b""), 30)
    return out.decode(errors="replace")


@pytest.mark.interop
async def test_gateway_crl_revoked_client_refused_without_restart(
    tmp_path: Path, store: SqlitePskStore
) -> None:
    """[certificates] crl: revoke + new CRL refuses that client (certificate_revoked), also
    on resumption, while another client is served; no restart (issue 9 item 7)."""
    from m2msec.pki.authority import CertificateAuthority, write_credential

    domain = "in.provider.com"
    authority = CertificateAuthority.init(tmp_path / "ca", domain=domain)
    key, cert = write_credential(authority.issue(CSE), tmp_path / "gateway")
    k1, c1 = write_credential(authority.issue("/mn-cse-123456/Clight-AE7"), tmp_path / "ae1")
    k2, c2 = write_credential(authority.issue("/mn-cse-123456/Clight-AE8"), tmp_path / "ae2")
    authority.write_crl()
    ca = authority.cert_path
    async with Echo() as echo:
        config = parse_config(
            {
                "gateway": {
                    "listen": ["tls://127.0.0.1:0?framework=certificate"],
                    "backend": echo.url, "cse_id": CSE, "in_domain": domain,
                },
                "psk": {"store": str(store.path)},
                "certificates": {
                    "cert": str(cert), "key": str(key), "ca": str(ca),
                    "crl": str(authority.crl_path),
                },
            }
        )
        async with running(config, store) as gw:
            port = gw.listeners[0].port
            sess = tmp_path / "ae1.sess"
            out = await _s_client(port, k1, c1, ca, "-sess_out", str(sess))
            assert "Cipher is ECDHE" in out, out
            authority.revoke(authority_serial(c1))
            authority.write_crl()
            out = await _s_client(port, k1, c1, ca)
            assert "alert certificate revoked" in out, out
            out = await _s_client(port, k1, c1, ca, "-sess_in", str(sess))
            assert "Reused" not in out, out
            out = await _s_client(port, k2, c2, ca)
            assert "Cipher is ECDHE" in out, out


def authority_serial(cert: Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
def answered_by_acme(r: Any) -> bool:
    """The gateway forwarded the request and ACME answered it (whatever ACME decided)."""
    return bool(r.headers.get("server", "").startswith("ACME"))


async def test_honest_device_served_through_an_idle_flood_from_its_own_address(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    # Issue 9 item 2: idle TCP connections from 127.0.0.1, far more than max_handshakes,
    # while ADN-AE1 on the same address keeps associating and requesting: all served.
    cfg = gw_config(acme.url, max_handshakes=8, first_flight_timeout=2.0)
    async with running(cfg, store) as gw:
        port = next(i.port for i in gw.listeners if i.framework == "provisioned-psk")
        idle: list[asyncio.StreamWriter] = []
        stop = asyncio.Event()

        async def flood() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    idle.append(writer)  # sends nothing
                await asyncio.sleep(0.005)

        flooder = asyncio.create_task(flood())
        try:
            await asyncio.sleep(0.3)
            served = 0
            for _ in range(6):
                async with light(gw, AE1) as ae1:
                    r = await ae1.request("GET", acme.base, origin="Clight-AE1")
                    assert answered_by_acme(r), r.body
                    served += 1
            assert served == 6
            assert len(idle) > 8 * 4  # the flood really exceeded the cap
            assert gw.stats.handshakes_evicted > 0
        finally:
            stop.set()
            await flooder
            for w in idle:
                w.close()


async def test_credential_cap_refuses_new_associations_and_keeps_the_live_ones(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    # Issue 9 item 2: one key may hold max_associations_per_credential live associations;
    # a further one is closed right after its handshake, the live ones keep being served.
    async with running(gw_config(acme.url, max_associations_per_credential=2), store) as gw:
        port = next(i.port for i in gw.listeners if i.framework == "provisioned-psk")
        async with light(gw, AE1) as a, light(gw, AE1) as b:
            for c in (a, b):
                assert answered_by_acme(await c.request("GET", acme.base, origin="Clight-AE1"))
            initiator = PskInitiator(AE1[0], bytes.fromhex(AE1[1]), CSE, server_name=SNI)
            third = await connect("127.0.0.1", port, initiator.profile())
            assert await asyncio.wait_for(third.recv(), 5) == b""  # close_notify
            await third.close()
            assert gw.stats.associations_over_credential_cap == 1
            async with light(gw, AE2) as other:  # other credentials are not affected
                assert answered_by_acme(
                    await other.request("GET", acme.base, origin="Clight-AE2")
                )
            assert answered_by_acme(await a.request("GET", acme.base, origin="Clight-AE1"))
        async with light(gw, AE1) as again:  # slots are released when associations end
            assert answered_by_acme(await again.request("GET", acme.base, origin="Clight-AE1"))


async def test_request_head_trickled_byte_by_byte_gets_408(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    # Issue 9 item 2: inside an association, a head must be complete within
    # request_head_timeout of its first byte, however the bytes are spaced.
    async with running(gw_config(acme.url, request_head_timeout=1.0), store) as gw:
        port = next(i.port for i in gw.listeners if i.framework == "provisioned-psk")
        initiator = PskInitiator(AE1[0], bytes.fromhex(AE1[1]), CSE, server_name=SNI)
        conn = await connect("127.0.0.1", port, initiator.profile())
        head = b"GET /mn-cse-123456 HTTP/1.1\r\nHost: x\r\nX-M2M-Origin: Clight-AE1\r\n\r\n"
        try:
            got, elapsed = await trickle_head(conn.send, conn.recv, head=head)
        finally:
            await conn.close()
        assert got.startswith(b"HTTP/1.1 408 "), bytes(got)
        assert elapsed < 5  # generous: the deadline is 1 s, the full trickle 14 s
        assert gw.stats.request_head_timeouts == 1
