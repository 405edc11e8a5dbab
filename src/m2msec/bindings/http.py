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

RSC to HTTP status (:func:`http_status_for`): TS-0009's mapping, as implemented by the
ACME CSE (TS-0009 is not available to us): 4103 and 4107 -> 403, 4000 -> 400,
4004 and 5103 -> 404, 4005 -> 405, 4008 -> 504, 5000 -> 500, 5001 -> 501; a code
not listed maps by its class (2xxx -> 200, 4xxx -> 400, 5xxx and 6xxx -> 500).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
from dataclasses import dataclass, field
from http import HTTPStatus

import h11

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HEADER",
    "NEED_DATA",
    "RSC",
    "BadRequest",
    "Event",
    "HttpResponse",
    "HttpServerConnection",
    "NeedData",
    "OneM2MRequest",
    "Operation",
    "PeerClosed",
    "RequestReceived",
    "error_response",
    "http_status_for",
    "media_type_and_ty",
]

DEFAULT_MAX_HEADER = 16 * 1024
DEFAULT_MAX_BODY = 1024 * 1024


class RSC(enum.IntEnum):
    """Response Status Codes used here (TS-0004 tables 6.6.3.3-1, 6.6.3.5-1, 6.6.3.6-1)."""

    OK = 2000
    CREATED = 2001
    DELETED = 2002
    UPDATED = 2004
    BAD_REQUEST = 4000
    RELEASE_VERSION_NOT_SUPPORTED = 4001
    NOT_FOUND = 4004
    OPERATION_NOT_ALLOWED = 4005
    REQUEST_TIMEOUT = 4008
    UNSUPPORTED_MEDIA_TYPE = 4015
    ORIGINATOR_HAS_NO_PRIVILEGE = 4103
    ORIGINATOR_NOT_AUTHENTICATED = 4106
    SECURITY_ASSOCIATION_REQUIRED = 4107
    APP_RULE_VALIDATION_FAILED = 4126
    SERVICE_SUBSCRIPTION_NOT_ESTABLISHED = 4128
    INTERNAL_SERVER_ERROR = 5000
    NOT_IMPLEMENTED = 5001
    TARGET_NOT_REACHABLE = 5103


# TS-0009's RSC -> HTTP status table, as ACME implements it (see the module docstring).
_HTTP_STATUS: dict[int, int] = {
    2000: 200,
    2001: 201,
    2002: 200,
    2004: 200,
    1000: 202,
    4000: 400,
    4001: 501,
    4004: 404,
    4005: 405,
    4008: 504,
    4015: 415,
    4101: 403,
    4102: 400,
    4103: 403,
    4105: 409,
    4106: 403,
    4107: 403,
    4108: 403,
    4117: 403,
    4126: 403,
    4127: 403,
    4128: 403,
    5000: 500,
    5001: 501,
    5103: 404,
    5105: 403,
    5106: 409,
    5107: 404,
    5203: 403,
    5204: 500,
    5205: 403,
    5207: 406,
}


def http_status_for(rsc: int) -> int:
    """The HTTP status that carries Response Status Code ``rsc``."""
    if rsc in _HTTP_STATUS:
        return _HTTP_STATUS[rsc]
    cls = rsc // 1000
    return {1: 202, 2: 200, 4: 400}.get(cls, 500)


class Operation(enum.StrEnum):
    """oneM2M operations and the HTTP methods carrying them (TS-0009, via TS-0004 6.4)."""

    CREATE = "create"  # POST with ty
    RETRIEVE = "retrieve"  # GET
    UPDATE = "update"  # PUT
    DELETE = "delete"  # DELETE
    NOTIFY = "notify"  # POST without ty


def media_type_and_ty(content_type: str | None) -> tuple[str | None, int | None]:
    """``application/json;ty=2`` -> ``("application/json", 2)``.

    Raises ValueError when ``ty`` is present but not a non-negative integer.
    """
    if content_type is None:
        return None, None
    media, *params = content_type.split(";")
    ty: int | None = None
    for param in params:
        name, sep, value = param.strip().partition("=")
        if sep and name.strip().lower() == "ty":
            value = value.strip().strip('"')
            if not value.isdigit() or len(value) > 6:
                raise ValueError(f"invalid resource type ty={value!r} in Content-Type")
            ty = int(value)
    return media.strip().lower() or None, ty


@dataclass(frozen=True, slots=True)
class OneM2MRequest:
    """A complete oneM2M request as received over HTTP.

    ``headers`` keeps every header in arrival order, names in lower case, values decoded
    as Latin-1 (HTTP's octets, losslessly). ``origin``, ``request_id`` and
    ``release_version`` are the ``X-M2M-*`` parameters (None when absent);
    ``resource_type`` the ``ty`` of ``Content-Type``.
    """

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)
    origin: str | None
    request_id: str | None
    release_version: str | None
    content_type: str | None
    resource_type: int | None
    http_version: str = "1.1"

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    @property
    def operation(self) -> Operation | None:
        """The oneM2M operation, or None for a method the binding does not map."""
        if self.method == "POST":
            return Operation.NOTIFY if self.resource_type is None else Operation.CREATE
        return {
            "GET": Operation.RETRIEVE,
            "PUT": Operation.UPDATE,
            "DELETE": Operation.DELETE,
        }.get(self.method)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An HTTP response to send: status, headers (without framing headers) and body."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = field(default=b"", repr=False)

    @property
    def rsc(self) -> int | None:
        for name, value in self.headers:
            if name.lower() == "x-m2m-rsc" and value.isdigit():
                return int(value)
        return None


def error_response(
    rsc: int,
    message: str,
    *,
    request_id: str | None = None,
    release_version: str | None = None,
    http_status: int | None = None,
) -> HttpResponse:
    """A oneM2M error answer: HTTP status, ``X-M2M-RSC``, the echoed ``X-M2M-RI`` and
    ``X-M2M-RVI``, and ``{"m2m:dbg": message}`` as JSON (TS-0004 6.6, debugInfo)."""
    headers = [("X-M2M-RSC", str(int(rsc)))]
    if request_id is not None:
        headers.append(("X-M2M-RI", request_id))
    if release_version is not None:
        headers.append(("X-M2M-RVI", release_version))
    headers.append(("Content-Type", "application/json"))
    body = json.dumps({"m2m:dbg": message}).encode()
    return HttpResponse(http_status or http_status_for(rsc), tuple(headers), body)


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
        if max_body < 0 or max_header <= 0:
            raise ValueError("size limits must be positive")
        self.max_body = max_body
        self.max_header = max_header
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header)
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

