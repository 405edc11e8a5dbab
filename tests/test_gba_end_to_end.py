"""GBA end to end: a BSF, the gateway as NAF in front of a real IN-CSE (ACME), devices.

Seed 000 8.2.3.2: the device (Entity A) bootstraps with the BSF over Ub, derives
Ks_ext_NAF for the gateway's FQDN and the negotiated suite, and associates by TLS-PSK with
identity ``3GPP-bootstrapping;<B-TID>``; the gateway (Entity B, configured with ``[gba]``
and a ``framework=gba`` listener) fetches the key over Zn and forwards the device's oneM2M
requests to ACME. ``openssl s_client`` plays a device too, with the key computed here
from the bootstrap.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from m2msec.config import parse_config
from m2msec.config.initiators import Initiator
from m2msec.crypto.gba import ks_ext_naf, naf_id, ua_protocol_id_tls_psk
from m2msec.errors import HandshakeError
from m2msec.servers.gateway import Gateway
from m2msec.servers.initiator_session import SecureSession
from m2msec.service.onem2m_client import OneM2MClient
from m2msec.tls.aio import TLSConnection, connect
from m2msec.tls.context import Framework, PeerKind
from m2msec.tls.profiles import Transport
from tests.acme import AcmeCse, acme_fixture, ae_content
from tests.interop import run
from tests.test_gba_framework import (
    BSF_FQDN,
    DEVICE_IMPI,
    IN_CSE,
    IN_DOMAIN,
    NAF_FQDN,
    GbaNet,
    gba_network,
)
from tests.test_interop_gateway import registration, rsc

pytestmark = pytest.mark.interop

acme = acme_fixture(cse_type="IN", cse_id=IN_CSE, cse_name="cse-in")


@contextlib.asynccontextmanager
async def naf_gateway(net: GbaNet, backend: str) -> AsyncIterator[Gateway]:
    """The gateway as ``m2msec gateway serve`` would run it with a ``[gba]`` section."""
    config = parse_config(
        {
            "gateway": {
                "listen": ["tls://127.0.0.1:0?framework=gba", "http://127.0.0.1:0"],
                "backend": backend,
                "cse_id": f"/{IN_CSE}",
                "app_rule": [{"credentials": ["*"], "allowed_aes": ["*"]}],  # issue 9
                "in_domain": IN_DOMAIN,  # naf_fqdn defaults to id-in.in.provider.com
                "backend_timeout": 5.0,
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
    assert config.gba is not None and config.gba.naf_fqdn == NAF_FQDN
    async with Gateway(config) as gw:
        yield gw


def _port(gw: Gateway) -> int:
    return next(i.port for i in gw.listeners if i.framework == "gba")


async def test_device_bootstraps_associates_and_registers(acme: AcmeCse, tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net, naf_gateway(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI)
        device = net.device()
        conn = await device.connect("127.0.0.1", _port(gw), NAF_FQDN, id_b=f"/{IN_CSE}")
        ctx = conn.context
        assert ctx.framework is Framework.GBA and ctx.protocol == "TLSv1.2"
        assert ctx.key_id == device.bootstrap.btid  # type: ignore[union-attr]
        client = OneM2MClient(conn)
        r = await client.request("GET", acme.base, origin="Cgba-device")
        # A Credential-ID binding may only register an AE (docs/readings.md ).
        assert r.rsc == 4103
        r = await client.request("POST", acme.base, origin="C", content=ae_content("meter"), ty=2)
        assert r.rsc == 2001, r.body
        aei = r.json()["m2m:ae"]["aei"]
        r = await client.request(
            "POST", acme.base + "/meter", origin=aei, content={"m2m:cnt": {"rn": "kwh"}}, ty=3
        )
        assert r.rsc == 2001, r.body
        await client.close()
        record = gw.recent_associations[ctx.sa_id]
        assert record.peer_kind is PeerKind.CREDENTIAL
        assert record.peer_id == f"12-{ctx.key_id}"
        assert gw.stats.registrations_bound == 1
        # A second association reuses Ks (no Ub run) and the NAF's cached Ks_NAF (no Zn).
        conn = await device.connect("127.0.0.1", _port(gw), NAF_FQDN, id_b=f"/{IN_CSE}")
        await conn.close()
        assert net.bsf.stats.bootstraps == 1 and net.bsf.stats.zn_answered == 1
        assert gw.gba is not None and gw.gba.cache_hits == 1
    assert acme.retrieve(acme.base + "/meter/kwh").status_code == 200


async def test_uss_names_the_ae(acme: AcmeCse, tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net, naf_gateway(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI, nafs={NAF_FQDN: {"aeId": "Cgba-uss-meter"}})
        conn = await net.device().connect("127.0.0.1", _port(gw), NAF_FQDN)
        client = OneM2MClient(conn)
        r = await client.request("POST", acme.base, origin="C", content=ae_content("uss"), ty=2)
        assert r.rsc == 2001, r.body
        assert r.json()["m2m:ae"]["aei"] == "Cgba-uss-meter"  # the stem the BSF named
        r = await client.request("GET", acme.base + "/uss", origin="Cother")
        assert r.rsc == 4106
        await client.close()


async def test_key_for_another_naf_refused(acme: AcmeCse, tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net, naf_gateway(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI, nafs=(NAF_FQDN, "mn-cse-123456.in.provider.com"))
        device = net.device()
        # The device derives Ks_NAF for another NAF (its SNI): the gateway's key differs.
        with pytest.raises(HandshakeError):
            await device.connect("127.0.0.1", _port(gw), "mn-cse-123456.in.provider.com")
        assert gw.stats.handshakes_failed == 1 and gw.stats.associations_established == 0
        # The same B-TID with the key for this NAF is fine.
        conn = await device.connect("127.0.0.1", _port(gw), NAF_FQDN)
        await conn.close()
        assert device.bootstraps == 1


async def test_expired_btid_refused(
    acme: AcmeCse, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="m2msec.tls.aio")
    async with gba_network(tmp_path) as net, naf_gateway(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI)
        device = net.device()
        boot = await device.ensure_bootstrap()
        net.now.append(boot.expires + timedelta(seconds=1))  # the BSF's clock passes Ks's life
        # Without re-bootstrapping, the gateway refuses the expired B-TID.
        with pytest.raises(HandshakeError, match="unknown psk identity"):
            await connect("127.0.0.1", _port(gw), device.profile(NAF_FQDN))
        assert "has expired" in caplog.text
        assert gw.stats.handshakes_failed == 1
        # GbaDevice.connect bootstraps again when a reused B-TID is refused, then succeeds.
        conn = await device.connect("127.0.0.1", _port(gw), NAF_FQDN)
        assert conn.context.key_id != boot.btid and device.bootstraps == 2
        await conn.close()


async def test_subscriber_not_allowed_refused(
    acme: AcmeCse, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="m2msec.tls.aio")
    async with gba_network(tmp_path) as net, naf_gateway(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI, nafs=("mn-cse-123456.in.provider.com",))
        device = net.device()
        with pytest.raises(HandshakeError):
            await device.connect("127.0.0.1", _port(gw), NAF_FQDN)
        assert "GUSS does not allow NAF id-in.in.provider.com" in caplog.text
        assert gw.stats.associations_established == 0
        # Refused at the NAF after one Zn answer per attempt; nothing reached ACME.
        assert net.bsf.stats.zn_refused >= 1 and gw.stats.requests_forwarded == 0


async def test_openssl_s_client_as_gba_device(acme: AcmeCse, tmp_path: Path) -> None:
    async with gba_network(tmp_path) as net, naf_gateway(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI)
        boot = await net.device().ensure_bootstrap()
        # Ks_NAF for NAF_Id = id-in.in.provider.com || 01 00 01 00 AE (TS 33.220 B.3, H.2).
        key = ks_ext_naf(
            boot.ks, boot.rand, boot.impi, naf_id(NAF_FQDN, ua_protocol_id_tls_psk(0xAE))
        )
        argv = [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{_port(gw)}",
            "-servername",
            NAF_FQDN,
            "-tls1_2",
            "-cipher",
            "PSK-AES128-CBC-SHA256",
            "-psk_identity",
            f"3GPP-bootstrapping;{boot.btid}",
            "-psk",
            key.hex(),
            "-quiet",
            "-ign_eof",
        ]
        done = await run([*argv, "-debug"], stdin=registration(acme.base, "C", "s-client-gba"))
        assert rsc(done.output) == "2001", done.output
        # s_client saw the seed's hint in ServerKeyExchange, in ASCII.
        assert "Received PSK identity hint '3GPP-bootstrapping'" in done.output
        (record,) = gw.recent_associations.values()
        assert record.cipher_suite == "PSK-AES128-CBC-SHA256"
        assert record.peer_id == f"12-{boot.btid}" and record.server_name == NAF_FQDN
        assert record.valid_until == boot.expires
        # The wrong key (Ks_NAF of the CBC suite used with GCM) is refused.
        bad = [a if a != "PSK-AES128-CBC-SHA256" else "PSK-AES128-GCM-SHA256" for a in argv]
        done = await run(bad, stdin=registration(acme.base, "C", "s-client-bad"))
        assert rsc(done.output) is None, done.output
        assert gw.stats.associations_established == 1


async def test_connect_cli_bootstraps_once_then_reuses_ks(acme: AcmeCse, tmp_path: Path) -> None:
    import json
    import os
    import stat
    import sys

    from tests.test_gba_framework import K1, OPC1

    async with gba_network(tmp_path) as net, naf_gateway(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI)
        base = [
            sys.executable,
            "-m",
            "m2msec.cli",
            "connect",
            f"https://127.0.0.1:{_port(gw)}{acme.base}",
            "--gba",
            "--bsf",
            net.bsf.ub_url(),
            "--impi",
            DEVICE_IMPI,
            "--k",
            K1.hex(),
            "--opc",
            OPC1.hex(),
            "--servername",
            NAF_FQDN,
            "--id-b",
            f"/{IN_CSE}",
        ]
        content = json.dumps(ae_content("cli-meter"))
        done = await run(
            [*base, "--from", "C", "-X", "POST", "--ty", "ae", "--content", content], timeout=30
        )
        assert done.returncode == 0, done.describe()
        assert "GBA: bootstrapped" in done.output and "2001" in done.output
        state = Path(os.environ["M2MSEC_HOME"]) / "gba-device.json"
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        saved = json.loads(state.read_text())[DEVICE_IMPI]
        boot_btid = saved["bootstrap"]["btid"]
        assert int(saved["sqnMs"], 16) > 0
        # A second run reuses Ks: no Ub run at the BSF.
        done = await run([*base, "--from", "Cx"], timeout=30)
        assert "GBA: reusing Ks of B-TID " + boot_btid in done.output, done.describe()
        assert "4103" in done.output  # a Credential-ID binding may only register an AE
        assert net.bsf.stats.bootstraps == 1
        # Key material never printed, nor stored in the clear.
        ks = net.bsf.store.get_session(boot_btid).ks
        assert ks.hex() not in done.output and ks.hex() not in state.read_text()
        assert K1.hex() not in state.read_text()
        # Missing GBA options: one clear line.
        done = await run([*base[:6], "--from", "C"], timeout=30)
        needs = "--gba needs --bsf, --impi, --k (or --k-file) and --opc"
        assert done.returncode != 0 and needs in done.output


async def test_device_registers_during_a_ub_challenge_flood(acme: AcmeCse, tmp_path: Path) -> None:
    """Issue 9 item 5: 1,000 unauthenticated Ub requests naming the device's IMPI (from
    another loopback address) neither step its SQN per request nor keep it out."""
    import asyncio

    from m2msec.gba.digest import Authorization

    async with gba_network(tmp_path) as net, naf_gateway(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI)
        sqn_before = net.bsf.store.get_subscriber(DEVICE_IMPI).sqn  # type: ignore[union-attr]
        host, port = net.bsf.ub_addresses[0]
        header = Authorization(
            username=DEVICE_IMPI, realm=BSF_FQDN, nonce="", uri="/", response="", algorithm=None
        ).header_value()
        request = (
            f"GET / HTTP/1.1\r\nHost: bsf\r\nContent-Length: 0\r\nAuthorization: {header}\r\n\r\n"
        ).encode()
        statuses: list[bytes] = []

        async def flood(count: int) -> None:
            reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0))
            try:
                for _ in range(count):
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    statuses.append(head.split(b" ", 2)[1])
                    length = next(
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    await reader.readexactly(length)
            finally:
                writer.close()

        flooding = asyncio.gather(*(flood(250) for _ in range(4)))
        await asyncio.sleep(0.05)
        device = net.device()
        conn = await device.connect("127.0.0.1", _port(gw), NAF_FQDN, id_b=f"/{IN_CSE}")
        client = OneM2MClient(conn)
        r = await client.request("POST", acme.base, origin="C", content=ae_content("fl"), ty=2)
        assert r.rsc == 2001, r.body
        await client.close()
        await flooding
        assert len(statuses) == 1000 and set(statuses) <= {b"401", b"429"}
        assert statuses.count(b"429") >= 900  # ub_burst 50 for 127.0.0.2, 127.0.0.1 unaffected
        assert net.bsf.stats.bootstraps == 1
        # At most two vectors (the flood's, used up by the device, and one more).
        assert net.bsf.stats.challenges <= 2
        sub = net.bsf.store.get_subscriber(DEVICE_IMPI)
        assert sub is not None and sub.sqn > sqn_before


async def test_update_of_a_gba_sa_bootstraps_again_for_a_fresh_ks_naf(
    acme: AcmeCse, tmp_path: Path
) -> None:
    """Seed 003 7.3.3 over GBA (issue 12 item 1): Update SA re-keys with a fresh Ks_NAF,
    not only a new TLS session: the device bootstraps again over Ub (a new B-TID, so the
    NAF fetches a new Ks_NAF over Zn) and the new SA is served."""
    async with gba_network(tmp_path) as net, naf_gateway(net, acme.url) as gw:
        net.add_subscriber(DEVICE_IMPI)
        device = net.device()

        async def open_association(host: str, port: int, timeout: float) -> TLSConnection:
            return await device.connect(host, port, NAF_FQDN, id_b=f"/{IN_CSE}", timeout=timeout)

        initiator = Initiator(
            None,  # type: ignore[arg-type]  # the device is given, not built from a table
            Transport.TLS,
            f"/{IN_CSE}",
            NAF_FQDN,
            gba=device,
            _open=open_association,
        )
        async with SecureSession(initiator, "127.0.0.1", _port(gw)) as session:
            first = await session.establish()
            r = await session.request("GET", acme.base, origin="C", ty=None)
            assert r.rsc in (2000, 4103)  # served (ACME's access rules decide the rest)
            outcome = await session.update()
            assert outcome.record is not None and outcome.replaced is not None
            assert outcome.record.sa_id != first.sa_id
            assert outcome.record.key_id != first.key_id  # a new B-TID ...
            assert net.bsf.stats.bootstraps == 2 and net.bsf.stats.zn_answered == 2  # ... Ks_NAF
            assert outcome.replaced.state.value == "updated"
            r = await session.request("GET", acme.base, origin="C", ty=None)
            assert r.rsc in (2000, 4103)
