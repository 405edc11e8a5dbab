"""MAF- and GBA-based associations on the gateway's ``dtls://`` listeners, end to end.

TS-0003 8.2.2.3 (MAF) and seed 000 8.2.3.2 (GBA) run over TLS-PSK; the CoAP binding is
secured by DTLS 1.2 (TS-0003 10.2.1). Here Entity A associates with the gateway's
``dtls://...?framework=maf`` (psk_identity = KcId, the gateway fetching Kc by Key
Retrieval from our MAF server while the DTLS handshake waits) and
``dtls://...?framework=gba`` (psk_identity = ``3GPP-bootstrapping;<B-TID>``, NAF_Id from
the suite of the DTLS ServerHello, the gateway fetching Ks_NAF over Zn from our BSF; GBA
over DTLS-PSK is our extension, docs/conformance.md), then sends oneM2M requests as CoAP
(:class:`~m2msec.service.coap_client.CoapClient`) that the gateway forwards to a real
IN-CSE (ACME).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from m2msec.config import parse_config
from m2msec.config.maf import MafConfig
from m2msec.crypto.gba import SUITE_IDS
from m2msec.errors import ConfigurationError, HandshakeError
from m2msec.frameworks.maf import MafClient, MafInitiator
from m2msec.maf.store import MafStore
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.servers.gateway import Gateway
from m2msec.servers.maf import MafServer
from m2msec.service.coap_client import CoapClient
from m2msec.tls.context import Framework, PeerKind, SecurityContext
from tests.acme import AcmeCse, acme_fixture, ae_content
from tests.test_gba_framework import (
    BSF_FQDN,
    DEVICE_IMPI,
    IN_DOMAIN,
    NAF_FQDN,
    GbaNet,
    gba_network,
)

IN_CSE = "/id-in"
MAF_FQDN = "maf.provider.com"
SMARTPHONE = ("smartphone@maf.provider.com", bytes(range(1, 33)), "Cdtls-phone")
TABLET = ("tablet@maf.provider.com", bytes(range(101, 133)), None)
CCM8 = SUITE_IDS["PSK-AES128-CCM8"]  # 0xC0A8, first of the DTLS suites (10.2.1)

acme = acme_fixture(cse_type="IN", cse_id="id-in", cse_name="cse-in")


def _dtls_port(gw: Gateway, framework: str) -> int:
    return next(
        i.port for i in gw.listeners if i.spec.scheme == "dtls" and i.framework == framework
    )


async def _record(gw: Gateway, ctx: SecurityContext) -> SecurityContext:
    """Entity B's SA record (B may record it just after A finished its handshake)."""
    for _ in range(200):
        record = gw.recent_associations.get(ctx.sa_id)
        if record is not None:
            return record
        await asyncio.sleep(0.01)
    raise AssertionError(f"the gateway has no SA record {ctx.sa_id}")


# ----------------------------------------------------------------------------- MAF


@contextlib.asynccontextmanager
async def maf_world(tmp_path: Path, backend: str) -> AsyncIterator[tuple[MafServer, Gateway]]:
    ca = CertificateAuthority.init(tmp_path / "ca", domain=IN_DOMAIN, extra_domains=[MAF_FQDN])
    maf_key, maf_cert = write_credential(ca.issue_service(MAF_FQDN), tmp_path / "maf")
    gw_key, gw_cert = write_credential(ca.issue(IN_CSE), tmp_path / "in-cse")
    store = MafStore(tmp_path / "maf.db")
    for km_id, km, entity in (SMARTPHONE, TABLET):
        store.add_client(km_id, km, entity)
    store.add_entity_b(IN_CSE)
    maf = MafServer(
        MafConfig(
            fqdn=MAF_FQDN,
            listen="tls://127.0.0.1:0",
            retrieval_listen="tls://127.0.0.1:0",
            cert=maf_cert,
            key=maf_key,
            ca=ca.cert_path,
            in_domain=IN_DOMAIN,
            audit_log=str(tmp_path / "audit.log"),
        ),
        store,
    )
    try:
        async with maf:
            assert maf.retrieval_port is not None
            config = parse_config(
                {
                    "gateway": {
                        # Both transports: one MAF responder (one Kc cache) serves the two.
                        "listen": [
                            "dtls://127.0.0.1:0?framework=maf",
                            "tls://127.0.0.1:0?framework=maf",
                        ],
                        "backend": backend,
                        "cse_id": IN_CSE,
                        "app_rule": [{"credentials": ["*"], "allowed_aes": ["*"]}],  # issue 9
                        "in_domain": IN_DOMAIN,
                        "backend_timeout": 5.0,
                    },
                    "maf": {
                        "addresses": {MAF_FQDN: f"127.0.0.1:{maf.retrieval_port}"},
                        "cert": str(gw_cert),
                        "key": str(gw_key),
                        "ca": str(ca.cert_path),
                    },
                }
            )
            async with Gateway(config) as gw:
                yield maf, gw
    finally:
        store.close()


def _maf_client(maf: MafServer, row: tuple[str, bytes, str | None]) -> MafClient:
    return MafClient("127.0.0.1", maf.client_port, MAF_FQDN, row[0], row[1])


async def test_maf_device_registers_over_coap_on_dtls(acme: AcmeCse, tmp_path: Path) -> None:
    async with maf_world(tmp_path, acme.url) as (maf, gw):
        initiator = MafInitiator(_maf_client(maf, SMARTPHONE), IN_CSE)
        assoc = await initiator.connect_dtls("127.0.0.1", _dtls_port(gw, "maf"))
        issued = initiator.current
        assert issued is not None
        ctx = assoc.context
        assert ctx.framework is Framework.MAF and ctx.protocol.startswith("DTLS")
        assert SUITE_IDS[ctx.cipher_suite] == CCM8
        assert ctx.key_id == str(issued.kc_id) and ctx.peer_id == IN_CSE
        record = await _record(gw, ctx)
        assert (record.peer_id, record.peer_kind) == ("Cdtls-phone", PeerKind.AE)
        assert record.key_id == str(issued.kc_id)
        client = CoapClient(assoc)
        try:
            r = await client.request(
                "POST", acme.base, origin="Cintruder", ty=2, content=ae_content("x")
            )
            assert r.rsc == 4106  # not the AE-ID the MAF vouched for: refused by the gateway
            r = await client.request(
                "POST", acme.base, origin="Cdtls-phone", ty=2, content=ae_content("dtls-phone")
            )
            assert r.rsc == 2001, r.body
            r = await client.request("GET", acme.base + "/dtls-phone", origin="Cdtls-phone")
            assert r.rsc == 2000, r.body
        finally:
            await client.close()
        assert gw.stats.dtls_associations == 1
        assert maf.stats.keys_issued == 1 and maf.stats.keys_retrieved == 1
        # The same Kc over TLS: the gateway's one MAF responder has it cached (no retrieval).
        conn = await initiator.connect("127.0.0.1", _port(gw, "tls", "maf"))
        assert (await _record(gw, conn.context)).peer_id == "Cdtls-phone"
        await conn.close()
        assert maf.stats.keys_retrieved == 1
    assert acme.retrieve(acme.base + "/dtls-phone").status_code == 200


def _port(gw: Gateway, scheme: str, framework: str) -> int:
    return next(
        i.port for i in gw.listeners if i.spec.scheme == scheme and i.framework == framework
    )


async def test_maf_credential_binding_over_dtls_and_unknown_kcid_refused(
    acme: AcmeCse, tmp_path: Path
) -> None:
    async with maf_world(tmp_path, acme.url) as (maf, gw):
        initiator = MafInitiator(_maf_client(maf, TABLET), IN_CSE)
        assoc = await initiator.connect_dtls("127.0.0.1", _dtls_port(gw, "maf"))
        record = await _record(gw, assoc.context)
        assert (record.peer_id, record.peer_kind) == (
            "11-tablet@maf.provider.com",
            PeerKind.CREDENTIAL,
        )
        client = CoapClient(assoc)
        try:
            r = await client.request("GET", acme.base, origin="Ctablet")
            assert r.rsc == 4103  # Credential-ID: register an AE first (docs/readings.md A-13)
            r = await client.request(
                "POST", acme.base, origin="C", ty=2, content=ae_content("dtls-tablet")
            )
            assert r.rsc == 2001, r.body
            aei = r.json()["m2m:ae"]["aei"]
            r = await client.request("GET", acme.base + "/dtls-tablet", origin=aei)
            assert r.rsc == 2000
        finally:
            await client.close()
        # A KcId the MAF never issued: the Key Retrieval fails and so does the handshake.
        issued = initiator.current
        assert issued is not None
        from dataclasses import replace

        from m2msec.keyids import KcId

        forged = replace(issued, kc_id=KcId(bytes(32), MAF_FQDN))
        failed = gw.stats.handshakes_failed
        from m2msec.tls.aio_dtls import dtls_connect
        from m2msec.tls.profiles import Transport

        with pytest.raises(HandshakeError):
            await dtls_connect(
                initiator.profile(forged, Transport.DTLS),
                "127.0.0.1",
                _dtls_port(gw, "maf"),
                timeout=5.0,
            )
        assert gw.stats.handshakes_failed == failed + 1
        assert gw.stats.associations_established == 1


# ----------------------------------------------------------------------------- GBA


@contextlib.asynccontextmanager
async def gba_gateway(net: GbaNet, backend: str) -> AsyncIterator[Gateway]:
    config = parse_config(
        {
            "gateway": {
                "listen": ["dtls://127.0.0.1:0?framework=gba", "tls://127.0.0.1:0?framework=gba"],
                "backend": backend,
                "cse_id": IN_CSE,
                "app_rule": [{"credentials": ["*"], "allowed_aes": ["*"]}],  # issue 9
                "in_domain": IN_DOMAIN,
                "backend_timeout": 5.0,
                "handshake_timeout": 2.0,
            },
            "gba": {
                "zn": f"tls://{net.zn_host}:{net.zn_port}",
                "bsf_fqdn": BSF_FQDN,
                "cert": str(net.naf_cert),
                "key": str(net.naf_key),
                "ca": str(net.ca.cert_path),
            },
        }
    )
    async with Gateway(config) as gw:
        yield gw


async def test_gba_device_registers_over_coap_on_dtls(acme: AcmeCse, tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net, gba_gateway(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI)
        device = net.device()
        assoc = await device.connect_dtls("127.0.0.1", _dtls_port(gw, "gba"), NAF_FQDN, id_b=IN_CSE)
        ctx = assoc.context
        assert ctx.framework is Framework.GBA and ctx.protocol.startswith("DTLS")
        assert SUITE_IDS[ctx.cipher_suite] == CCM8  # NAF_Id on both sides names 0xC0A8
        assert device.bootstrap is not None and ctx.key_id == device.bootstrap.btid
        record = await _record(gw, ctx)
        assert record.peer_kind is PeerKind.CREDENTIAL and record.peer_id == f"12-{ctx.key_id}"
        client = CoapClient(assoc)
        try:
            r = await client.request("GET", acme.base, origin="Cgba-dtls")
            assert r.rsc == 4103
            r = await client.request(
                "POST", acme.base, origin="C", content=ae_content("gba-dtls"), ty=2
            )
            assert r.rsc == 2001, r.body
            aei = r.json()["m2m:ae"]["aei"]
            r = await client.request("GET", acme.base + "/gba-dtls", origin=aei)
            assert r.rsc == 2000, r.body
        finally:
            await client.close()
        assert gw.stats.registrations_bound == 1
        # Over TLS the suite differs (GCM first), so NAF_Id and Ks_NAF differ: one more Zn.
        conn = await device.connect("127.0.0.1", _port(gw, "tls", "gba"), NAF_FQDN, id_b=IN_CSE)
        assert SUITE_IDS[conn.context.cipher_suite] != CCM8
        await conn.close()
        assert net.bsf.stats.bootstraps == 1 and net.bsf.stats.zn_answered == 2


async def test_gba_over_dtls_key_for_another_naf_refused(acme: AcmeCse, tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net, gba_gateway(net, acme.url) as gw:
        other = "mn-cse-123456.in.provider.com"
        net.add_subscriber(DEVICE_IMPI, nafs=(NAF_FQDN, other))
        device = net.device()
        with pytest.raises(HandshakeError):
            await device.connect_dtls("127.0.0.1", _dtls_port(gw, "gba"), other, timeout=3.0)
        # DTLS drops records it cannot authenticate (RFC 6347 4.1.2.7): the gateway counts
        # the failure when the half-open handshake times out (handshake_timeout = 2 s).
        for _ in range(60):
            if gw.stats.handshakes_failed:
                break
            await asyncio.sleep(0.1)
        assert gw.stats.associations_established == 0 and gw.stats.handshakes_failed == 1


def test_dtls_framework_config() -> None:
    base = {"backend": "http://127.0.0.1:1", "cse_id": IN_CSE, "in_domain": IN_DOMAIN}
    cfg = parse_config({"gateway": {**base, "listen": ["dtls://127.0.0.1:0?framework=psk"]}})
    assert cfg.listen[0].framework == "psk"
    with pytest.raises(ConfigurationError, match=r"framework=maf needs \[maf\]"):
        parse_config({"gateway": {**base, "listen": ["dtls://127.0.0.1:0?framework=maf"]}})
    with pytest.raises(ConfigurationError, match=r"framework=gba needs \[gba\]"):
        parse_config({"gateway": {**base, "listen": ["dtls://127.0.0.1:0?framework=gba"]}})
