"""CoAP over DTLS with programs we did not write: libcoap's clients and server, ACME.

* ``coap-client-openssl`` and ``coap-client-gnutls`` (``-u IDENTITY -k KEY``) associate
  with the gateway by DTLS-PSK, register an AE, create a container and a content
  instance and read them back; the gateway forwards to ACME over HTTP. The oneM2M
  parameters are given as raw options (``-O 279,<From>``, ``-O 283,<RQI>``,
  ``-O 267,0x04`` for the uint Resource Type, TS-0008 V3.7.0 numbers).
* ``m2msec gateway serve --listen dtls://...`` as a process, with coap-client.
* ``m2msec connect coaps://...`` against ``coap-server-openssl`` with PSK.

libcoap 4.3 rejects answers that carry critical options it does not know (RFC 7252
5.4.1), which TS-0008 V3.7.0 made every oneM2M option; the gateways here therefore run
with ``coap_response_options = false`` (docs/gateway.md), and libcoap's server answers
4.02 to a request with oneM2M options (asserted below).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from m2msec.config import parse_config
from m2msec.servers.gateway import Gateway
from m2msec.store.base import PskEntry
from m2msec.store.sqlite import SqlitePskStore
from tests.acme import AcmeCse, acme_fixture, ae_content
from tests.interop import Completed, free_udp_port, require, run, spawn

pytestmark = pytest.mark.interop

acme = acme_fixture()

CSE = "/mn-cse-123456"
# libcoap 4.3's -k takes the key as text, so these Kpsa are printable (16+ octets).
ROWS = {
    "coap-client-openssl": (
        "AE123456789021-Lamp@in.provider.com",
        "oneM2M-Kpsa-libcoap-openssl",
        "Ccoap-ossl",
    ),
    "coap-client-gnutls": (
        "AE123456789022-Lamp@in.provider.com",
        "oneM2M-Kpsa-libcoap-gnutls",
        "Ccoap-gnutls",
    ),
    "refusals": (
        "AE123456789024-Lamp@in.provider.com",
        "oneM2M-Kpsa-libcoap-refusals",
        "Ccoap-refusals",
    ),
    "cli": ("AE123456789023-Lamp@in.provider.com", "oneM2M-Kpsa-libcoap-cli-0001", "Ccoap-cli"),
}
CODE = re.compile(r"v:1 t:(?:ACK|CON|NON) c:(\d\.\d\d) ")


@pytest.fixture
def store(tmp_path: Path) -> SqlitePskStore:
    s = SqlitePskStore(tmp_path / "psk.db")
    s.add_many([PskEntry(kid, key.encode(), ae) for kid, key, ae in ROWS.values()])
    return s


@contextlib.asynccontextmanager
async def gateway(acme: AcmeCse, store: SqlitePskStore) -> AsyncIterator[Gateway]:
    cfg = parse_config(
        {
            "gateway": {
                "listen": ["dtls://127.0.0.1:0"],
                "backend": acme.url,
                "cse_id": CSE,
                "coap_response_options": False,
                "handshake_timeout": 5.0,
            }
        }
    )
    async with Gateway(cfg, store=store) as gw:
        yield gw


async def coap_client(
    program: str,
    url: str,
    row: tuple[str, str, str],
    tmp_path: Path,
    *,
    method: str = "get",
    origin: str | None = None,
    ty: int | None = None,
    content: object = None,
    options: tuple[str, ...] = (),
) -> tuple[Completed, str | None, bytes]:
    """Run libcoap's client once: (the run, the CoAP code answered, the payload received)."""
    out = tmp_path / f"answer-{program}.bin"
    out.unlink(missing_ok=True)
    argv = [program, "-B", "10", "-v", "6", "-u", row[0], "-k", row[1], "-m", method]
    argv += ["-o", str(out)]
    if origin is not None:
        argv += ["-O", f"279,{origin}", "-O", "283,libcoap-1", "-O", "271,3"]
    if ty is not None:
        argv += ["-O", f"267,0x{ty:02x}"]
    if content is not None:
        body = tmp_path / "request.json"
        body.write_text(json.dumps(content))
        argv += ["-t", "json", "-f", str(body)]
    argv += [*options, url]
    done = await run(argv, timeout=30)
    codes = CODE.findall(done.output)
    payload = out.read_bytes() if out.exists() else b""
    return done, codes[-1] if codes else None, payload


@pytest.mark.parametrize("program", ["coap-client-openssl", "coap-client-gnutls"])
async def test_libcoap_client_creates_and_reads_through_gateway(
    program: str, acme: AcmeCse, store: SqlitePskStore, tmp_path: Path
) -> None:
    require(program)
    row = ROWS[program]
    rn = program.replace("coap-client-", "lc-")
    async with gateway(acme, store) as gw:
        base = f"coaps://127.0.0.1:{gw.listeners[0].port}{acme.base}"

        async def call(path: str = "", **kw: object) -> tuple[Completed, str | None, bytes]:
            return await coap_client(program, base + path, row, tmp_path, **kw)  # type: ignore[arg-type]

        done, code, body = await call(method="post", origin=row[2], ty=2, content=ae_content(rn))
        assert code == "2.01", done.describe()
        assert json.loads(body)["m2m:ae"]["aei"] == row[2]
        done, code, body = await call(
            f"/{rn}", method="post", origin=row[2], ty=3, content={"m2m:cnt": {"rn": "state"}}
        )
        assert code == "2.01", done.describe()
        done, code, body = await call(
            f"/{rn}/state", method="post", origin=row[2], ty=4, content={"m2m:cin": {"con": "on"}}
        )
        assert code == "2.01", done.describe()
        done, code, body = await call(f"/{rn}/state/la", origin=row[2])
        assert code == "2.05" and json.loads(body)["m2m:cin"]["con"] == "on", done.describe()
        done, code, body = await call("", origin=row[2])  # the CSEBase
        assert code == "2.05" and "m2m:cb" in json.loads(body), done.describe()
        # Another AE's identity on this association: refused by the gateway itself.
        done, code, body = await call(f"/{rn}/state/la", origin="Ccoap-someone-else")
        # (libcoap prints an error answer's payload instead of writing it to -o.)
        assert code == "4.03" and "is not the authenticated AE" in done.output, done.describe()
        # Options of TS-0008 before V3.7.0 (From 256, RQI 257) are understood too.
        done, code, body = await call(
            f"/{rn}/state/la",
            options=("-O", f"256,{row[2]}", "-O", "257,old-numbers", "-O", "271,3"),
        )
        assert code == "2.05", done.describe()
        records = [c for c in gw.recent_associations.values() if c.key_id == row[0]]
        assert records and all(c.protocol == "DTLSv1.2" for c in records)
        # TS-0003 10.2.2: TLS_PSK_WITH_AES_128_CCM_8 is the suite both libcoap builds get.
        assert {c.cipher_suite for c in records} == {"PSK-AES128-CCM8"}
        assert gw.stats.dtls_associations == len(records) == 7
        assert gw.stats.requests_forwarded == 6 and gw.stats.requests_refused == 1
        # ACME holds what the device created.
        assert acme.retrieve(f"{acme.base}/{rn}/state/la").json()["m2m:cin"]["con"] == "on"


async def test_libcoap_with_wrong_key_is_refused_and_others_served(
    acme: AcmeCse, store: SqlitePskStore, tmp_path: Path
) -> None:
    require("coap-client-openssl")
    good = ROWS["refusals"]
    async with gateway(acme, store) as gw:
        url = f"coaps://127.0.0.1:{gw.listeners[0].port}{acme.base}"
        wrong = (good[0], "not-the-right-key-at-all", good[2])
        done, code, _ = await coap_client(
            "coap-client-openssl", url, wrong, tmp_path, origin=good[2], options=("-B", "4")
        )
        assert code is None, done.describe()
        unknown = ("AE000000000000-Nobody@in.provider.com", "whatever-key-text", "Cnobody")
        done, code, _ = await coap_client(
            "coap-client-openssl", url, unknown, tmp_path, origin="Cnobody", options=("-B", "4")
        )
        assert code is None, done.describe()
        done, code, _ = await coap_client(
            "coap-client-openssl",
            url,
            good,
            tmp_path,
            method="post",
            origin=good[2],
            ty=2,
            content=ae_content("lc-after-refusals"),
        )
        assert code == "2.01", done.describe()
        assert gw.stats.handshakes_failed >= 1 and gw.stats.associations_established == 1


async def test_gateway_serve_command_with_libcoap(
    acme: AcmeCse, store: SqlitePskStore, tmp_path: Path
) -> None:
    require("coap-client-gnutls")
    store.close()
    port = free_udp_port()
    config = tmp_path / "gateway.toml"
    config.write_text("[gateway]\ncoap_response_options = false\n")
    argv = [
        sys.executable,
        "-m",
        "m2msec.cli",
        "gateway",
        "serve",
        "--config",
        str(config),
        "--listen",
        f"dtls://127.0.0.1:{port}",
        "--backend",
        acme.url,
        "--cse-id",
        CSE,
        "--store",
        str(tmp_path / "psk.db"),
    ]
    row = ROWS["cli"]
    async with spawn(argv, line_buffered=True) as server:
        await server.expect(rf"dtls://127\.0\.0\.1:{port}", timeout=30)
        done, code, body = await coap_client(
            "coap-client-gnutls",
            f"coaps://127.0.0.1:{port}{acme.base}",
            row,
            tmp_path,
            method="post",
            origin=row[2],
            ty=2,
            content=ae_content("lc-serve"),
        )
        assert code == "2.01", done.describe() + "\n" + server.describe()
        assert json.loads(body)["m2m:ae"]["aei"] == row[2]
        done, code, body = await coap_client(
            "coap-client-gnutls",
            f"coaps://127.0.0.1:{port}{acme.base}/lc-serve",
            row,
            tmp_path,
            origin="Cimpostor",
        )
        assert code == "4.03", done.describe()
        await server.stop()
        assert re.search(r"association established: peer=/mn-cse-123456/Ccoap-cli", server.output)
        assert "stopped: " in server.output, server.describe()


# ----------------------------------------------------------------------------- our client


@contextlib.asynccontextmanager
async def libcoap_server(key: str) -> AsyncIterator[int]:
    """coap-server-openssl with one PSK; yields its DTLS port (its UDP port + 1)."""
    require("coap-server-openssl")
    for _ in range(5):
        port = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        argv = [
            "coap-server-openssl",
            "-A",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            key,
            "-h",
            "mn-cse-123456",
            "-v",
            "6",
        ]
        async with spawn(argv, line_buffered=True) as server:
            await asyncio.sleep(0.5)
            if not server.running:
                continue
            yield port + 1
            return
    pytest.fail("coap-server-openssl did not start")


async def connect(*args: str) -> Completed:
    return await run([sys.executable, "-m", "m2msec.cli", "connect", *args], timeout=60)


async def test_m2msec_connect_against_libcoap_server(tmp_path: Path) -> None:
    key = "oneM2M-Kpsa-libcoap-server-1"
    psk = [
        "--psk-identity",
        "AE123456789030-Lamp@in.provider.com",
        "--psk",
        key.encode().hex(),
        "--id-b",
        CSE,
        "--from",
        "Ccoap-connect",
    ]
    async with libcoap_server(key) as port:
        url = f"coaps://127.0.0.1:{port}"
        done = await connect(f"{url}/", *psk, "--coap-options", "none")
        assert done.returncode == 0, done.describe()
        assert "CoAP 2.05 Content" in done.output and "libcoap" in done.output
        assert "DTLSv1.2" in done.output and "PSK-AES128-CCM8" in done.output
        # Block-wise both ways: 3000 octets up (Block1) and back (Block2).
        data = {"state": "x" * 3000}
        done = await connect(
            f"{url}/example_data",
            *psk,
            "--coap-options",
            "none",
            "-X",
            "PUT",
            "--content",
            json.dumps(data),
        )
        assert done.returncode == 0 and re.search(r"CoAP 2\.0[14] ", done.output), done.describe()
        done = await connect(f"{url}/example_data", *psk, "--coap-options", "none")
        assert done.returncode == 0 and "CoAP 2.05 Content" in done.output, done.describe()
        assert done.output.count("x") >= 3000
        # With its oneM2M options (critical since TS-0008 V3.7.0) a generic server says 4.02.
        done = await connect(f"{url}/", *psk)
        assert done.returncode == 3 and "CoAP 4.02 Bad Option" in done.output, done.describe()
        # A wrong key never gets an association.
        bad = [*psk]
        bad[3] = b"wrong-key-wrong-key".hex()
        done = await connect(f"{url}/", *bad, "--coap-options", "none", "--timeout", "4")
        assert done.returncode != 0 and "security association failed" in done.output, (
            done.describe()
        )
