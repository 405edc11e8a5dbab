"""A slow-loris client for the servers' request-head deadline (shared by the server tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-M2M-Origin: Cslow\r\nX-M2M-RI: 1\r\n\r\n"


async def trickle_head(
    send: Callable[[bytes], Awaitable[None]],
    recv: Callable[[], Awaitable[bytes]],
    *,
    gap: float = 0.2,
    head: bytes = HEAD,
) -> tuple[bytes, float]:
    """Send ``head`` one byte per ``gap`` seconds; what the server answered, and how soon.

    The whole trickle takes ``len(head) * gap`` seconds (about 13 s); a server with a head
    deadline answers 408 long before.
    """
    got = bytearray()

    async def read_all() -> None:
        while data := await recv():
            got.extend(data)

    reader = asyncio.create_task(read_all())
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for byte in head:
            if reader.done():
                break
            with contextlib.suppress(ConnectionError, OSError):
                await send(bytes([byte]))
            await asyncio.sleep(gap)  # each byte well inside the idle timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 5)
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
    return bytes(got), loop.time() - start
