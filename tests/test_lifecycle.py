"""The one server lifecycle (m2msec.service.lifecycle) under the gateway, the MAF and the BSF.

The base class is driven through a small subclass (its two steps only record what they did)
and through the real servers: start once, a failed start leaves nothing open, close is safe
twice, and close lets a request being handled finish (its grace, SHUTDOWN_GRACE).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from m2msec.config import parse_config
from m2msec.servers.gateway import Gateway
from m2msec.service.lifecycle import ServerLifecycle
from tests.interop import tr0038_store
from tests.test_gateway import AE1, gateway_psk_store, gw_config, light


class Recorder(ServerLifecycle):
    what = "recorder"

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.steps: list[str] = []

    async def _open(self) -> None:
        self.steps.append("open")
        if self.fail:
            raise OSError("port in use")

    async def _shutdown(self) -> None:
        self.steps.append("shutdown")


async def test_start_once_close_once() -> None:
    server = Recorder()
    async with server:
        with pytest.raises(RuntimeError, match="recorder already started"):
            await server.start()
        assert not server.closing
    assert server.closing
    await server.close()
    assert server.steps == ["open", "shutdown"]


async def test_a_failed_start_shuts_down_what_it_opened() -> None:
    server = Recorder(fail=True)
    with pytest.raises(OSError, match="port in use"):
        await server.start()
    assert server.steps == ["open", "shutdown"] and server.closing


async def test_serve_forever_returns_closed_when_stopped() -> None:
    server = Recorder()
    await server.start()
    stop = asyncio.Event()
    task = asyncio.create_task(server.serve_forever(stop))
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert server.steps == ["open", "shutdown"]


async def test_gateway_refuses_a_second_start(tmp_path: Path) -> None:
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
    try:
        async with Gateway(cfg, store=store) as gw:
            with pytest.raises(RuntimeError, match="gateway already started"):
                await gw.start()
        await gw.close()  # a second close is harmless
    finally:
        store.close()


async def test_gateway_close_lets_a_forwarded_request_finish(tmp_path: Path) -> None:
    # The CSE behind the gateway (a raw HTTP stand-in that answers after 0.5 s) is still
    # working on a request when close() is called: the device gets its answer, then the
    # gateway ends. Nothing new is accepted meanwhile.
    seen = asyncio.Event()

    async def slow_cse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        seen.set()
        await asyncio.sleep(0.5)
        body = b'{"m2m:cb":{"ri":"cb"}}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nX-M2M-RSC: 2000\r\nX-M2M-RI: drain-1\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        await writer.drain()
        writer.close()

    cse = await asyncio.start_server(slow_cse, "127.0.0.1", 0)
    port = cse.sockets[0].getsockname()[1]
    store = gateway_psk_store(tmp_path / "psk.db")
    try:
        gw = Gateway(gw_config(f"http://127.0.0.1:{port}"), store=store)
        await gw.start()
        async with light(gw, AE1) as device:
            asked = asyncio.create_task(
                device.request("GET", "/~/mn-cse-123456/mn-cse", origin="Clight-AE1")
            )
            await asyncio.wait_for(seen.wait(), 5)
            closing = asyncio.create_task(gw.close())
            answer = await asyncio.wait_for(asked, 5)
            assert answer.rsc == 2000
            await asyncio.wait_for(closing, 10)
        assert gw.closing
    finally:
        await gw.close()
        cse.close()
        store.close()
