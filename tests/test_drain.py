"""Graceful drain of ``m2msec gateway serve`` (issue 14 item 3; docs/operations.md "Drain").

Through the shipped CLI, in front of a slow backend (a tiny HTTP server here that answers
after a delay): SIGTERM with a request in flight stops accepting, lets the request be
answered, ends the association with close_notify (``openssl s_client -state`` prints the
alert) and exits 0; a second SIGTERM during the drain exits at once, non-zero.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.gateway_process import (
    gateway_process,
    make_pki,
    registration,
    rscs,
    s_client,
    write_config,
)
from tests.interop import spawn, wait_until

pytestmark = pytest.mark.interop


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2MSEC_HOME", str(tmp_path / "home"))


class SlowBackend:
    """A CSE stand-in answering every request 2001 after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received = asyncio.Event()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            self.received.set()
            await asyncio.sleep(self.delay)
            body = json.dumps({"m2m:ae": {"rn": "slow", "aei": "Creload-ae"}}).encode()
            writer.write(
                b"HTTP/1.1 201 Created\r\nX-M2M-RSC: 2001\r\nX-M2M-RI: reg-1\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went, or the test ended while a request waited
        finally:
            writer.close()


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
async def slow() -> AsyncIterator[SlowBackend]:
    backend = SlowBackend(delay=2.0)
    backend.server = await asyncio.start_server(backend._serve, "127.0.0.1", 0)
    yield backend
    backend.server.close()


async def test_sigterm_answers_the_request_in_flight_sends_close_notify_exits_0(
    slow: SlowBackend, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    config, port = write_config(tmp_path, pki, slow.url, extra="drain_timeout = 15.0\n")
    async with gateway_process(config, port) as gw:
        async with spawn(s_client(pki, port, "-ign_eof", "-state")) as client:
            await client.expect("Verify return code: 0")
            client.write(registration("/~/mn-cse-123456/mn-name", "slow"))
            await asyncio.wait_for(slow.received.wait(), 20)
            gw.proc.send_signal(signal.SIGTERM)
            await gw.expect("SIGTERM: draining")
            # New connections are refused while the drain runs (the log line comes just
            # before the listener closes).
            await wait_until(lambda: not accepts(port), "the listener still accepts", 5)
            # The request in flight is answered, then the association ends by close_notify.
            await wait_until(lambda: rscs(client.output) == ["2001"], client.describe, 20)
            await client.expect("close notify")
            assert await client.wait(20) == 0
        assert await gw.wait(20) == 0, gw.describe()
    assert "gateway stopped" in gw.output


async def test_a_second_sigterm_exits_at_once(slow: SlowBackend, tmp_path: Path) -> None:
    slow.delay = 60.0  # the request would hold the drain for its whole timeout
    pki = make_pki(tmp_path)
    config, port = write_config(tmp_path, pki, slow.url, extra="drain_timeout = 60.0\n")
    async with (
        gateway_process(config, port) as gw,
        spawn(s_client(pki, port, "-ign_eof")) as client,
    ):
        await client.expect("Verify return code: 0")
        client.write(registration("/~/mn-cse-123456/mn-name", "slow"))
        await asyncio.wait_for(slow.received.wait(), 20)
        gw.proc.send_signal(signal.SIGTERM)
        await gw.expect("SIGTERM: draining")
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        code = await gw.wait(10)
        assert code != 0
        assert time.monotonic() - started < 5
        assert "second SIGTERM: exiting at once" in gw.output
