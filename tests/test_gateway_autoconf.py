"""Less to configure (tracker issue 14 item 6): the gateway learns its CSE-ID from the
backend's CSEBase and its IN domain from its own certificate.

Against ACME (tests/acme.py, an MN-CSE ``/mn-cse-123456``):

* no ``cse_id``: the started gateway holds ACME's csi, says so in its log, and an
  ``openssl s_client`` device registers through it (the learned CSE-ID is the registrar
  of its AE-ID);
* ``m2msec gateway serve`` without ``--cse-id`` prints the learned CSE-ID in its banner;
* a backend that never answers: a clear error after the bounded back-off, exit 1;
* an originator ACME refuses: a clear error at once (no retry);
* a CSEBase answer without ``csi`` (a small fake backend): a clear error;
* with ``[certificates]`` and no ``in_domain``: the domain of the gateway's own
  certificate, and ``gnutls-cli`` associates by certificate; a certificate that names
  another CSE is refused at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from m2msec.config import parse_config
from m2msec.errors import CertificateError, ConfigurationError
from m2msec.ids import CseId
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.pki.names import in_domain_of
from m2msec.servers.cse_base import CseBaseError
from m2msec.servers.gateway import Gateway
from tests.acme import AcmeCse, acme_fixture
from tests.interop import free_port, psk_s_client, run, spawn, tr0038_store

pytestmark = pytest.mark.interop

acme = acme_fixture()

CSE = CseId.parse("/mn-cse-123456")
DOMAIN = "in.provider.com"


def config(backend: str, **gateway: Any) -> dict[str, Any]:
    return {"gateway": {"listen": ["tls://127.0.0.1:0"], "backend": backend, **gateway}}


def registration(base: str, origin: str, rn: str) -> bytes:
    body = json.dumps({"m2m:ae": {"rn": rn, "api": "Nautoconf", "rr": False, "srv": ["3"]}})
    head = (
        f"POST {base} HTTP/1.1\r\nHost: gw\r\nX-M2M-Origin: {origin}\r\nX-M2M-RI: ac-1\r\n"
        "X-M2M-RVI: 3\r\nContent-Type: application/json;ty=2\r\nAccept: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body.encode()


async def test_cse_id_learned_from_acme_and_a_device_registers(
    acme: AcmeCse, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="m2msec.servers.gateway")
    cfg = parse_config(config(acme.url, cse_base_timeout=10.0) | {"psk": {}})
    assert cfg.cse_id_source == "pending"
    store = tr0038_store(tmp_path / "psk.db")
    try:
        async with Gateway(cfg, store=store) as gw:
            assert gw.config.cse_id == CSE and gw.config.cse_id_source == "backend"
            assert str(gw.config.egress) == "()"
            assert any(
                m == f"CSE-ID {CSE} learned from the backend {acme.url} (its CSEBase csi)"
                for m in caplog.messages
            ), caplog.messages
            done = await run(
                psk_s_client(gw.listeners[0].port, "-tls1_2", "-quiet", "-ign_eof"),
                stdin=registration(acme.base, "Clight-AE1", "autoconf-light"),
            )
            assert re.search(r"X-M2M-RSC:\s*2001", done.output, re.I), done.describe()
            assert re.search(r'"aei":\s*"Clight-AE1"', done.output), done.output
            assert gw.stats.requests_forwarded == 1
    finally:
        store.close()


async def test_a_reload_keeps_the_cse_id_learned_from_the_backend(
    acme: AcmeCse, tmp_path: Path
) -> None:
    """The re-read TOML still has no cse_id: the reload keeps the learned one (it is not
    refused as a change of gateway.cse_id, nor put back to pending)."""
    document = config(acme.url, cse_base_timeout=10.0) | {"psk": {}}
    store = tr0038_store(tmp_path / "psk.db")
    try:
        async with Gateway(parse_config(document), store=store) as gw:
            gw.config_source = lambda: parse_config(document)
            outcome = await gw.reload()
            assert outcome.applied, outcome.message
            assert gw.config.cse_id == CSE and gw.config.cse_id_source == "backend"
            moved = config(acme.url, cse_id="/other-cse") | {"psk": {}}
            gw.config_source = lambda: parse_config(moved)
            outcome = await gw.reload()
            assert not outcome.applied and "gateway.cse_id" in outcome.message
            assert gw.config.cse_id == CSE
    finally:
        store.close()


async def test_serve_without_cse_id_prints_the_learned_one(acme: AcmeCse, tmp_path: Path) -> None:
    tr0038_store(tmp_path / "psk.db").close()
    port = free_port()
    argv = [
        sys.executable, "-m", "m2msec.cli", "gateway", "serve",
        "--listen", f"tls://127.0.0.1:{port}", "--backend", acme.url,
        "--store", str(tmp_path / "psk.db"), "--admin-socket", "",
    ]  # fmt: skip
    async with spawn(argv) as server:
        await server.expect(r"CSE-ID\W+/mn-cse-123456 \(learned from the backend's CSEBase\)", 30)
        await server.expect(r"CSE-ID /mn-cse-123456 learned from the backend", 5)


async def test_a_backend_that_never_answers_is_a_clear_error(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    toml = tmp_path / "gw.toml"
    toml.write_text(
        f'[gateway]\nlisten = ["tls://127.0.0.1:0"]\nbackend = "{dead}"\n'
        "cse_base_timeout = 1.5\n[psk]\n"
    )
    tr0038_store(tmp_path / "psk.db").close()
    argv = [
        sys.executable, "-m", "m2msec.cli", "gateway", "serve", "--config", str(toml),
        "--store", str(tmp_path / "psk.db"), "--admin-socket", "",
    ]  # fmt: skip
    started = time.monotonic()
    done = await run(argv, timeout=30)
    took = time.monotonic() - started
    assert done.returncode == 1, done.describe()
    assert f"error: the backend {dead} gave no CSE-ID within 1.5 s" in done.output
    assert "give --cse-id or [gateway] cse_id" in done.output
    retries = re.findall(r"has not answered the CSEBase RETRIEVE .*; again in", done.output)
    assert 2 <= len(retries) <= 6, done.output  # bounded back-off: 0.25, 0.5, 0.75 (the rest)
    assert took < 20, took


async def test_an_originator_the_cse_refuses_ends_at_once(acme: AcmeCse) -> None:
    cfg = parse_config(config(acme.url, cse_base_origin="Cnobody", cse_base_timeout=20.0))
    started = time.monotonic()
    with pytest.raises(CseBaseError, match=r"refused the CSEBase RETRIEVE \(HTTP 403, RSC 4103"):
        async with Gateway(cfg):
            pass
    assert time.monotonic() - started < 5  # no retry on a refusal


@pytest.fixture
async def no_csi_backend() -> AsyncIterator[str]:
    """An HTTP server answering every request 2000 with an m2m:cb lacking csi."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"m2m:cb": {"rn": "cse-in", "ri": "x"}}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nX-M2M-RSC: 2000\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


async def test_a_cse_base_without_csi_is_a_clear_error(no_csi_backend: str) -> None:
    cfg = parse_config(config(no_csi_backend))
    with pytest.raises(CseBaseError, match="without a csi"):
        async with Gateway(cfg):
            pass


def test_in_domain_of_reads_the_cse_public_domain_name(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", domain=DOMAIN)
    cse_cert = x509.load_pem_x509_certificate(ca.issue(str(CSE)).cert_pem)
    assert in_domain_of(cse_cert) == DOMAIN
    assert in_domain_of(cse_cert, CSE) == DOMAIN
    with pytest.raises(CertificateError, match=r"names no other-cse\.<domain>"):
        in_domain_of(cse_cert, CseId.parse("/other-cse"))
    ae_cert = x509.load_pem_x509_certificate(ca.issue(f"{CSE}/Cae-1").cert_pem)
    with pytest.raises(CertificateError, match=r"names no CSE public domain name .*URI:"):
        in_domain_of(ae_cert)


async def test_in_domain_from_our_certificate_and_gnutls_associates(
    acme: AcmeCse, tmp_path: Path
) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", domain=DOMAIN)
    gw_key, gw_cert = write_credential(ca.issue(str(CSE)), tmp_path / "gw")
    ae_key, ae_cert = write_credential(ca.issue(f"{CSE}/Cgnutls-auto"), tmp_path / "ae")
    certificates = {"cert": str(gw_cert), "key": str(gw_key), "ca": str(ca.cert_path)}
    cfg = parse_config(config(acme.url) | {"certificates": certificates})
    assert cfg.in_domain == DOMAIN and cfg.in_domain_source == "certificate"
    async with Gateway(cfg) as gw:
        assert gw.config.cse_id == CSE and gw.config.in_domain == DOMAIN
        argv = [
            "gnutls-cli", "--port", str(gw.listeners[0].port),
            "--x509cafile", str(ca.cert_path), "--x509certfile", str(ae_cert),
            "--x509keyfile", str(ae_key), "--sni-hostname", f"{CSE.relative}.{DOMAIN}",
            "--verify-hostname", f"{CSE.relative}.{DOMAIN}", "127.0.0.1",
        ]  # fmt: skip
        # gnutls-cli says goodbye as soon as its stdin ends: keep it open for the answer.
        async with spawn(argv) as cli:
            await cli.expect("Handshake was completed")
            cli.write(registration(acme.base, "Cgnutls-auto", "gnutls-auto"))
            await cli.expect(r"X-M2M-RSC:\s*2001")
        assert gw.stats.requests_forwarded == 1


async def test_a_certificate_naming_another_cse_is_refused_at_start(
    acme: AcmeCse, tmp_path: Path
) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", domain=DOMAIN)
    key, cert = write_credential(ca.issue("/other-cse"), tmp_path / "gw")
    certificates = {"cert": str(cert), "key": str(key), "ca": str(ca.cert_path)}
    cfg = parse_config(config(acme.url) | {"certificates": certificates})
    assert cfg.in_domain == DOMAIN  # read before the CSE-ID is known: any CSE's name
    with pytest.raises(ConfigurationError, match=r"names no mn-cse-123456\.<domain>"):
        async with Gateway(cfg):
            pass
