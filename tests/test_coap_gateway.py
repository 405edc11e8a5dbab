"""The gateway's ``dtls://`` listeners: CoAP over DTLS in front of a real CSE (ACME).

TR-0038's lights reach the home gateway MN-CSE by DTLS-PSK (TS-0003 8.2.2.1, 10.2.2) or
DTLS with certificates (8.2.2.2) and speak the CoAP binding (TS-0008) with our own
:class:`CoapClient`; the gateway forwards over HTTP to ACME. The rules are the TLS
listeners' (same :meth:`Gateway.process`). Interop with libcoap is in
``test_interop_coap.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import OpaqueOption

from m2msec.bindings.coap.options import decode, encode
from m2msec.config import GatewayConfig, parse_config, parse_listen_url
from m2msec.errors import ConfigurationError
from m2msec.frameworks.certificate import CertificateCredential, CertificateInitiator
from m2msec.frameworks.provisioned import PskInitiator
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.servers.coap_gateway import MAX_BAD_MESSAGES
from m2msec.servers.gateway import Gateway
from m2msec.service.coap_client import CoapClient
from m2msec.store.sqlite import SqlitePskStore
from m2msec.tls.aio_dtls import DTLSAssociation, dtls_connect
from m2msec.tls.profiles import Transport
from tests.acme import AcmeCse, acme_fixture, ae_content
from tests.test_gateway import AE1, AE2, AE3, CRED, gateway_psk_store

CSE = "/mn-cse-123456"
DOMAIN = "in.provider.com"
SNI = "mn-cse-123456.in.provider.com"

acme = acme_fixture()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlitePskStore]:
    s = gateway_psk_store(tmp_path / "psk.db")
    yield s
    s.close()


def config(backend: str, listen: tuple[str, ...] = ("dtls://127.0.0.1:0",), **kw: Any) -> Any:
    return parse_config(
        {
            "gateway": {
                "listen": list(listen),
                "backend": backend,
                "cse_id": CSE,
                "backend_timeout": 5.0,
                # CRED registers under TS-0001's serviceSubscribedAppRule (issue 9).
                "app_rule": [{"credentials": ["12-" + CRED[0]], "allowed_aes": ["C*"]}],
                **kw,
            }
        }
    )


@contextlib.asynccontextmanager
async def running(
    cfg: Any, store: SqlitePskStore | None = None, **kw: Any
) -> AsyncIterator[Gateway]:
    gw = Gateway(cfg, store=store, **kw)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


def dtls_port(gw: Gateway) -> int:
    return next(i.port for i in gw.listeners if i.spec.scheme == "dtls")


async def associate(
    gw: Gateway, row: tuple[str, str, str | None], timeout: float = 10.0
) -> DTLSAssociation:
    initiator = PskInitiator(row[0], bytes.fromhex(row[1]), CSE, server_name=SNI)
    return await dtls_connect(
        initiator.profile(Transport.DTLS), "127.0.0.1", dtls_port(gw), timeout=timeout
    )


@contextlib.asynccontextmanager
async def light(gw: Gateway, row: tuple[str, str, str | None]) -> AsyncIterator[CoapClient]:
    """An ADN-AE with a TR-0038 row, associated with the gateway by DTLS-PSK."""
    client = CoapClient(await associate(gw, row))
    try:
        yield client
    finally:
        await client.close()


class Recorder(BaseHTTPRequestHandler):
    """A stand-in CSE that records what the gateway forwards (ACME does not echo headers).

    A mock on purpose: the test is about the HTTP request the gateway builds.
    """

    seen: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []
    delay: ClassVar[float] = 0.0

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        Recorder.seen.append((self.command, self.path, dict(self.headers), body))
        if Recorder.delay:
            threading.Event().wait(Recorder.delay)
        out = json.dumps({"m2m:cb": {"rn": "home-gw"}}).encode()
        self.send_response(200)
        self.send_header("X-M2M-RSC", "2000")
        self.send_header("X-M2M-RI", self.headers.get("x-m2m-ri", ""))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


@pytest.fixture
def recorder() -> Iterator[str]:
    Recorder.seen, Recorder.delay = [], 0.0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------- configuration


def test_dtls_listener_urls() -> None:
    spec = parse_listen_url("dtls://127.0.0.1:5684?framework=psk")
    assert (spec.scheme, spec.port, spec.framework, spec.secure) == ("dtls", 5684, "psk", True)
    # TCP and UDP ports are separate: tls:// and dtls:// may share a number.
    cfg = config("http://127.0.0.1:1", ("tls://127.0.0.1:5684", "dtls://127.0.0.1:5684"))
    assert [s.scheme for s in cfg.listen] == ["tls", "dtls"] and cfg.coap_response_options
    with pytest.raises(ConfigurationError, match="repeats"):
        config("http://127.0.0.1:1", ("dtls://127.0.0.1:5684", "dtls://127.0.0.1:5684"))
    with pytest.raises(ConfigurationError, match="coap_response_options"):
        config("http://127.0.0.1:1", coap_response_options="no")


# ----------------------------------------------------------------------------- with ACME


async def test_light_registers_creates_and_reads_over_coap(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    async with running(config(acme.url), store) as gw, light(gw, AE1) as ae1:
        r = await ae1.request(
            "POST", acme.base, origin="Clight-AE1", ty=2, content=ae_content("coap-light1")
        )
        assert (r.code, r.rsc) == (Code.CREATED, 2001), r.payload
        assert r.json()["m2m:ae"]["aei"] == "Clight-AE1"
        r = await ae1.request(
            "POST",
            acme.base + "/coap-light1",
            origin="Clight-AE1",
            ty=3,
            content={"m2m:cnt": {"rn": "state"}},
        )
        assert r.rsc == 2001, r.payload
        r = await ae1.request(
            "POST",
            acme.base + "/coap-light1/state",
            origin=f"{CSE}/Clight-AE1",
            ty=4,
            content={"m2m:cin": {"con": "on"}},
        )
        assert (r.code, r.rsc) == (Code.BAD_REQUEST, 4000)  # TS-0004 7.3.2.1: the stem only
        r = await ae1.request(
            "POST",
            acme.base + "/coap-light1/state",
            origin="Clight-AE1",
            ty=4,
            content={"m2m:cin": {"con": "on"}},
        )
        assert (r.code, r.rsc) == (Code.CREATED, 2001), r.payload
        r = await ae1.request("GET", acme.base + "/coap-light1/state/la", origin="Clight-AE1")
        assert (r.code, r.rsc) == (Code.CONTENT, 2000) and r.json()["m2m:cin"]["con"] == "on"
        assert r.request_id is not None and r.request_id.startswith("m2msec-coap-")
        ctx = ae1.assoc.context
        # Entity B's SA record is the DTLS association, with the mandatory CCM_8 suite.
        record = gw.recent_associations[ctx.sa_id]
        assert record.protocol == "DTLSv1.2" and "CCM8" in record.cipher_suite
        assert record.peer_id == "Clight-AE1" and record.key_id == AE1[0]
        assert gw.stats.dtls_associations == 1 and gw.stats.coap_requests == 5
        assert gw.stats.requests_forwarded == 4 and gw.stats.requests_refused == 1
    assert gw.stats.associations_closed == 1


async def test_impersonation_is_4_03_with_rsc_4106_and_never_reaches_acme(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    async with running(config(acme.url), store) as gw, light(gw, AE2) as ae2:
        r = await ae2.request(
            "POST", acme.base, origin="Clight-AE1", ty=2, content=ae_content("coap-impostor")
        )
        assert (r.code, r.rsc) == (Code.FORBIDDEN, 4106)
        assert "Clight-AE1" in r.json()["m2m:dbg"]
        r = await ae2.request("GET", acme.base, origin="/mn-cse-123456/Clight-AE1")
        assert (r.code, r.rsc) == (Code.FORBIDDEN, 4106)
        assert gw.stats.refused_by_rule["originator-mismatch"] == 2
        assert gw.stats.requests_forwarded == 0
    assert acme.retrieve(acme.base + "/coap-impostor").status_code == 404


async def test_coap_credential_cannot_take_an_owned_ae_id(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    # Issue 9 item 1 over CoAP: the same Gateway.process answers, mapped to 4.03.
    async with running(config(acme.url), store) as gw, light(gw, CRED) as dev:
        r = await dev.request("POST", acme.base, origin="Clight-AE1", ty=2,
                              content=ae_content("coap-stolen"))
        assert (r.code, r.rsc) == (Code.FORBIDDEN, 4103)
        r = await dev.request("POST", acme.base, origin="Scoap", ty=2,
                              content=ae_content("coap-stolen"))
        assert (r.code, r.rsc) == (Code.FORBIDDEN, 4126)
        assert gw.stats.refused_by_rule["identity-owned"] == 1
        assert gw.stats.requests_forwarded == 0
    assert acme.retrieve(acme.base + "/coap-stolen").status_code == 404

async def test_credential_bound_light_registers_first_over_coap(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    async with running(config(acme.url), store) as gw, light(gw, CRED) as dev:
        r = await dev.request("GET", acme.base, origin="Cany")
        # Register an AE first (docs/readings.md A-13).
        assert (r.code, r.rsc) == (Code.FORBIDDEN, 4103)
        r = await dev.request("POST", acme.base, origin="C", ty=2, content=ae_content("coap-cred"))
        assert r.rsc == 2001, r.payload
        aei = r.json()["m2m:ae"]["aei"]
        assert gw.stats.registrations_bound == 1
        r = await dev.request("GET", acme.base + "/coap-cred", origin=aei)
        assert (r.code, r.rsc) == (Code.CONTENT, 2000)
        r = await dev.request("GET", acme.base, origin="Cother")
        assert r.rsc == 4106


async def test_large_content_goes_blockwise_both_ways(acme: AcmeCse, store: SqlitePskStore) -> None:
    big = "x" * 4000  # well beyond one 1200-octet DTLS record
    async with running(config(acme.url), store) as gw, light(gw, AE3) as ae3:
        r = await ae3.request(
            "POST", acme.base, origin="Clight-AE3", ty=2, content=ae_content("coap-big")
        )
        assert r.rsc == 2001
        r = await ae3.request(
            "POST",
            acme.base + "/coap-big",
            origin="Clight-AE3",
            ty=3,
            content={"m2m:cnt": {"rn": "blob", "mbs": 100000}},
        )
        assert r.rsc == 2001, r.payload
        r = await ae3.request(
            "POST",
            acme.base + "/coap-big/blob",
            origin="Clight-AE3",
            ty=4,
            content={"m2m:cin": {"con": big}},
        )
        assert r.rsc == 2001, r.payload
        r = await ae3.request("GET", acme.base + "/coap-big/blob/la", origin="Clight-AE3")
        assert r.rsc == 2000 and r.json()["m2m:cin"]["con"] == big
        assert gw.stats.requests_forwarded == 4  # each block-wise exchange reached ACME once


async def test_expired_key_is_4107_and_closes_the_association(
    acme: AcmeCse, store: SqlitePskStore
) -> None:
    later = datetime.now(UTC) + timedelta(hours=2)  # past AE3's Kpsa lifetime
    async with running(config(acme.url), store, clock=lambda: later) as gw:
        client = CoapClient(await associate(gw, AE3))
        r = await client.request("GET", acme.base, origin="Clight-AE3")
        assert (r.code, r.rsc) == (Code.FORBIDDEN, 4107)
        await asyncio.wait_for(client.assoc.wait_closed(), 5)
        assert gw.stats.refused_by_rule["association-expired"] == 1


def _certificate_gateway(
    acme: AcmeCse, tmp_path: Path, ae: str, listen: str
) -> tuple[GatewayConfig, CertificateAuthority, Path, Path]:
    """A gateway config on certificates from a fresh CA, and a certificate naming ``ae``."""
    ca = CertificateAuthority.init(tmp_path / "ca", domain=DOMAIN)
    gw_key, gw_cert = write_credential(ca.issue(CSE), tmp_path / "gw")
    ae_key, ae_cert = write_credential(ca.issue(f"{CSE}/{ae}"), tmp_path / "ae")
    cfg = parse_config(
        {
            "gateway": {
                "listen": [listen],
                "backend": acme.url,
                "cse_id": CSE,
                "in_domain": DOMAIN,
            },
            "certificates": {"cert": str(gw_cert), "key": str(gw_key), "ca": str(ca.cert_path)},
        }
    )
    return cfg, ca, ae_cert, ae_key


async def test_certificate_light_over_dtls(acme: AcmeCse, tmp_path: Path) -> None:
    cfg, ca, ae_cert, ae_key = _certificate_gateway(
        acme, tmp_path, "Clight-AE7", "dtls://127.0.0.1:0?framework=certificate"
    )
    async with running(cfg) as gw:
        initiator = CertificateInitiator(
            CertificateCredential.from_files(ae_cert, ae_key, ca.cert_path), CSE, in_domain=DOMAIN
        )
        assoc = await dtls_connect(
            initiator.profile(transport=Transport.DTLS),
            "127.0.0.1",
            dtls_port(gw),
            server_name=SNI,
            timeout=10,
        )
        client = CoapClient(assoc)
        r = await client.request(
            "POST", acme.base, origin="Clight-AE7", ty=2, content=ae_content("coap-cert7")
        )
        assert (r.code, r.rsc) == (Code.CREATED, 2001), r.payload
        r = await client.request("GET", acme.base + "/coap-cert7", origin="Clight-AE7")
        assert (r.code, r.rsc) == (Code.CONTENT, 2000) and r.json()["m2m:ae"]["aei"] == "Clight-AE7"
        r = await client.request("GET", acme.base, origin="Clight-AE1")
        assert (r.code, r.rsc) == (Code.FORBIDDEN, 4106)
        record = gw.recent_associations[assoc.context.sa_id]
        assert record.framework.value == "certificate" and record.protocol == "DTLSv1.2"
        await client.close()


async def test_connect_cli_speaks_coaps_with_certificates(acme: AcmeCse, tmp_path: Path) -> None:
    cfg, ca, ae_cert, ae_key = _certificate_gateway(
        acme, tmp_path, "Clight-AE8", "dtls://127.0.0.1:0"
    )
    async with running(cfg) as gw:
        argv = [
            sys.executable,
            "-m",
            "m2msec.cli",
            "connect",
            f"coaps://127.0.0.1:{dtls_port(gw)}{acme.base}",
            "--from",
            "Clight-AE8",
            "--id-b",
            CSE,
            "--cert",
            str(ae_cert),
            "--key",
            str(ae_key),
            "--ca",
            str(ca.cert_path),
            "--servername",
            SNI,
            "-X",
            "POST",
            "--ty",
            "ae",
            "--content",
            json.dumps(ae_content("coap-cert8")),
        ]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "CoAP 2.01 Created  oneM2M-RSC: 2001" in text and '"aei": "Clight-AE8"' in text
    assert "DTLSv1.2" in text


# ----------------------------------------------------------------------------- recorder backend


async def test_forwarded_request_carries_parameters_and_identity(
    recorder: str, store: SqlitePskStore
) -> None:
    async with running(config(recorder), store) as gw, light(gw, AE1) as ae1:
        r = await ae1.request(
            "POST",
            "/~/mn-cse-123456/home-gw?rcn=1&lbl=a%20b",
            origin="Clight-AE1",
            ty=4,
            content={"m2m:cin": {"con": "x"}},
            request_id="rq-77",
            extra={"rqet": "20300101T000000", "vsi": "v1"},
        )
        assert r.rsc == 2000
        method, path, headers, body = Recorder.seen[-1]
        h = {k.lower(): v for k, v in headers.items()}
        assert (method, path) == ("POST", "/~/mn-cse-123456/home-gw?rcn=1&lbl=a%20b")
        assert h["x-m2m-origin"] == "Clight-AE1" and h["x-m2m-ri"] == "rq-77"
        assert h["x-m2m-rvi"] == "3" and h["x-m2m-ret"] == "20300101T000000"
        assert h["x-m2m-vsi"] == "v1" and h["content-type"] == "application/json;ty=4"
        assert json.loads(body) == {"m2m:cin": {"con": "x"}}
        ctx = ae1.assoc.context
        assert h["x-m2msec-peer-id"] == "/mn-cse-123456/Clight-AE1"
        assert h["x-m2msec-framework"] == "provisioned-psk" and h["x-m2msec-key-id"] == AE1[0]
        assert h["x-m2msec-sa-id"] == ctx.sa_id
        assert not any(AE1[1] in v for v in h.values())  # never the key


async def test_slow_backend_gets_a_separate_answer(recorder: str, store: SqlitePskStore) -> None:
    Recorder.delay = 1.6  # past the gateway's 1 s ACK delay
    async with running(config(recorder), store) as gw, light(gw, AE1) as ae1:
        r = await ae1.request("GET", "/~/mn-cse-123456/home-gw", origin="Clight-AE1")
        assert (r.code, r.rsc) == (Code.CONTENT, 2000)
        assert ae1.separate_answers == 1 and ae1.retransmissions == 0
        assert len(Recorder.seen) == 1  # acknowledged in time: no duplicate reached the CSE


async def test_parameters_can_be_left_out_for_generic_clients(
    recorder: str, store: SqlitePskStore
) -> None:
    async with (
        running(config(recorder, coap_response_options=False), store) as gw,
        light(gw, AE1) as ae1,
    ):
        r = await ae1.request("GET", "/~/mn-cse-123456/home-gw", origin="Clight-AE1")
        assert r.code == Code.CONTENT and r.rsc is None and r.params == {}
        r = await ae1.request("GET", "/~/mn-cse-123456/home-gw", origin="Clight-AE2")
        assert r.code == Code.FORBIDDEN and r.rsc is None and "m2m:dbg" in r.json()


async def test_garbage_inside_a_session_is_dropped_and_others_are_served(
    recorder: str, store: SqlitePskStore
) -> None:
    async with running(config(recorder), store) as gw, light(gw, AE2) as other:
        bad = await associate(gw, AE1)
        bad.send(b"\x00\xff garbage that is not CoAP")  # not even a CoAP header: dropped
        bad.send(bytes([0x40, 0x01, 0xBE, 0xEF, 0xF1, 0x00]))  # CON header, broken option
        rst = decode(await asyncio.wait_for(bad.recv(), 5))
        assert (rst.mtype, rst.mid, rst.code) == (Type.RST, 0xBEEF, Code.EMPTY)
        # An unknown critical option is answered 4.02 (RFC 7252 5.4.1).
        m = Message(code=Code.GET, uri_path=("~", "mn-cse-123456", "home-gw"))
        m.mtype, m.mid, m.token = Type.CON, 0x0101, b"k"
        m.opt.add_option(OpaqueOption(2051, b"?"))
        bad.send(encode(m))
        answer = decode(await asyncio.wait_for(bad.recv(), 5))
        assert (answer.mtype, answer.mid, answer.code) == (Type.ACK, 0x0101, Code.BAD_OPTION)
        # The same session still works...
        client = CoapClient(bad)
        r = await client.request("GET", "/~/mn-cse-123456/home-gw", origin="Clight-AE1")
        assert r.rsc == 2000
        # ... until it sends nothing but garbage: then the gateway closes it.
        for _ in range(MAX_BAD_MESSAGES):
            bad.send(b"\xff" * 20)
        await asyncio.wait_for(bad.wait_closed(), 5)
        assert gw.stats.coap_bad_messages >= MAX_BAD_MESSAGES + 2
        # The other light never noticed.
        r = await other.request("GET", "/~/mn-cse-123456/home-gw", origin="Clight-AE2")
        assert r.rsc == 2000
        assert len(Recorder.seen) == 2


async def test_wrong_psk_fails_the_handshake_and_is_counted(
    recorder: str, store: SqlitePskStore
) -> None:
    async with running(config(recorder, handshake_timeout=2.0), store) as gw:
        wrong = (AE1[0], "00" * 8, AE1[2])
        with pytest.raises(Exception, match=r"timed out|handshake"):
            await associate(gw, wrong, timeout=3.0)
        for _ in range(50):
            if gw.stats.handshakes_failed:
                break
            await asyncio.sleep(0.1)
        assert gw.stats.handshakes_failed == 1 and gw.stats.associations_established == 0
        async with light(gw, AE1) as ae1:
            assert (
                await ae1.request("GET", "/~/mn-cse-123456/home-gw", origin="Clight-AE1")
            ).rsc == 2000


async def test_credential_cap_covers_dtls_associations(
    recorder: str, store: SqlitePskStore
) -> None:
    # Issue 9 item 2: the per-credential cap counts DTLS associations too; refuse-new.
    cfg = config(recorder, max_associations_per_credential=1)
    async with running(cfg, store) as gw, light(gw, AE1) as ae1:
        assert (await ae1.request("GET", CSE, origin="Clight-AE1")).rsc == 2000
        second = await associate(gw, AE1)
        assert await asyncio.wait_for(second.recv(), 5) == b""  # close_notify
        second.close()
        assert gw.stats.associations_over_credential_cap == 1
        assert (await ae1.request("GET", CSE, origin="Clight-AE1")).rsc == 2000
