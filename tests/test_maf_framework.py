"""MAF-based SAEF (TS-0003 8.2.2.3): Entity A (MafClient, MafInitiator) and Entity B
(MafKeyRetriever, MafResponder) against a stand-in MAF.

The stand-in (:class:`StandInMaf`) is a small MAF written in this file: the HTTP mapping
of docs/maf.md over our own TLS engine, TLS-PSK with KmID/Km on its client listener and
mutual TLS with certificates on its retrieval listener, with counters the tests read (how
many retrievals reached it, how many connections). It is a test double so that these tests
pin down the two roles independently of the real server (``m2msec.servers.maf``), which
``tests/test_maf_end_to_end.py`` exercises with the same roles and a real CSE.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from m2msec.bindings.http import (
    BadRequest,
    HttpServerConnection,
    NeedData,
    PeerClosed,
    RequestReceived,
)
from m2msec.bindings.messages import RSC, HttpResponse, OneM2MRequest, error_response
from m2msec.crypto.keyexport import LABEL_CONNECTION, split_export
from m2msec.errors import HandshakeError
from m2msec.frameworks.certificate import CertificateCredential, CertificateResponder
from m2msec.frameworks.maf import (
    IssuedKc,
    KeyRetrievalError,
    MafClient,
    MafError,
    MafInitiator,
    MafKeyRetriever,
    MafResponder,
    format_time,
    parse_time,
)
from m2msec.ids import parse_entity_id
from m2msec.keyids import KcId, KmId
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.tls.aio import TLSConnection, TLSServer, connect
from m2msec.tls.context import Framework, PeerBinding, PeerKind
from m2msec.tls.profiles import PSK_SUITES_TLS, TLSProfile, Transport, new_context
from tests.interop import HOST, spawn

IN_DOMAIN = "in.provider.com"
MAF_FQDN = "maf.provider.com"
IN_CSE = "/id-in"
SMARTPHONE = ("smartphone@maf.provider.com", bytes(range(1, 33)), "Csmartphone")
# A MAF client configured without an entity ID: Entity B binds Credential-ID 11-<KmID>.
TABLET = ("tablet@maf.provider.com", bytes(range(101, 133)), None)


def _norm(entity_id: str) -> str:
    """SP-relative form for our M2M-SP (how the stand-in compares targetIDs)."""
    entity = parse_entity_id(entity_id)
    if entity.sp_fqdn is not None and entity.sp_fqdn.lower() == IN_DOMAIN:
        return entity.sp_relative()
    return str(entity)


class Clock:
    """A clock the tests move by hand (shared by every party unless said otherwise)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# ----------------------------------------------------------------------------- stand-in MAF


@dataclass
class _Key:
    kc: bytes = field(repr=False)
    expires: datetime
    km_id: str
    targets: list[str]
    suid: int
    admin: str
    deregistered: bool = False


class StandInMaf:
    """A MAF for unit tests (see the module docstring): both listeners, a dict as store."""

    def __init__(
        self,
        credential: CertificateCredential,
        clients: dict[str, tuple[bytes, str | None]],
        *,
        entity_b: tuple[str, ...] = (IN_CSE,),
        clock: Clock,
        fqdn: str = MAF_FQDN,
        retrieval_delay: float = 0.0,
    ) -> None:
        self.fqdn = fqdn
        self.clients = {KmId.parse(k).canonical: v for k, v in clients.items()}
        self.entity_b = [_norm(e) for e in entity_b]
        self.clock = clock
        self.keys: dict[str, _Key] = {}
        self.registrations: dict[str, dict[str, Any]] = {}
        self.retrievals = 0
        self.retrieval_connections = 0
        self.retrieval_delay = retrieval_delay
        self.close_after_each = False  # answer with Connection: close
        self.drop_after_each = False  # close without saying so, as an idle timeout does
        self._client = TLSServer(self._psk_profile(), self._serve_client, handshake_timeout=5)
        responder = CertificateResponder(credential, in_domain=IN_DOMAIN, local_id=fqdn)
        self._retrieval = TLSServer(responder.profile(), self._serve_retrieval, handshake_timeout=5)

    def _psk_profile(self) -> TLSProfile:
        def resolve(identity: bytes) -> tuple[bytes, PeerBinding] | None:
            km_id = KmId.parse(identity.decode())
            row = self.clients.get(km_id.canonical)
            if row is None:
                return None
            return row[0], PeerBinding(km_id.canonical, PeerKind.CREDENTIAL, km_id.canonical)

        return TLSProfile(
            framework=Framework.MAF,
            transport=Transport.TLS,
            server_side=True,
            ssl_context=new_context(Transport.TLS, server_side=True, suites=PSK_SUITES_TLS),
            local_id=self.fqdn,
            psk_resolver=resolve,
        )

    async def start(self) -> None:
        await self._client.start(HOST, 0)
        await self._retrieval.start(HOST, 0)

    async def close(self) -> None:
        await self._client.close()
        await self._retrieval.close()

    @property
    def client_port(self) -> int:
        return self._client.port

    @property
    def retrieval_port(self) -> int:
        return self._retrieval.port

    # -- HTTP plumbing --------------------------------------------------------------------
    async def _http(self, conn: TLSConnection, handle: Any) -> None:
        http = HttpServerConnection()
        while True:
            event = http.next_event()
            if isinstance(event, NeedData):
                data = await conn.recv()
                http.receive_data(data)
                if not data and isinstance(http.next_event(), PeerClosed):
                    return
                continue
            if isinstance(event, PeerClosed):
                return
            if isinstance(event, BadRequest):
                http.send_response(event.response, close=True)
            else:
                assert isinstance(event, RequestReceived)
                response = await handle(event.request)
                http.send_response(response, close=self.close_after_each)
            await conn.send(http.data_to_send())
            if http.closed or self.drop_after_each:
                return

    @staticmethod
    def _ok(request: OneM2MRequest, rsc: int, body: dict[str, Any] | None = None) -> HttpResponse:
        headers = [("X-M2M-RSC", str(rsc)), ("Content-Type", "application/json")]
        if request.request_id:
            headers.append(("X-M2M-RI", request.request_id))
        status = {2000: 200, 2001: 201, 2002: 200, 2004: 200}[rsc]
        return HttpResponse(status, tuple(headers), json.dumps(body or {}).encode())

    @staticmethod
    def _err(request: OneM2MRequest, rsc: int, message: str) -> HttpResponse:
        return error_response(rsc, message, request_id=request.request_id)

    def _expires(self, text: str, cap: timedelta) -> datetime:
        return min(parse_time(text), self.clock() + cap)

    # -- client listener ------------------------------------------------------------------
    async def _serve_client(self, conn: TLSConnection) -> None:
        state = {"exported": False}

        async def handle(request: OneM2MRequest) -> HttpResponse:
            return self._client_request(conn, state, request)

        await self._http(conn, handle)

    def _client_request(
        self, conn: TLSConnection, state: dict[str, bool], request: OneM2MRequest
    ) -> HttpResponse:
        km_id = conn.context.peer_id
        body = json.loads(request.body) if request.body else {}
        path = request.target
        if request.method == "POST" and path == "/maf/keys":
            reg = body["mafKeyReg"]
            if reg["mafFQDN"] != self.fqdn or reg.get("SUID") != 32:
                return self._err(request, RSC.BAD_REQUEST, "bad mafFQDN or SUID")
            targets = reg.get("targetIDs", [])
            if len(targets) != 1:
                return self._err(request, RSC.BAD_REQUEST, "targetIDs must hold one id")
            if _norm(targets[0]) not in self.entity_b:
                return self._err(request, RSC.ORIGINATOR_HAS_NO_PRIVILEGE, "target not served")
            if "keyValue" in reg:
                rel, kc = secrets.token_hex(16), bytes.fromhex(reg["keyValue"])
            else:
                if state["exported"]:
                    return self._err(request, 4105, "one exported key per TLS session")
                state["exported"] = True
                rel_b, kc = split_export(conn.export_keying_material(LABEL_CONNECTION, 48))
                rel = rel_b.hex()
            key = _Key(
                kc, self._expires(reg["expirationTime"], timedelta(hours=24)), km_id, targets,
                32, reg["adminFQDN"],
            )  # fmt: skip
            self.keys[rel] = key
            out = {
                "relativeKeyID": rel,
                "expirationTime": format_time(key.expires),
                "sourceMAFClientID": km_id,
                "adminFQDN": key.admin,
                "SUID": 32,
                "targetIDs": targets,
            }
            return self._ok(request, 2001, {"mafKeyReg": out})
        if path.startswith("/maf/keys/"):
            key_or_none = self.keys.get(path.rsplit("/", 1)[1])
            if key_or_none is None or key_or_none.km_id != km_id:
                return self._err(request, RSC.NOT_FOUND, "no such key")
            if request.method == "DELETE":
                key_or_none.deregistered = True
                return self._ok(request, 2002)
            reg = body["mafKeyReg"]
            key_or_none.expires = self._expires(reg["expirationTime"], timedelta(hours=24))
            return self._ok(
                request, 2004, {"mafKeyReg": {"expirationTime": format_time(key_or_none.expires)}}
            )
        if request.method == "POST" and path == "/maf/clients":
            reg = body["mafClientReg"]
            reg_id = f"reg-{len(self.registrations) + 1}"
            expires = self._expires(reg["expirationTime"], timedelta(days=30))
            self.registrations[reg_id] = {"km_id": km_id, "labels": reg.get("labels")}
            out = {
                "mafClientRegID": reg_id,
                "expirationTime": format_time(expires),
                "mafClientID": km_id,
                "adminFQDN": reg["adminFQDN"],
            }
            if reg.get("labels") is not None:
                out["labels"] = reg["labels"]
            return self._ok(request, 2001, {"mafClientReg": out})
        if path.startswith("/maf/clients/"):
            parts = path.split("/")
            record = self.registrations.get(parts[3])
            if record is None or record["km_id"] != km_id:
                return self._err(request, RSC.NOT_FOUND, "no such registration")
            if request.method == "GET" and parts[-1] == "config":
                return self._ok(request, 2000, {"mafClientCfg": {"note": "stand-in"}})
            if request.method == "DELETE":
                del self.registrations[parts[3]]
                return self._ok(request, 2002)
            if request.method == "PUT":
                reg = body["mafClientReg"]
                record["labels"] = reg.get("labels", record["labels"])
                return self._ok(request, 2004, {"mafClientReg": {"labels": record["labels"]}})
        return self._err(request, RSC.BAD_REQUEST, "not mapped")

    # -- retrieval listener ---------------------------------------------------------------
    async def _serve_retrieval(self, conn: TLSConnection) -> None:
        self.retrieval_connections += 1
        retriever = _norm(conn.context.peer_id)

        async def handle(request: OneM2MRequest) -> HttpResponse:
            self.retrievals += 1
            await asyncio.sleep(self.retrieval_delay)
            key = self.keys.get(request.target.rsplit("/", 1)[1])
            if key is None or key.deregistered or key.expires <= self.clock():
                return self._err(request, RSC.NOT_FOUND, "unknown, expired or de-registered")
            if retriever not in [_norm(t) for t in key.targets]:
                return self._err(request, RSC.ORIGINATOR_HAS_NO_PRIVILEGE, "not a target")
            out: dict[str, Any] = {
                "relativeKeyID": request.target.rsplit("/", 1)[1],
                "keyValue": key.kc.hex(),
                "expirationTime": format_time(key.expires),
                "sourceMAFClientID": key.km_id,
                "adminFQDN": key.admin,
                "SUID": key.suid,
            }
            entity = self.clients[key.km_id][1]
            if entity is not None:
                out["entityID"] = entity
            return self._ok(request, 2000, {"mafKey": out})

        await self._http(conn, handle)


# ----------------------------------------------------------------------------- fixtures


@dataclass
class World:
    ca: CertificateAuthority
    maf: StandInMaf
    gateway_credential: CertificateCredential
    clock: Clock
    tmp: Path

    def client(self, row: tuple[str, bytes, str | None] = SMARTPHONE, **kw: Any) -> MafClient:
        return MafClient(
            HOST, self.maf.client_port, MAF_FQDN, row[0], row[1], clock=self.clock, **kw
        )

    def retriever(self, **kw: Any) -> MafKeyRetriever:
        kw.setdefault("clock", self.clock)
        kw.setdefault("local_id", IN_CSE)
        return MafKeyRetriever(
            self.gateway_credential,
            {MAF_FQDN: (HOST, self.maf.retrieval_port)},
            in_domain=IN_DOMAIN,
            **kw,
        )


def _credential(ca: CertificateAuthority, tmp: Path, name: str, service: bool) -> Any:
    issued = ca.issue_service(name) if service else ca.issue(name)
    key, cert = write_credential(issued, tmp / name.strip("/").replace(".", "_"))
    return CertificateCredential.from_files(cert, key, ca.cert_path)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ca = CertificateAuthority.init(tmp_path / "ca", domain=IN_DOMAIN, extra_domains=[MAF_FQDN])
    clock = Clock()
    maf = StandInMaf(
        _credential(ca, tmp_path, MAF_FQDN, True),
        {SMARTPHONE[0]: (SMARTPHONE[1], SMARTPHONE[2]), TABLET[0]: (TABLET[1], TABLET[2])},
        entity_b=(IN_CSE, "/other-in"),
        clock=clock,
    )
    await maf.start()
    try:
        yield World(ca, maf, _credential(ca, tmp_path, IN_CSE, False), clock, tmp_path)
    finally:
        await maf.close()


@dataclass
class EntityB:
    server: TLSServer
    peers: list[Any]
    retriever: MafKeyRetriever

    @property
    def port(self) -> int:
        return self.server.port


async def _entity_b(world: World, retriever: MafKeyRetriever | None = None) -> EntityB:
    retriever = retriever or world.retriever()
    responder = MafResponder(retriever, IN_CSE, sp_fqdn=IN_DOMAIN)
    peers: list[Any] = []

    async def handler(conn: TLSConnection) -> None:
        peers.append(conn.context)
        await conn.send(b"hello " + conn.context.peer_id.encode())

    server = TLSServer(responder.profile(), handler, handshake_timeout=5)
    await server.start(HOST, 0)
    return EntityB(server, peers, retriever)


@pytest.fixture
async def entity_b(world: World) -> AsyncIterator[EntityB]:
    b = await _entity_b(world)
    try:
        yield b
    finally:
        await b.server.close()
        await b.retriever.close()


# ----------------------------------------------------------------------------- wire format


def test_timestamps_round_trip_and_refuse_garbage() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert format_time(when) == "20300102T030405"
    assert parse_time("20300102T030405") == when
    assert parse_time("20300102T030405,5") == when + timedelta(milliseconds=500)
    # TS-0004 6.3.3: UTC without a zone designator; a zone is refused, not converted.
    for bad in ("2030-01-02T03:04:05", "20301302T030405", "", 42, "20300102T030405,5Z",
                "20300101T000000+02:00"):
        with pytest.raises(MafError):
            parse_time(bad)
    with pytest.raises(ValueError, match="timezone"):
        format_time(datetime(2030, 1, 1))  # naive on purpose


# ----------------------------------------------------------------------------- Entity A <-> MAF


@pytest.mark.parametrize("tls13", [False, True])
async def test_key_registration_exports_the_same_kc_on_both_ends(world: World, tls13: bool) -> None:
    issued = await world.client(tls13=tls13).register_key(IN_CSE, timedelta(hours=1))
    rel = issued.kc_id.relative_hex
    assert len(issued.kc_id.relative_bytes) == 16 and len(issued.kc) == 32
    assert str(issued.kc_id) == f"{rel}@{MAF_FQDN}"
    stored = world.maf.keys[rel]
    assert stored.kc == issued.kc  # the MAF exported the same 48 octets from the session
    assert stored.targets == [IN_CSE] and stored.km_id == KmId.parse(SMARTPHONE[0]).canonical
    assert issued.expires == world.clock() + timedelta(hours=1)
    assert issued.source_client_id == stored.km_id
    assert issued.kc.hex() not in repr(issued)
    # A second registration is a second MAF Handshake, hence another Kc.
    again = await world.client().register_key(IN_CSE)
    assert again.kc_id != issued.kc_id and again.kc != issued.kc
    assert again.expires == world.clock() + timedelta(hours=24)  # the MAF's cap


async def test_one_exported_kc_per_maf_handshake(world: World) -> None:
    async with world.client().session() as s:
        await s.register_key(IN_CSE)
        with pytest.raises(MafError, match="one Kc per MAF Handshake"):
            await s.register_key(IN_CSE)
        # A self-generated key value may still be registered over the same session.
        own = await s.register_key(IN_CSE, key_value=bytes(range(32)))
    assert world.maf.keys[own.kc_id.relative_hex].kc == bytes(range(32))
    assert own.kc == bytes(range(32))


async def test_maf_handshake_refusals(world: World) -> None:
    with pytest.raises(MafError, match=r"MAF Handshake .* as stranger@maf.provider.com failed"):
        await world.client(("stranger@maf.provider.com", bytes(32), None)).register_key(IN_CSE)
    wrong_km = (SMARTPHONE[0], bytes(32), None)
    with pytest.raises(MafError, match="MAF Handshake") as info:
        await world.client(wrong_km).register_key(IN_CSE)
    assert bytes(32).hex() not in str(info.value)
    with pytest.raises(MafError, match=r"MAF Handshake .* cannot reach"):
        await MafClient(HOST, 1, MAF_FQDN, SMARTPHONE[0], SMARTPHONE[1]).register_key(IN_CSE)
    assert world.maf.keys == {}


async def test_maf_refusal_carries_rsc_and_reason(world: World) -> None:
    with pytest.raises(MafError, match=r"RSC 4103 .*target not served") as info:
        await world.client().register_key("/unknown-in")
    assert info.value.rsc == 4103


async def test_client_registration_procedures(world: World) -> None:
    client = world.client(admin_fqdn="provider.com")
    reg = await client.register_client(timedelta(days=1), labels=["smartphone"])
    assert reg.reg_id == "reg-1" and reg.admin_fqdn == "provider.com"
    assert reg.expires == world.clock() + timedelta(days=1)
    assert reg.client_id == KmId.parse(SMARTPHONE[0]).canonical
    assert reg.labels == ("smartphone",)
    assert await client.client_config(reg.reg_id) == {"note": "stand-in"}
    updated = await client.update_client(reg.reg_id, labels=["phone"])
    assert updated.labels == ("phone",)
    with pytest.raises(ValueError, match="at least one"):
        await client.update_client(reg.reg_id)
    await client.deregister_client(reg.reg_id)
    with pytest.raises(MafError) as info:
        await client.client_config(reg.reg_id)
    assert info.value.rsc == 4004


async def test_key_registration_update_and_deregistration(world: World) -> None:
    client = world.client()
    issued = await client.register_key(IN_CSE, 60)
    later = await client.update_key(issued.kc_id, lifetime=timedelta(hours=2))
    assert later == world.clock() + timedelta(hours=2)
    assert world.maf.keys[issued.kc_id.relative_hex].expires == later
    with pytest.raises(ValueError, match="at least one"):
        await client.update_key(issued.kc_id)
    with pytest.raises(MafError, match="was not issued by the MAF"):
        await client.deregister_key(KcId.from_relative(bytes(16), "maf.elsewhere.com"))
    await client.deregister_key(str(issued.kc_id))
    assert world.maf.keys[issued.kc_id.relative_hex].deregistered
    # Another client's key is not ours to touch: the MAF answers 4004.
    with pytest.raises(MafError) as info:
        await world.client(TABLET).deregister_key(issued.kc_id)
    assert info.value.rsc == 4004


# ----------------------------------------------------------------------------- Entity B <-> MAF


async def test_retrieval_returns_kc_and_metadata_and_caches(world: World) -> None:
    issued = await world.client().register_key(IN_CSE)
    async with world.retriever() as retriever:
        got = await retriever.retrieve(issued.kc_id)
        assert got.kc == issued.kc and got.expires == issued.expires
        assert got.km_id == KmId.parse(SMARTPHONE[0]).canonical
        assert got.entity_id == "Csmartphone" and got.suid == 32
        assert issued.kc.hex() not in repr(got)
        # Upper-case hexBinary names the same key (docs/readings.md A-05): served from the cache.
        upper = f"{issued.kc_id.relative_hex.upper()}@{MAF_FQDN.upper()}"
        assert (await retriever.retrieve(upper)).kc == issued.kc
        assert world.maf.retrievals == 1 and retriever.stats.cache_hits == 1


async def test_concurrent_lookups_of_one_kcid_share_one_request(world: World) -> None:
    issued = await world.client().register_key(IN_CSE)
    world.maf.retrieval_delay = 0.2
    async with world.retriever() as retriever:
        results = await asyncio.gather(*(retriever.retrieve(issued.kc_id) for _ in range(10)))
        assert {r.kc for r in results} == {issued.kc}
        assert world.maf.retrievals == 1 and retriever.stats.coalesced == 9


async def test_cache_is_bounded_and_expiry_asks_again(world: World) -> None:
    keys = [await world.client().register_key(IN_CSE, 60) for _ in range(3)]
    async with world.retriever(cache_size=2) as retriever:
        for issued in keys:
            await retriever.retrieve(issued.kc_id)
        assert world.maf.retrievals == 3
        assert retriever.cached(keys[0].kc_id) is None  # evicted, least recently used
        assert retriever.cached(keys[2].kc_id) is not None
        await retriever.retrieve(keys[2].kc_id)
        assert world.maf.retrievals == 3
        # Kept-alive connection: three requests over one mutual-TLS handshake.
        assert retriever.stats.connections == 1 and world.maf.retrieval_connections == 1
        world.clock.advance(61)
        assert retriever.cached(keys[2].kc_id) is None
        with pytest.raises(KeyRetrievalError, match="does not know") as info:
            await retriever.retrieve(keys[2].kc_id)
        assert info.value.rsc == 4004 and world.maf.retrievals == 4


@pytest.mark.parametrize("how", ["connection-close", "silently"])
async def test_maf_closing_kept_alive_connections_is_survived(world: World, how: str) -> None:
    keys = [await world.client().register_key(IN_CSE) for _ in range(3)]
    if how == "silently":
        world.maf.drop_after_each = True
    else:
        world.maf.close_after_each = True
    async with world.retriever() as retriever:
        for issued in keys:
            assert (await retriever.retrieve(issued.kc_id)).kc == issued.kc
    assert world.maf.retrieval_connections == 3 and world.maf.retrievals == 3


async def test_retrieval_refusals_have_reasons(world: World) -> None:
    other = await world.client().register_key("/other-in")
    mine = await world.client().register_key(IN_CSE)
    await world.client().deregister_key(mine.kc_id)
    async with world.retriever() as retriever:
        with pytest.raises(KeyRetrievalError, match="/id-in is not among its targetIDs") as info:
            await retriever.retrieve(other.kc_id)
        assert info.value.rsc == 4103
        with pytest.raises(KeyRetrievalError, match="unknown, expired or de-registered"):
            await retriever.retrieve(mine.kc_id)
        unknown = KcId.from_relative(bytes(16), MAF_FQDN)
        with pytest.raises(KeyRetrievalError, match="does not know"):
            await retriever.retrieve(unknown)
        assert world.maf.retrievals == 3
        # Another MAF's key: refused here, nothing sent anywhere.
        with pytest.raises(KeyRetrievalError, match="not configured"):
            await retriever.retrieve(KcId.from_relative(bytes(16), "maf.elsewhere.com"))
        with pytest.raises(KeyRetrievalError, match="MAF Key Identifier"):
            await retriever.retrieve("not-a-kcid")
        with pytest.raises(KeyRetrievalError, match="16 octets"):
            await retriever.retrieve(f"00ff@{MAF_FQDN}")
        assert world.maf.retrievals == 3 and retriever.stats.refused == 5


async def test_retrieval_checks_the_maf_certificate(world: World) -> None:
    issued = await world.client().register_key(IN_CSE)
    # The address of the MAF, but configured under another FQDN: its certificate does not
    # name that FQDN, so the channel is refused before any request.
    retriever = MafKeyRetriever(
        world.gateway_credential,
        {"maf2.provider.com": f"{HOST}:{world.maf.retrieval_port}"},
        in_domain=IN_DOMAIN,
        local_id=IN_CSE,
    )
    fake = KcId.from_relative(issued.kc_id.relative_bytes, "maf2.provider.com")
    async with retriever:
        with pytest.raises(KeyRetrievalError, match=r"no channel .* maf2\.provider\.com"):
            await retriever.retrieve(fake)
    assert world.maf.retrievals == 0
    unreachable = MafKeyRetriever(
        world.gateway_credential, {MAF_FQDN: (HOST, 1)}, in_domain=IN_DOMAIN, local_id=IN_CSE
    )
    async with unreachable:
        with pytest.raises(KeyRetrievalError, match="cannot reach"):
            await unreachable.retrieve(issued.kc_id)


# ----------------------------------------------------------------------------- the association


@pytest.mark.parametrize("tls13", [False, True])
async def test_smartphone_associates_with_in_cse(
    world: World, entity_b: EntityB, tls13: bool
) -> None:
    initiator = MafInitiator(world.client(), IN_CSE, tls13=tls13)
    conn = await initiator.connect(HOST, entity_b.port)
    assert await conn.recv() == b"hello Csmartphone"
    issued = initiator.current
    assert issued is not None
    a_ctx, b_ctx = conn.context, entity_b.peers[0]
    await conn.close()
    assert a_ctx.framework is Framework.MAF and b_ctx.framework is Framework.MAF
    assert (a_ctx.peer_id, a_ctx.peer_kind) == (IN_CSE, PeerKind.CSE)
    assert (b_ctx.peer_id, b_ctx.peer_kind) == ("Csmartphone", PeerKind.AE)
    assert a_ctx.key_id == b_ctx.key_id == str(issued.kc_id)
    assert a_ctx.valid_until == b_ctx.valid_until == issued.expires
    assert a_ctx.sa_id == b_ctx.sa_id
    assert a_ctx.protocol == ("TLSv1.3" if tls13 else "TLSv1.2")


async def test_without_entity_id_binds_the_km_credential_id(
    world: World, entity_b: EntityB
) -> None:
    initiator = MafInitiator(world.client(TABLET), IN_CSE)
    conn = await initiator.connect(HOST, entity_b.port)
    await conn.close()
    ctx = entity_b.peers[0]
    assert (ctx.peer_id, ctx.peer_kind) == ("11-tablet@maf.provider.com", PeerKind.CREDENTIAL)


async def test_absolute_entity_ids_bind_sp_relative(world: World, entity_b: EntityB) -> None:
    km = ("sensor@maf.provider.com", bytes(range(50, 82)))
    world.maf.clients[km[0]] = (km[1], "//in.provider.com/id-in/Csensor")
    initiator = MafInitiator(world.client((*km, None)), "//in.provider.com/id-in")
    conn = await initiator.connect(HOST, entity_b.port)
    await conn.close()
    assert (entity_b.peers[0].peer_id, entity_b.peers[0].peer_kind) == (
        "/id-in/Csensor",
        PeerKind.AE,
    )


async def test_kc_is_reused_then_renewed_after_its_lifetime(
    world: World, entity_b: EntityB
) -> None:
    initiator = MafInitiator(world.client(), IN_CSE, lifetime=60, renew_before=5)
    for _ in range(3):
        await (await initiator.connect(HOST, entity_b.port)).close()
    first = initiator.current
    assert first is not None and initiator.registrations == 1
    assert world.maf.retrievals == 1  # Entity B cached the Kc too
    world.clock.advance(56)  # within renew_before of the end: Entity A renews by itself
    await (await initiator.connect(HOST, entity_b.port)).close()
    renewed = initiator.current
    assert initiator.registrations == 2 and renewed is not None and renewed is not first
    assert entity_b.peers[-1].key_id == str(renewed.kc_id)


async def test_refused_kc_triggers_a_fresh_maf_handshake(world: World, entity_b: EntityB) -> None:
    # Entity A's clock lags: it believes its Kc valid while MAF and Entity B see it expired.
    lagging = Clock(world.clock.now)
    initiator = MafInitiator(world.client(), IN_CSE, lifetime=30, clock=lagging)
    await (await initiator.connect(HOST, entity_b.port)).close()
    stale = initiator.current
    assert stale is not None
    world.clock.advance(40)
    # Plain TLS-PSK with the old Kc now fails: Entity B refuses it (docs/readings.md A-16) ...
    with pytest.raises(HandshakeError):
        await connect(HOST, entity_b.port, initiator.profile(stale))
    # ... and the initiator recovers by itself: fresh MAF Handshake, one retry.
    conn = await initiator.connect(HOST, entity_b.port)
    await conn.close()
    assert initiator.registrations == 2
    assert initiator.current is not stale and conn.context.key_id != str(stale.kc_id)
    assert entity_b.peers[-1].peer_id == "Csmartphone"


async def test_no_renewal_when_entity_b_is_unreachable(world: World) -> None:
    initiator = MafInitiator(world.client(), IN_CSE)
    await initiator.kc()
    with pytest.raises(HandshakeError, match="cannot reach"):
        await initiator.connect(HOST, 1)
    assert initiator.registrations == 1


async def test_entity_b_not_in_target_ids_is_refused(world: World, entity_b: EntityB) -> None:
    initiator = MafInitiator(world.client(), "/other-in")
    with pytest.raises(HandshakeError):
        await initiator.connect(HOST, entity_b.port)
    assert entity_b.peers == []
    assert initiator.registrations == 1  # a fresh Kc is not retried


async def test_concurrent_connects_share_one_key_registration(
    world: World, entity_b: EntityB
) -> None:
    initiator = MafInitiator(world.client(), IN_CSE)
    conns = await asyncio.gather(*(initiator.connect(HOST, entity_b.port) for _ in range(5)))
    for conn in conns:
        await conn.close()
    assert initiator.registrations == 1 and len(world.maf.keys) == 1
    assert world.maf.retrievals == 1


async def test_foreign_identities_are_refused_without_asking_a_maf(
    world: World, entity_b: EntityB
) -> None:
    reasons: list[str] = []
    entity_b.server.on_failure = lambda peer, reason: reasons.append(reason)
    for identity in (b"AE123456789012-Light@in.provider.com", b"00ff@maf.elsewhere.com"):
        profile = _psk_client(identity, bytes(32))
        with pytest.raises(HandshakeError):
            await connect(HOST, entity_b.port, profile)
    assert world.maf.retrievals == 0 and world.maf.retrieval_connections == 0
    assert "not a MAF Key Identifier" in reasons[0]
    assert "maf.elsewhere.com, which is not ours" in reasons[1]


async def test_keys_never_reach_logs_or_errors(
    world: World, entity_b: EntityB, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    initiator = MafInitiator(world.client(), IN_CSE)
    await (await initiator.connect(HOST, entity_b.port)).close()
    issued = initiator.current
    assert issued is not None
    with pytest.raises(HandshakeError) as info:
        await connect(HOST, entity_b.port, _psk_client(str(issued.kc_id).encode(), bytes(32)))
    text = caplog.text + str(info.value) + repr(initiator) + repr(world.client())
    text += repr(entity_b.retriever.cached(issued.kc_id))
    for secret in (issued.kc, SMARTPHONE[1]):
        assert secret.hex() not in text and secret.hex().upper() not in text
    assert str(issued.kc_id) in caplog.text  # identifiers are logged


def _psk_client(identity: bytes, key: bytes) -> TLSProfile:
    def offer(hint: bytes | None) -> tuple[bytes, bytes, PeerBinding]:
        return identity, key, PeerBinding(IN_CSE, PeerKind.CSE, identity.decode())

    return TLSProfile(
        framework=Framework.MAF,
        transport=Transport.TLS,
        server_side=False,
        ssl_context=new_context(Transport.TLS, server_side=False, suites=PSK_SUITES_TLS),
        psk_offer=offer,
    )


@pytest.mark.interop
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
async def test_openssl_s_client_as_entity_a(world: World, entity_b: EntityB, version: str) -> None:
    """openssl s_client presents a KcId/Kc our MafClient registered; Entity B binds it."""
    issued: IssuedKc = await world.client().register_key(IN_CSE)
    argv = [
        "openssl", "s_client", "-connect", f"{HOST}:{entity_b.port}", version,
        "-psk_identity", str(issued.kc_id), "-psk", issued.kc.hex(),
    ]  # fmt: skip
    async with spawn(argv) as client:
        await client.expect(r"hello Csmartphone", 10)
        client.close_stdin()
        await client.wait(10)
    assert entity_b.peers[0].key_id == str(issued.kc_id)


# ----------------------------------------------------------------------------- configuration


def _toml_config(tmp: Path, world_files: dict[str, Path], maf_section: str, listen: str) -> Path:
    text = f"""
[gateway]
listen = ["{listen}"]
backend = "http://127.0.0.1:8080"
cse_id = "/id-in"
in_domain = "in.provider.com"

[certificates]
cert = "{world_files["cert"]}"
key = "{world_files["key"]}"
ca = "{world_files["ca"]}"

{maf_section}
"""
    path = tmp / "gateway.toml"
    path.write_text(text)
    return path


def test_gateway_maf_section(tmp_path: Path) -> None:
    from m2msec.config import load_config
    from m2msec.errors import ConfigurationError

    ca = CertificateAuthority.init(tmp_path / "ca", domain=IN_DOMAIN)
    key, cert = write_credential(ca.issue(IN_CSE), tmp_path / "gw")
    files = {"cert": cert, "key": key, "ca": ca.cert_path}
    section = '[maf]\naddresses = { "MAF.provider.com" = "127.0.0.1:8445" }\ncache_size = 10\n'
    cfg = load_config(_toml_config(tmp_path, files, section, "tls://127.0.0.1:0?framework=maf"))
    assert cfg.maf is not None and cfg.frameworks == ("certificate", "maf")
    assert cfg.maf.addresses == (("maf.provider.com", "127.0.0.1", 8445),)
    assert (cfg.maf.cert, cfg.maf.cache_size, cfg.maf.timeout) == (cert, 10, 5.0)
    assert cfg.psk is None  # [maf] alone does not add the default psk-lookup-table
    bad = {
        "[maf]\n": "maf.addresses: missing",
        '[maf]\naddresses = { "maf.provider.com" = "nowhere" }\n': "write 'HOST:PORT'",
        '[maf]\naddresses = { "maf_x" = "127.0.0.1:1" }\n': "maf.addresses.maf_x",
        '[maf]\naddresses = { "a.b" = "h:1" }\ncache_size = 0\n': "maf.cache_size",
        '[maf]\naddresses = { "a.b" = "h:1" }\nttl = 3\n': "unknown key 'maf.ttl'",
    }
    for text, message in bad.items():
        path = _toml_config(tmp_path, files, text, "tls://127.0.0.1:0?framework=maf")
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            load_config(path)
    for listen, message in (
        ("tls://127.0.0.1:0", "or ?framework=maf (one listener per framework)"),
    ):
        path = _toml_config(tmp_path, files, section, listen)
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            load_config(path)
    path = _toml_config(tmp_path, files, "", "tls://127.0.0.1:0?framework=maf")
    with pytest.raises(ConfigurationError, match="framework=maf needs"):
        load_config(path)


def test_absolute_target_ids() -> None:
    from m2msec.frameworks.maf import absolute_target

    assert absolute_target("/id-in", IN_DOMAIN) == "//in.provider.com/id-in"
    assert absolute_target("/id-in/Cphone", IN_DOMAIN) == "//in.provider.com/id-in/Cphone"
    assert absolute_target("//other.com/id-in", IN_DOMAIN) == "//other.com/id-in"
    assert absolute_target("Cphone", IN_DOMAIN) == "Cphone"  # registrar unknown


async def test_initiator_sends_the_absolute_target(world: World, entity_b: EntityB) -> None:
    initiator = MafInitiator(world.client(), IN_CSE, sp_fqdn=IN_DOMAIN)
    await (await initiator.connect(HOST, entity_b.port)).close()
    issued = initiator.current
    assert issued is not None and issued.target_id == "//in.provider.com/id-in"
    assert world.maf.keys[issued.kc_id.relative_hex].targets == ["//in.provider.com/id-in"]
    assert entity_b.peers[0].peer_id == "Csmartphone"
    assert initiator.id_b == IN_CSE


def test_target_echo_may_be_absolute_or_relative() -> None:
    from m2msec.frameworks.maf.client import _same_entity

    assert _same_entity("//in.provider.com/id-in", "/id-in")
    assert _same_entity("//IN.provider.com/id-in", "//in.provider.com/id-in")
    assert not _same_entity("//other.com/id-in", "//in.provider.com/id-in")
    assert not _same_entity("/id-in", "/id-in2")
    assert not _same_entity("/id-in/Cphone", "/id-in")


async def test_resumption_check_needs_a_held_unexpired_kc(world: World) -> None:
    retriever = world.retriever()
    responder = MafResponder(retriever, IN_CSE)
    issued = await world.client().register_key(IN_CSE, 60)
    kc, binding = await responder.resolve(str(issued.kc_id).encode())
    assert kc == issued.kc
    assert responder.resumption_check(binding) is None  # still held: may resume
    world.clock.advance(61)
    with pytest.raises(HandshakeError, match="no longer held"):
        responder.resumption_check(binding)
    with pytest.raises(HandshakeError, match="no KcId"):
        responder.resumption_check(PeerBinding("Cx", PeerKind.AE, None))
    await retriever.close()


async def test_initiator_update_key_keeps_the_granted_expiry(world: World) -> None:
    """After a Key Registration Update the Kc in use carries the MAF's new expiry."""
    initiator = MafInitiator(world.client(), IN_CSE, lifetime=60, renew_before=5)
    first = await initiator.kc()
    updated = await initiator.update_key(lifetime=timedelta(hours=2), labels=["x"])
    assert updated.expires == world.clock() + timedelta(hours=2) and updated.labels == ("x",)
    assert initiator.current is updated and updated.kc_id == first.kc_id
    offer = initiator.profile().psk_offer
    assert offer is not None and offer(None)[2].valid_until == updated.expires
    world.clock.advance(56)  # would be inside renew_before of the old expiry
    assert await initiator.kc() is updated and initiator.registrations == 1


async def test_reprs_show_key_ids_as_text_and_no_key(world: World) -> None:
    initiator = MafInitiator(world.client(), IN_CSE, lifetime=60)
    issued = await initiator.kc()
    text = " ".join(repr(x) for x in (issued, issued.kc_id, initiator, initiator.maf_client))
    assert f"KcId({str(issued.kc_id)!r})" in repr(issued), repr(issued)
    assert "b'" not in text and "relative_bytes" not in text
    for secret in (issued.kc, SMARTPHONE[1]):  # Kc and Km
        assert secret.hex() not in text.lower() and repr(secret) not in text


def test_initiator_declared_as_a_cse_needs_its_cse_id(world: World) -> None:
    """Seed 001: "If Entity A is a CSE, then Entity A shall also be configured with its CSE-ID"."""
    client = world.client()
    for local_id in (None, "Cae1", "/in-cse/Cae1"):
        with pytest.raises(ValueError, match="needs its CSE-ID"):
            MafInitiator(client, IN_CSE, entity_a_kind="cse", local_id=local_id)
    with pytest.raises(ValueError, match="unknown Entity A kind"):
        MafInitiator(client, IN_CSE, entity_a_kind="router")
    initiator = MafInitiator(client, IN_CSE, entity_a_kind="cse", local_id="/mn-cse-1")
    assert initiator.entity_a_kind == "cse" and initiator.local_id == "/mn-cse-1"
