"""The one HTTP/1.1 client: a sans-IO connection and its asyncio driver (issue 10, item 1).

:class:`HttpClientConnection` is the client role beside the server's
:class:`~m2msec.bindings.http.HttpServerConnection`, on h11 as well and under the same
:class:`~m2msec.service.limits.HttpLimits`: a response head over ``max_header`` octets or a
body over ``max_body`` (announced by Content-Length, or counted as it arrives) raises
:class:`ResponseTooLarge` - a peer answering 50 MiB no longer gets it all read. A request
sent after the server answered ``Connection: close`` (or closed) raises ``ConnectionError``,
not h11's ``LocalProtocolError`` (ISSUE-NOTES, issue 7).

:class:`HttpClient` drives one connection over a :class:`~m2msec.service.streams.Stream`;
given a ``connect`` factory it reconnects before a request when the previous answer ended the
connection (safe: nothing of the new request was sent yet).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import h11

from m2msec.service.limits import HttpLimits
from m2msec.service.streams import Stream

__all__ = ["HttpAnswer", "HttpClient", "HttpClientConnection", "ResponseTooLarge"]


class ResponseTooLarge(ConnectionError):
    """The server's answer exceeds the client's header or body cap; the connection is dropped."""


@dataclass(slots=True)
class HttpAnswer:
    """A complete HTTP response: status, headers (names lower-case) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = field(repr=False)
    reason: str = ""


class HttpClientConnection:
    """One client-side HTTP/1.1 connection (sans-IO): requests out, answers in, capped."""

    def __init__(self, limits: HttpLimits | None = None) -> None:
        self.limits = limits or HttpLimits()
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=self.limits.max_header)
        self._head: h11.Response | None = None
        self._body = bytearray()

    @property
    def reusable(self) -> bool:
        """True when another request may be sent on this connection."""
        ours, theirs = self._h11.our_state, self._h11.their_state
        return (ours, theirs) in ((h11.IDLE, h11.IDLE), (h11.DONE, h11.DONE))

    def send_request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes = b""
    ) -> bytes:
        """The bytes of one request; ``ConnectionError`` if the connection cannot carry it."""
        conn = self._h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        if conn.our_state is not h11.IDLE or conn.their_state is not h11.IDLE:
            raise ConnectionError(
                "the server ended this connection (Connection: close); reconnect to send again"
            )
        self._head, self._body = None, bytearray()
        try:
            out = conn.send(h11.Request(method=method, target=target, headers=list(headers)))
            if body:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise ConnectionError(f"cannot send this request: {exc}") from None
        return out or b""

    def receive_data(self, data: bytes) -> HttpAnswer | None:
        """Feed bytes from the server (``b""`` at its close); the answer once complete."""
        conn = self._h11
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if not data:
                        raise ConnectionError("the server closed the connection without answering")
                    return None
                if isinstance(event, h11.InformationalResponse):
                    continue  # 100 Continue
                if isinstance(event, h11.Response):
                    self._head = event
                    self._check_length(event)
                elif isinstance(event, h11.Data):
                    self._body += event.data
                    if len(self._body) > self.limits.max_body:
                        raise self._too_large(f"more than {self.limits.max_body} octets")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    if self._head is None:
                        raise ConnectionError("the server closed the connection without answering")
                    return self._answer()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:  # h11's max_incomplete_event_size
                raise self._too_large(f"a head over {self.limits.max_header} octets") from None
            raise ConnectionError(f"malformed HTTP answer: {exc}") from None

    def _check_length(self, head: h11.Response) -> None:
        for name, value in head.headers:
            if (
                name == b"content-length"
                and value.isdigit()
                and int(value) > self.limits.max_body
            ):
                raise self._too_large(f"Content-Length {int(value)}")

    def _too_large(self, what: str) -> ResponseTooLarge:
        self._h11.send_failed()  # never reuse a connection read only in part
        return ResponseTooLarge(
            f"the server's answer is too large ({what}; the cap is {self.limits.max_body}"
            f" octets of body, {self.limits.max_header} of head)"
        )

    def _answer(self) -> HttpAnswer:
        assert self._head is not None
        head, body = self._head, bytes(self._body)
        self._head, self._body = None, bytearray()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers]
        return HttpAnswer(head.status_code, headers, body, head.reason.decode("latin-1"))


class HttpClient:
    """asyncio driver of :class:`HttpClientConnection` over one stream at a time."""

    def __init__(
        self,
        stream: Stream | None = None,
        *,
        limits: HttpLimits | None = None,
        connect: Callable[[], Awaitable[Stream]] | None = None,
    ) -> None:
        if stream is None and connect is None:
            raise ValueError("give a stream or a connect factory")
        self.limits = limits or HttpLimits()
        self.stream = stream
        self._connect = connect
        self._http = HttpClientConnection(self.limits)

    @property
    def reusable(self) -> bool:
        """True when the next request can go on the current connection."""
        return self.stream is not None and self._http.reusable

    async def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes = b""
    ) -> HttpAnswer:
        """Send one request and read its answer (in order: one request at a time)."""
        if self.stream is None or not self._http.reusable:
            if self._connect is None:
                if self.stream is None:
                    raise ConnectionError("the connection is closed")
            else:
                await self.aclose()
                self.stream = await self._connect()
                self._http = HttpClientConnection(self.limits)
        assert self.stream is not None
        out = self._http.send_request(method, target, headers, body)
        try:
            await self.stream.send(out)
            while True:
                answer = self._http.receive_data(await self.stream.recv())
                if answer is not None:
                    return answer
        except ResponseTooLarge:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            await stream.close()
