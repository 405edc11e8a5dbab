"""HTTP edge cases at the gateway's ``tls://`` listener (issue 9 item 6, RFC 9112 6.1).

``openssl s_client`` is the raw device (TS-0003 8.2.2 PSK association, TR-0038 key): it
sends bytes that :class:`m2msec.bindings.http.HttpServerConnection` must refuse before
anything reaches the backend. The backend is a closed port: a refused request is never
forwarded, so none is needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from m2msec.config import parse_config
from m2msec.servers.gateway import Gateway
from tests.interop import psk_s_client, run, tr0038_store
from tests.test_interop_gateway import rsc

pytestmark = pytest.mark.interop

HEAD = (
    "POST /~/mn-cse-123456 HTTP/1.1\r\nHost: mn-cse-123456.in.provider.com\r\n"
    "X-M2M-Origin: Clight-AE1\r\nX-M2M-RI: edge-1\r\nX-M2M-RVI: 3\r\n"
    "Content-Type: application/json;ty=4\r\n"
)


def s_client(port: int) -> list[str]:
    # -ign_eof: s_client ends only when the gateway closes.
    return psk_s_client(
        port, "-tls1_2", "-cipher", "PSK-AES128-GCM-SHA256", "-nocommands", "-ign_eof", "-quiet"
    )


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    store = tr0038_store(tmp_path / "psk.db")
    cfg = parse_config(
        {
            "gateway": {
                "listen": ["tls://127.0.0.1:0"],
                "backend": "http://127.0.0.1:9",
                "cse_id": "/mn-cse-123456",
            },
            "psk": {},
        }
    )
    async with Gateway(cfg, store=store) as gw:
        yield gw
    store.close()


async def test_content_length_and_transfer_encoding_is_refused_and_closed(
    gateway: Gateway,
) -> None:
    body = HEAD + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    # No Connection: close - the gateway itself must end the connection.
    done = await run(s_client(gateway.listeners[0].port), stdin=body.encode())
    assert done.returncode == 0, done.describe()
    assert "HTTP/1.1 400" in done.output and rsc(done.output) == "4000", done.output
    assert "connection: close" in done.output.lower()
    assert gateway.stats.requests_forwarded == 0


@pytest.mark.parametrize("name", ["X_M2M_Origin", "X-M2MSec_Kind"])
async def test_underscore_lookalike_header_never_reaches_the_backend(
    gateway: Gateway, name: str
) -> None:
    body = HEAD + f"{name}: CAdmin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    done = await run(s_client(gateway.listeners[0].port), stdin=body.encode())
    assert "HTTP/1.1 400" in done.output and rsc(done.output) == "4000", done.output
    assert name.lower() in done.output
    assert gateway.stats.requests_forwarded == 0


async def test_request_line_without_version_is_answered_at_once(gateway: Gateway) -> None:
    # Without the fix the gateway waits for headers until its idle timeout: run() fails.
    done = await run(
        s_client(gateway.listeners[0].port), stdin=b"GET /~/mn-cse-123456\r\n", timeout=8.0
    )
    assert "HTTP/1.1 400" in done.output and rsc(done.output) == "4000", done.output
    assert gateway.stats.requests_forwarded == 0
