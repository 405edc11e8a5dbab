"""The one HTTP client's body cap and close handling, against openssl s_server (issue 10).

``openssl s_server -HTTP`` answers ``GET /<file>`` with the file's bytes, taken as a complete
HTTP response: the tests write one announcing (or streaming) 50 MiB. Before the service
layer, :class:`~m2msec.service.onem2m_client.OneM2MClient` read all of it.
"""

from __future__ import annotations

import asyncio

import pytest

from m2msec.bindings.http_client import HttpClientConnection, ResponseTooLarge
from m2msec.service.onem2m_client import MAX_RESPONSE_BODY, OneM2MClient
from m2msec.tls.aio import connect
from tests.interop import HOST, free_port, spawn
from tests.test_interop_psk import STEP, TR0038_KPSA_HEX, TR0038_KPSA_ID, initiator

FIFTY_MIB = 50 * 1024 * 1024


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(f"HTTP/1.1 200 OK\r\nContent-Length: {FIFTY_MIB}\r\n\r\n", id="announced"),
        pytest.param("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", id="until-close"),
    ],
)
async def test_a_50_mib_answer_is_refused_with_a_clear_error(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, head: str
) -> None:
    monkeypatch.chdir(tmp_path)  # s_server -HTTP serves files of its working directory
    with open("big.http", "wb") as out:
        out.write(head.encode())
        block = b"x" * (1024 * 1024)
        for _ in range(50):
            out.write(block)
    port = free_port()
    argv = [
        "openssl", "s_server", "-accept", f"{HOST}:{port}", "-nocert", "-naccept", "1",
        "-psk_identity", TR0038_KPSA_ID, "-psk", TR0038_KPSA_HEX,
        "-tls1_2", "-cipher", "PSK-AES128-CBC-SHA256", "-HTTP",
    ]  # fmt: skip
    async with spawn(argv) as server:
        await server.expect(r"^ACCEPT", STEP)
        conn = await connect(HOST, port, initiator(False), timeout=STEP)
        client = OneM2MClient(conn)
        try:
            with pytest.raises(ResponseTooLarge, match=f"cap is {MAX_RESPONSE_BODY} octets"):
                await asyncio.wait_for(client.request("GET", "/big.http", origin="C1"), STEP)
        finally:
            conn.abort()


def test_sending_after_connection_close_raises_connection_error() -> None:
    # ISSUE-NOTES, issue 7: ConnectionError, not h11.LocalProtocolError.
    http = HttpClientConnection()
    http.send_request("GET", "/", [("Host", "x")])
    answer = http.receive_data(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )
    assert answer is not None and answer.body == b"ok"
    assert not http.reusable
    with pytest.raises(ConnectionError, match="Connection: close"):
        http.send_request("GET", "/", [("Host", "x")])


def test_keep_alive_answers_in_turn_and_a_big_head_is_refused() -> None:
    http = HttpClientConnection()
    for n in range(2):
        http.send_request("GET", f"/{n}", [("Host", "x")])
        answer = http.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + b"%d" % n)
        assert answer is not None and answer.body == b"%d" % n
        assert http.reusable
    http.send_request("GET", "/", [("Host", "x")])
    with pytest.raises(ResponseTooLarge, match="head"):
        http.receive_data(b"HTTP/1.1 200 OK\r\nX-Big: " + b"y" * 20000)
