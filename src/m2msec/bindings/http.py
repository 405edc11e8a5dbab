"""Sans-IO server side of the oneM2M HTTP binding, on httptools (llhttp, C).

The request primitive's parameters travel in HTTP headers (TS-0004 clause 6.4 names the
parameters; the HTTP binding proper is TS-0009, which is not in our reference texts):
``X-M2M-Origin`` carries From, ``X-M2M-RI`` the Request Identifier, ``X-M2M-RVI`` the
Release Version Indicator, and the resource type of a CREATE travels as the ``ty``
parameter of ``Content-Type`` (``application/json;ty=2`` creates an ``<AE>``). Responses
carry the Response Status Code (TS-0004 clause 6.6, tables 6.6.3.x-1) in ``X-M2M-RSC``
beside an HTTP status.

:class:`HttpServerConnection` never touches a socket, in the manner of h11: feed it bytes
with :meth:`~HttpServerConnection.receive_data`, take events from
:meth:`~HttpServerConnection.next_event`, answer each request with
:meth:`~HttpServerConnection.send_response`, and write out
:meth:`~HttpServerConnection.data_to_send`. The framing is llhttp's (through ``httptools``,
the parser uvicorn runs; issue 13 item 1: h11 was about 40 % of the gateway's request time),
in its strict mode, with no hand-written HTTP parsing: request line, header syntax (token
names, no control characters in values, no obs-fold, no whitespace before the colon),
Content-Length and chunked bodies, and Transfer-Encoding are llhttp's checks. llhttp reads
everything it is given, so pipelined requests are parsed ahead and queued: their events
come out one at a time, in order, and the next one only once the current one is answered
(a ``100 Continue`` too waits for its turn). The queue is bounded by what one
:meth:`~HttpServerConnection.receive_data` carries, because the driver
(:mod:`m2msec.service.server`) reads again only once every queued request is answered.
Keep-alive follows llhttp's reading of the request (HTTP/1.1 unless ``Connection: close``;
HTTP/1.0 closes, as h11 did); octets after a request that ends the connection are ignored.

Limits: the request head (request line and headers) may be at most ``max_header`` octets
(default 16 KiB; more is answered 431) and the body at most ``max_body`` (default 1 MiB;
more is answered 413 as soon as Content-Length announces it, or as a chunked body passes
it). Both answers carry RSC 4000 BAD_REQUEST and close the connection. A head is measured
from what the parser reports (request target and header lines) and, while it is still
arriving, from the octets received for it. Malformed HTTP is answered 400 / 4000 and
closes; so is an HTTP/1.1 request without ``Host`` or with more than one (RFC 9112 3.2),
a version other than HTTP/1.x, and a method llhttp does not know.

A request that repeats ``X-M2M-Origin``, ``X-M2M-RI``, ``X-M2M-RVI`` or ``Content-Type``
is refused (400 / 4000) but the connection stays up: a gateway that checked one copy of
From while its backend read another would be bypassed.

Edge cases (issue 9 item 6): a request carrying both ``Content-Length`` and
``Transfer-Encoding`` is answered 400 / 4000 and the connection closed (RFC 9112 6.1: a
proxy and its backend could frame it differently - request smuggling; llhttp refuses it).
A header whose name equals ``X-M2M-*`` or ``X-M2MSec-*`` once ``_`` is read as ``-``
(``X_M2M_Origin``) is refused 400 / 4000 rather than stripped: backends that fold ``_``
into ``-`` (CGI, WSGI servers) would read it as From, and a refusal tells the sender what
is wrong. A request line without an HTTP version (``GET /``, HTTP/0.9 style) is answered
400 / 4000 and closed as soon as its line is complete; llhttp would wait for a header block.
A request asking for a protocol upgrade (``Upgrade``, ``CONNECT``) is answered as any other
request (the upgrade declined, as h11 did), unless it carries a body: then 400 and close.

Each :class:`RequestReceived` carries an :class:`HttpRequest`: the
:class:`~m2msec.bindings.messages.OneM2MRequest` plus its header lines as received
(``raw_headers``, octets, original case), which llhttp has checked, so that a forwarder can
send them on without re-serialising (:mod:`m2msec.servers.forwarding`).

The request and response values themselves (:class:`~m2msec.bindings.messages.OneM2MRequest`,
:class:`~m2msec.bindings.messages.HttpResponse`, RSC) live in :mod:`m2msec.bindings.messages`,
shared with the CoAP binding.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

from m2msec.bindings.messages import (
    RSC,
    HttpResponse,
    OneM2MRequest,
    error_response,
    media_type_and_ty,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HEADER",
    "NEED_DATA",
    "BadRequest",
    "Event",
    "HttpRequest",
    "HttpServerConnection",
    "NeedData",
    "PeerClosed",
    "RequestReceived",
    "status_line",
    "valid_header_block",
]

DEFAULT_MAX_HEADER = 16 * 1024
DEFAULT_MAX_BODY = 1024 * 1024


# ----------------------------------------------------------------------------- wire form

# RFC 9110 5.1 token, 5.5 field-value (VCHAR / obs-text, inner SP / HTAB), one line each.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE = rb"(?:[\x21-\x7e\x80-\xff](?:[ \t]*[\x21-\x7e\x80-\xff])*)?"
_BLOCK = re.compile(rb"(?:" + _TOKEN + rb": " + _VALUE + rb"\r\n)*")


def valid_header_block(block: bytes, lines: int) -> bool:
    """True when ``block`` is ``lines`` header lines ``Name: value\\r\\n`` that HTTP/1.1 can
    carry as they are (the count catches a CR LF inside a value)."""
    return block.count(b"\r\n") == lines and _BLOCK.fullmatch(block) is not None


def _status_line(status: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 200 OK\\r\\n`` for ``status`` (the reason phrase of RFC 9110, or none)."""
    line = _STATUS_LINES.get(status)
    return line if line is not None else _status_line(status)


# ----------------------------------------------------------------------------- events


class Event:
    """Base class of :class:`HttpServerConnection` events."""


class NeedData(Event):
    """More bytes are needed (call ``receive_data``)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True)
class HttpRequest(OneM2MRequest):
    """A request as the HTTP binding received it: ``raw_headers`` are its header lines
    as octets in arrival order, original case, checked by llhttp (values without
    surrounding whitespace). ``headers`` is the same list, decoded and lower-cased.

    ``raw_of`` is the very ``headers`` tuple that ``raw_headers`` describe: a copy made
    with other headers (``dataclasses.replace``) keeps the old ``raw_of``, so
    :attr:`raw_current` tells whether the raw lines may still be sent for it.
    """

    raw_headers: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False, compare=False)
    raw_of: tuple[tuple[str, str], ...] | None = field(default=None, repr=False, compare=False)

    @property
    def raw_current(self) -> bool:
        """True when ``raw_headers`` are this request's ``headers`` as received."""
        return self.raw_of is self.headers


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    """A complete request; answer it before asking for the next event."""

    request: OneM2MRequest


@dataclass(frozen=True, slots=True)
class BadRequest(Event):
    """The peer sent something we refuse. Send ``response``; close afterwards if ``close``.

    ``request_head`` is the partly parsed request when one was read, for logging.
    """

    response: HttpResponse
    reason: str
    close: bool
    request_head: OneM2MRequest | None = None


@dataclass(frozen=True, slots=True)
class PeerClosed(Event):
    """The peer ended the connection (between requests)."""


_SINGLE = ("x-m2m-origin", "x-m2m-ri", "x-m2m-rvi", "content-type")

# Framing is ours to write, whatever the response object says.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


class _Stop(Exception):
    """Raised from a parser callback to stop llhttp once a refusal is queued."""


@dataclass(slots=True)
class _Item:
    """One queued event and what answering it needs to know."""

    event: Event
    keep_alive: bool = True
    head_method: bool = False  # a HEAD request: the answer has no body


class HttpServerConnection:
    """One server-side HTTP/1.1 connection carrying oneM2M requests (sans-IO)."""

    def __init__(
        self, *, max_body: int = DEFAULT_MAX_BODY, max_header: int = DEFAULT_MAX_HEADER
    ) -> None:
        if max_body < 0 or max_header <= 0:
            raise ValueError("size limits must be positive")
        self.max_body = max_body
        self.max_header = max_header
        self._parser = self._new_parser()
        self._out = bytearray()
        self._queue: collections.deque[_Item] = collections.deque()
        self._current: _Item | None = None  # popped, awaiting send_response
        self._closed = False  # no further request will be read
        self._dead = False  # the parser is done with this connection (error, EOF, close)
        # The message being parsed.
        self._in_message = False
        self._headers_done = False
        self._url = b""
        self._raw: list[tuple[bytes, bytes]] = []
        self._head_size = 0  # target and header lines reported so far
        self._partial = 0  # octets received for a head still arriving
        self._body = bytearray()
        self._keep_alive = True
        self._method = b""
        self._continue = False  # a 100 Continue is owed once this request is current
        # Per receive_data call.
        self._completed_here = False
        self._begun_here = False

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(_Callbacks(self))
        # Octets after a request that ends the connection are ignored, not an error
        # (uvicorn does the same so that such a request is still answered).
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
        return parser

    # -- state ----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once no further request will be read; flush and close the transport."""
        return self._closed

    @property
    def awaiting_response(self) -> bool:
        return self._current is not None

    @property
    def reading_head(self) -> bool:
        """True while part of a request head has arrived but not all of it.

        The server loop bounds this phase (issue 9 item 2: a head trickled at 1 byte / 3 s
        stayed open 45 s); the body stays under the loop's idle timeout.
        """
        return (
            self._current is None
            and not self._queue
            and not self._dead
            and self._in_message
            and not self._headers_done
        )

    def head_timed_out(self) -> BadRequest:
        """The refusal when the head did not arrive in time: 408, and close (RFC 9110 15.5.9)."""
        self._dead = True
        event = self._refusal("request head not received in time", 408)
        self._current = _Item(event, keep_alive=False)
        return event

    # -- input ----------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` once it has closed its side."""
        if self._dead:
            return
        if not data:
            self._dead = True
            if self._in_message:
                self._fail("malformed HTTP request: the connection ended inside a request")
            else:
                self._queue.append(_Item(PeerClosed()))
            return
        self._completed_here = self._begun_here = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data, int(exc.args[0]))
            return
        except httptools.HttpParserError as exc:
            if not self._dead:  # not stopped by us: llhttp's own refusal
                self._fail(_malformed(exc))
            return
        if self._in_message and not self._headers_done:
            self._check_partial_head(data)

    def next_event(self) -> Event:
        """The next event; :data:`NEED_DATA` when more bytes are needed."""
        if self._current is not None:
            raise RuntimeError("answer the current request with send_response() first")
        if self._closed:
            return PeerClosed()
        if self._queue:
            item = self._queue.popleft()
            if isinstance(item.event, PeerClosed):
                self._closed = True
            else:
                self._current = item
            return item.event
        if self._continue:
            self._continue = False
            self._out += b"HTTP/1.1 100 Continue\r\n\r\n"
        return NEED_DATA

    # -- output ---------------------------------------------------------------------------
    def send_response(self, response: HttpResponse, *, close: bool = False) -> None:
        """Answer the current request (or refusal); ``close`` ends the connection after it."""
        item = self._current
        if item is None:
            raise RuntimeError("no request to answer")
        self._current = None
        close = close or not item.keep_alive
        body = response.body
        lines = [status_line(response.status)]
        try:
            for name, value in response.headers:
                if name.lower() not in _FRAMING:
                    lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        except UnicodeError:
            lines = []
        block = b"".join(lines[1:])
        if not lines or not valid_header_block(block, len(lines) - 1):
            # Nothing HTTP/1.1 can carry (h11 refused to send it too): drop the connection.
            self._close()
            return
        framing = b"Content-Length: %d\r\n" % len(body)
        if close:
            framing += b"Connection: close\r\n"
        self._out += lines[0] + block + framing + b"\r\n"
        if body and not item.head_method:
            self._out += body
        if close:
            self._close()

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- internals ------------------------------------------------------------------------
    def _close(self) -> None:
        self._closed = self._dead = True
        self._queue.clear()

    def _refusal(
        self, reason: str, status: int, request: OneM2MRequest | None = None
    ) -> BadRequest:
        rid = rvi = None
        if request is not None:
            rid, rvi = request.request_id, request.release_version
        response = error_response(
            RSC.BAD_REQUEST, reason, request_id=rid, release_version=rvi, http_status=status
        )
        return BadRequest(response, reason, close=True)

    def _fail(self, reason: str, status: int = 400, *, ids: bool = False) -> None:
        """Queue a refusal that ends the connection; the parser reads nothing more."""
        self._dead = True
        self._continue = False
        request = None
        if ids:
            request = self._build(tuple(_lowered(self._raw)), b"")
        self._queue.append(_Item(self._refusal(reason, status, request), keep_alive=False))

    def _check_partial_head(self, data: bytes) -> None:
        """Bound a head that is still arriving, and spot a request line without a version."""
        if self._completed_here:
            # This head began after another message in the same octets: count what
            # the parser reported of it (a lower bound; the rest is checked when whole).
            self._partial = self._head_size
        else:
            self._partial += len(data)
        if max(self._partial, self._head_size) > self.max_header:
            self._fail(f"request header fields larger than {self.max_header} octets", 431)
            return
        if self._raw or not self._url or self._parser.get_http_version() not in ("0.0", "0.9"):
            return
        tail = data
        if self._begun_here:
            at = data.rfind(self._url[-64:])
            tail = data[at + len(self._url[-64:]) :] if at >= 0 else b""
        if b"\n" in tail:
            self._fail("malformed HTTP request: request line without HTTP version")

    def _upgrade(self, data: bytes, offset: int) -> None:
        """llhttp stopped after a request asking for another protocol: decline, go on."""
        item = self._queue[-1] if self._queue else None
        has_body = any(
            k.lower() == b"transfer-encoding"
            or (k.lower() == b"content-length" and v.strip(b"0") != b"")
            for k, v in self._raw
        )
        if item is None or has_body:
            if item is not None:
                self._queue.pop()
            self._fail("malformed HTTP request: protocol upgrade with a body")
            return
        self._parser = self._new_parser()
        self._in_message = False
        if item.keep_alive and offset < len(data):
            self.receive_data(data[offset:])

    # -- parser callbacks (through _Callbacks) ---------------------------------------------
    def _on_message_begin(self) -> None:
        self._in_message = True
        self._headers_done = False
        self._begun_here = True
        self._url = b""
        self._raw = []
        self._head_size = 0
        self._partial = 0
        self._body = bytearray()
        self._continue = False

    def _on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)

    def _on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.max_header:
            self._fail(f"request header fields larger than {self.max_header} octets", 431)
            raise _Stop
        if not self._headers_done:  # trailers of a chunked body are not kept
            self._raw.append((name, value.rstrip(b" \t")))

    def _on_headers_complete(self) -> None:
        parser = self._parser
        self._method = method = parser.get_method()
        self._keep_alive = parser.should_keep_alive()
        version = parser.get_http_version()
        self._headers_done = True
        if self._head_size + len(method) + 12 > self.max_header:
            # A head that arrived whole is measured here.
            self._fail(f"request header fields larger than {self.max_header} octets", 431)
            raise _Stop
        if version not in ("1.1", "1.0"):
            why = "request line without HTTP version" if version in ("0.9", "0.0") else (
                f"HTTP/{version} is not supported"
            )
            self._fail(f"malformed HTTP request: {why}")
            raise _Stop
        hosts = 0
        length: bytes | None = None
        expect = False
        for name, value in self._raw:
            if len(name) == 4 and name.lower() == b"host":
                hosts += 1
            elif len(name) == 14 and name.lower() == b"content-length":
                length = value
            elif len(name) == 6 and name.lower() == b"expect":
                expect = value.lower() == b"100-continue"
        if version == "1.1" and hosts != 1:
            self._fail("malformed HTTP request: an HTTP/1.1 request needs one Host header")
            raise _Stop
        if length is not None and length.isdigit() and int(length) > self.max_body:
            self._fail(f"request body larger than {self.max_body} octets", 413, ids=True)
            raise _Stop
        if expect and version == "1.1":
            self._continue = True

    def _on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self.max_body:
            self._fail(f"request body larger than {self.max_body} octets", 413, ids=True)
            raise _Stop

    def _on_message_complete(self) -> None:
        self._in_message = False
        self._completed_here = True
        self._begun_here = False
        self._continue = False  # the body came without waiting for it
        self._queue.append(
            _Item(self._complete(), self._keep_alive, head_method=self._method == b"HEAD")
        )

    def _complete(self) -> Event:
        raw = tuple(self._raw)
        headers = tuple(_lowered(raw))
        request = self._build(headers, bytes(self._body))
        counts: dict[str, int] = {}
        for name, _ in headers:
            if name in _SINGLE:
                counts[name] = counts.get(name, 0) + 1
        repeated = sorted(name for name, n in counts.items() if n > 1)
        problem: str | None = None
        lookalike = next((name for name, _ in headers if _is_lookalike(name)), None)
        if repeated:
            problem = f"header {repeated[0]} must appear at most once"
        elif lookalike is not None:
            # Never forwarded: a backend that reads "_" as "-" would take it as X-M2M-*.
            problem = f"header {lookalike}: use '-' not '_' in X-M2M-* / X-M2MSec-* names"
        elif not request.target.startswith("/"):
            # Only origin-form targets: an absolute URL must not steer the forwarding.
            problem = "request target must be a path (origin-form)"
        else:
            try:
                _, ty = media_type_and_ty(request.content_type)
            except ValueError as exc:
                problem = str(exc)
            else:
                if ty is not None:
                    request = dataclasses.replace(request, resource_type=ty)
        if problem is not None:
            response = error_response(
                RSC.BAD_REQUEST,
                problem,
                request_id=request.request_id if "x-m2m-ri" not in repeated else None,
                release_version=request.release_version if "x-m2m-rvi" not in repeated else None,
            )
            return BadRequest(response, problem, close=False, request_head=request)
        return RequestReceived(request)

    def _build(self, headers: tuple[tuple[str, str], ...], body: bytes) -> HttpRequest:
        origin = rid = rvi = ctype = None
        for name, value in headers:
            if name == "x-m2m-origin":
                origin = origin if origin is not None else value
            elif name == "x-m2m-ri":
                rid = rid if rid is not None else value
            elif name == "x-m2m-rvi":
                rvi = rvi if rvi is not None else value
            elif name == "content-type":
                ctype = ctype if ctype is not None else value
        return HttpRequest(
            method=self._method.decode("ascii", "replace").upper(),
            target=self._url.decode("latin-1"),
            headers=headers,
            body=body,
            origin=origin,
            request_id=rid,
            release_version=rvi,
            content_type=ctype,
            resource_type=None,
            http_version=self._parser.get_http_version(),
            raw_headers=tuple(self._raw),
            raw_of=headers,
        )


class _Callbacks:
    """The object llhttp calls back (httptools looks the ``on_*`` methods up once)."""

    __slots__ = (
        "on_body",
        "on_header",
        "on_headers_complete",
        "on_message_begin",
        "on_message_complete",
        "on_url",
    )

    def __init__(self, conn: HttpServerConnection) -> None:
        self.on_message_begin = conn._on_message_begin
        self.on_url = conn._on_url
        self.on_header = conn._on_header
        self.on_headers_complete = conn._on_headers_complete
        self.on_body = conn._on_body
        self.on_message_complete = conn._on_message_complete


def _lowered(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]


def _malformed(exc: Exception) -> str:
    text = str(exc)
    if "Content-Length" in text and "Transfer-Encoding" in text:
        # RFC 9112 6.1: a server MAY reject such a request and MUST close after it.
        return "both Content-Length and Transfer-Encoding in one request"
    # llhttp names the fault without quoting the octets; keep the echo short anyway.
    return f"malformed HTTP request: {text[:120]}"


def _is_lookalike(name: str) -> bool:
    """``x_m2m_origin`` and the like: an X-M2M-* / X-M2MSec-* name spelt with ``_``."""
    return "_" in name and name.replace("_", "-").startswith(("x-m2m-", "x-m2msec-"))
