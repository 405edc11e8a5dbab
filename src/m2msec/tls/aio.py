"""Asyncio adapters for the TLS engine over TCP.

Thin on purpose: an :class:`asyncio.Protocol` moves bytes between the socket and a
:class:`~m2msec.tls.engine.TLSEngine` and turns engine events into awaitables. All
protocol decisions stay in the engine and the framework callbacks.

Servers bound a handshake's duration and the number of handshakes in flight, so a client
that stalls mid-handshake, or a flood of them, cannot starve the others (issue 9 item 2):
a connection must send its first flight (a whole ClientHello record, RFC 8446 5.1 / RFC 5246
6.2) within ``first_flight_timeout``; one source address may hold at most ``source_share`` of
``max_handshakes``; and at the cap the oldest connection that has sent nothing is evicted to
admit a newcomer, so silent connections cannot keep out a device that talks
(:class:`HandshakeAdmission`). TS-0003 8.2.1 leaves these resource limits to the implementation.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from m2msec.errors import HandshakeError
from m2msec.logs import sa_fields
from m2msec.tls.context import HandshakeFailure, SecurityContext
from m2msec.tls.dtls.records import format_address
from m2msec.tls.engine import (
    ConnectionClosed,
    DataReceived,
    HandshakeComplete,
    HandshakeFailed,
    PskLookupNeeded,
    TLSEngine,
    resolve_psk,
)
from m2msec.tls.profiles import TLSProfile
from m2msec.tls.resumption import offering_session
from m2msec.tls.sessions import ClientSession

log = logging.getLogger(__name__)

#: Pause reading from a peer whose decrypted data the application has not consumed.
_HIGH_WATER = 256 * 1024

Handler = Callable[["TLSConnection"], Awaitable[None]]
FailureHook = Callable[[tuple[Any, ...] | None, str], None]
#: Hears of each failed handshake with what seed 003 needs of it (``HandshakeFailure``).
FailureDetailHook = Callable[[HandshakeFailure], None]


#: Failure reasons of the admission limits (listeners' on_failure; gateway stats count them).
EVICTED = "evicted: silent at the handshake cap"
NO_FIRST_FLIGHT = "no first flight in time"

#: TLS record header: content type handshake(22), then the legacy version 3.x, then length.
_RECORD_HEADER = 5
_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01


@dataclass
class _Slot:
    source: str
    spoke: bool = False


class HandshakeAdmission:
    """Sans-IO admission of half-open handshakes for one listener (issue 9 item 2).

    ``admit`` answers which connections to evict so a newcomer fits, or ``None`` to refuse it.
    Connections that have sent a valid first flight (``first_flight``) keep their slot; at the
    total cap or at a source's share the oldest silent one gives way. A flood of idle sockets
    from the honest device's own address therefore only displaces itself.
    """

    def __init__(self, max_handshakes: int, source_share: float = 0.25) -> None:
        if max_handshakes < 1 or not 0 < source_share <= 1:
            raise ValueError("max_handshakes must be >= 1 and source_share in (0, 1]")
        self.max_handshakes = max_handshakes
        self.per_source = max(1, int(max_handshakes * source_share))
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()  # arrival order
        self._by_source: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def admit(self, key: Hashable, source: str) -> list[Hashable] | None:
        victims: list[Hashable] = []
        if self._by_source.get(source, 0) >= self.per_source:
            victim = self._oldest_silent(source)
            if victim is None:
                return None
            victims.append(victim)
            self.release(victim)
        if len(self._slots) >= self.max_handshakes:
            victim = self._oldest_silent(None)
            if victim is None:
                return None
            victims.append(victim)
            self.release(victim)
        self._slots[key] = _Slot(source)
        self._by_source[source] = self._by_source.get(source, 0) + 1
        return victims

    def first_flight(self, key: Hashable) -> None:
        slot = self._slots.get(key)
        if slot is not None:
            slot.spoke = True

    def release(self, key: Hashable) -> None:
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        left = self._by_source[slot.source] - 1
        if left:
            self._by_source[slot.source] = left
        else:
            del self._by_source[slot.source]

    def _oldest_silent(self, source: str | None) -> Hashable | None:
        for key, slot in self._slots.items():
            if not slot.spoke and (source is None or slot.source == source):
                return key
        return None


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

    @property
    def close_notify_received(self) -> bool:
        """True when the peer ended the session with close_notify (its SA Removal, seed
        003 table 43) rather than by dropping the connection."""
        return self._p.close_notify

    async def close(self) -> None:
        self._p.close()
        await self._p.closed.wait()

    def close_nowait(self) -> None:
        """Send close_notify and close, without waiting for the socket to be gone."""
        self._p.close()

    def is_closing(self) -> bool:
        """True once either side has closed (or begun closing) the association."""
        return self._p.is_closing()

    async def wait_closed(self) -> None:
        """Return once the connection is gone (closed by either side, or lost)."""
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
        first_flight_timeout: float | None = None,
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
        # Responder only: bytes of the first record seen so far, until it is a whole ClientHello.
        self._first_timeout = first_flight_timeout
        self._first: bytearray | None = bytearray() if first_flight_timeout else None
        self._first_timer: asyncio.TimerHandle | None = None
        self.on_first_flight: Callable[[], None] | None = None
        self.made = asyncio.Event()  # connection_made ran: peer is known
        self.close_notify = False  # the peer sent close_notify first
        self._closing = False  # we sent close_notify
        self.failure: HandshakeFailed | None = None  # the engine's, when it failed

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self.peer = self._transport.get_extra_info("peername")
        self.made.set()
        self._timer = asyncio.get_running_loop().call_later(
            self._timeout, self._handshake_timed_out
        )
        if self._first_timeout:
            self._first_timer = asyncio.get_running_loop().call_later(
                self._first_timeout, self._first_flight_timed_out
            )
        self.engine.start()
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._first is not None:
            self._watch_first_flight(data)
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
                # The peer's own close_notify, not its answer to ours.
                self.close_notify = self.close_notify or (event.close_notify and not self._closing)
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
                self.failure = event
                self._cancel_timer()
                if not self.handshake.done():
                    self.handshake.set_exception(HandshakeError(event.reason))
                self._flush()  # the alert
                if self._transport is not None:
                    self._transport.close()

    async def _lookup(self, event: PskLookupNeeded) -> None:
        # The handshake timer keeps running: a slow MAF or BSF ends in "timed out".
        answer = await resolve_psk(self.engine.profile, event.identity, event.cipher_suite)
        if self._transport is None or self._transport.is_closing():
            return
        self.engine.provide_psk(event.identity, answer)
        self._flush()
        self._dispatch()

    def _watch_first_flight(self, data: bytes) -> None:
        first = self._first
        assert first is not None
        first += data[: _RECORD_HEADER + 0xFFFF - len(first)]
        if len(first) < _RECORD_HEADER + 1:
            return
        length = int.from_bytes(first[3:5], "big")
        if first[0] != _HANDSHAKE or first[1] != 3 or first[5] != _CLIENT_HELLO:
            self._first = None  # not TLS: the engine refuses it, the deadlines stay
            return
        if len(first) >= _RECORD_HEADER + length:
            self._first = None
            if self._first_timer is not None:
                self._first_timer.cancel()
                self._first_timer = None
            if self.on_first_flight is not None:
                self.on_first_flight()

    def _first_flight_timed_out(self) -> None:
        self._first_timer = None
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError(NO_FIRST_FLIGHT))
        if self._transport is not None:
            self._transport.abort()

    def _handshake_timed_out(self) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError("handshake timed out"))
        if self._transport is not None:
            self._transport.abort()

    def _cancel_timer(self) -> None:
        for timer in (self._first_timer, self._timer):
            if timer is not None:
                timer.cancel()
        self._first_timer = self._timer = None

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
        self._closing = True
        self.engine.close()
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def is_closing(self) -> bool:
        return self._eof or self._transport is None or self._transport.is_closing()


async def connect(
    host: str,
    port: int,
    profile: TLSProfile,
    *,
    server_name: str | None = None,
    timeout: float = 10.0,
) -> TLSConnection:
    """Run the initiator's handshake (Entity A) and return the association.

    Raises :class:`HandshakeError` with a reason safe to show when it fails. With
    ``profile.client_sessions`` set, a TLS 1.2 session is offered for resumption
    (:func:`~m2msec.tls.resumption.offering_session`).
    """
    if profile.server_side:
        raise ValueError("connect() needs an initiator (client) profile")
    attempt = partial(_connect, host, port, profile, server_name, timeout)
    return await offering_session(profile, host, port, server_name, attempt)


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
        first_flight_timeout: float = 2.0,
        source_share: float = 0.25,
        on_handshake_failure: FailureDetailHook | None = None,
    ) -> None:
        if not profile.server_side:
            raise ValueError("TLSServer needs a responder (server) profile")
        self.profile = profile
        self.handler = handler
        self.handshake_timeout = handshake_timeout
        self.max_handshakes = max_handshakes
        self.first_flight_timeout = first_flight_timeout
        self.admission = HandshakeAdmission(max_handshakes, source_share)
        self.on_failure = on_failure
        #: Hears of each failed handshake with its cause (seed 003 table 35).
        self.on_handshake_failure = on_handshake_failure
        self.evicted = 0  # silent connections dropped to admit a newcomer
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
        protocol = _TLSProtocol(
            self.profile,
            handshake_timeout=self.handshake_timeout,
            first_flight_timeout=self.first_flight_timeout,
        )
        task = asyncio.get_running_loop().create_task(self._serve(protocol))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return protocol

    async def _serve(self, protocol: _TLSProtocol) -> None:
        # This task was created in the protocol factory, before connection_made.
        await protocol.made.wait()
        source = str(protocol.peer[0]) if protocol.peer else "?"
        victims = self.admission.admit(protocol, source)
        if victims is None:
            # Every slot (or this source's share) is held by peers that have spoken: refuse.
            await asyncio.sleep(0)
            protocol.abort()
            self._report(protocol, "too many handshakes in progress")
            return
        for victim in victims:
            # The oldest connection that has sent nothing gives way to the newcomer.
            self.evicted += 1
            silent = cast(_TLSProtocol, victim)
            if not silent.handshake.done():
                silent.handshake.set_exception(HandshakeError(EVICTED))
            silent.abort()
        protocol.on_first_flight = lambda: self.admission.first_flight(protocol)
        self.pending += 1
        try:
            await protocol.handshake
        except HandshakeError as exc:
            self._report(protocol, exc.reason)
            return
        except asyncio.CancelledError:
            protocol.abort()  # server closing: drop the half-open connection
            raise
        finally:
            self.pending -= 1
            self.admission.release(protocol)
            protocol.on_first_flight = None
        self.established += 1
        conn = TLSConnection(protocol)
        try:
            await self.handler(conn)
        except Exception:
            log.exception("handler for %s failed", conn.context.peer_id)
        finally:
            protocol.close()

    def _report(self, protocol: _TLSProtocol, reason: str) -> None:
        peer = protocol.peer
        self.failed += 1
        log.info(
            "security association with %s refused: %s",
            format_address(peer),
            reason,
            extra=sa_fields(
                peer=protocol.engine.psk_identity,
                framework=self.profile.framework.value,
                cause=reason,
                peer_address=format_address(peer),
                event="refused",
                transport="TLS",
            ),
        )
        if self.on_failure is not None:
            self.on_failure(peer, reason)
        if self.on_handshake_failure is not None:
            failed = protocol.failure
            failure = HandshakeFailure(
                peer,
                reason,
                "TLS",
                no_common_parameters=failed is not None and failed.no_common_parameters,
                psk_identity=protocol.engine.psk_identity,
            )
            try:
                self.on_handshake_failure(failure)
            except Exception:
                log.exception("on_handshake_failure hook failed")
