"""Sans-IO client side of HTTP/1.1, on httptools (llhttp), beside the server's
:mod:`m2msec.bindings.http`.

:class:`HttpClientConnection` is the client role of the connection whose server role is
:class:`~m2msec.bindings.http.HttpServerConnection`: requests out, answers in, under the same
two size caps. Answers are read by llhttp's response parser (Content-Length, chunked, or
until the server closes; 1xx interim answers skipped), in C: the gateway reads one per
forwarded request (issue 13 item 1). A response head over ``max_header`` octets or a body
over ``max_body`` (announced by Content-Length, or counted as it arrives) raises
:class:`ResponseTooLarge` - a peer answering 50 MiB no longer gets it all read. It is driven
by :class:`m2msec.service.client.HttpClient` (the gateway's backend pool, the Entity A tools'
``OneM2MClient``, the Ub and Zn clients).

A request is checked before any connection is used (:func:`prepare_request`): text HTTP/1.1
cannot carry (a method or header name that is not a token, a header value with CR LF or
surrounding whitespace, a character outside Latin-1, a body its framing headers do not
announce) raises :class:`InvalidRequest`. Header lines that are already in wire form and
were checked by whoever made them (a forwarder passing on what llhttp parsed) travel as a
:class:`HeaderLines` and are not checked again (:func:`prepare_wire_request`). A request
sent after the server answered ``Connection: close`` (or closed) raises
``ConnectionError`` (ISSUE-NOTES, issue 7). A close before any octet of the answer raises
:class:`ClosedBeforeAnswer`, which tells the driver whether the connection had answered
before (a stale keep-alive connection, where repeating an idempotent request is safe,
RFC 9110 9.2.2).

Keep-alive follows llhttp's reading of each answer (HTTP/1.1 unless ``Connection: close``;
HTTP/1.0 only with ``Connection: keep-alive``). An octet after a complete answer, or an
answer to ``HEAD`` (whose Content-Length announces a body that never comes), leaves the
connection unusable for another request, as octets nobody asked for cannot be trusted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import httptools

from m2msec.bindings.http import DEFAULT_MAX_BODY, DEFAULT_MAX_HEADER, valid_header_block

__all__ = [
    "IDEMPOTENT_METHODS",
    "ClientRequest",
    "ClosedBeforeAnswer",
    "HeaderLines",
    "HttpAnswer",
    "HttpClientConnection",
    "InvalidRequest",
    "ResponseTooLarge",
    "prepare_request",
    "prepare_wire_request",
]

#: RFC 9110 9.2.2: a request with one of these methods may be repeated.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# origin-form, absolute-form or authority-form: visible octets, no whitespace.
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")


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


class HeaderLines(Sequence[tuple[str, str]]):
    """Header lines in wire form (``Name: value\\r\\n`` each), made by a caller that has
    checked them, with their decoded ``(name, value)`` view for whoever reads them.

    ``wire`` goes out as is (:func:`prepare_wire_request`); reading the view decodes it.
    """

    __slots__ = ("_pairs", "wire")

    def __init__(self, wire: bytes) -> None:
        self.wire = wire
        self._pairs: list[tuple[str, str]] | None = None

    def _decoded(self) -> list[tuple[str, str]]:
        if self._pairs is None:
            pairs = []
            for line in self.wire.decode("latin-1").split("\r\n")[:-1]:
                name, _, value = line.partition(": ")
                pairs.append((name, value))
            self._pairs = pairs
        return self._pairs

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, str]]: ...
    def __getitem__(self, index: int | slice) -> tuple[str, str] | Sequence[tuple[str, str]]:
        return self._decoded()[index]

    def __len__(self) -> int:
        return len(self._decoded())

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._decoded())

    def __repr__(self) -> str:
        return f"HeaderLines({self._decoded()!r})"


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """One request checked as HTTP/1.1 (made by :func:`prepare_request`): its head in wire
    form (request line, header lines, blank line) and its body, framed."""

    method: str
    head: bytes = field(repr=False)
    body: bytes = field(repr=False)


def prepare_request(
    method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes = b""
) -> ClientRequest:
    """Check one request and make it ready to send; :class:`InvalidRequest` if it cannot go.

    Header names and values go out as Latin-1 octets, as they arrived at the gateway, in the
    order given, names in the case given.
    """
    try:
        encoded = [
            b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers
        ]
    except UnicodeError as exc:
        raise InvalidRequest(f"cannot send this request: {exc}") from None
    lines = b"".join(encoded)
    if not valid_header_block(lines, len(encoded)):
        raise InvalidRequest(
            "cannot send this request: a header name or value HTTP/1.1 cannot carry"
        )
    return _framed(method, target, lines, body)


def prepare_wire_request(
    method: str, target: str, lines: bytes | HeaderLines, body: bytes = b""
) -> ClientRequest:
    """:func:`prepare_request` for header lines already in wire form and checked (octets or a
    :class:`HeaderLines`): only the request line and the framing are checked."""
    return _framed(method, target, lines.wire if isinstance(lines, HeaderLines) else lines, body)


def _framed(method: str, target: str, lines: bytes, body: bytes) -> ClientRequest:
    if _METHOD.fullmatch(method) is None:
        raise InvalidRequest(f"cannot send this request: illegal method {method[:40]!r}")
    try:
        raw_target = target.encode("latin-1")
    except UnicodeError as exc:
        raise InvalidRequest(f"cannot send this request: {exc}") from None
    if _TARGET.fullmatch(raw_target) is None:
        raise InvalidRequest("cannot send this request: illegal request target")
    lowered = lines.lower()
    if b"\r\ntransfer-encoding:" in b"\r\n" + lowered:
        raise InvalidRequest("cannot send this request: only Content-Length framing is sent")
    if b"\r\nhost:" not in b"\r\n" + lowered:
        raise InvalidRequest("cannot send this request: Missing mandatory Host: header")
    at = (b"\r\n" + lowered).find(b"\r\ncontent-length:")
    if at >= 0:
        end = lowered.find(b"\r\n", at)
        announced = lowered[at + 15 : end].strip()
        if not announced.isdigit() or int(announced) != len(body):
            raise InvalidRequest(
                "cannot send this request: its Content-Length does not match its body"
            )
        if (b"\r\n" + lowered).find(b"\r\ncontent-length:", at + 2) >= 0:
            raise InvalidRequest("cannot send this request: more than one Content-Length")
    elif body:
        raise InvalidRequest("cannot send this request: a body without Content-Length")
    head = b"%s %s HTTP/1.1\r\n%s\r\n" % (method.encode("ascii"), raw_target, lines)
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


class _Stop(Exception):
    """Raised from a parser callback when the answer goes over a cap."""


class HttpClientConnection:
    """One client-side HTTP/1.1 connection (sans-IO): requests out, answers in, capped."""

    def __init__(
        self, *, max_body: int = DEFAULT_MAX_BODY, max_header: int = DEFAULT_MAX_HEADER
    ) -> None:
        if max_body < 0 or max_header <= 0:
            raise ValueError("size limits must be positive")
        self.max_body = max_body
        self.max_header = max_header
        self._parser: httptools.HttpResponseParser | None = None
        self._pending = False  # a request was sent; its answer is not complete
        self._usable = True  # another request may follow (keep-alive, nothing stray)
        self._head_method = False
        self._raw: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._status = 0
        self._head_size = 0
        self._head_octets = 0  # received while the head is incomplete
        self._headers_done = False
        self._until_close = False
        self._keep_alive = True
        self._body = bytearray()
        self._answer: HttpAnswer | None = None
        self._too_large: ResponseTooLarge | None = None
        self._received = False  # any octet of the current answer
        self._eof = False
        #: Answers read completely on this connection.
        self.answered = 0

    @property
    def reusable(self) -> bool:
        """True when another request may be sent on this connection."""
        return self._usable and not self._pending and not self._eof

    def send_request(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> bytes:
        """The bytes of one request (see :meth:`send`)."""
        return self.send(prepare_request(method, target, headers, body))

    def send(self, request: ClientRequest) -> bytes:
        """The bytes of ``request``; ``ConnectionError`` if the connection cannot carry it."""
        if not self.reusable:
            raise ConnectionError(
                "the server ended this connection (Connection: close); reconnect to send again"
            )
        if self._parser is None:
            self._parser = httptools.HttpResponseParser(_Callbacks(self))
        self._pending = True
        self._head_method = request.method == "HEAD"
        self._received = False
        self._answer = None
        self._start_answer()
        return request.head + request.body if request.body else request.head

    def receive_data(self, data: bytes) -> HttpAnswer | None:
        """Feed bytes from the server (``b""`` at its close); the answer once complete."""
        if not data:
            self._eof = True
            self._usable = False
            if not self._pending:
                return None
            if self._headers_done and self._until_close:
                return self._finish()  # framed by the close (RFC 9112 6.3, item 8)
            raise self._closed()
        if not self._pending:
            self._usable = False  # octets nobody asked for
            return None
        self._received = True
        parser = self._parser
        assert parser is not None
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._answer is None:
                self._fail()
                raise ConnectionError("unexpected answer (protocol switch)") from None
        except httptools.HttpParserError as exc:
            if self._too_large is not None:
                raise self._too_large from None
            if self._answer is None:
                self._fail()
                raise ConnectionError(f"malformed HTTP answer: {exc}") from None
            self._usable = False  # octets after the answer
        if self._answer is not None:
            return self._finish()
        if not self._headers_done:
            self._head_octets += len(data)
            if self._head_octets > self.max_header:
                raise self._over(f"a head over {self.max_header} octets")
        return None

    # -- internals ------------------------------------------------------------------------
    def _start_answer(self) -> None:
        self._raw = []
        self._reason = b""
        self._head_size = 0
        self._head_octets = 0
        self._headers_done = False
        self._until_close = False
        self._body = bytearray()

    def _finish(self) -> HttpAnswer:
        answer = self._answer
        if answer is None:  # completed by the server's close
            answer = self._make_answer()
            self._usable = False
        self._answer = None
        self._pending = False
        self.answered += 1
        if self._head_method:
            self._parser = None  # its framing expects the body HEAD never gets
        return answer

    def _make_answer(self) -> HttpAnswer:
        assert self._parser is not None
        return HttpAnswer(
            self._status,
            self._raw,
            bytes(self._body),
            self._reason.decode("latin-1"),
            self._parser.get_http_version(),
        )

    def _fail(self) -> None:
        self._usable = False
        self._pending = False

    def _closed(self) -> ConnectionError:
        self._fail()
        if not self._received:
            return ClosedBeforeAnswer(reused=self.answered > 0)
        return ConnectionError("the server closed the connection before a complete answer")

    def _over(self, what: str) -> ResponseTooLarge:
        self._fail()  # never reuse a connection read only in part
        return ResponseTooLarge(
            f"the server's answer is too large ({what}; the cap is {self.max_body}"
            f" octets of body, {self.max_header} of head)"
        )

    def _stop(self, what: str) -> _Stop:
        self._too_large = self._over(what)
        return _Stop()

    # -- parser callbacks ---------------------------------------------------------------------
    def _on_message_begin(self) -> None:
        if self._answer is not None or not self._pending:
            self._usable = False  # a second answer to one request
            raise _Stop

    def _on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._head_size += len(reason)

    def _on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size + 12 > self.max_header:
            raise self._stop(f"a head over {self.max_header} octets")
        if not self._headers_done:  # trailers are not kept
            self._raw.append((name, value.rstrip(b" \t")))

    def _on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        self._headers_done = True
        length: bytes | None = None
        chunked = False
        for name, value in self._raw:
            if len(name) == 14 and name.lower() == b"content-length":
                length = value
            elif len(name) == 17 and name.lower() == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise self._stop(f"Content-Length {int(length)}")
        self._until_close = (
            length is None and not chunked and status >= 200 and status not in (204, 304)
        )
        if self._head_method and status >= 200:
            self._answer = self._make_answer()  # no body follows an answer to HEAD

    def _on_body(self, body: bytes) -> None:
        if self._answer is not None:  # octets after an answer to HEAD
            self._usable = False
            raise _Stop
        self._body += body
        if len(self._body) > self.max_body:
            raise self._stop(f"more than {self.max_body} octets")

    def _on_message_complete(self) -> None:
        if self._answer is not None:
            return
        if self._status < 200:  # 100 Continue and other interim answers
            self._start_answer()
            return
        self._answer = self._make_answer()
        if not self._keep_alive:
            self._usable = False


class _Callbacks:
    """The object llhttp calls back (httptools looks the ``on_*`` methods up once)."""

    __slots__ = (
        "on_body",
        "on_header",
        "on_headers_complete",
        "on_message_begin",
        "on_message_complete",
        "on_status",
    )

    def __init__(self, conn: HttpClientConnection) -> None:
        self.on_message_begin = conn._on_message_begin
        self.on_status = conn._on_status
        self.on_header = conn._on_header
        self.on_headers_complete = conn._on_headers_complete
        self.on_body = conn._on_body
        self.on_message_complete = conn._on_message_complete
