"""The MAF server (TS-0003 8.8.2) end to end over real TLS on loopback.

Entity A is our own TLS engine with a MAF Handshake profile (TLS-PSK, psk_identity = KmId,
psk = Km) and a oneM2M HTTP client; Entity B is our certificate initiator with an IN-CSE
certificate from a fresh ``m2msec ca``. The helpers here are shared by the other MAF test
modules.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from m2msec.config.maf import MafConfig, parse_maf_config
from m2msec.crypto.keyexport import LABEL_CONNECTION, split_export
from m2msec.errors import ConfigurationError, HandshakeError
from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator
from m2msec.m2mtime import parse_time
from m2msec.maf.audit import read_audit_log
from m2msec.maf.store import MafStore
from m2msec.pki.authority import CertificateAuthority, IssuedCredential, write_credential
from m2msec.servers.maf import MafServer
from m2msec.service.onem2m_client import OneM2MClient, OneM2MResponse
from m2msec.tls.aio import TLSConnection, connect
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.profiles import PSK_SUITES_TLS, TLSProfile, Transport, new_context
from tests.slow_head import trickle_head

HOST = "127.0.0.1"
MAF_FQDN = "maf.in.provider.com"
IN_DOMAIN = "in.provider.com"
ADMIN = "admin.in.provider.com"
KM_ID = "AE123456789012-Light@maf.in.provider.com"
KM = bytes.fromhex("6d61662d6d61737465722d63726564656e7469616c2d4b6d2d666f722d616531")
ENTITY_A = "/mn-cse-123456/Clight-AE1"
KM2_ID = "ae2@maf.in.provider.com"
KM2 = bytes.fromhex("0f" * 32)
IN_CSE = "//in.provider.com/in-cse"  # the Entity B (our gateway as IN-CSE)
OTHER_CSE = "//in.provider.com/in-cse2"  # another allowed Entity B
STRANGER = "/stranger-cse"  # has a certificate from the same CA, but is not allowed


def m2m_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S")


def in_hours(hours: float) -> str:
    return m2m_time(datetime.now(UTC) + timedelta(hours=hours))


# ----------------------------------------------------------------------------- PKI


@dataclass
class Pki:
    ca: CertificateAuthority
    dir: Path
    maf_cert: Path
    maf_key: Path
    creds: dict[str, CertificateCredential]

    @property
    def ca_pem(self) -> Path:
        return self.ca.cert_path


def _cred(ca: CertificateAuthority, issued: IssuedCredential) -> CertificateCredential:
    return CertificateCredential(issued.cert_pem, issued.key_pem, ca.cert_pem)


def make_pki(directory: Path) -> Pki:
    ca = CertificateAuthority.init(directory / "ca", domain=IN_DOMAIN)
    key_path, cert_path = write_credential(ca.issue_service(MAF_FQDN), directory / "maf")
    creds = {name: _cred(ca, ca.issue(name)) for name in ("/in-cse", "/in-cse2", STRANGER)}
    return Pki(ca, directory, cert_path, key_path, creds)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("maf-pki"))


# ----------------------------------------------------------------------------- clients


def entity_a_profile(km_id: str = KM_ID, km: bytes = KM, *, tls13: bool = True) -> TLSProfile:
    """Entity A's side of the MAF Handshake (8.8.2.2): psk_identity = KmId, psk = Km."""
    ctx = new_context(Transport.TLS, server_side=False, suites=PSK_SUITES_TLS, tls13=tls13)
    binding = PeerBinding(MAF_FQDN, PeerKind.SERVICE, key_id=km_id)
    return TLSProfile(
        framework=Framework.MAF,
        transport=Transport.TLS,
        server_side=False,
        ssl_context=ctx,
        psk_offer=lambda _hint: (km_id.encode(), km, binding),
        server_name=MAF_FQDN,
    )


async def entity_a(
    port: int, km_id: str = KM_ID, km: bytes = KM, *, tls13: bool = True
) -> OneM2MClient:
    conn = await connect(HOST, port, entity_a_profile(km_id, km, tls13=tls13), timeout=10)
    return OneM2MClient(conn, host=MAF_FQDN)


async def entity_b(port: int, cred: CertificateCredential) -> OneM2MClient:
    profile = CertificateInitiator.for_service(cred, MAF_FQDN, in_domain=IN_DOMAIN).profile()
    conn = await connect(HOST, port, profile, timeout=10)
    return OneM2MClient(conn, host=MAF_FQDN)


def key_reg(target: str = IN_CSE, *, hours: float = 1, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "mafFQDN": MAF_FQDN,
        "expirationTime": in_hours(hours),
        "adminFQDN": ADMIN,
        "SUID": 32,
        "targetIDs": [target],
    }
    body.update(extra)
    return {"mafKeyReg": body}


async def register(client: OneM2MClient, content: Any = None, **kw: Any) -> OneM2MResponse:
    return await client.request("POST", "/maf/keys", origin="ae1", content=content or key_reg(**kw))


def exported(conn: TLSConnection) -> tuple[bytes, bytes]:
    """(KcID, Kc) from Entity A's side of the session (10.3.1)."""
    return split_export(conn.export_keying_material(LABEL_CONNECTION, 48))


async def retrieve(client: OneM2MClient, rel: str) -> OneM2MResponse:
    return await client.request("GET", f"/maf/keys/{rel}", origin="/in-cse")


# ----------------------------------------------------------------------------- the MAF


class Clock:
    """Real time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Maf:
    server: MafServer
    store: MafStore
    dir: Path
    pki: Pki
    clock: Clock
    clients: list[OneM2MClient] = field(default_factory=list)

    @property
    def audit(self) -> list[dict[str, Any]]:
        return read_audit_log(self.server.audit_path)

    async def a(self, km_id: str = KM_ID, km: bytes = KM, **kw: Any) -> OneM2MClient:
        client = await entity_a(self.server.client_port, km_id, km, **kw)
        self.clients.append(client)
        return client

    async def b(self, name: str = "/in-cse") -> OneM2MClient:
        port = self.server.retrieval_port
        assert port is not None
        client = await entity_b(port, self.pki.creds[name])
        self.clients.append(client)
        return client


def maf_config(directory: Path, pki: Pki, **kw: Any) -> MafConfig:
    return MafConfig(
        MAF_FQDN,
        store=str(directory / "maf.db"),
        listen=f"tls://{HOST}:0",
        retrieval_listen=f"tls://{HOST}:0",
        cert=pki.maf_cert,
        key=pki.maf_key,
        ca=pki.ca_pem,
        in_domain=IN_DOMAIN,
        **kw,
    )


def provision(store: MafStore) -> None:
    store.add_client(KM_ID, KM, ENTITY_A)
    store.add_client(KM2_ID, KM2)
    store.add_entity_b(IN_CSE)
    store.add_entity_b("/in-cse2")  # SP-relative: read under the MAF's M2M-SP


@pytest.fixture
async def maf(tmp_path: Path, pki: Pki) -> AsyncIterator[Maf]:
    directory = tmp_path / "maf"
    store = MafStore(directory / "maf.db", cache_ttl=0)
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


def dbg(response: OneM2MResponse) -> str:
    body = response.json()
    return str(body.get("m2m:dbg")) if isinstance(body, dict) else ""


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
async def test_exported_key_registration(maf: Maf, tls13: bool) -> None:
    """8.8.2.7 without keyValue: both sides export Kc/KcID from the MAF Handshake."""
    a = await maf.a(tls13=tls13)
    ctx = a.conn.context
    assert ctx.protocol == ("TLSv1.3" if tls13 else "TLSv1.2")
    requested = in_hours(2)
    response = await register(a, key_reg(hours=2, labels=["light"]))
    assert (response.status, response.rsc) == (201, 2001), response.body
    assert response.headers["x-m2m-ri"]  # echoed
    reg = response.json()["mafKeyReg"]
    kc_id, kc = exported(a.conn)
    assert reg["relativeKeyID"] == kc_id.hex()
    assert reg["expirationTime"] == requested
    assert reg["sourceMAFClientID"] == KM_ID
    assert (reg["adminFQDN"], reg["SUID"], reg["targetIDs"]) == (ADMIN, 32, [IN_CSE])
    assert reg["labels"] == ["light"]
    stored = maf.store.get_key(kc_id)
    assert stored is not None and stored.kc == kc
    assert stored.km_id == KM_ID.lower() and stored.target_ids == (IN_CSE,)
    assert m2m_time(stored.expires_at) == requested
    issued = [r for r in maf.audit if r["event"] == "key-issued"]
    assert issued[-1]["kcId"] == f"{kc_id.hex()}@{MAF_FQDN}"
    assert issued[-1]["kmId"] == KM_ID and issued[-1]["source"] == "exporter"


async def test_lifetime_is_assigned_by_the_maf(maf: Maf) -> None:
    a = await maf.a()
    before = datetime.now(UTC)
    response = await register(a, hours=24 * 30)
    assert response.rsc == 2001
    granted = parse_time(response.json()["mafKeyReg"]["expirationTime"])
    # The default longest Kc lifetime is 24 h.
    assert before + timedelta(hours=24) - timedelta(seconds=2) <= granted
    assert granted <= datetime.now(UTC) + timedelta(hours=24)


async def test_one_exported_key_per_session(maf: Maf) -> None:
    a = await maf.a()
    first = await register(a)
    assert first.rsc == 2001
    again = await register(a)
    assert (again.status, again.rsc) == (409, 4105)
    assert "new MAF Handshake" in dbg(again)
    # A self-generated key is still accepted in the same session.
    own = await register(a, key_reg(keyValue="11" * 32))
    assert own.rsc == 2001
    # A fresh handshake gives a fresh exported key.
    b = await maf.a()
    second = await register(b)
    assert second.rsc == 2001
    ids = {r.json()["mafKeyReg"]["relativeKeyID"] for r in (first, own, second)}
    assert len(ids) == 3


async def test_key_value_registration_and_retrieval(maf: Maf) -> None:
    a = await maf.a()
    kc = bytes(range(100, 132))
    response = await register(a, key_reg(keyValue=kc.hex().upper()))
    assert response.rsc == 2001
    rel = response.json()["mafKeyReg"]["relativeKeyID"]
    assert rel != exported(a.conn)[0].hex() and len(rel) == 32
    b = await maf.b()
    got = await retrieve(b, rel)
    assert (got.status, got.rsc) == (200, 2000), got.body
    key = got.json()["mafKey"]
    assert key["keyValue"] == kc.hex()
    assert key["relativeKeyID"] == rel
    assert key["sourceMAFClientID"] == KM_ID
    assert key["entityID"] == ENTITY_A
    assert (key["SUID"], key["adminFQDN"]) == (32, ADMIN)
    assert key["expirationTime"] == response.json()["mafKeyReg"]["expirationTime"]


BAD_REQUESTS = [
    # (method, path, content, extra headers, rsc, text in m2m:dbg)
    ("POST", "/maf/keys", key_reg("//in.provider.com/not-allowed"), {}, 4103, "not authorised"),
    ("POST", "/maf/keys", key_reg(targetIDs=[IN_CSE, OTHER_CSE]), {}, 4000, "exactly one"),
    ("POST", "/maf/keys", key_reg(targetIDs=[]), {}, 4000, "exactly one"),
    ("POST", "/maf/keys", key_reg(targetIDs=["Cbare-stem"]), {}, 4000, "registrar"),
    ("POST", "/maf/keys", key_reg(SUID=12), {}, 4000, "SUID 12"),
    ("POST", "/maf/keys", key_reg(SUID="32"), {}, 4000, "integer"),
    ("POST", "/maf/keys", key_reg(mafFQDN="maf.elsewhere.com"), {}, 4000, "not this MAF"),
    ("POST", "/maf/keys", key_reg(hours=-1), {}, 4000, "not in the future"),
    ("POST", "/maf/keys", key_reg(expirationTime="tomorrow"), {}, 4000, "timestamp"),
    # TS-0004 6.3.3: UTC without a zone designator; the MAF converted +02:00 before.
    (
        "POST",
        "/maf/keys",
        key_reg(expirationTime="20300101T000000+02:00"),
        {},
        4000,
        "time zone designator",
    ),
    ("POST", "/maf/keys", key_reg(keyValue="zz"), {}, 4000, "hexadecimal"),
    ("POST", "/maf/keys", key_reg(keyValue="00" * 8), {}, 4000, "16 to 64 octets"),
    ("POST", "/maf/keys", key_reg(bogus=1), {}, 4000, "unknown field"),
    ("POST", "/maf/keys", {"mafKeyReg": {"mafFQDN": MAF_FQDN}}, {}, 4000, "missing"),
    ("POST", "/maf/keys", [1, 2], {}, 4000, "JSON object"),
    ("GET", f"/maf/keys/{'ab' * 16}", None, {}, 4103, "retrieval listener"),
    ("DELETE", "/maf/keys", None, {}, 4005, "not allowed"),
    ("GET", "/maf/other", None, {}, 4004, "no MAF resource"),
    ("PUT", "/maf/keys/not-hex", key_reg(), {}, 4000, "RelativeKeyID"),
    ("DELETE", f"/maf/keys/{'ab' * 16}", None, {}, 4004, "no such key"),
    ("GET", "/maf/clients/nope/config", None, {}, 4004, "Registration"),
]


async def test_refusals_keep_the_session_serving(maf: Maf) -> None:
    a = await maf.a()
    for method, path, content, headers, rsc, text in BAD_REQUESTS:
        response = await a.request(
            method, path, origin="ae1", content=content, extra_headers=headers
        )
        assert response.rsc == rsc, (method, path, content, response.body)
        assert text in dbg(response), (text, response.body)
        assert response.headers["x-m2m-rsc"] == str(rsc)
    # The same association still registers a key afterwards.
    ok = await register(a)
    assert ok.rsc == 2001
    refused = [r for r in maf.audit if r["event"] == "key-registration-refused"]
    assert any(r["rsc"] == 4103 and "not an allowed Entity B" in str(r["reason"]) for r in refused)
    assert maf.server.stats.requests_refused == len(BAD_REQUESTS)


async def test_request_identifier_is_required_and_echoed(maf: Maf) -> None:
    a = await maf.a()
    # OneM2MClient always sends X-M2M-RI: send a raw request without it.
    body = json.dumps(key_reg()).encode()
    raw = (
        f"POST /maf/keys HTTP/1.1\r\nHost: {MAF_FQDN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    await a.conn.send(raw)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        data += await asyncio.wait_for(a.conn.recv(), 5)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"x-m2m-rsc: 4000" in data.lower() and b"X-M2M-RI" in data
    # Echoed when present, whatever its value.
    a2 = await maf.a()
    response = await a2.request("POST", "/maf/keys", origin="ae1", content=key_reg())
    assert response.headers["x-m2m-ri"].startswith("m2msec-")


async def test_handshake_refusals(maf: Maf, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with pytest.raises(HandshakeError):
        await entity_a(maf.server.client_port, "nobody@maf.in.provider.com", KM)
    with pytest.raises(HandshakeError):
        await entity_a(maf.server.client_port, KM_ID, KM2, tls13=False)
    maf.store.set_client_enabled(KM2_ID, False)
    with pytest.raises(HandshakeError):
        await entity_a(maf.server.client_port, KM2_ID, KM2)
    # KmIds compare case-insensitively (TS-0003 10.6).
    a = await maf.a(KM_ID.upper(), KM)
    assert (await register(a)).rsc == 2001
    for _ in range(100):
        refusals = [r for r in maf.audit if r["event"] == "handshake-refused"]
        if len(refusals) >= 3:
            break
        await asyncio.sleep(0.02)
    reasons = " | ".join(str(r["reason"]) for r in refusals)
    assert "unknown KmId 'nobody@maf.in.provider.com'" in reasons
    assert "disabled" in reasons
    assert all(r["listener"] == "client" for r in refusals)
    assert maf.server.stats.handshakes_failed >= 3


async def test_key_retrieval_rules(maf: Maf) -> None:
    a = await maf.a()
    response = await register(a, key_reg(hours=1))
    rel = response.json()["mafKeyReg"]["relativeKeyID"]
    b = await maf.b()
    ok = await retrieve(b, rel.upper())  # hexBinary in either case (docs/readings.md A-05)
    assert ok.rsc == 2000 and ok.json()["mafKey"]["keyValue"] == exported(a.conn)[1].hex()
    # An allowed Entity B that is not the key's target.
    other = await maf.b("/in-cse2")
    assert (await retrieve(other, rel)).rsc == 4103
    # A certified CSE the MAF does not serve at all.
    stranger = await maf.b(STRANGER)
    refused = await retrieve(stranger, rel)
    assert (refused.status, refused.rsc) == (403, 4103)
    # Unknown, de-registered and expired keys: one answer for all three.
    unknown = await retrieve(b, "ab" * 16)
    assert (unknown.status, unknown.rsc) == (404, 4004)
    second = await register(await maf.a(), key_reg(hours=1))
    rel2 = second.json()["mafKeyReg"]["relativeKeyID"]
    gone = await a.request("DELETE", f"/maf/keys/{rel2}", origin="ae1")
    assert (gone.status, gone.rsc) == (200, 2002)
    dereg = await retrieve(b, rel2)
    maf.clock.offset = timedelta(hours=2)
    expired = await retrieve(b, rel)
    assert dereg.rsc == expired.rsc == 4004
    assert dbg(unknown) == dbg(dereg) == dbg(expired)
    # Only Key Retrieval is served on this listener.
    wrong = await b.request("POST", "/maf/keys", origin="/in-cse", content=key_reg())
    assert wrong.rsc == 4103
    reasons = [str(r.get("reason")) for r in maf.audit if r["event"] == "key-retrieval-refused"]
    for expected in (
        f"retriever //{IN_DOMAIN}/in-cse2 is not in targetIDs",
        f"retriever //{IN_DOMAIN}/stranger-cse is not an allowed Entity B",
        "unknown key",
        "de-registered key",
        "expired key",
    ):
        assert expected in reasons, (expected, reasons)
    retrieved = [r for r in maf.audit if r["event"] == "key-retrieved"]
    assert retrieved[0]["kcId"] == f"{rel}@{MAF_FQDN}" and retrieved[0]["entityId"] == ENTITY_A


async def test_client_registration_lifecycle(maf: Maf) -> None:
    a = await maf.a()
    content = {
        "mafClientReg": {
            "mafFQDN": MAF_FQDN,
            "expirationTime": in_hours(24 * 365),
            "adminFQDN": ADMIN,
            "labels": ["home"],
        }
    }
    created = await a.request("POST", "/maf/clients", origin="ae1", content=content)
    assert (created.status, created.rsc) == (201, 2001), created.body
    reg = created.json()["mafClientReg"]
    reg_id = reg["mafClientRegID"]
    assert reg["mafClientID"] == KM_ID and reg["labels"] == ["home"]
    granted = parse_time(reg["expirationTime"])
    assert granted <= datetime.now(UTC) + timedelta(days=30)  # the default longest lifetime
    # 8.8.2.4: nothing configured yet, then the admin's configuration.
    assert (await a.request("GET", f"/maf/clients/{reg_id}/config", origin="ae1")).rsc == 4004
    maf.store.set_client_config(KM_ID, {"fqdn": MAF_FQDN, "adminFQDN": ADMIN, "httpPort": 8444})
    cfg = await a.request("GET", f"/maf/clients/{reg_id}/config", origin="ae1")
    assert cfg.rsc == 2000 and cfg.json() == {
        "mafClientCfg": {"fqdn": MAF_FQDN, "adminFQDN": ADMIN, "httpPort": 8444}
    }
    # 8.8.2.5: the answer holds only what was asked for.
    upd = await a.request(
        "PUT",
        f"/maf/clients/{reg_id}",
        origin="ae1",
        content={"mafClientReg": {"labels": ["home", "lights"]}},
    )
    assert upd.rsc == 2004 and upd.json() == {"mafClientReg": {"labels": ["home", "lights"]}}
    short = in_hours(3)
    upd = await a.request(
        "PUT",
        f"/maf/clients/{reg_id}",
        origin="ae1",
        content={"mafClientReg": {"expirationTime": short}},
    )
    assert upd.json() == {"mafClientReg": {"expirationTime": short}}
    assert (
        await a.request("PUT", f"/maf/clients/{reg_id}", origin="ae1", content={"mafClientReg": {}})
    ).rsc == 4000
    # A key under this registration lives no longer than the registration.
    key = await register(await maf.a(), key_reg(hours=20))
    assert key.json()["mafKeyReg"]["expirationTime"] == short
    rel = key.json()["mafKeyReg"]["relativeKeyID"]
    # Another MAF Client cannot see or end this registration.
    other = await maf.a(KM2_ID, KM2)
    assert (await other.request("DELETE", f"/maf/clients/{reg_id}", origin="ae2")).rsc == 4004
    # 8.8.2.6: de-registration ends the registration and its keys.
    gone = await a.request("DELETE", f"/maf/clients/{reg_id}", origin="ae1")
    assert (gone.status, gone.rsc) == (200, 2002)
    assert (await a.request("GET", f"/maf/clients/{reg_id}/config", origin="ae1")).rsc == 4004
    assert (await retrieve(await maf.b(), rel)).rsc == 4004
    events = [r["event"] for r in maf.audit]
    assert "client-registered" in events and "client-deregistered" in events
    assert any(r.get("keys") == 1 for r in maf.audit if r["event"] == "client-deregistered")


async def test_key_update_and_deregistration(maf: Maf) -> None:
    a = await maf.a()
    rel = (await register(a, key_reg(hours=1))).json()["mafKeyReg"]["relativeKeyID"]
    path = f"/maf/keys/{rel}"
    # Retarget to the other Entity B, extend the lifetime (capped at 24 h), relabel.
    upd = await a.request(
        "PUT",
        path,
        origin="ae1",
        content={
            "mafKeyReg": {
                "targetIDs": [OTHER_CSE],
                "expirationTime": in_hours(100),
                "labels": ["x"],
            }
        },
    )
    assert upd.rsc == 2004, upd.body
    body = upd.json()["mafKeyReg"]
    assert body["targetIDs"] == [OTHER_CSE] and body["labels"] == ["x"]
    granted = parse_time(body["expirationTime"])
    assert timedelta(hours=23) < granted - datetime.now(UTC) <= timedelta(hours=24)
    assert (await retrieve(await maf.b(), rel)).rsc == 4103
    assert (await retrieve(await maf.b("/in-cse2"), rel)).rsc == 2000
    refused = await a.request(
        "PUT", path, origin="ae1", content={"mafKeyReg": {"targetIDs": ["/stranger-cse"]}}
    )
    assert refused.rsc == 4103
    # Only the source MAF Client may change or end it.
    other = await maf.a(KM2_ID, KM2)
    assert (await other.request("DELETE", path, origin="ae2")).rsc == 4004
    assert (await a.request("DELETE", path, origin="ae1")).rsc == 2002
    assert (await a.request("DELETE", path, origin="ae1")).rsc == 4004
    assert (
        await a.request("PUT", path, origin="ae1", content={"mafKeyReg": {"labels": []}})
    ).rsc == 4004
    stored = maf.store.get_key(rel)
    assert stored is not None and stored.deregistered and stored.kc is None
    events = [r["event"] for r in maf.audit if r.get("kcId") == f"{rel}@{MAF_FQDN}"]
    assert "key-updated" in events and "key-deregistered" in events


async def test_concurrent_entity_as_and_bs(maf: Maf) -> None:
    """Many Entity As register while Entity Bs retrieve: every key issued is retrievable
    with its value, and the journal grouped commits."""
    issued: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    count = 40

    async def one_a(i: int) -> tuple[str, bytes]:
        client = await entity_a(maf.server.client_port, tls13=bool(i % 2))
        try:
            response = await register(client)
            assert response.rsc == 2001, response.body
            kc_id, kc = exported(client.conn)
            assert response.json()["mafKeyReg"]["relativeKeyID"] == kc_id.hex()
            await issued.put((kc_id.hex(), kc))
            return kc_id.hex(), kc
        finally:
            await client.close()

    async def one_b(name: str) -> int:
        port = maf.server.retrieval_port
        assert port is not None
        client = await entity_b(port, maf.pki.creds[name])
        got = 0
        try:
            while got < count // 2:
                rel, kc = await asyncio.wait_for(issued.get(), 20)
                response = await retrieve(client, rel)
                assert response.rsc == 2000 and response.json()["mafKey"]["keyValue"] == kc.hex()
                got += 1
        finally:
            await client.close()
        return got

    results = await asyncio.gather(
        *(one_a(i) for i in range(count)), one_b("/in-cse"), one_b("/in-cse")
    )
    keys = results[:count]
    assert sum(results[count:]) == count  # type: ignore[arg-type]
    assert len({k for k, _ in keys}) == count  # type: ignore[misc]
    for rel, kc in keys:  # type: ignore[misc]
        stored = maf.store.get_key(rel)
        assert stored is not None and stored.kc == kc
    batches, jobs = maf.server.journal_batches
    assert jobs >= 2 * count and batches < jobs, (batches, jobs)


def _forms(key: bytes) -> list[bytes]:
    return [key, key.hex().encode(), key.hex().upper().encode()]


async def test_keys_sealed_at_rest_and_never_logged(
    maf: Maf, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a = await maf.a()
    await register(a)
    kc_exported = exported(a.conn)[1]
    own = bytes.fromhex("c0ffee" * 10 + "00ff")
    rel = (await register(a, key_reg(keyValue=own.hex()))).json()["mafKeyReg"]["relativeKeyID"]
    b = await maf.b()
    assert (await retrieve(b, rel)).rsc == 2000
    assert (await retrieve(b, "cd" * 16)).rsc == 4004
    assert (await a.request("DELETE", f"/maf/keys/{rel}", origin="ae1")).rsc == 2002
    await a.close()
    await b.close()
    maf.clients.clear()
    await maf.server.close()
    files = [p for p in maf.dir.iterdir() if p.name.startswith("maf.db")]
    assert files
    on_disk = b"".join(p.read_bytes() for p in files)
    audit_text = maf.server.audit_path.read_bytes()
    logs = (caplog.text + "\n".join(r.getMessage() for r in caplog.records)).encode()
    for key in (kc_exported, own, KM, KM2):
        for form in _forms(key):
            assert form not in on_disk, "a key is stored in the clear"
            assert form not in audit_text, "a key is in the audit log"
            assert form not in logs, "a key is in the logs"
    events = {r["event"] for r in maf.audit}
    assert {"key-issued", "key-retrieved", "key-retrieval-refused", "key-deregistered"} <= events
    # The audit table (the record) and the audit.log file (its copy) hold the same events.
    table = [r for _, r in maf.store.read_audit()]
    assert table == maf.audit
    assert maf.server.audit_path.stat().st_mode & 0o777 == 0o600


async def test_removed_client_is_refused_and_its_keys_withdrawn(maf: Maf) -> None:
    a = await maf.a()
    rel = (await register(a)).json()["mafKeyReg"]["relativeKeyID"]
    # Another process (the CLI) removes the client.
    with MafStore(maf.store.path) as admin:
        found, keys = admin.remove_client(KM_ID)
    assert found and keys == 1
    with pytest.raises(HandshakeError):
        await entity_a(maf.server.client_port)
    assert (await retrieve(await maf.b(), rel)).rsc == 4004


async def test_entity_b_allowed_later_from_another_process(maf: Maf) -> None:
    a = await maf.a()
    target = "//in.provider.com/in-cse3"
    assert (await register(a, key_reg(target))).rsc == 4103
    with MafStore(maf.store.path) as admin:
        assert admin.add_entity_b(target)
    assert (await register(a, key_reg(target))).rsc == 2001


async def test_entity_b_kind_is_honoured(maf: Maf) -> None:
    """Seed 001: a non-IN Entity B gets keys only once allowed with the explicit override."""
    a = await maf.a()
    target = "//in.provider.com/mn-cse9"
    with pytest.raises(ConfigurationError, match="IN-CSE"):
        maf.store.add_entity_b(target, kind="mn-cse")
    assert (await register(a, key_reg(target))).rsc == 4103
    assert maf.store.add_entity_b(target, kind="mn-cse", allow_non_in=True)
    assert (await register(a, key_reg(target))).rsc == 2001


# ----------------------------------------------------------------------------- config


def test_config_file_parsing(tmp_path: Path) -> None:
    cfg = parse_maf_config(
        {
            "maf": {
                "fqdn": MAF_FQDN,
                "store": "maf.db",
                "retrieval_listen": "",
                "key_lifetime": 3600,
                "durability": "normal",
            },
            "certificates": {"cert": "maf.pem", "key": "maf.key", "ca": "/etc/ca.pem"},
        },
        base_dir=tmp_path,
    )
    assert cfg.store == str(tmp_path / "maf.db")
    assert cfg.cert == str(tmp_path / "maf.pem") and cfg.ca == "/etc/ca.pem"
    assert cfg.retrieval_listen is None and cfg.key_lifetime == 3600
    assert cfg.effective_in_domain == IN_DOMAIN and cfg.effective_sp_fqdn == IN_DOMAIN
    for data, message in [
        ({"maf": {}}, "maf.fqdn is missing"),
        ({"maf": {"fqdn": MAF_FQDN, "lisen": "x"}}, "unknown key 'maf.lisen'"),
        ({"maf": {"fqdn": MAF_FQDN, "key_lifetime": "1d"}}, "key_lifetime must be float"),
        ({"maf": {"fqdn": MAF_FQDN, "key_lifetime": 0}}, "key_lifetime must be greater"),
        ({"maf": {"fqdn": MAF_FQDN, "tls13": 1}}, "tls13 must be bool"),
        ({"maf": {"fqdn": "maf"}}, "two labels"),
        ({"maf": {"fqdn": "bad_name.example"}}, "MAF FQDN"),
        ({"maf": {"fqdn": MAF_FQDN, "durability": "fast"}}, "durability"),
        ({"gateway": {}}, "unknown section [gateway]"),
    ]:
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            parse_maf_config(data)


async def test_server_start_errors(tmp_path: Path, pki: Pki) -> None:
    cfg = MafConfig(
        MAF_FQDN,
        store=str(tmp_path / "maf.db"),
        listen=f"tls://{HOST}:0",
        retrieval_listen=f"tls://{HOST}:0",
    )
    with pytest.raises(ConfigurationError, match="--cert, --key, --ca"):
        await MafServer(cfg).start()
    cfg = MafConfig(
        MAF_FQDN, store="postgresql://db.example/maf?bogus=1", listen=f"tls://{HOST}:0",
        retrieval_listen=None,
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        await MafServer(cfg).start()
    cfg = MafConfig(
        MAF_FQDN, store=str(tmp_path / "maf.db"), listen=f"http://{HOST}:0", retrieval_listen=None
    )
    with pytest.raises(ConfigurationError, match="tls://HOST:PORT only"):
        await MafServer(cfg).start()
    # A certificate that does not name the MAF's FQDN.
    wrong = tmp_path / "wrong"
    key, cert = write_credential(pki.ca.issue("/in-cse"), wrong)
    cfg = MafConfig(
        MAF_FQDN,
        store=str(tmp_path / "maf.db"),
        listen=f"tls://{HOST}:0",
        retrieval_listen=f"tls://{HOST}:0",
        cert=cert,
        key=key,
        ca=pki.ca_pem,
        in_domain=IN_DOMAIN,
    )
    with pytest.raises(ConfigurationError, match=r"does not name maf\.in\.provider\.com"):
        await MafServer(cfg).start()


async def test_normal_durability_commits_on_the_loop(tmp_path: Path, pki: Pki) -> None:
    """durability "normal": the same answers, committed inline (no fsync, no thread)."""
    store = MafStore(tmp_path / "maf.db", cache_ttl=0, synchronous="normal")
    provision(store)
    server = MafServer(maf_config(tmp_path, pki, durability="normal"), store)
    await server.start()
    try:
        assert server._journal is not None and server._journal.inline

        async def one() -> tuple[str, bytes]:
            client = await entity_a(server.client_port)
            try:
                response = await register(client)
                assert response.rsc == 2001
                kc_id, kc = exported(client.conn)
                return kc_id.hex(), kc
            finally:
                await client.close()

        keys = await asyncio.gather(*(one() for _ in range(20)))
        port = server.retrieval_port
        assert port is not None
        b = await entity_b(port, pki.creds["/in-cse"])
        for rel, kc in keys:
            got = await retrieve(b, rel)
            assert got.json()["mafKey"]["keyValue"] == kc.hex()
        await b.close()
        batches, jobs = server.journal_batches
        assert jobs == 40 and batches < jobs
    finally:
        await server.close()
        store.close()
    with MafStore(tmp_path / "maf.db") as again:
        assert again.count_keys() == 20
        assert len([r for _, r in again.read_audit() if r["event"] == "key-issued"]) == 20


async def test_expired_keys_and_old_audit_records_are_purged(tmp_path: Path, pki: Pki) -> None:
    store = MafStore(tmp_path / "maf.db", cache_ttl=0)
    provision(store)
    clock = Clock()
    cfg = maf_config(tmp_path, pki, purge_interval=0.05, retention=3600, audit_retention=86400)
    server = MafServer(cfg, store, clock=clock)
    await server.start()
    try:
        a = await entity_a(server.client_port)
        keep = (await register(a, key_reg(hours=20))).json()["mafKeyReg"]["relativeKeyID"]
        drop = await register(a, key_reg(keyValue="22" * 32, hours=1))
        drop_id = drop.json()["mafKeyReg"]["relativeKeyID"]
        await a.close()
        await asyncio.sleep(0.2)
        assert store.count_keys() == 2  # nothing expired yet
        clock.offset = timedelta(hours=3)  # the second key expired 2 h ago (> retention)
        for _ in range(100):
            if store.get_key(drop_id) is None:
                break
            await asyncio.sleep(0.02)
        assert store.get_key(drop_id) is None and store.get_key(keep) is not None
        assert store.count_audit() >= 2
        clock.offset = timedelta(days=3)  # records older than audit_retention go too
        for _ in range(100):
            if store.count_audit() == 0:
                break
            await asyncio.sleep(0.02)
        assert store.count_audit() == 0
    finally:
        await server.close()
        store.close()


@pytest.mark.parametrize(
    ("store", "durability", "expected"),
    [
        ("maf.db", None, "normal"),
        ("postgresql://db.example/maf", None, "full"),
        ("postgres://db.example/maf", None, "full"),
        ("maf.db", "full", "full"),
        ("postgresql://db.example/maf", "normal", "normal"),
    ],
)
def test_durability_default_depends_on_the_store(
    store: str, durability: str | None, expected: str
) -> None:
    # SQLite "normal" survives a killed MAF; a shared PostgreSQL defaults to synchronous commits.
    cfg = MafConfig(
        MAF_FQDN, store, listen=f"tls://{HOST}:0", retrieval_listen=None, durability=durability
    )
    assert cfg.effective_durability == expected


def test_durability_must_be_known() -> None:
    with pytest.raises(ConfigurationError, match="durability must be 'full' or 'normal'"):
        MafConfig(
            MAF_FQDN, "maf.db", listen=f"tls://{HOST}:0", retrieval_listen=None, durability="fast"
        )


async def test_key_retrieval_listener_checks_crl(tmp_path: Path) -> None:
    """[certificates] crl: a revoked Entity B is refused at the handshake, others served."""
    pki = make_pki(tmp_path / "pki")
    issued = pki.ca.issue("/in-cse2")
    revoked = _cred(pki.ca, issued)
    pki.ca.revoke(issued.certificate.serial_number)
    crl = pki.ca.write_crl()
    store = MafStore(tmp_path / "maf" / "maf.db", cache_ttl=0)
    provision(store)
    server = MafServer(maf_config(tmp_path / "maf", pki, crl=str(crl)), store)
    await server.start()
    try:
        port = server.retrieval_port
        assert port is not None
        with pytest.raises((HandshakeError, ConnectionError)):
            client = await entity_b(port, revoked)
            # TLS 1.3: the refusal arrives after the client's Finished.
            await client.request("GET", "/maf/keys/" + "ab" * 16, origin="/in-cse2")
        good = await entity_b(port, pki.creds["/in-cse"])
        r = await good.request("GET", "/maf/keys/" + "ab" * 16, origin="/in-cse")
        assert r.rsc == 4004
        good.conn.abort()
    finally:
        await server.close()
        store.close()


async def test_full_disk_logs_one_line_per_outage(
    maf: Maf, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 9 item 4: a full disk (SQLite max_page_count) while registrations flow gives
    one ERROR line with the cause, no traceback per request, a store_errors count and a
    "recovered" line once writes work again."""
    a = await maf.a()
    assert (await register(a, key_reg(keyValue="11" * 32))).rsc == 2001
    conn = maf.server.store._wconn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        refused = 0
        for i in range(40):
            kc = bytes([i]) * 32
            r = await register(a, key_reg(keyValue=kc.hex(), labels=["x" * 2000]))
            refused += r.rsc != 2001
        assert refused == 40
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert 1 <= len(errors) <= 3, [r.getMessage() for r in errors]
        assert "full" in errors[0].getMessage()
        assert all(r.exc_info is None for r in caplog.records)
        assert "Traceback" not in caplog.text
        assert maf.server.stats.store_errors >= 40
        conn.execute("PRAGMA max_page_count = 1073741823")
        assert (await register(a, key_reg(keyValue="22" * 32))).rsc == 2001
    assert any("recovered" in r.getMessage() for r in caplog.records)


async def test_request_head_trickled_byte_by_byte_gets_408(tmp_path: Path, pki: Pki) -> None:
    # Issue 10 item 1: the MAF's loop is the service layer's, with its request-head deadline;
    # before, a head trickled a byte at a time held the session for the idle timeout.
    directory = tmp_path / "maf"
    store = MafStore(directory / "maf.db", cache_ttl=0)
    provision(store)
    server = MafServer(maf_config(directory, pki, request_head_timeout=1.0), store)
    await server.start()
    try:
        conn = await connect(HOST, server.client_port, entity_a_profile(), timeout=10)
        try:
            got, elapsed = await trickle_head(conn.send, conn.recv)
        finally:
            conn.abort()
        assert got.startswith(b"HTTP/1.1 408 "), got
        assert elapsed < 5  # generous: the deadline is 1 s, the full trickle 13 s
    finally:
        await server.close()
        store.close()


def test_request_head_timeout_is_configurable(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="request_head_timeout"):
        MafConfig(MAF_FQDN, str(tmp_path / "maf.db"), request_head_timeout=0)
