"""Programs we did not write speak oneM2M through the real gateway to a real CSE (ACME).

``openssl s_client`` associates by TLS-PSK with TR-0038's ADN-AE1 row and registers
Clight-AE1; ``gnutls-cli`` associates by certificate as an AE and registers it. The
gateway is the same object ``m2msec gateway serve`` runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from m2msec.config import CertificateConfig, GatewayConfig, PskConfig, parse_listen_url
from m2msec.ids import CseId
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.servers.gateway import Gateway
from tests.acme import AcmeCse, acme_fixture
from tests.interop import run, spawn, tr0038_store

pytestmark = pytest.mark.interop

acme = acme_fixture()


def registration(base: str, origin: str, rn: str) -> bytes:
    body = json.dumps({"m2m:ae": {"rn": rn, "api": "Ninterop", "rr": False, "srv": ["3"]}}).encode()
    head = (
        f"POST {base} HTTP/1.1\r\nHost: mn-cse-123456.in.provider.com\r\n"
        f"X-M2M-Origin: {origin}\r\nX-M2M-RI: interop-1\r\nX-M2M-RVI: 3\r\n"
        "Content-Type: application/json;ty=2\r\nAccept: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def rsc(output: str) -> str | None:
    match = re.search(r"X-M2M-RSC:\s*(\d+)", output, re.IGNORECASE)
    return match.group(1) if match else None


@pytest.fixture
async def psk_gateway(acme: AcmeCse, tmp_path: Path) -> AsyncIterator[Gateway]:
    store = tr0038_store(tmp_path / "psk.db")
    cfg = GatewayConfig(
        listen=(parse_listen_url("tls://127.0.0.1:0"),),
        backend=acme.url,
        cse_id=CseId.parse("/mn-cse-123456"),
        psk=PskConfig(),
    )
    async with Gateway(cfg, store=store) as gw:
        yield gw
    store.close()


async def test_openssl_s_client_registers_through_gateway(
    psk_gateway: Gateway, acme: AcmeCse
) -> None:
    port = psk_gateway.listeners[0].port
    base = f"/~/{acme.cse_id}/{acme.cse_name}"
    s_client = [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-tls1_2",
        "-cipher",
        "PSK-AES128-CBC-SHA256",
        "-psk",
        "1a2b3c4d5e6f7a8b",
        "-psk_identity",
        "AE123456789012-Light@in.provider.com",
        "-quiet",
        "-ign_eof",
    ]
    done = await run(
        s_client,
        stdin=registration(base, "Clight-AE1", "s-client-light"),
    )
    assert rsc(done.output) == "2001", done.output
    assert re.search(r'"aei":\s*"Clight-AE1"', done.output), done.output
    # The same association may not speak for another AE.
    done = await run(
        s_client,
        stdin=registration(base, "Clight-AE2", "impostor"),
    )
    assert rsc(done.output) == "4106", done.output
    assert psk_gateway.stats.requests_forwarded == 1


async def test_gnutls_cli_with_certificate_registers_through_gateway(
    acme: AcmeCse, tmp_path: Path
) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", domain="in.provider.com")
    gw_key, gw_cert = write_credential(ca.issue("/mn-cse-123456"), tmp_path / "gw")
    ae_key, ae_cert = write_credential(ca.issue("/mn-cse-123456/Cgnutls-ae"), tmp_path / "ae")
    cfg = GatewayConfig(
        listen=(parse_listen_url("tls://127.0.0.1:0"),),
        backend=acme.url,
        cse_id=CseId.parse("/mn-cse-123456"),
        in_domain="in.provider.com",
        certificates=CertificateConfig(cert=gw_cert, key=gw_key, ca=ca.cert_path),
    )
    async with Gateway(cfg) as gw:
        port = gw.listeners[0].port
        base = f"/~/{acme.cse_id}/{acme.cse_name}"
        argv = [
            "gnutls-cli",
            "--port",
            str(port),
            "--x509cafile",
            str(ca.cert_path),
            "--x509certfile",
            str(ae_cert),
            "--x509keyfile",
            str(ae_key),
            "--sni-hostname",
            "mn-cse-123456.in.provider.com",
            "--verify-hostname",
            "mn-cse-123456.in.provider.com",
            "127.0.0.1",
        ]
        # gnutls-cli says goodbye as soon as its stdin ends, so stdin stays open until
        # the answer is in.
        async with spawn(argv) as cli:
            await cli.expect("Handshake was completed")
            cli.write(registration(base, "Cgnutls-ae", "gnutls-ae"))
            await cli.expect(r"X-M2M-RSC: \d+")
            assert rsc(cli.output) == "2001", cli.output
        assert any(
            c.peer_id == "/mn-cse-123456/Cgnutls-ae" for c in gw.recent_associations.values()
        )


def retrieval(target: str, origin: str) -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: mn-cse-123456.in.provider.com\r\n"
        f"X-M2M-Origin: {origin}\r\nX-M2M-RI: interop-2\r\nX-M2M-RVI: 3\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    ).encode()


async def test_openssl_s_client_originator_rules_against_acme(
    psk_gateway: Gateway, acme: AcmeCse
) -> None:
    """TS-0004 7.3.2.1 through the gateway to ACME, device = openssl s_client over TLS-PSK:
    another AE's From is 4106, the SP-relative form of its own AE-ID is 4000 (From must be
    the AE-ID-Stem), the stem itself reaches ACME."""
    port = psk_gateway.listeners[0].port
    base = f"/~/{acme.cse_id}/{acme.cse_name}"
    s_client = [
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2",
        "-cipher", "PSK-AES128-CBC-SHA256", "-psk", "1a2b3c4d5e6f7a8b",
        "-psk_identity", "AE123456789012-Light@in.provider.com", "-quiet", "-ign_eof",
    ]
    target = base  # the CSEBase: ACME is session-wide, Clight-AE1 may be registered already
    done = await run(s_client, stdin=retrieval(target, "Clight-AE2"))
    assert rsc(done.output) == "4106", done.output
    done = await run(s_client, stdin=retrieval(target, "/mn-cse-123456/Clight-AE1"))
    assert rsc(done.output) == "4000", done.output
    assert "AE-ID-Stem" in done.output
    assert psk_gateway.stats.requests_forwarded == 0  # neither refusal reached ACME
    done = await run(s_client, stdin=retrieval(target, "Clight-AE1"))
    assert "Server: ACME" in done.output, done.output  # ACME's own access rules answer
    assert psk_gateway.stats.requests_forwarded == 1
