"""HTTP/1.1 client of the gateway towards its backend CSE: persistent connections.

The gateway (:mod:`m2msec.servers.gateway`) is Entity B of the TS-0003 clause 8.2
security associations; behind it the CSE (for example ACME) speaks plain HTTP, the
TS-0009 binding of the TS-0004 primitives. Every request the gateway accepts is
forwarded over the link this module maintains, so its cost is paid on every request.
HTTP itself is the service layer's one client (:class:`~m2msec.service.client.HttpClient`
driving the sans-IO :class:`~m2msec.bindings.http_client.HttpClientConnection`, llhttp's
framing); this module adds only the pool, its timeouts and its error types, over asyncio
protocols, with no URL parsing, header defaults or cookie handling of its own.

:class:`BackendPool` keeps a bounded pool of keep-alive connections to one backend:

* at most ``max_connections`` open (or opening) at a time; requests beyond wait for a
  free one, within their timeout;
* at most ``max_idle`` kept idle between requests, each for at most ``idle_timeout``
  seconds (most recently used first, so surplus connections age out); a connection the
  backend closes while idle is dropped as soon as the close is seen;
* a backend that answers ``Connection: close`` (ACME does, on every answer), or HTTP/1.0
  without keep-alive, gets a new connection per request: the answer is read to its end,
  the connection closed at once and never pooled, without any error or retry;
* ``timeout`` bounds each request as a whole (waiting for a connection, connecting,
  sending, reading the answer to its end): :class:`BackendTimeout`; connecting alone is
  bounded by ``connect_timeout`` as well;
* a request sent on a *reused* connection that the backend closes before the first octet
  of its answer is retried once, on a fresh connection, when that is safe: the method is
  idempotent (RFC 9110 9.2.2), or the connection was already seen closed before any octet
  of the request was written. Nothing else is retried;
* answers are read with llhttp's framing (Content-Length, chunked, or until close), 1xx
  interim answers skipped, and the body bounded by ``max_body`` (:class:`BackendTooLarge`);
* headers go out as given (names and values as Latin-1 octets) plus ``Host`` and, when
  there is a body (or for POST and PUT), ``Content-Length``: rewriting (hop-by-hop fields,
  ``X-M2MSec-*``) is the gateway's job. Header lines already in wire form and checked
  (a :class:`~m2msec.bindings.http_client.HeaderLines` from the forwarder's raw path) are
  sent as they are, after ``Host``. Answer headers come back as received, original
  case included.

``https://`` backends are reached over TLS with :func:`ssl.create_default_context` (the
system's trust store, host name checked) unless an ``ssl_context`` is given.

Given a ``connect`` factory, the pool opens its connections with it instead of a TCP (or
``ssl``) connection of its own: any :class:`PooledStream` will do. The gateway's egress
(:mod:`m2msec.servers.egress`) pools its security associations to an upstream peer this
way, each one an Entity A handshake of :mod:`m2msec.config.initiators`; the URL then only
gives the ``Host`` header and the path prefix. :meth:`BackendPool.prime` opens one
connection ahead of the first request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, cast
from urllib.parse import urlsplit

from m2msec.bindings.http import valid_header_block
from m2msec.bindings.http_client import (
    IDEMPOTENT_METHODS,
    ClientRequest,
    ClosedBeforeAnswer,
    HeaderLines,
    HttpAnswer,
    InvalidRequest,
    ResponseTooLarge,
    prepare_request,
    prepare_wire_request,
)
from m2msec.errors import ConfigurationError, M2MSecError
from m2msec.service.client import HttpClient
from m2msec.service.deadline import Deadline
from m2msec.service.limits import HttpLimits

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_IDLE",
    "BackendError",
    "BackendPool",
    "BackendRequestError",
    "BackendResponse",
    "BackendTimeout",
    "BackendTooLarge",
    "BackendUnreachable",
    "PooledStream",
]

DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_MAX_IDLE = 20
#: Seconds an idle connection is kept (below common server keep-alive limits would be
#: ideal; a close by the backend while idle is noticed anyway).
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_MAX_BODY = 64 * 1024 * 1024
#: Largest answer head (status line and headers) accepted.
MAX_HEAD = 64 * 1024
#: Unread octets buffered per connection before reading from the socket pauses.
_READ_HIGH_WATER = 256 * 1024


class BackendError(M2MSecError):
    """The backend could not be used for this request (base class)."""


class BackendRequestError(BackendError):
    """The request itself cannot be sent as HTTP/1.1 (nothing was sent)."""


class BackendUnreachable(BackendError):
    """No connection, or the connection failed or broke before a complete answer."""


class BackendTimeout(BackendError):
    """No complete answer within the request's timeout (or no connection in time)."""


class BackendTooLarge(BackendError):
    """The answer's body is larger than ``max_body``."""


@dataclass(frozen=True, slots=True)
class BackendResponse:
    """A complete answer: status, headers as received (octets, original case), body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = field(repr=False)
    http_version: bytes = b"1.1"


class PooledStream(Protocol):
    """What the pool needs of a connection: the :class:`~m2msec.service.streams.Stream`
    shape, whether it can carry another request (``usable``), a hook it calls when it
    closes (or speaks unasked) while idle in the pool, and closing without waiting."""

    on_idle_event: Callable[[], None] | None

    @property
    def usable(self) -> bool: ...

    async def recv(self) -> bytes: ...

    async def send(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    def release(self) -> None:
        """Close gracefully without waiting."""

    def abort(self) -> None:
        """Close at once, unsent octets dropped."""


Connect = Callable[[], Awaitable[PooledStream]]
"""A factory of pooled connections (``BackendPool(connect=...)``)."""


class _BackendStream(asyncio.Protocol):
    """One connection to the backend in the :class:`~m2msec.service.streams.Stream` shape.

    An asyncio protocol rather than asyncio's streams so that a close (or stray octets)
    while the connection idles in the pool is acted on at once (``on_idle_event``), and
    reading pauses above ``_READ_HIGH_WATER`` unread octets.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False  # the socket is gone, or we decided to close it
        self.eof = False  # the backend half-closed or closed its side
        #: Set while the connection idles in the pool: called on data, EOF or loss.
        self.on_idle_event: Callable[[], None] | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def usable(self) -> bool:
        """Open, not half-closed, and nothing unread left over."""
        return not (self.closed or self.eof or self._buffer)

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()  # once, not per read

    def data_received(self, data: bytes) -> None:
        if self.on_idle_event is not None:
            # Octets while no request is outstanding: the connection cannot be trusted.
            self.abort()
            self.on_idle_event()
            return
        self._buffer += data
        if len(self._buffer) > _READ_HIGH_WATER and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        if self.on_idle_event is not None:
            self.on_idle_event()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self.eof = True
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._wake()
        if self.on_idle_event is not None:
            self.on_idle_event()

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- Stream -----------------------------------------------------------------------------
    async def recv(self) -> bytes:
        """The octets received so far; ``b""`` once the backend has closed its side."""
        while not self._buffer and not self.eof:
            self._waiter = (self._loop or asyncio.get_running_loop()).create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def send(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        self.transport.write(data)
        if self._drain is not None and not self._drain.done():
            await self._drain

    async def close(self) -> None:
        self.release()

    def release(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Slot:
    """One place of the pool: the one HTTP client over (at most) one backend connection."""

    __slots__ = ("client", "idle_since", "in_pool", "stream")

    def __init__(self, pool: BackendPool) -> None:
        self.stream: PooledStream | None = None
        self.in_pool = False
        self.idle_since = 0.0
        self.client = HttpClient(
            limits=pool.limits, connect=lambda: pool._connect(self), retry_idempotent=True
        )

    @property
    def reusable(self) -> bool:
        return self.stream is not None and self.stream.usable and self.client.reusable

    def drop(self, *, abort: bool = False) -> None:
        """Close the connection (``abort``: at once, unsent octets dropped)."""
        self.in_pool = False
        stream = self.stream
        if stream is not None:
            stream.on_idle_event = None
            if abort:
                stream.abort()
            else:
                stream.release()


class BackendPool:
    """Persistent HTTP/1.1 connections to one backend (module docstring): ``request()``.

    ``url`` is ``http://host[:port][/prefix]`` or ``https://...``; request targets are
    appended to the prefix. ``aclose()`` closes every connection; requests in progress
    are not waited for.
    """

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_idle: int = DEFAULT_MAX_IDLE,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
        ssl_context: ssl.SSLContext | None = None,
        connect: Connect | None = None,
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"backend {url!r}: an http:// or https:// URL is needed")
        if max_connections < 1 or max_idle < 0 or timeout <= 0 or max_body < 0:
            raise ConfigurationError("backend pool: limits must be positive")
        self.url = url
        self.host = parts.hostname
        default_port = 443 if scheme == "https" else 80
        self.port = parts.port or default_port
        netloc_host = f"[{self.host}]" if ":" in self.host else self.host
        host_header = netloc_host if self.port == default_port else f"{netloc_host}:{self.port}"
        if not host_header.isascii():
            host_header = host_header.encode("idna").decode("ascii")
        self._host_header = host_header
        self._host_line = b"Host: %s\r\n" % host_header.encode("ascii")
        if not valid_header_block(self._host_line, 1):
            raise ConfigurationError(f"backend {url!r}: not a host name HTTP can carry")
        self._prefix = parts.path.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        self._factory = connect
        if scheme == "https" and connect is None:
            self._ssl = ssl_context or ssl.create_default_context()
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        #: The one client's caps (only the sizes matter here; timeouts are the pool's).
        self.limits = HttpLimits(max_header=MAX_HEAD, max_body=max_body)
        self._idle: collections.deque[_Slot] = collections.deque()
        self._open = 0  # connections open or being opened (the bound)
        self._waiters: collections.deque[asyncio.Future[_Slot | None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first request
        #: Counters since start: connections opened, requests retried on a fresh one.
        self.connections_opened = 0
        self.retries = 0

    # -- public ---------------------------------------------------------------------------
    @property
    def max_body(self) -> int:
        return self.limits.max_body

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> BackendResponse:
        """Send ``method target`` with ``headers`` and ``body``; the complete answer.

        Raises BackendTimeout, BackendUnreachable, BackendTooLarge, BackendRequestError
        (all BackendError).
        """
        if self._closed:
            raise BackendUnreachable("client closed")
        framed = body or method in ("POST", "PUT")
        try:
            if isinstance(headers, HeaderLines):
                # Lines already in wire form, checked by their maker (the forwarder's
                # raw path): only Host and the framing are added, nothing re-encoded.
                wire = self._host_line + headers.wire
                if framed:
                    wire += b"Content-Length: %d\r\n" % len(body)
                prepared = prepare_wire_request(method, self._prefix + target, wire, body)
            else:
                fields = [("Host", self._host_header), *headers]
                if framed:
                    fields.append(("Content-Length", str(len(body))))
                prepared = prepare_request(method, self._prefix + target, fields, body)
        except InvalidRequest as exc:
            raise BackendRequestError(f"request cannot be sent: {exc}") from None
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        try:
            async with Deadline(loop, loop.time() + self.timeout):
                answer = await self._send(prepared)
        except TimeoutError:
            raise BackendTimeout(f"no answer within {self.timeout:g} s") from None
        return BackendResponse(
            answer.status, answer.raw_headers, answer.body, answer.http_version.encode()
        )

    async def prime(self) -> None:
        """Open one connection now and keep it idle, within ``timeout`` (BackendError as
        :meth:`request`): the next request finds it ready. Nothing happens when an idle
        connection is already there."""
        if self._closed:
            raise BackendUnreachable("client closed")
        try:
            async with asyncio.timeout(self.timeout):
                slot = await self._acquire()
        except TimeoutError:
            raise BackendTimeout(f"no connection within {self.timeout:g} s") from None
        try:
            if not slot.reusable:
                async with asyncio.timeout(self.timeout):
                    await slot.client.open()
        except BaseException as exc:
            slot.drop(abort=True)
            self._slot_freed()
            if isinstance(exc, TimeoutError):
                raise BackendTimeout(f"no connection within {self.timeout:g} s") from None
            if isinstance(exc, Exception):
                raise _backend_error(exc, "GET") from None
            raise
        self._release(slot)

    async def aclose(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            self._idle.pop().drop()
            self._open -= 1
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(BackendUnreachable("client closed"))
        await asyncio.sleep(0)  # let the transports finish closing

    # -- internals ------------------------------------------------------------------------
    async def _send(self, request: ClientRequest) -> HttpAnswer:
        slot = await self._acquire()
        client = slot.client
        retries = client.retries
        try:
            if slot.stream is not None and not slot.stream.usable:
                # Seen closed before any octet was written: a fresh connection is safe for
                # any method, in the slot of this one.
                self.retries += 1
                slot.drop()
                await client.aclose()
            answer = await client.send(request)
        except BaseException as exc:
            self.retries += client.retries - retries
            slot.drop(abort=True)
            self._slot_freed()
            if isinstance(exc, Exception):
                raise _backend_error(exc, request.method) from None
            raise
        self.retries += client.retries - retries
        self._release(slot)
        return answer

    async def _acquire(self) -> _Slot:
        while self._idle:
            slot = self._idle.pop()  # most recently used
            slot.in_pool = False
            if slot.stream is not None:
                slot.stream.on_idle_event = None
            if not slot.reusable:
                slot.drop()
                self._slot_freed()
                continue
            return slot
        if self._open < self.max_connections:
            self._open += 1
            return _Slot(self)  # connects on its first request
        fut: asyncio.Future[_Slot | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            got = await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                handed = fut.result()  # handed over just as we gave up: pass it on
                if handed is None:
                    self._slot_freed()
                else:
                    self._release(handed)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise
        return got if got is not None else _Slot(self)  # or a slot freed for us

    async def _connect(self, slot: _Slot) -> PooledStream:
        """A new connection for ``slot`` (which holds its place in ``_open``)."""
        if self._factory is not None:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    made = await self._factory()
            except TimeoutError:
                raise BackendTimeout(
                    f"no connection within {self.connect_timeout:g} s"
                ) from None
            self.connections_opened += 1
            slot.stream = made
            return made
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, stream = await loop.create_connection(
                    _BackendStream,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise BackendTimeout(f"no connection within {self.connect_timeout:g} s") from None
        except ssl.SSLError as exc:
            raise BackendUnreachable(f"TLS failed ({exc.reason or exc})") from None
        except OSError as exc:  # refused, unreachable, unknown host name
            if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
                reason = exc.strerror or str(exc) or type(exc).__name__
            else:
                reason = os.strerror(exc.errno)
            raise BackendUnreachable(reason.lower()) from None
        self.connections_opened += 1
        slot.stream = stream
        sock = stream.transport.get_extra_info("socket") if stream.transport else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return stream

    def _release(self, slot: _Slot) -> None:
        """Give back ``slot``: pooled, handed to a waiter, or closed."""
        if slot.in_pool:
            return
        if slot.reusable and not self._closed:
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_result(slot)
                    return
            if len(self._idle) < self.max_idle:
                assert slot.stream is not None
                slot.in_pool = True
                slot.idle_since = self._time()
                slot.stream.on_idle_event = lambda: self._forget(slot)
                self._idle.append(slot)
                self._schedule_sweep()
                return
        slot.drop()
        self._slot_freed()

    def _time(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    def _slot_freed(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the waiter opens a connection in this slot
                return
        self._open -= 1

    def _forget(self, slot: _Slot) -> None:
        """An idle connection was closed by the backend (or spoke unasked): drop it."""
        if not slot.in_pool:
            return
        with contextlib.suppress(ValueError):
            self._idle.remove(slot)
        slot.drop()
        self._slot_freed()

    def _schedule_sweep(self) -> None:
        if self._sweeper is None and self._idle:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.idle_timeout, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        limit = asyncio.get_running_loop().time() - self.idle_timeout
        while self._idle and self._idle[0].idle_since <= limit:
            self._idle.popleft().drop()  # least recently used first
            self._slot_freed()
        if self._idle:
            loop = asyncio.get_running_loop()
            delay = self._idle[0].idle_since + self.idle_timeout - loop.time()
            self._sweeper = loop.call_later(max(delay, 0.01), self._sweep)


def _backend_error(exc: Exception, method: str) -> Exception:
    """The pool's error for what the one client raised (others pass unchanged)."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, ResponseTooLarge):
        return BackendTooLarge(str(exc))
    if isinstance(exc, ClosedBeforeAnswer):
        if exc.reused and method not in IDEMPOTENT_METHODS:
            return BackendUnreachable(
                "connection closed before the answer (not retried: not idempotent)"
            )
        return BackendUnreachable("connection closed before a complete answer")
    if isinstance(exc, InvalidRequest):
        return BackendRequestError(f"request cannot be sent: {exc}")
    if isinstance(exc, ConnectionError | OSError):
        return BackendUnreachable(str(exc) or type(exc).__name__)
    return exc
