"""Asyncio adapters for the TLS engine over TCP.

Thin on purpose: an :class:`asyncio.Protocol` moves bytes between the socket and a
:class:`~m2msec.tls.engine.TLSEngine` and turns engine events into awaitables. All
protocol decisions stay in the engine and the framework callbacks.

Servers bound a handshake's duration and the number of handshakes in flight, so a client
that stalls mid-handshake, or a flood of them, cannot starve the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from m2msec.errors import HandshakeError
from m2msec.tls.context import PeerBinding, SecurityContext
from m2msec.tls.engine import (
    ConnectionClosed,
    DataReceived,
    HandshakeComplete,
    HandshakeFailed,
    PskLookupNeeded,
    TLSEngine,
)
from m2msec.tls.profiles import TLSProfile
from m2msec.tls.sessions import ClientSession

log = logging.getLogger(__name__)

#: Pause reading from a peer whose decrypted data the application has not consumed.
_HIGH_WATER = 256 * 1024

Handler = Callable[["TLSConnection"], Awaitable[None]]
FailureHook = Callable[[tuple[Any, ...] | None, str], None]


def _fmt(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


class TLSConnection:
    """An established security association over one TCP connection."""

    def __init__(self, protocol: _TLSProtocol) -> None:
        self._p = protocol

    @property
    def context(self) -> SecurityContext:
        ctx = self._p.engine.context
        assert ctx is not None
        return ctx

    @property
    def peer_address(self) -> tuple[Any, ...] | None:
        return self._p.peer

    @property
    def engine(self) -> TLSEngine:
        return self._p.engine

    async def recv(self) -> bytes:
        """The next decrypted bytes; ``b""`` once the peer has closed."""
        return await self._p.read()

    async def send(self, data: bytes) -> None:
        """Encrypt and send ``data``, waiting while the socket's buffer is full."""
        self._p.write(data)
        await self._p.drain()

    def export_keying_material(
        self, label: bytes, length: int, context: bytes | None = None
    ) -> bytes:
        return self._p.engine.export_keying_material(label, length, context)

    async def close(self) -> None:
        self._p.close()
        await self._p.closed.wait()

    def abort(self) -> None:
        self._p.abort()


class _TLSProtocol(asyncio.Protocol):
    def __init__(
        self,
        profile: TLSProfile,
        *,
        server_name: str | None = None,
        handshake_timeout: float = 10.0,
        session: ClientSession | None = None,
    ) -> None:
        self.engine = TLSEngine(profile, server_name=server_name, session=session)
        self.handshake: asyncio.Future[SecurityContext] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.Event()
        self.peer: tuple[Any, ...] | None = None
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._paused = False
        self._timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._lookups: set[asyncio.Task[None]] = set()

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self.peer = self._transport.get_extra_info("peername")
        self._timer = asyncio.get_running_loop().call_later(
            self._timeout, self._handshake_timed_out
        )
        self.engine.start()
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.engine.receive_data(data)
        self._flush()
        self._dispatch()

    def eof_received(self) -> bool | None:
        self.engine.receive_data(b"")
        self._dispatch()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        for task in self._lookups:
            task.cancel()
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError("connection lost during the handshake"))
        self._eof = True
        self._readable.set()
        self._writable.set()
        self.closed.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # engine plumbing
    def _flush(self) -> None:
        out = self.engine.data_to_send()
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)

    def _dispatch(self) -> None:
        for event in self.engine.events():
            if isinstance(event, HandshakeComplete):
                self._cancel_timer()
                if not self.handshake.done():
                    self.handshake.set_result(event.context)
            elif isinstance(event, DataReceived):
                self._buffer += event.data
                self._readable.set()
                if len(self._buffer) > _HIGH_WATER and not self._paused and self._transport:
                    self._paused = True
                    self._transport.pause_reading()
            elif isinstance(event, ConnectionClosed):
                self._eof = True
                self._readable.set()
                self._flush()
                if self._transport is not None:
                    self._transport.close()
            elif isinstance(event, PskLookupNeeded):
                task = asyncio.get_running_loop().create_task(self._lookup(event))
                self._lookups.add(task)
                task.add_done_callback(self._lookups.discard)
            elif isinstance(event, HandshakeFailed):
                self._cancel_timer()
                if not self.handshake.done():
                    self.handshake.set_exception(HandshakeError(event.reason))
                self._flush()  # the alert
                if self._transport is not None:
                    self._transport.close()

    async def _lookup(self, event: PskLookupNeeded) -> None:
        # The handshake timer keeps running: a slow MAF or BSF ends in "timed out".
        resolver = self.engine.profile.psk_async_resolver
        assert resolver is not None
        answer: tuple[bytes, PeerBinding] | HandshakeError | None
        try:
            answer = await resolver(event.identity, event.cipher_suite)
        except HandshakeError as exc:
            answer = exc
        except Exception:
            log.exception("asynchronous PSK lookup failed")
            answer = HandshakeError("psk_identity could not be resolved")
        if self._transport is None or self._transport.is_closing():
            return
        self.engine.provide_psk(event.identity, answer)
        self._flush()
        self._dispatch()

    def _handshake_timed_out(self) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError("handshake timed out"))
        if self._transport is not None:
            self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # application side
    async def read(self) -> bytes:
        while not self._buffer and not self._eof:
            self._readable.clear()
            await self._readable.wait()
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("security association is closed")
        self.engine.send(data)
        self._flush()

    async def drain(self) -> None:
        await self._writable.wait()

    def close(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self.engine.close()
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


async def connect(
    host: str,
    port: int,
    profile: TLSProfile,
    *,
    server_name: str | None = None,
    timeout: float = 10.0,
) -> TLSConnection:
    """Run the initiator's handshake (Entity A) and return the association.

    Raises :class:`HandshakeError` with a reason safe to show when it fails.

    With ``profile.client_sessions`` set, a TLS 1.2 session of the last connection to the
    same ``host``, ``port`` and server name is offered for resumption, and the new one
    kept; if a resumption attempt fails, one full handshake follows.
    """
    if profile.server_side:
        raise ValueError("connect() needs an initiator (client) profile")
    cache = profile.client_sessions
    key = (host, port, server_name or profile.server_name)
    offer = cache.get(key) if cache is not None else None
    try:
        conn = await _connect(host, port, profile, server_name, timeout, offer)
    except HandshakeError:
        if cache is None or offer is None:
            raise
        cache.discard(key)
        conn = await _connect(host, port, profile, server_name, timeout, None)
    session = conn.engine.session
    if cache is not None and session is not None:
        ctx = conn.context
        binding = PeerBinding(ctx.peer_id, ctx.peer_kind, ctx.key_id, ctx.valid_until)
        cache.put(key, session, binding)
    return conn


async def _connect(
    host: str,
    port: int,
    profile: TLSProfile,
    server_name: str | None,
    timeout: float,
    offer: ClientSession | None,
) -> TLSConnection:
    loop = asyncio.get_running_loop()
    try:
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: _TLSProtocol(
                    profile, server_name=server_name, handshake_timeout=timeout, session=offer
                ),
                host,
                port,
            ),
            timeout,
        )
    except (OSError, TimeoutError) as exc:
        raise HandshakeError(f"cannot reach {host}:{port}: {exc}") from None
    await protocol.handshake
    return TLSConnection(protocol)


class TLSServer:
    """A listening responder (Entity B): runs ``handler`` for each established association."""

    def __init__(
        self,
        profile: TLSProfile,
        handler: Handler,
        *,
        handshake_timeout: float = 10.0,
        max_handshakes: int = 1024,
        on_failure: FailureHook | None = None,
    ) -> None:
        if not profile.server_side:
            raise ValueError("TLSServer needs a responder (server) profile")
        self.profile = profile
        self.handler = handler
        self.handshake_timeout = handshake_timeout
        self.max_handshakes = max_handshakes
        self.on_failure = on_failure
        self.pending = 0
        self.established = 0
        self.failed = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, **kwargs: Any) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_protocol, host, port, **kwargs)
        return self._server

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server else ()

    @property
    def port(self) -> int:
        port: int = self.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        # Stop accepting, end the per-connection tasks, then wait: from Python 3.12
        # wait_closed() also waits for open connections, which the tasks hold.
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _new_protocol(self) -> asyncio.Protocol:
        protocol = _TLSProtocol(self.profile, handshake_timeout=self.handshake_timeout)
        task = asyncio.get_running_loop().create_task(self._serve(protocol))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return protocol

    async def _serve(self, protocol: _TLSProtocol) -> None:
        if self.pending >= self.max_handshakes:
            # Too many half-open handshakes: shed the newcomer, keep serving the rest.
            await asyncio.sleep(0)
            protocol.abort()
            self._report(protocol.peer, "too many handshakes in progress")
            return
        self.pending += 1
        try:
            await protocol.handshake
        except HandshakeError as exc:
            self._report(protocol.peer, exc.reason)
            return
        except asyncio.CancelledError:
            protocol.abort()  # server closing: drop the half-open connection
            raise
        finally:
            self.pending -= 1
        self.established += 1
        conn = TLSConnection(protocol)
        try:
            await self.handler(conn)
        except Exception:
            log.exception("handler for %s failed", conn.context.peer_id)
        finally:
            protocol.close()

    def _report(self, peer: tuple[Any, ...] | None, reason: str) -> None:
        self.failed += 1
        log.info("security association with %s refused: %s", _fmt(peer), reason)
        if self.on_failure is not None:
            self.on_failure(peer, reason)
