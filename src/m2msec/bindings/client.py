"""oneM2M HTTP-binding client over an established security association (Entity A).

Requests travel over a :class:`~m2msec.tls.aio.TLSConnection`, so every request is sent
within the security context established by the framework. HTTP framing is h11's.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import h11

from m2msec.tls.aio import TLSConnection

_request_ids = itertools.count(1)

#: oneM2M resource type codes used by the tools (TS-0004 6.3.4.2.1).
RESOURCE_TYPES = {"ae": 2, "cnt": 3, "cin": 4, "csr": 16, "sub": 23, "acp": 1, "grp": 9}


@dataclass(slots=True)
class OneM2MResponse:
    """A oneM2M response: HTTP status, Response Status Code and JSON content."""

    status: int
    rsc: int | None
    headers: dict[str, str]
    body: bytes = field(repr=False)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class OneM2MClient:
    """Sends oneM2M requests over one TLS association, keeping the connection alive."""

    def __init__(self, conn: TLSConnection, *, host: str = "m2msec", rvi: str = "3") -> None:
        self.conn = conn
        self.host = host
        self.rvi = rvi
        self._h11 = h11.Connection(h11.CLIENT)

    async def request(
        self,
        method: str,
        target: str,
        *,
        origin: str,
        content: Any = None,
        ty: int | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> OneM2MResponse:
        body = json.dumps(content).encode() if content is not None else b""
        headers = [
            ("Host", self.host),
            ("X-M2M-Origin", origin),
            ("X-M2M-RI", f"m2msec-{next(_request_ids)}"),
            ("X-M2M-RVI", self.rvi),
            ("Accept", "application/json"),
            ("Content-Length", str(len(body))),
        ]
        if body or ty is not None:
            ctype = "application/json" + (f";ty={ty}" if ty is not None else "")
            headers.append(("Content-Type", ctype))
        for k, v in (extra_headers or {}).items():
            headers.append((k, v))
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        out = self._h11.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            out += self._h11.send(h11.Data(data=body))
        out += self._h11.send(h11.EndOfMessage())
        await self.conn.send(out)
        return await self._read_response()

    async def _read_response(self) -> OneM2MResponse:
        response: h11.Response | None = None
        chunks: list[bytes] = []
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                data = await self.conn.recv()
                self._h11.receive_data(data)
                if not data and response is None:
                    raise ConnectionError("the server closed the association without answering")
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        assert response is not None
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in response.headers}
        rsc = headers.get("x-m2m-rsc")
        return OneM2MResponse(
            status=response.status_code,
            rsc=int(rsc) if rsc and rsc.isdigit() else None,
            headers=headers,
            body=b"".join(chunks),
        )

    async def close(self) -> None:
        await self.conn.close()
