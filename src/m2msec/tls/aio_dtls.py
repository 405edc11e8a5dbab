"""Asyncio adapters for DTLS 1.2 (RFC 6347) over UDP.

Thin on purpose, like :mod:`m2msec.tls.aio` for TCP: an :class:`asyncio.DatagramProtocol`
moves datagrams between the socket and the sans-IO
:class:`~m2msec.tls.dtls.server.DTLSServer` or :class:`~m2msec.tls.dtls.engine.DTLSEngine`,
and ``loop.call_later`` drives their retransmission timers. Cookies, bounds and timeouts
are decided in :mod:`m2msec.tls.dtls`. TS-0003 10.2.1
and 10.2.2 profiles come from :func:`m2msec.tls.profiles.new_context` with
``Transport.DTLS``.

An established association is a :class:`DTLSAssociation`: one DTLS record per message,
both ways, so message boundaries are kept (as CoAP over DTLS needs).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import cast

from m2msec.errors import HandshakeError
from m2msec.logs import sa_fields
from m2msec.tls.context import HandshakeFailure, SecurityContext
from m2msec.tls.dtls.engine import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MTU, DTLSEngine
from m2msec.tls.dtls.records import Address, format_address
from m2msec.tls.dtls.server import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_HALF_OPEN,
    DEFAULT_MAX_PEERS,
    DTLSServer,
    Outgoing,
    PeerClosed,
    PeerDataReceived,
    PeerFailed,
    PeerHandshakeComplete,
    PeerPskLookupNeeded,
)
from m2msec.tls.engine import (
    ConnectionClosed,
    DataReceived,
    HandshakeComplete,
    HandshakeFailed,
    resolve_psk,
)
from m2msec.tls.profiles import TLSProfile
from m2msec.tls.resumption import offering_session
from m2msec.tls.sessions import ClientSession, ServerSessionCache

log = logging.getLogger(__name__)

#: Received messages the application has not read yet; beyond this, new ones are
#: dropped as UDP would (DTLS has no flow control to push back with).
DEFAULT_RECV_QUEUE = 1024

Handler = Callable[["DTLSAssociation"], Awaitable[None]]
FailureHook = Callable[[Address, str], None]
#: Hears of each failed handshake with what seed 003 needs of it (``HandshakeFailure``).
FailureDetailHook = Callable[[HandshakeFailure], None]


class DTLSAssociation:
    """An established DTLS security association with one peer (TS-0003 8.2).

    ``recv()`` returns one decrypted message, or ``b""`` once the association has closed;
    ``send()`` encrypts one message into one datagram.
    """

    def __init__(
        self,
        engine: DTLSEngine,
        peer_address: Address,
        *,
        sender: Callable[[bytes], None],
        closer: Callable[[], None],
        max_queue: int = DEFAULT_RECV_QUEUE,
    ) -> None:
        context = engine.context
        if context is None:
            raise HandshakeError("no established security association")
        self._engine = engine
        self._context = context
        self._peer = peer_address
        self._sender = sender
        self._closer = closer
        self._inbox: deque[bytes] = deque()
        self._max_queue = max_queue
        self._readable = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._close_notify = False
        self.dropped = 0
        """Messages dropped because the application did not read them in time."""

    @property
    def context(self) -> SecurityContext:
        return self._context

    @property
    def peer_address(self) -> Address:
        return self._peer

    @property
    def engine(self) -> DTLSEngine:
        return self._engine

    @property
    def closed(self) -> bool:
        return self._closed_event.is_set()

    @property
    def close_notify_received(self) -> bool:
        """True when the association ended by the peer's close_notify (its SA Removal,
        seed 003 table 43), not by us, an idle timeout or a replacing handshake."""
        return self._close_notify

    @property
    def max_payload(self) -> int:
        """The largest message :meth:`send` accepts (one record within the MTU)."""
        return self._engine.max_payload

    async def recv(self) -> bytes:
        """The next message from the peer; ``b""`` once the association has closed."""
        while not self._inbox:
            if self.closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        return self._inbox.popleft()

    def send(self, data: bytes) -> None:
        """Encrypt and send one message.

        Raises :class:`ConnectionResetError` once closed and
        :class:`~m2msec.tls.dtls.engine.DatagramTooLargeError` above :attr:`max_payload`.
        """
        if self.closed:
            raise ConnectionResetError("security association is closed")
        self._sender(data)

    def close(self) -> None:
        """Send close_notify and end the association (idempotent)."""
        if not self.closed:
            self._closer()
            self._on_closed()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    def export_keying_material(
        self, label: bytes, length: int, context: bytes | None = None
    ) -> bytes:
        """RFC 5705 exporter over this session (e.g. TS-0003 key export labels)."""
        return self._engine.export_keying_material(label, length, context)

    # adapter side
    def _deliver(self, data: bytes) -> None:
        if len(self._inbox) >= self._max_queue:
            self.dropped += 1
            return
        self._inbox.append(data)
        self._readable.set()

    def _on_closed(self, close_notify: bool = False) -> None:
        if not self.closed:
            self._close_notify = close_notify
        self._closed_event.set()
        self._readable.set()


# -- server ----------------------------------------------------------------------------------
class _ServerProtocol(asyncio.DatagramProtocol):
    def __init__(
        self,
        server: DTLSServer,
        handler: Handler,
        on_failure: FailureHook | None,
        max_queue: int,
        on_handshake_failure: FailureDetailHook | None = None,
    ) -> None:
        self.server = server
        self.handler = handler
        self.on_failure = on_failure
        self.on_handshake_failure = on_handshake_failure
        self.max_queue = max_queue
        self.transport: asyncio.DatagramTransport | None = None
        self.associations: dict[Address, DTLSAssociation] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        try:
            out = self.server.datagram_received(data, addr)
        except Exception:  # one peer's trouble must not stop the listener
            log.exception("DTLS datagram from %s could not be handled", format_address(addr))
            return
        self._send(out)
        self._after()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable, ...) are routine on UDP; retransmission copes.
        log.debug("DTLS server socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        for assoc in list(self.associations.values()):
            assoc._on_closed()
        self.associations.clear()
        self.closed.set()

    # plumbing
    def _send(self, out: Outgoing) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for datagram, addr in out:
            self.transport.sendto(datagram, addr)

    def _after(self) -> None:
        self._dispatch()
        self._schedule()

    def _dispatch(self) -> None:
        for event in self.server.events():
            addr = event.addr
            if isinstance(event, PeerHandshakeComplete):
                engine = self.server.engine(addr)
                assert engine is not None
                assoc = DTLSAssociation(
                    engine,
                    addr,
                    sender=self._sender_for(addr, engine),
                    closer=self._closer_for(addr, engine),
                    max_queue=self.max_queue,
                )
                self.associations[addr] = assoc
                task = self._loop.create_task(self._serve(assoc))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif isinstance(event, PeerDataReceived):
                current = self.associations.get(addr)
                if current is not None:
                    current._deliver(event.data)
            elif isinstance(event, PeerClosed):
                closed = self.associations.pop(addr, None)
                if closed is not None:
                    closed._on_closed(close_notify=event.close_notify)
            elif isinstance(event, PeerPskLookupNeeded):
                task = self._loop.create_task(self._lookup(event))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif isinstance(event, PeerFailed):
                log.info(
                    "DTLS security association with %s refused: %s",
                    format_address(addr),
                    event.reason,
                    extra=sa_fields(
                        peer=event.psk_identity,
                        framework=self.server.profile.framework.value,
                        cause=event.reason,
                        peer_address=format_address(addr),
                        event="refused",
                        transport="DTLS",
                    ),
                )
                if self.on_failure is not None:
                    try:
                        self.on_failure(addr, event.reason)
                    except Exception:
                        log.exception("on_failure hook failed")
                if self.on_handshake_failure is not None:
                    failure = HandshakeFailure(
                        addr,
                        event.reason,
                        "DTLS",
                        no_common_parameters=event.no_common_parameters,
                        psk_identity=event.psk_identity,
                    )
                    try:
                        self.on_handshake_failure(failure)
                    except Exception:
                        log.exception("on_handshake_failure hook failed")

    async def _lookup(self, event: PeerPskLookupNeeded) -> None:
        # As over TLS (m2msec.tls.aio): the handshake deadline keeps running, so a slow
        # MAF or BSF ends in "DTLS handshake timed out".
        answer = await resolve_psk(self.server.profile, event.identity, event.cipher_suite)
        if self.transport is None or self.transport.is_closing():
            return
        self._send(self.server.provide_psk(event.addr, event.identity, answer))
        self._after()

    def _sender_for(self, addr: Address, engine: DTLSEngine) -> Callable[[bytes], None]:
        def send(data: bytes) -> None:
            # The address may since belong to a newer association (RFC 6347 4.2.8).
            if self.server.engine(addr) is not engine:
                raise ConnectionResetError("security association is closed")
            self._send(self.server.send(addr, data))
            self._schedule()

        return send

    def _closer_for(self, addr: Address, engine: DTLSEngine) -> Callable[[], None]:
        def close() -> None:
            if self.server.engine(addr) is engine:
                self._send(self.server.close(addr))
                self.associations.pop(addr, None)
                self._schedule()

        return close

    async def _serve(self, assoc: DTLSAssociation) -> None:
        try:
            await self.handler(assoc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("DTLS handler for %s failed", assoc.context.peer_id)
        finally:
            assoc.close()

    # timers
    def _schedule(self) -> None:
        due = self.server.next_timer()
        if self._timer is not None and (due is None or self._timer_due <= due):
            # The armed timer fires no later than needed; firing early only re-arms.
            return
        self._cancel_timer()
        if due is None or self.transport is None or self.transport.is_closing():
            return
        self._timer_due = due
        delay = max(0.0, due - self.server.clock())
        self._timer = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._send(self.server.on_timer())
        self._after()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None


class DTLSServerHandle:
    """A listening DTLS responder started by :func:`start_dtls_server`."""

    def __init__(self, protocol: _ServerProtocol, transport: asyncio.DatagramTransport) -> None:
        self._p = protocol
        self._transport = transport

    @property
    def server(self) -> DTLSServer:
        """The sans-IO server (peers, counters, settings)."""
        return self._p.server

    @property
    def address(self) -> Address:
        sockname: Address = self._transport.get_extra_info("sockname")
        return sockname

    @property
    def port(self) -> int:
        return int(self.address[1])

    def associations(self) -> list[DTLSAssociation]:
        return list(self._p.associations.values())

    def close(self) -> None:
        """Send close_notify to every peer, stop listening and cancel handlers."""
        if self._transport.is_closing():
            return
        self._p._send(self.server.close_all())
        for task in list(self._p.tasks):
            task.cancel()
        self._transport.close()

    async def wait_closed(self) -> None:
        await self._p.closed.wait()
        tasks = list(self._p.tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> DTLSServerHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def start_dtls_server(
    profile: TLSProfile,
    host: str,
    port: int,
    handler: Handler,
    *,
    mtu: int = DEFAULT_MTU,
    max_half_open: int = DEFAULT_MAX_HALF_OPEN,
    max_peers: int = DEFAULT_MAX_PEERS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    on_failure: FailureHook | None = None,
    max_queue: int = DEFAULT_RECV_QUEUE,
    resumption: bool | ServerSessionCache = True,
    on_handshake_failure: FailureDetailHook | None = None,
) -> DTLSServerHandle:
    """Listen for DTLS associations (Entity B) on ``host:port`` (UDP).

    ``handler`` runs once per established association; the association is closed when
    it returns. ``on_failure(addr, reason)`` hears about refused handshakes, and
    ``on_handshake_failure`` of the same with their cause (a ``HandshakeFailure``).
    ``resumption`` lets devices resume sessions (see :mod:`m2msec.tls.sessions`).
    """
    server = DTLSServer(
        profile,
        mtu=mtu,
        max_half_open=max_half_open,
        max_peers=max_peers,
        idle_timeout=idle_timeout,
        handshake_timeout=handshake_timeout,
        resumption=resumption,
    )
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _ServerProtocol(server, handler, on_failure, max_queue, on_handshake_failure),
        local_addr=(host, port),
    )
    return DTLSServerHandle(protocol, transport)


# -- client ----------------------------------------------------------------------------------
class _ClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, engine: DTLSEngine, max_queue: int) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self._loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[DTLSAssociation] = self._loop.create_future()
        self.transport: asyncio.DatagramTransport | None = None
        self.peer: Address = ()
        self.assoc: DTLSAssociation | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.peer = self.transport.get_extra_info("peername") or ()
        self.engine.start()
        self._flush()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.engine.receive_datagram(data)
        self._flush()

    def error_received(self, exc: Exception) -> None:
        # e.g. port unreachable while the server starts: retransmission will retry.
        log.debug("DTLS client socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError("transport closed during the handshake"))
        if self.assoc is not None:
            self.assoc._on_closed()

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            for datagram in self.engine.datagrams_to_send():
                self.transport.sendto(datagram)
        self._dispatch()
        self._schedule()

    def _dispatch(self) -> None:
        for event in self.engine.events():
            if isinstance(event, HandshakeComplete):
                self.assoc = DTLSAssociation(
                    self.engine,
                    self.peer,
                    sender=self._send_app,
                    closer=self._close,
                    max_queue=self.max_queue,
                )
                if not self.handshake.done():
                    self.handshake.set_result(self.assoc)
            elif isinstance(event, DataReceived):
                if self.assoc is not None:
                    self.assoc._deliver(event.data)
            elif isinstance(event, ConnectionClosed):
                if self.assoc is not None:
                    self.assoc._on_closed(close_notify=event.close_notify)
                self._close_transport()
            elif isinstance(event, HandshakeFailed):
                if not self.handshake.done():
                    self.handshake.set_exception(HandshakeError(event.reason))
                if self.assoc is not None:
                    self.assoc._on_closed()
                self._close_transport()

    def _send_app(self, data: bytes) -> None:
        self.engine.send(data)
        self._flush()

    def _close(self) -> None:
        self.engine.close()
        self._flush()
        self._close_transport()

    def _close_transport(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _schedule(self) -> None:
        self._cancel_timer()
        if self.transport is None or self.transport.is_closing():
            return
        left = self.engine.timeout()
        if left is not None:
            self._timer = self._loop.call_later(left, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.engine.handle_timeout()
        self._flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def dtls_connect(
    profile: TLSProfile,
    host: str,
    port: int,
    *,
    server_name: str | None = None,
    timeout: float = 10.0,
    mtu: int = DEFAULT_MTU,
    max_queue: int = DEFAULT_RECV_QUEUE,
) -> DTLSAssociation:
    """Run the initiator's DTLS handshake (Entity A) with ``host:port`` (UDP).

    Retransmits lost flights (RFC 6347 4.2.4) and gives up after ``timeout`` seconds.
    Raises :class:`HandshakeError` with a reason safe to show when it fails. With
    ``profile.client_sessions`` set, a session is offered for resumption
    (:func:`~m2msec.tls.resumption.offering_session`).
    """
    if profile.server_side:
        raise ValueError("dtls_connect() needs an initiator (client) profile")
    attempt = partial(_dtls_connect, profile, host, port, server_name, timeout, mtu, max_queue)
    return await offering_session(profile, host, port, server_name, attempt)


async def _dtls_connect(
    profile: TLSProfile,
    host: str,
    port: int,
    server_name: str | None,
    timeout: float,
    mtu: int,
    max_queue: int,
    offer: ClientSession | None,
) -> DTLSAssociation:
    engine = DTLSEngine(
        profile, server_name=server_name, mtu=mtu, handshake_timeout=timeout, session=offer
    )
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _ClientProtocol(engine, max_queue), remote_addr=(host, port)
        )
    except OSError as exc:
        raise HandshakeError(f"cannot reach {host}:{port}: {exc}") from None
    try:
        # The engine's own deadline fires first; this is the backstop.
        return await asyncio.wait_for(protocol.handshake, timeout + 1.0)
    except TimeoutError:
        transport.close()
        raise HandshakeError("DTLS handshake timed out") from None
    except BaseException:
        transport.close()
        raise


__all__ = [
    "DTLSAssociation",
    "DTLSServerHandle",
    "dtls_connect",
    "start_dtls_server",
]
