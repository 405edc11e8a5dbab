"""Enrolment Targets resolving KeIDs at the MEF (TS-0003 8.3.2.1 step f, seed 004).

The MEF is the real server (:class:`m2msec.servers.mef.MefServer`) on loopback, seeded as
``m2msec mef add-enrolee`` / ``allow-target`` would; its Enrolees are our TLS-PSK client
(tests/test_mef_server.py) or ``openssl s_client -keymatexport``, whose printed export
the test splits itself (RelativeKeID = octets 0-15, Ke = 16-47) to derive KeID and Kpsa.
The targets are ours: :class:`MefCredentialFetcher` alone, the gateway as Enrolee B
(``framework=mef``, ACME behind it) and the MAF (``mef``). The one stand-in is the "slow
MEF": a TCP listener that accepts and never answers, as no real MEF behaves that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from m2msec.config import GatewayConfig, MefTargetConfig, parse_config, parse_listen_url
from m2msec.config.maf import MafConfig, load_maf_config, parse_maf_config
from m2msec.errors import ConfigurationError, HandshakeError
from m2msec.frameworks.certificate import CertificateCredential
from m2msec.frameworks.maf import MafClient, MafError, MafKeyRetriever
from m2msec.frameworks.mef_fetch import CredentialFetchError, MefCredentialFetcher
from m2msec.frameworks.mef_responder import MefResponder
from m2msec.frameworks.provisioned import PskInitiator
from m2msec.ids import CseId
from m2msec.keyids import KeId
from m2msec.maf.store import MafStore
from m2msec.mef.keys import derive_for_target
from m2msec.mef.records import Bootstrap, Enrolee, EnrolmentTarget
from m2msec.mef.store import MefStore
from m2msec.pki.authority import write_credential
from m2msec.servers.gateway import Gateway
from m2msec.servers.maf import MafServer
from m2msec.servers.mef import MefServer
from m2msec.service.coap_client import CoapClient
from m2msec.tls.aio_dtls import dtls_connect
from m2msec.tls.context import Framework, PeerKind
from m2msec.tls.profiles import Transport
from tests.acme import AcmeCse, acme_fixture
from tests.interop import HOST, keying_material, run, spawn
from tests.test_mef_server import (
    IN_DOMAIN,
    KEK,
    KPM,
    KPM_ID,
    MAF,
    MAF_FQDN,
    MAF_KPM_ID,
    MEF_FQDN,
    Pki,
    enrol,
    make_pki,
    mef_config,
    psk_enrolee,
)

GW_CSE = "/mn-cse-123456"  # ACME's CSE-ID (tests/acme.py): the gateway is Enrolee B
GW = EnrolmentTarget.enrolee_b(GW_CSE)
ENROLEE_ID = f"{GW_CSE}/Cdevice-1"
OTHER_KPM_ID = "device-3@mef.in.provider.com"  # enrolled for another Enrolee B
OTHER = EnrolmentTarget.enrolee_b("/in-cse")
LIFETIME = timedelta(days=1)


@dataclass
class World:
    pki: Pki
    mef: MefServer
    store: MefStore
    gw_files: tuple[Path, Path]
    gw_cred: CertificateCredential

    @property
    def target_port(self) -> int:
        return self.mef.listener("target").port

    def fetcher(self, cred: CertificateCredential | None = None, **kw: Any) -> MefCredentialFetcher:
        kw.setdefault("local_id", GW_CSE if cred is None else None)
        return MefCredentialFetcher(
            cred or self.gw_cred, {MEF_FQDN: (HOST, self.target_port)}, in_domain=IN_DOMAIN, **kw
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("mef-targets-pki"))


@pytest.fixture
async def world(pki: Pki, tmp_path: Path) -> AsyncIterator[World]:
    async with running_world(pki, tmp_path) as running:
        yield running


@contextlib.asynccontextmanager
async def running_world(pki: Pki, tmp_path: Path) -> AsyncIterator[World]:
    """The MEF with three Enrolees (for the gateway, the MAF, another Enrolee B), the
    three targets allowed, and the gateway's CSE-ID certificate."""
    store = MefStore(tmp_path / "mef.db", kek=KEK)
    store.add_enrolee(Enrolee(Bootstrap.PSK, KPM_ID, ENROLEE_ID, GW, LIFETIME, KPM))
    store.add_enrolee(Enrolee(Bootstrap.PSK, MAF_KPM_ID, f"{GW_CSE}/Cdev2", MAF, LIFETIME, KPM))
    store.add_enrolee(Enrolee(Bootstrap.PSK, OTHER_KPM_ID, "/in-cse/Cdev3", OTHER, LIFETIME, KPM))
    for target in (GW, MAF, OTHER):
        store.allow_target(target)
    issued = pki.ca.issue(GW_CSE)
    key, cert = write_credential(issued, tmp_path / "gateway")
    cred = CertificateCredential(issued.cert_pem, issued.key_pem, pki.ca.cert_pem)
    server = MefServer(mef_config(pki, tmp_path), store)
    await server.start()
    try:
        yield World(pki, server, store, (cert, key), cred)
    finally:
        await server.close()
        store.close()


async def enrolled(world: World, kpm_id: str = KPM_ID) -> tuple[KeId, bytes]:
    """Enrol by our TLS-PSK client: the KeID answered and Ke from the session's export."""
    client, exported = await psk_enrolee(world.mef, kpm_id)
    answer = await enrol(client)
    await client.close()
    assert answer.rsc == 2001, answer.body
    ke_id = KeId.parse(answer.json()["mefEnrol"]["keID"])
    assert ke_id.relative_bytes == exported[:16]
    return ke_id, exported[16:]


# ----------------------------------------------------------------------------- configuration


def test_gateway_mef_section(pki: Pki, tmp_path: Path) -> None:
    cert, key = (str(p) for p in write_credential(pki.ca.issue(GW_CSE), tmp_path / "gw"))
    base = {
        "gateway": {
            "listen": ["tls://127.0.0.1:8443?framework=mef", "dtls://127.0.0.1:5684?framework=mef"],
            "backend": "http://127.0.0.1:8080",
            "cse_id": GW_CSE,
            "in_domain": IN_DOMAIN,
        },
        "mef": {"url": "tls://mef.in.provider.com:8447", "cert": cert, "key": key},
        "certificates": {"cert": cert, "key": key, "ca": str(pki.ca.cert_path)},
    }
    cfg = parse_config(base)
    assert cfg.mef == MefTargetConfig(
        "mef.in.provider.com", "mef.in.provider.com", 8447, Path(cert), Path(key),
        pki.ca.cert_path,
    )  # fmt: skip
    assert cfg.frameworks == ("certificate", "mef") and cfg.psk is None
    bad: list[tuple[dict[str, Any], str]] = [
        ({"url": "tls://127.0.0.1:8447"}, "mef.fqdn: .*IP address"),
        ({"url": "http://m.example.com:1"}, "mef.url: .*tls://HOST:PORT"),
        ({"url": "tls://m.example.com:1", "timeout": 0}, "mef.timeout"),
        ({"url": "tls://m.example.com:1", "urls": "x"}, "unknown key 'mef.urls'"),
    ]
    for section, message in bad:
        with pytest.raises(ConfigurationError, match=message):
            parse_config({**base, "mef": section})
    # [mef] with another framework: the listener names its framework.
    with pytest.raises(ConfigurationError, match=r"\?framework=mef"):
        parse_config(
            {**base, "gateway": {**base["gateway"], "listen": ["tls://127.0.0.1:8443"]}}
        )
    # [psk] and [mef] (no certificates on the listener either): refused at load, not at start.
    with pytest.raises(ConfigurationError, match=r"\[psk\] and \[certificates\] and \[mef\]"):
        parse_config(
            {**base, "psk": {}, "gateway": {**base["gateway"], "listen": ["tls://127.0.0.1:8443"]}}
        )
    without = {k: v for k, v in base.items() if k != "mef"}
    with pytest.raises(ConfigurationError, match="framework=mef needs"):
        parse_config(without)
    # Without [certificates], the MEF's credentials must be given in [mef].
    with pytest.raises(ConfigurationError, match=r"mef\.ca: missing"):
        parse_config({k: v for k, v in base.items() if k != "certificates"})


def test_maf_mef_keys(tmp_path: Path) -> None:
    cfg = parse_maf_config(
        {"maf": {"fqdn": MAF_FQDN, "mef": "tls://127.0.0.1:8447", "mef_fqdn": MEF_FQDN}}
    )
    assert cfg.mef_target() == ("127.0.0.1", 8447, MEF_FQDN)
    assert parse_maf_config({"maf": {"fqdn": MAF_FQDN, "mef": ""}}).mef_target() is None
    # What `m2msec maf serve --mef URL --mef-fqdn FQDN` passes on.
    overrides = {"maf.fqdn": MAF_FQDN, "maf.mef": "tls://127.0.0.1:9", "maf.mef_fqdn": MEF_FQDN}
    assert load_maf_config(None, overrides).mef_target() == ("127.0.0.1", 9, MEF_FQDN)
    with pytest.raises(ConfigurationError, match=r"maf\.mef_fqdn"):
        MafConfig(MAF_FQDN, mef="tls://127.0.0.1:8447")  # an IP: name the MEF
    with pytest.raises(ConfigurationError, match=r"maf\.mef_fqdn: give maf\.mef"):
        MafConfig(MAF_FQDN, mef_fqdn=MEF_FQDN)
    with pytest.raises(ConfigurationError, match="mef_timeout"):
        MafConfig(MAF_FQDN, mef="tls://mef.example.com:1", mef_timeout=0)


# ----------------------------------------------------------------------------- the fetcher


async def test_fetch_caches_and_coalesces(world: World) -> None:
    ke_id, ke = await enrolled(world)
    kpsa = derive_for_target(ke, GW_CSE, enrolee_b=True)
    async with world.fetcher() as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(ke_id) for _ in range(10)))
        assert {r.credential for r in results} == {kpsa}
        got = results[0]
        assert got.enrolee_id == ENROLEE_ID and got.suid == 22 and got.ke_id == ke_id
        assert kpsa.hex() not in repr(got) and kpsa.hex() not in repr(fetcher)
        assert world.mef.stats["fetched"] == 1 and fetcher.stats.coalesced == 9
        # Upper-case hexBinary names the same KeID (docs/readings.md A-05): cached.
        upper = f"{ke_id.relative_hex.upper()}@{MEF_FQDN.upper()}"
        assert (await fetcher.fetch(upper)).credential == kpsa
        assert fetcher.stats.cache_hits == 1 and world.mef.stats["fetched"] == 1
        assert fetcher.cached(ke_id) is not None
        fetcher.invalidate(ke_id)
        assert (await fetcher.fetch(ke_id)).credential == kpsa
        # Kept-alive: both fetches over one mutual-TLS handshake.
        assert world.mef.stats["fetched"] == 2 and fetcher.stats.connections == 1


async def test_fetch_refusals(world: World) -> None:
    other_ke, _ = await enrolled(world, OTHER_KPM_ID)
    async with world.fetcher() as fetcher:
        with pytest.raises(CredentialFetchError, match="has no enrolment") as info:
            await fetcher.fetch(other_ke)  # enrolled for another Enrolee B
        assert info.value.rsc == 4004
        with pytest.raises(CredentialFetchError, match="has no enrolment"):
            await fetcher.fetch(KeId.from_relative(bytes(16), MEF_FQDN))
        sent = world.mef.stats["fetch_refused"]
        # Refused here, nothing sent: another MEF's KeID, a malformed one, a short one.
        with pytest.raises(CredentialFetchError, match="not configured"):
            await fetcher.fetch(KeId.from_relative(bytes(16), "mef.elsewhere.com"))
        with pytest.raises(CredentialFetchError, match="KeID"):
            await fetcher.fetch("not-a-keid")
        with pytest.raises(CredentialFetchError, match="16 octets"):
            await fetcher.fetch(f"00ff@{MEF_FQDN}")
        assert world.mef.stats["fetch_refused"] == sent and fetcher.stats.refused == 4
    # A CSE the MEF does not allow as a target.
    async with world.fetcher(world.pki.creds["/in-cse2"]) as stranger:
        with pytest.raises(CredentialFetchError, match="not an Enrolment Target") as info:
            await stranger.fetch(other_ke)
        assert info.value.rsc == 4103


async def test_mef_down_or_slow_fails_in_bounded_time(world: World) -> None:
    ke_id, _ = await enrolled(world)
    stalled: list[asyncio.StreamWriter] = []

    async def accept_and_wait(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        stalled.append(w)

    silent = await asyncio.start_server(accept_and_wait, HOST, 0)
    silent_port = silent.sockets[0].getsockname()[1]
    try:
        for port, message in ((silent_port, "did not answer in time"), (1, "no channel")):
            fetcher = MefCredentialFetcher(
                world.gw_cred, {MEF_FQDN: (HOST, port)}, in_domain=IN_DOMAIN,
                local_id=GW_CSE, timeout=0.5,
            )  # fmt: skip
            async with fetcher:
                started = time.monotonic()
                with pytest.raises(CredentialFetchError, match=message):
                    await fetcher.fetch(ke_id)
                assert time.monotonic() - started < 2.0
                assert fetcher.stats.failed == 1
    finally:
        for w in stalled:
            w.close()
        silent.close()
        await silent.wait_closed()


async def test_responder_binds_the_enrolee_id_and_rechecks_resumption(world: World) -> None:
    ke_id, ke = await enrolled(world)
    async with world.fetcher() as fetcher:
        responder = MefResponder(fetcher, GW_CSE, sp_fqdn=IN_DOMAIN)
        kpsa, binding = await responder.resolve(str(ke_id).encode())
        assert kpsa == derive_for_target(ke, GW_CSE, enrolee_b=True)
        assert (binding.peer_id, binding.kind) == (ENROLEE_ID, PeerKind.AE)
        assert binding.key_id == str(ke_id) and binding.valid_until is not None
        assert responder.profile().framework is Framework.PROVISIONED_PSK
        assert responder.owns(binding.key_id) and not responder.owns("x@psk.example.com")
        assert responder.resumption_check(binding) is None  # its Kpsa is held
        fetcher.invalidate(ke_id)
        with pytest.raises(HandshakeError, match="no longer held"):
            responder.resumption_check(binding)
        for identity, message in (
            (b"Clight-AE1@in.provider.com", "not a KeID"),
            (f"{'00' * 16}@mef.elsewhere.com".encode(), "which is not ours"),
            (f"{'00' * 16}@{MEF_FQDN}".encode(), "has no enrolment"),
        ):
            with pytest.raises(HandshakeError, match=message):
                await responder.resolve(identity)


# ----------------------------------------------------------------------------- the MAF


async def test_maf_accepts_a_keid_as_kmid(world: World, tmp_path: Path) -> None:
    ke_id, ke = await enrolled(world, MAF_KPM_ID)
    km = derive_for_target(ke, MAF_FQDN, enrolee_b=False)
    key, cert = world.pki.files[MAF_FQDN]  # write_credential: (key, cert)
    maf_store = MafStore(tmp_path / "maf.db")
    maf_store.add_entity_b("/in-cse")
    cfg = MafConfig(
        MAF_FQDN, str(tmp_path / "maf.db"), listen=f"tls://{HOST}:0",
        retrieval_listen=f"tls://{HOST}:0", cert=cert,
        key=key, ca=world.pki.ca.cert_path, mef=f"tls://{HOST}:{world.target_port}",
        mef_fqdn=MEF_FQDN,
    )  # fmt: skip
    try:
        async with MafServer(cfg, maf_store) as maf:
            client = MafClient(HOST, maf.client_port, MAF_FQDN, str(ke_id), km)
            issued = await client.register_key("/in-cse")
            stored = maf_store.get_key(issued.kc_id.relative_hex)
            assert stored is not None and stored.km_id == str(ke_id).lower()
            assert world.mef.stats["fetched"] == 1  # one fetch: the Km is held meanwhile
            await client.register_key("/in-cse")
            assert world.mef.stats["fetched"] == 1
            assert maf_store.get_client(str(ke_id)) is None  # nothing written for it
            # Entity B's Key Retrieval names the Enrolee-ID the MEF gave as entityID.
            retriever = MafKeyRetriever(
                world.pki.creds["/in-cse"], {MAF_FQDN: (HOST, maf.retrieval_port or 0)},
                in_domain=IN_DOMAIN, local_id="/in-cse",
            )  # fmt: skip
            async with retriever:
                got = await retriever.retrieve(issued.kc_id)
            assert got.kc == issued.kc and got.entity_id == f"{GW_CSE}/Cdev2"
            # A KeID the MEF refuses (never enrolled), or the right KeID with a wrong Km.
            nobody = MafClient(HOST, maf.client_port, MAF_FQDN, f"{'ab' * 16}@{MEF_FQDN}", km)
            with pytest.raises(MafError, match=r"MAF Handshake .* failed"):
                await nobody.register_key("/in-cse")
            wrong = MafClient(HOST, maf.client_port, MAF_FQDN, str(ke_id), bytes(32))
            with pytest.raises(MafError, match=r"MAF Handshake .* failed"):
                await wrong.register_key("/in-cse")
    finally:
        maf_store.close()


# ----------------------------------------------------------------------------- the gateway

acme = acme_fixture()

STEP = 10.0
BOOTSTRAP_LABEL = "EXPORTER-oneM2M-Bootstrap"
S_CLIENT_12 = ["-tls1_2", "-cipher", "PSK-AES128-CBC-SHA256"]


def enrolment_request() -> bytes:
    body = json.dumps({"mefEnrolReq": {}})
    head = (
        f"POST /mef/enrolment HTTP/1.1\r\nHost: {MEF_FQDN}\r\nX-M2M-Origin: Cdevice-1\r\n"
        "X-M2M-RI: enrol-1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return (head + body).encode()


def registration(base: str, origin: str, rn: str) -> bytes:
    body = json.dumps({"m2m:ae": {"rn": rn, "api": "Ninterop", "rr": False, "srv": ["3"]}})
    head = (
        f"POST {base} HTTP/1.1\r\nHost: mn-cse-123456.in.provider.com\r\n"
        f"X-M2M-Origin: {origin}\r\nX-M2M-RI: reg-1\r\nX-M2M-RVI: 3\r\n"
        "Content-Type: application/json;ty=2\r\nAccept: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return (head + body).encode()


async def openssl_enrol(world: World) -> tuple[str, bytes]:
    """``openssl s_client`` as the Enrolee: (KeID, Kpsa) derived from its own export."""
    argv = [
        "openssl", "s_client", "-connect", f"{HOST}:{world.mef.listener('enrolee').port}",
        "-servername", MEF_FQDN, "-psk_identity", KPM_ID, "-psk", KPM.hex(), *S_CLIENT_12,
        "-keymatexport", BOOTSTRAP_LABEL, "-keymatexportlen", "48",
    ]  # fmt: skip
    async with spawn(argv) as client:
        await client.expect(r"Keying material: [0-9A-F]+\r?\n", STEP)
        client.write(enrolment_request())
        answer = await client.expect(r'"keID":"([0-9a-f]{32}@[^"]+)"', STEP)
        client.close_stdin()
        await client.wait(STEP)
    material = bytes.fromhex(keying_material(client.output))
    ke_id = f"{material[:16].hex()}@{MEF_FQDN}"
    assert answer.group(1) == ke_id, client.output
    return ke_id, derive_for_target(material[16:], GW_CSE, enrolee_b=True)


def psk_client(port: int, identity: str, kpsa: bytes) -> list[str]:
    return [
        "openssl", "s_client", "-connect", f"{HOST}:{port}", *S_CLIENT_12,
        "-psk_identity", identity, "-psk", kpsa.hex(), "-quiet", "-ign_eof",
    ]  # fmt: skip


def rsc(output: str) -> str | None:
    match = re.search(r"X-M2M-RSC:\s*(\d+)", output, re.IGNORECASE)
    return match.group(1) if match else None


@pytest.mark.interop
async def test_gateway_as_enrolee_b_with_openssl(
    world: World, acme: AcmeCse, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cert, key = world.gw_files
    cfg = GatewayConfig(
        listen=(
            parse_listen_url(f"tls://{HOST}:0?framework=mef"),
            parse_listen_url(f"dtls://{HOST}:0?framework=mef"),
        ),
        backend=acme.url,
        cse_id=CseId.parse(GW_CSE),
        in_domain=IN_DOMAIN,
        mef=MefTargetConfig(
            MEF_FQDN, HOST, world.target_port, cert, key, world.pki.ca.cert_path, timeout=1.0
        ),
    )
    ke_id, kpsa = await openssl_enrol(world)
    base = f"/~/{acme.cse_id}/{acme.cse_name}"
    async with Gateway(cfg) as gw:
        port = gw.listeners[0].port
        done = await run(psk_client(port, ke_id, kpsa), stdin=registration(base, "Cdevice-1", "d1"))
        assert rsc(done.output) == "2001", done.output
        assert re.search(r'"aei":\s*"Cdevice-1"', done.output), done.output
        # The association is bound to the Enrolee-ID: it may not speak for another AE.
        done = await run(psk_client(port, ke_id, kpsa), stdin=registration(base, "Cdevice-2", "x"))
        assert rsc(done.output) == "4106", done.output
        assert world.mef.stats["fetched"] == 1  # the second handshake used the cached Kpsa
        assert gw.stats.requests_forwarded == 1
        # The same KeID over DTLS (CoAP): the one responder, its Kpsa cached.
        dtls_port = next(i.port for i in gw.listeners if i.spec.scheme == "dtls")
        initiator = PskInitiator(ke_id, kpsa, GW_CSE)
        assoc = await dtls_connect(initiator.profile(Transport.DTLS), HOST, dtls_port)
        coap = CoapClient(assoc)
        try:
            assert assoc.context.framework is Framework.PROVISIONED_PSK
            r = await coap.request("GET", base + "/d1", origin="Cdevice-1")
            assert r.rsc == 2000, r.body
            r = await coap.request("GET", base + "/d1", origin="Cdevice-2")
            assert r.rsc == 4106
        finally:
            await coap.close()
        assert world.mef.stats["fetched"] == 1

        # A KeID enrolled for another Enrolee B: the MEF refuses, the handshake fails.
        client, exported = await psk_enrolee(world.mef, OTHER_KPM_ID)
        assert (await enrol(client)).rsc == 2001
        await client.close()
        other = f"{exported[:16].hex()}@{MEF_FQDN}"
        other_kpsa = derive_for_target(exported[16:], GW_CSE, enrolee_b=True)
        done = await run(psk_client(port, other, other_kpsa), stdin=b"")
        assert rsc(done.output) is None and done.returncode != 0, done.output

        # The MEF down: a KeID not yet fetched fails its handshake within the bound.
        fresh, fresh_kpsa = await openssl_enrol(world)
        await world.mef.close()
        started = time.monotonic()
        done = await run(psk_client(port, fresh, fresh_kpsa), stdin=b"")
        assert done.returncode != 0 and rsc(done.output) is None, done.output
        assert time.monotonic() - started < cfg.mef.timeout + 3.0  # type: ignore[union-attr]
        # ... while the KeID whose Kpsa is held still associates.
        done = await run(psk_client(port, ke_id, kpsa), stdin=registration(base, "Cdevice-1", "d2"))
        assert rsc(done.output) is not None, done.output
    for secret in (KPM, kpsa, fresh_kpsa, other_kpsa):
        assert secret.hex() not in caplog.text
