"""Sans-IO server side of the oneM2M HTTP binding, on h11.

The request primitive's parameters travel in HTTP headers (TS-0004 clause 6.4 names the
parameters; the HTTP binding proper is TS-0009, which is not in our reference texts):
``X-M2M-Origin`` carries From, ``X-M2M-RI`` the Request Identifier, ``X-M2M-RVI`` the
Release Version Indicator, and the resource type of a CREATE travels as the ``ty``
parameter of ``Content-Type`` (``application/json;ty=2`` creates an ``<AE>``). Responses
carry the Response Status Code (TS-0004 clause 6.6, tables 6.6.3.x-1) in ``X-M2M-RSC``
beside an HTTP status.

:class:`HttpServerConnection` never touches a socket, in the manner of h11 (whose framing
it uses, with no hand-written HTTP parsing): feed it bytes with
:meth:`~HttpServerConnection.receive_data`, take events from
:meth:`~HttpServerConnection.next_event`, answer each request with
:meth:`~HttpServerConnection.send_response`, and write out
:meth:`~HttpServerConnection.data_to_send`. Keep-alive and pipelining are h11's: the
next pipelined request is only read once the current one is answered.

Limits: the request head (request line and headers) may be at most ``max_header`` octets
(default 16 KiB; more is answered 431) and the body at most ``max_body`` (default 1 MiB;
more is answered 413 as soon as Content-Length announces it). Both answers carry RSC 4000
BAD_REQUEST and close the connection. Malformed HTTP is answered 400 / 4000 and closes.

A request that repeats ``X-M2M-Origin``, ``X-M2M-RI``, ``X-M2M-RVI`` or ``Content-Type``
is refused (400 / 4000) but the connection stays up: a gateway that checked one copy of
From while its backend read another would be bypassed.

Edge cases (issue 9 item 6): a request carrying both ``Content-Length`` and
``Transfer-Encoding`` is answered 400 / 4000 and the connection closed (RFC 9112 6.1: a
proxy and its backend could frame it differently - request smuggling). A header whose name
equals ``X-M2M-*`` or ``X-M2MSec-*`` once ``_`` is read as ``-`` (``X_M2M_Origin``) is
refused 400 / 4000 rather than stripped: backends that fold ``_`` into ``-`` (CGI, WSGI
servers) would read it as From, and a refusal tells the sender what is wrong. A request
line without an HTTP version (``GET /``, HTTP/0.9 style) is answered 400 / 4000 and closed as
soon as its line is complete; h11 would wait for a header block that never comes.

The request and response values themselves (:class:`~m2msec.bindings.messages.OneM2MRequest`,
:class:`~m2msec.bindings.messages.HttpResponse`, RSC) live in :mod:`m2msec.bindings.messages`,
shared with the CoAP binding.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from http import HTTPStatus

import h11

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
    "HttpServerConnection",
    "NeedData",
    "PeerClosed",
    "RequestReceived",
    "capped_h11",
]

DEFAULT_MAX_HEADER = 16 * 1024
DEFAULT_MAX_BODY = 1024 * 1024


def capped_h11(*, client: bool, max_body: int, max_header: int) -> h11.Connection:
    """An h11 connection, client or server role, under the two size caps.

    h11 bounds a head arriving in pieces by ``max_header``; each role measures a head that
    arrives whole and counts the body against ``max_body`` itself.
    """
    if max_body < 0 or max_header <= 0:
        raise ValueError("size limits must be positive")
    role = h11.CLIENT if client else h11.SERVER
    return h11.Connection(role, max_incomplete_event_size=max_header)


# ----------------------------------------------------------------------------- events


class Event:
    """Base class of :class:`HttpServerConnection` events."""


class NeedData(Event):
    """More bytes are needed (call ``receive_data``)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


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


class HttpServerConnection:
    """One server-side HTTP/1.1 connection carrying oneM2M requests (sans-IO)."""

    def __init__(
        self, *, max_body: int = DEFAULT_MAX_BODY, max_header: int = DEFAULT_MAX_HEADER
    ) -> None:
        self._h11 = capped_h11(client=False, max_body=max_body, max_header=max_header)
        self.max_body = max_body
        self.max_header = max_header
        self._out = bytearray()
        self._head: h11.Request | None = None
        self._body = bytearray()
        self._answering = False  # a request (or refusal) awaits send_response
        self._head_method = ""
        self._closed = False

    # -- state ----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once no further request will be read; flush and close the transport."""
        return self._closed or self._h11.our_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)

    @property
    def awaiting_response(self) -> bool:
        return self._answering

    @property
    def reading_head(self) -> bool:
        """True while part of a request head has arrived but not all of it.

        The server loop bounds this phase (issue 9 item 2: a head trickled at 1 byte / 3 s
        stayed open 45 s); the body stays under the loop's idle timeout.
        """
        return (
            not self._answering
            and self._head is None
            and self._h11.their_state is h11.IDLE
            and bool(self._h11.trailing_data[0])
        )

    def head_timed_out(self) -> BadRequest:
        """The refusal when the head did not arrive in time: 408, and close (RFC 9110 15.5.9)."""
        return self._refuse("request head not received in time", 408, close=True)

    # -- input ----------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` once it has closed its side."""
        if self._h11.their_state in (h11.ERROR, h11.CLOSED):
            return
        with contextlib.suppress(RuntimeError):  # data after EOF: the peer is gone
            self._h11.receive_data(data)

    def next_event(self) -> Event:
        """The next event; :data:`NEED_DATA` when more bytes are needed."""
        if self._answering:
            raise RuntimeError("answer the current request with send_response() first")
        if self.closed:
            return PeerClosed()
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if status == 431:
                    why = f"request header fields larger than {self.max_header} octets"
                else:
                    # h11 quotes the offending bytes: keep the echo short.
                    why = f"malformed HTTP request: {str(exc)[:120]}"
                return self._refuse(why, status, close=True)
            if event is h11.NEED_DATA:
                if self._h11.their_state is h11.IDLE and _versionless_request_line(
                    self._h11
                ):
                    return self._refuse(
                        "malformed HTTP request: request line without HTTP version",
                        400,
                        close=True,
                    )
                return NEED_DATA
            if event is h11.PAUSED:  # pragma: no cover - guarded by _answering
                raise RuntimeError("answer the current request with send_response() first")
            if isinstance(event, h11.Request):
                refusal = self._start(event)
                if refusal is not None:
                    return refusal
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self.max_body:
                    return self._too_large()
            elif isinstance(event, h11.EndOfMessage):
                return self._complete()
            elif isinstance(event, h11.ConnectionClosed):
                self._closed = True
                return PeerClosed()

    # -- output ---------------------------------------------------------------------------
    def send_response(self, response: HttpResponse, *, close: bool = False) -> None:
        """Answer the current request (or refusal); ``close`` ends the connection after it."""
        if not self._answering:
            raise RuntimeError("no request to answer")
        self._answering = False
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self._closed = True
            return
        body = b"" if self._head_method == "HEAD" else response.body
        # A response sent before the whole request was read leaves its rest unread.
        close = close or self._h11.their_state not in (h11.DONE, h11.IDLE)
        headers = [(k, v) for k, v in response.headers if k.lower() not in _FRAMING]
        headers.append(("Content-Length", str(len(response.body))))
        if close:
            headers.append(("Connection", "close"))
        try:
            reason = HTTPStatus(response.status).phrase.encode()
        except ValueError:
            reason = b""
        try:
            self._emit(h11.Response(status_code=response.status, headers=headers, reason=reason))
            if body:
                self._emit(h11.Data(data=body))
            self._emit(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self._h11.send_failed()
            self._closed = True
            return
        self._head = None
        self._body = bytearray()
        self._head_method = ""
        self._next_cycle()

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- internals ------------------------------------------------------------------------
    def _next_cycle(self) -> None:
        ours, theirs = self._h11.our_state, self._h11.their_state
        if ours is h11.DONE and theirs is h11.DONE:
            self._h11.start_next_cycle()  # keep-alive: read the next (pipelined) request
        else:
            self._closed = True

    def _emit(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data:
            self._out += data

    def _start(self, head: h11.Request) -> BadRequest | None:
        self._head = head
        self._head_method = head.method.decode("ascii", "replace")
        self._body = bytearray()
        size = len(head.method) + len(head.target) + 12
        size += sum(len(k) + len(v) + 4 for k, v in head.headers)
        if size > self.max_header:
            # h11 only bounds heads that arrive in pieces; a whole one is checked here.
            return self._refuse(
                f"request header fields larger than {self.max_header} octets", 431, close=True
            )
        if _first(head, b"content-length") is not None and _first(
            head, b"transfer-encoding"
        ) is not None:
            # RFC 9112 6.1: a server MAY reject such a request and MUST close after it.
            return self._refuse(
                "both Content-Length and Transfer-Encoding in one request", 400, close=True
            )
        length = _content_length(head)
        if length is not None and length > self.max_body:
            return self._too_large()
        if self._h11.they_are_waiting_for_100_continue:
            self._emit(h11.InformationalResponse(status_code=100, headers=[]))
        return None

    def _complete(self) -> Event:
        head = self._head
        assert head is not None
        self._answering = True
        headers = tuple(
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers
        )
        target = head.target.decode("latin-1")
        request = _build(head, headers, bytes(self._body))
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
        elif not target.startswith("/"):
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

    def _refuse(self, reason: str, status: int, *, close: bool) -> BadRequest:
        self._answering = True
        response = error_response(RSC.BAD_REQUEST, reason, http_status=status)
        return BadRequest(response, reason, close=close)

    def _too_large(self) -> BadRequest:
        self._answering = True
        reason = f"request body larger than {self.max_body} octets"
        head = self._head
        rid = rvi = None
        if head is not None:
            rid = _first(head, b"x-m2m-ri")
            rvi = _first(head, b"x-m2m-rvi")
        response = error_response(
            RSC.BAD_REQUEST, reason, request_id=rid, release_version=rvi, http_status=413
        )
        return BadRequest(response, reason, close=True)


# Framing is ours (h11's) to write, whatever the response object says.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def _first(head: h11.Request, name: bytes) -> str | None:
    for k, v in head.headers:
        if k == name:
            return v.decode("latin-1")
    return None


def _is_lookalike(name: str) -> bool:
    """``x_m2m_origin`` and the like: an X-M2M-* / X-M2MSec-* name spelt with ``_``."""
    return "_" in name and name.replace("_", "-").startswith(("x-m2m-", "x-m2msec-"))


def _versionless_request_line(conn: h11.Connection) -> bool:
    """True when the buffered request line is complete and names no HTTP version."""
    buffered = bytes(getattr(conn, "_receive_buffer", b""))
    buffered = buffered.lstrip(b"\r\n")  # h11 skips blank lines before a request
    end = buffered.find(b"\n")
    if end < 0:
        return False
    return b" HTTP/" not in buffered[:end]


def _content_length(head: h11.Request) -> int | None:
    value = _first(head, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def _build(head: h11.Request, headers: tuple[tuple[str, str], ...], body: bytes) -> OneM2MRequest:
    def get(name: str) -> str | None:
        return next((v for k, v in headers if k == name), None)

    return OneM2MRequest(
        method=head.method.decode("ascii", "replace").upper(),
        target=head.target.decode("latin-1"),
        headers=headers,
        body=body,
        origin=get("x-m2m-origin"),
        request_id=get("x-m2m-ri"),
        release_version=get("x-m2m-rvi"),
        content_type=get("content-type"),
        resource_type=None,
        http_version=head.http_version.decode("ascii", "replace"),
    )

