"""oneM2M HTTP-binding client over an established security association (Entity A).

The request primitive's parameters go in the HTTP headers of TS-0004 6.4 (``X-M2M-Origin``,
``X-M2M-RI``, ``X-M2M-RVI``, ``ty`` in ``Content-Type``). Requests travel over a
:class:`~m2msec.tls.aio.TLSConnection`, so every request is sent within the security context
established by the framework. HTTP is the service layer's one client
(:class:`~m2msec.service.client.HttpClient`): an answer whose body exceeds ``max_body``
(default :data:`MAX_RESPONSE_BODY`, 8 MiB) raises
:class:`~m2msec.bindings.http_client.ResponseTooLarge` instead of being read whole.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from m2msec.service.client import HttpClient
from m2msec.service.limits import HttpLimits
from m2msec.tls.aio import TLSConnection

_request_ids = itertools.count(1)

#: oneM2M resource type codes used by the tools (TS-0004 6.3.4.2.1).
RESOURCE_TYPES = {"ae": 2, "cnt": 3, "cin": 4, "csr": 16, "sub": 23, "acp": 1, "grp": 9}

#: Default cap on an answer's body (a discovery result may be large; 50 MiB is not read).
MAX_RESPONSE_BODY = 8 * 1024 * 1024


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

    def __init__(
        self,
        conn: TLSConnection,
        *,
        host: str = "m2msec",
        rvi: str = "3",
        max_body: int = MAX_RESPONSE_BODY,
    ) -> None:
        self.conn = conn
        self.host = host
        self.rvi = rvi
        self._http = HttpClient(conn, limits=HttpLimits(max_body=max_body))

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
        answer = await self._http.request(method, target, headers, body)
        headers_in = {k.lower(): v for k, v in answer.headers}
        rsc = headers_in.get("x-m2m-rsc")
        return OneM2MResponse(
            status=answer.status,
            rsc=int(rsc) if rsc and rsc.isdigit() else None,
            headers=headers_in,
            body=answer.body,
        )

    async def close(self) -> None:
        await self.conn.close()
