"""Sans-IO client side of HTTP/1.1, on h11, beside the server's :mod:`m2msec.bindings.http`.

:class:`HttpClientConnection` is the client role of the connection whose server role is
:class:`~m2msec.bindings.http.HttpServerConnection` (h11 shares its framing between the two):
requests out, answers in, under the same two size caps. A response head over ``max_header``
octets or a body over ``max_body`` (announced by Content-Length, or counted as it arrives)
raises :class:`ResponseTooLarge` - a peer answering 50 MiB no longer gets it all read. It is
driven by :class:`m2msec.service.client.HttpClient` (the gateway's backend pool, the
Entity A tools' ``OneM2MClient``, the Ub and Zn clients).

A request is checked before any connection is used (:func:`prepare_request`): text HTTP/1.1
cannot carry (a header value with CR LF, a character outside Latin-1) raises
:class:`InvalidRequest`. A request sent after the server answered ``Connection: close`` (or
closed) raises ``ConnectionError``, not h11's ``LocalProtocolError`` (ISSUE-NOTES, issue 7).
A close before any octet of the answer raises :class:`ClosedBeforeAnswer`, which tells the
driver whether the connection had answered before (a stale keep-alive connection, where
repeating an idempotent request is safe, RFC 9110 9.2.2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import h11

from m2msec.bindings.http import DEFAULT_MAX_BODY, DEFAULT_MAX_HEADER, capped_h11

__all__ = [
    "IDEMPOTENT_METHODS",
    "ClientRequest",
    "ClosedBeforeAnswer",
    "HttpAnswer",
    "HttpClientConnection",
    "InvalidRequest",
    "ResponseTooLarge",
    "prepare_request",
]

#: RFC 9110 9.2.2: a request with one of these methods may be repeated.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


class ResponseTooLarge(ConnectionError):
    """The server's answer exceeds the client's header or body cap; the connection is dropped."""


class InvalidRequest(ConnectionError):
    """HTTP/1.1 cannot carry this request; nothing was sent."""


class ClosedBeforeAnswer(ConnectionError):
    """The server closed the connection before any octet of the answer.

    ``reused``: the connection had answered a request before (a keep-alive connection the
    server closed while we sent), so the request may not have been seen at all.
    """

    def __init__(self, reused: bool) -> None:
        super().__init__("the server closed the connection without answering")
        self.reused = reused


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """One request h11 has accepted as HTTP/1.1 (made by :func:`prepare_request`)."""

    method: str
    head: h11.Request = field(repr=False)
    body: bytes = field(repr=False)


def prepare_request(
    method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes = b""
) -> ClientRequest:
    """Check one request and make it ready to send; :class:`InvalidRequest` if it cannot go.

    Header names and values go out as Latin-1 octets, as they arrived at the gateway.
    """
    try:
        head = h11.Request(
            method=method.encode("ascii"),
            target=target.encode("latin-1"),
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        )
    except (h11.LocalProtocolError, UnicodeError) as exc:
        raise InvalidRequest(f"cannot send this request: {exc}") from None
    return ClientRequest(method, head, body)


@dataclass(slots=True)
class HttpAnswer:
    """A complete HTTP response: status, headers as received (octets, original case), body."""

    status: int
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes = field(repr=False)
    reason: str = ""
    http_version: str = "1.1"

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The headers as text, names lower-case."""
        return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in self.raw_headers]


class HttpClientConnection:
    """One client-side HTTP/1.1 connection (sans-IO): requests out, answers in, capped."""

    def __init__(
        self, *, max_body: int = DEFAULT_MAX_BODY, max_header: int = DEFAULT_MAX_HEADER
    ) -> None:
        self._h11 = capped_h11(client=True, max_body=max_body, max_header=max_header)
        self.max_body = max_body
        self.max_header = max_header
        self._head: h11.Response | None = None
        self._raw: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._received = False  # any octet of the current answer
        self._eof = False
        #: Answers read completely on this connection.
        self.answered = 0

    @property
    def reusable(self) -> bool:
        """True when another request may be sent on this connection."""
        conn = self._h11
        ours, theirs = conn.our_state, conn.their_state
        idle = (ours, theirs) in ((h11.IDLE, h11.IDLE), (h11.DONE, h11.DONE))
        # Octets after the answer (or while idle) cannot be trusted as the next answer.
        return idle and not self._eof and not conn.trailing_data[0]

    def send_request(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> bytes:
        """The bytes of one request (see :meth:`send`)."""
        return self.send(prepare_request(method, target, headers, body))

    def send(self, request: ClientRequest) -> bytes:
        """The bytes of ``request``; ``ConnectionError`` if the connection cannot carry it."""
        conn = self._h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        if conn.our_state is not h11.IDLE or conn.their_state is not h11.IDLE:
            raise ConnectionError(
                "the server ended this connection (Connection: close); reconnect to send again"
            )
        self._head, self._body, self._received = None, bytearray(), False
        try:
            out = conn.send(request.head) or b""
            if request.body:
                out += conn.send(h11.Data(data=request.body)) or b""
            out += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            raise InvalidRequest(f"cannot send this request: {exc}") from None
        return out

    def receive_data(self, data: bytes) -> HttpAnswer | None:
        """Feed bytes from the server (``b""`` at its close); the answer once complete."""
        conn = self._h11
        if data:
            self._received = True
        else:
            self._eof = True
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if not data:
                        raise self._closed()
                    return None
                if isinstance(event, h11.InformationalResponse):
                    continue  # 100 Continue
                if isinstance(event, h11.Response):
                    self._head = event
                    self._check_head(event)
                elif isinstance(event, h11.Data):
                    self._body += event.data
                    if len(self._body) > self.max_body:
                        raise self._too_large(f"more than {self.max_body} octets")
                elif isinstance(event, h11.EndOfMessage):
                    return self._answer()
                elif isinstance(event, h11.ConnectionClosed):
                    raise self._closed()
                else:  # PAUSED: a protocol switch we never ask for
                    raise ConnectionError("unexpected answer (protocol switch)")
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:  # h11's max_incomplete_event_size
                raise self._too_large(f"a head over {self.max_header} octets") from None
            if self._eof:
                raise self._closed() from None
            raise ConnectionError(f"malformed HTTP answer: {exc}") from None

    def _closed(self) -> ConnectionError:
        if self._head is None and not self._received:
            return ClosedBeforeAnswer(reused=self.answered > 0)
        return ConnectionError("the server closed the connection before a complete answer")

    def _check_head(self, head: h11.Response) -> None:
        raw = self._raw = head.headers.raw_items()  # a list, cheaper than iterating Headers
        # h11 bounds only heads that arrive in pieces; a whole one is measured here.
        size = 12 + len(head.reason) + sum(len(k) + len(v) + 4 for k, v in raw)
        if size > self.max_header:
            raise self._too_large(f"a head over {self.max_header} octets")
        for name, value in raw:
            if len(name) == 14 and name.lower() == b"content-length":
                if value.isdigit() and int(value) > self.max_body:
                    raise self._too_large(f"Content-Length {int(value)}")
                return

    def _too_large(self, what: str) -> ResponseTooLarge:
        self._h11.send_failed()  # never reuse a connection read only in part
        return ResponseTooLarge(
            f"the server's answer is too large ({what}; the cap is {self.max_body}"
            f" octets of body, {self.max_header} of head)"
        )

    def _answer(self) -> HttpAnswer:
        assert self._head is not None
        head = self._head
        body = bytes(self._body)
        self._head, self._body = None, bytearray()
        self.answered += 1
        return HttpAnswer(
            head.status_code,
            self._raw,
            body,
            head.reason.decode("latin-1"),
            head.http_version.decode("ascii", "replace"),
        )
