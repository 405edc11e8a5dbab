"""The one HTTP/1.1 client: the asyncio driver of the sans-IO client connection (issue 10).

:class:`HttpClient` drives one :class:`~m2msec.bindings.http_client.HttpClientConnection`
over a :class:`~m2msec.service.streams.Stream` at a time, under the size caps of an
:class:`~m2msec.service.limits.HttpLimits`, one request at a time. Given a ``connect``
factory it reconnects where that is safe:

* before a request, when the previous answer ended the connection (``Connection: close``)
  or there is none yet - nothing of the new request was sent;
* with ``retry_idempotent``, once, when a connection that had answered before is closed
  before any octet of this answer (the race of a server closing an idle keep-alive
  connection) and the method is idempotent (RFC 9110 9.2.2). Nothing else is repeated.

It is used by :class:`~m2msec.service.onem2m_client.OneM2MClient` (Entity A tools), the
Ub and Zn clients (:mod:`m2msec.gba`) and the gateway's backend pool
(:mod:`m2msec.servers.backend`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from m2msec.bindings.http_client import (
    IDEMPOTENT_METHODS,
    ClientRequest,
    ClosedBeforeAnswer,
    HttpAnswer,
    HttpClientConnection,
    ResponseTooLarge,
    prepare_request,
)
from m2msec.service.limits import HttpLimits
from m2msec.service.streams import Stream

__all__ = ["HttpClient"]


class HttpClient:
    """asyncio driver of :class:`HttpClientConnection` over one stream at a time."""

    def __init__(
        self,
        stream: Stream | None = None,
        *,
        limits: HttpLimits | None = None,
        connect: Callable[[], Awaitable[Stream]] | None = None,
        retry_idempotent: bool = False,
    ) -> None:
        if stream is None and connect is None:
            raise ValueError("give a stream or a connect factory")
        self.limits = limits or HttpLimits()
        self.stream = stream
        self._connect = connect
        self.retry_idempotent = retry_idempotent
        #: Requests repeated on a fresh connection after a stale one (``retry_idempotent``).
        self.retries = 0
        # Made with the first stream (a pool's clients connect on their first request).
        self._http = self._new_connection() if stream is not None else None

    @property
    def reusable(self) -> bool:
        """True when the next request can go on the current connection."""
        return self.stream is not None and self._http is not None and self._http.reusable

    async def request(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> HttpAnswer:
        """Send one request and read its answer (``InvalidRequest`` before sending anything)."""
        return await self.send(prepare_request(method, target, headers, body))

    async def send(self, request: ClientRequest) -> HttpAnswer:
        """Send a prepared request and read its answer to the end."""
        if not self.reusable:
            if self._connect is None:
                if self.stream is None:
                    raise ConnectionError("the connection is closed")
            else:
                await self._reconnect()
        try:
            return await self._exchange(request)
        except ClosedBeforeAnswer as exc:
            safe = request.method in IDEMPOTENT_METHODS and self.retry_idempotent
            if not (exc.reused and safe and self._connect is not None):
                raise
        self.retries += 1
        await self._reconnect()
        return await self._exchange(request)

    async def open(self) -> None:
        """Connect now with the ``connect`` factory (closing any current connection), so
        that the first request pays no connection set-up (a pool warming a slot)."""
        if self._connect is None:
            raise ValueError("open() needs a connect factory")
        await self._reconnect()

    async def aclose(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            await stream.close()

    def _new_connection(self) -> HttpClientConnection:
        return HttpClientConnection(
            max_body=self.limits.max_body, max_header=self.limits.max_header
        )

    async def _reconnect(self) -> None:
        assert self._connect is not None
        await self.aclose()
        self.stream = await self._connect()
        self._http = self._new_connection()

    async def _exchange(self, request: ClientRequest) -> HttpAnswer:
        stream, http = self.stream, self._http
        assert stream is not None and http is not None
        out = http.send(request)
        try:
            await stream.send(out)
            while True:
                answer = http.receive_data(await stream.recv())
                if answer is not None:
                    return answer
        except ResponseTooLarge:
            await self.aclose()
            raise
