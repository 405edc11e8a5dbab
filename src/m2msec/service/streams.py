"""The byte-stream shape the servers' HTTP loops read from and write to.

:class:`~m2msec.tls.aio.TLSConnection` has it already; :class:`PlainStream` gives asyncio's
streams the same shape for the plain ``http://`` listeners (the gateway's 4107 listener,
the BSF's Ub).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

__all__ = ["PlainStream", "Stream"]


class Stream(Protocol):
    async def recv(self) -> bytes: ...

    async def send(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class PlainStream:
    """asyncio streams with the TLSConnection shape."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def recv(self) -> bytes:
        """The next bytes; ``b""`` once the peer has closed or reset the connection."""
        try:
            return await self._reader.read(65536)
        except ConnectionError:
            return b""

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):  # includes ConnectionError
            await self._writer.wait_closed()
