"""HTTP/1.1 client of the gateway towards its backend CSE: persistent h11 connections.

The gateway (:mod:`m2msec.servers.gateway`) is Entity B of the TS-0003 clause 8.2
security associations; behind it the CSE (for example ACME) speaks plain HTTP, the
TS-0009 binding of the TS-0004 primitives. Every request the gateway accepts is
forwarded over the link this module maintains, so its cost is paid on every request:
this is a small client on h11 (the same HTTP framing library as
:mod:`m2msec.bindings.http`) over asyncio protocols, with no URL parsing, header
defaults or cookie handling of its own.

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
* answers are read with h11's framing (Content-Length, chunked, or until close), 1xx
  interim answers skipped, and the body bounded by ``max_body`` (:class:`BackendTooLarge`);
* headers go out as given (names and values as Latin-1 octets) plus ``Host`` and, when
  there is a body (or for POST and PUT), ``Content-Length``: rewriting (hop-by-hop fields,
  ``X-M2MSec-*``) is the gateway's job. Answer headers come back as received, original
  case included.

``https://`` backends are reached over TLS with :func:`ssl.create_default_context` (the
system's trust store, host name checked) unless an ``ssl_context`` is given.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import h11

from m2msec.errors import ConfigurationError, M2MSecError

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_IDLE",
    "IDEMPOTENT_METHODS",
    "BackendError",
    "BackendPool",
    "BackendRequestError",
    "BackendResponse",
    "BackendTimeout",
    "BackendTooLarge",
    "BackendUnreachable",
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

#: RFC 9110 9.2.2: a request with one of these methods may be repeated.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


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


class _Stale(Exception):
    """The connection was closed before any octet of the answer (retry candidate)."""

    def __init__(self, nothing_written: bool) -> None:
        super().__init__("connection closed before the answer")
        self.nothing_written = nothing_written


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to the backend: an asyncio protocol feeding h11."""

    def __init__(self, pool: BackendPool) -> None:
        self._pool = pool
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.closed = False  # the socket is gone, or we decided to close it
        self.eof = False  # the backend half-closed or closed its side
        self.uses = 0  # requests answered completely on this connection
        self.idle_since = 0.0
        self.in_pool = False
        self.busy = False  # a request is outstanding
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._unread = 0
        self._paused = False
        self._received = False  # any octet of the current answer

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # Octets while no request is outstanding: the connection cannot be trusted.
            self.close()
            return
        self._received = True
        self.h11.receive_data(data)
        self._unread += len(data)
        if self._unread > _READ_HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.in_pool:
            self._pool._forget(self)
            return None  # the transport closes itself
        if self.h11.their_state is not h11.ERROR:
            with contextlib.suppress(h11.RemoteProtocolError):
                self.h11.receive_data(b"")
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.eof = True
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.in_pool:
            self._pool._forget(self)
        self._wake()

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- use -----------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def reusable(self) -> bool:
        return (
            not self.closed
            and not self.eof
            and self.h11.our_state is h11.DONE
            and self.h11.their_state is h11.DONE
            and not self.h11.trailing_data[0]
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def exchange(
        self, request: h11.Request, body: bytes, max_body: int
    ) -> BackendResponse:
        """Send one request, read its answer to the end (raises _Stale, BackendError)."""
        transport = self.transport
        assert transport is not None
        reused = self.uses > 0
        if self.closed or self.eof:
            raise _Stale(nothing_written=True)
        self._received = False
        self.busy = True
        try:
            data = self.h11.send(request) or b""
            if body:
                data += self.h11.send(h11.Data(data=body)) or b""
            data += self.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            raise BackendRequestError(f"request cannot be sent: {exc}") from None
        transport.write(data)
        if self._drain is not None and not self._drain.done():
            await self._drain
        head: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                if not self.eof:
                    raise BackendUnreachable(f"malformed answer ({exc})") from None
                event = h11.ConnectionClosed()  # closed in the middle of the answer
            if event is h11.NEED_DATA:
                self._unread = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                if self.eof:
                    event = h11.ConnectionClosed()
                else:
                    self._waiter = loop.create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                    continue
            if isinstance(event, h11.Response):
                head = event
                length = _content_length(event.headers.raw_items())
                if length is not None and length > max_body:
                    raise BackendTooLarge(f"answer of {length} octets announced")
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_body:
                    raise BackendTooLarge(f"answer larger than {max_body} octets")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                if reused and head is None and not self._received:
                    raise _Stale(nothing_written=False)
                raise BackendUnreachable("connection closed before a complete answer")
            else:  # PAUSED: a protocol switch we never ask for, or octets after the answer
                raise BackendUnreachable("unexpected answer")
        assert head is not None
        self.uses += 1
        self.busy = False
        body_out = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return BackendResponse(
            head.status_code, list(head.headers.raw_items()), body_out, head.http_version
        )


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            text = value.strip()
            return int(text) if text.isdigit() else None
    return None


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
        self._host_header = host_header.encode("idna" if not host_header.isascii() else "ascii")
        self._prefix = parts.path.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        if scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.max_body = max_body
        self._idle: collections.deque[_Connection] = collections.deque()
        self._open = 0  # connections open or being opened (the bound)
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = (
            collections.deque()
        )
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        #: Counters since start: connections opened, requests retried on a fresh one.
        self.connections_opened = 0
        self.retries = 0

    # -- public ---------------------------------------------------------------------------
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
        try:
            raw = [(b"Host", self._host_header)]
            raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
            if body or method in ("POST", "PUT"):
                raw.append((b"Content-Length", str(len(body)).encode("ascii")))
            head = h11.Request(
                method=method.encode("ascii"),
                target=(self._prefix + target).encode("latin-1"),
                headers=raw,
            )
        except (h11.LocalProtocolError, UnicodeError) as exc:
            raise BackendRequestError(f"request cannot be sent: {exc}") from None
        try:
            async with asyncio.timeout(self.timeout):
                return await self._send(method, head, body)
        except TimeoutError:
            raise BackendTimeout(f"no answer within {self.timeout:g} s") from None

    async def aclose(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            conn = self._idle.pop()
            conn.in_pool = False
            conn.close()
            self._open -= 1
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(BackendUnreachable("client closed"))
        await asyncio.sleep(0)  # let the transports finish closing

    # -- internals ------------------------------------------------------------------------
    async def _send(self, method: str, head: h11.Request, body: bytes) -> BackendResponse:
        conn = await self._acquire()
        try:
            try:
                response = await conn.exchange(head, body, self.max_body)
            except _Stale as stale:
                conn.abort()
                if not (stale.nothing_written or method in IDEMPOTENT_METHODS):
                    raise BackendUnreachable(
                        "connection closed before the answer (not retried: not idempotent)"
                    ) from None
                # Retry once, on a fresh connection, keeping the slot of the stale one.
                self.retries += 1
                conn = await self._connect()
                try:
                    response = await conn.exchange(head, body, self.max_body)
                except _Stale:
                    raise BackendUnreachable("connection closed before the answer") from None
        except BaseException:
            conn.abort()
            self._release(conn)
            raise
        self._release(conn)
        return response

    async def _acquire(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()  # most recently used
            conn.in_pool = False
            if conn.closed or conn.eof:
                conn.close()
                self._slot_freed()
                continue
            return conn
        if self._open < self.max_connections:
            self._open += 1
            try:
                return await self._connect()
            except BaseException:
                self._slot_freed()
                raise
        fut: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
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
        if got is not None:
            return got
        try:
            return await self._connect()  # a slot was freed for us
        except BaseException:
            self._slot_freed()
            raise

    async def _connect(self) -> _Connection:
        """A new connection (the caller holds its slot in ``_open``)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
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
        sock = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _release(self, conn: _Connection) -> None:
        """Give back the slot of ``conn``: pooled, handed to a waiter, or closed."""
        if conn.in_pool:
            return
        if conn.reusable and not self._closed:
            conn.h11.start_next_cycle()
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_result(conn)
                    return
            if len(self._idle) < self.max_idle:
                conn.in_pool = True
                conn.idle_since = asyncio.get_running_loop().time()
                self._idle.append(conn)
                self._schedule_sweep()
                return
        conn.close()
        self._slot_freed()

    def _slot_freed(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the waiter opens a connection in this slot
                return
        self._open -= 1

    def _forget(self, conn: _Connection) -> None:
        """An idle connection was closed by the backend: drop it from the pool."""
        if not conn.in_pool:
            return
        conn.in_pool = False
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        conn.close()
        self._slot_freed()

    def _schedule_sweep(self) -> None:
        if self._sweeper is None and self._idle:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.idle_timeout, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        limit = asyncio.get_running_loop().time() - self.idle_timeout
        while self._idle and self._idle[0].idle_since <= limit:
            conn = self._idle.popleft()  # least recently used first
            conn.in_pool = False
            conn.close()
            self._slot_freed()
        if self._idle:
            loop = asyncio.get_running_loop()
            delay = self._idle[0].idle_since + self.idle_timeout - loop.time()
            self._sweeper = loop.call_later(max(delay, 0.01), self._sweep)
