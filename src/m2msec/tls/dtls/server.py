"""A DTLS 1.2 responder for many peers on one UDP port (RFC 6347), sans-IO.

:class:`DTLSServer` demultiplexes datagrams by peer address onto one
:class:`~m2msec.tls.dtls.engine.DTLSEngine` per peer, and keeps the server safe from the
addresses it talks to (RFC 6347 references in brackets):

* Cookies [4.2.1]: per-peer state is created only for a ClientHello whose cookie
  verified (:mod:`m2msec.tls.dtls.cookies`); until then the server keeps nothing.
* Bounds: at most ``max_half_open`` handshakes in progress and ``max_peers`` peers;
  peers idle for ``idle_timeout`` are evicted. Invalid datagrams are dropped silently
  [4.1.2.7] and never cost the server state. Retransmission timers of half-open
  handshakes sit in one heap (:mod:`m2msec.tls.dtls.timers`).
* PSK identities resolved over the network (MAF, GBA: the profile's
  ``psk_async_resolver``) surface as :class:`PeerPskLookupNeeded`; the answer goes to
  :meth:`DTLSServer.provide_psk`.
* A verified ClientHello from the address of an established peer (a client that lost
  its state) starts a new handshake beside the association, which it replaces only once
  it completes [4.2.8]; a replayed ClientHello therefore cannot tear an association down.
* Resumption [4.2.4 of RFC 5246 via 4.1 of RFC 6347]: a device that comes back may
  resume its session by ID (on by default). The binding decided by the full handshake
  is kept in a :class:`~m2msec.tls.sessions.ServerSessionCache` and re-validated before
  the session is resumed; see :mod:`m2msec.tls.sessions`.

The asyncio adapter is :mod:`m2msec.tls.aio_dtls`; it only moves datagrams and runs timers.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TypeAlias

from OpenSSL import SSL

from m2msec.errors import ConfigurationError, HandshakeError
from m2msec.tls.context import SecurityContext
from m2msec.tls.dtls.cookies import CookieJar, PeerState, address_key, install_cookie_callbacks
from m2msec.tls.dtls.engine import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MTU,
    MAX_MTU,
    MIN_MTU,
    DTLSEngine,
)
from m2msec.tls.dtls.records import (
    Address,
    Clock,
    client_hello_cookie,
    format_address,
    hello_verify_request,
    is_client_hello,
    record_seq,
)
from m2msec.tls.dtls.timers import HandshakeTimers
from m2msec.tls.engine import (
    ConnectionClosed,
    DataReceived,
    HandshakeComplete,
    HandshakeFailed,
    PskAnswer,
    PskLookupNeeded,
)
from m2msec.tls.profiles import TLSProfile, Transport
from m2msec.tls.resumption import enable_resumption
from m2msec.tls.sessions import ServerSessionCache

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_HALF_OPEN",
    "DEFAULT_MAX_PEERS",
    "DTLSServer",
    "DTLSServerStats",
    "Outgoing",
    "PeerClosed",
    "PeerDataReceived",
    "PeerEvent",
    "PeerFailed",
    "PeerHandshakeComplete",
    "PeerPskLookupNeeded",
]

log = logging.getLogger(__name__)

Outgoing: TypeAlias = list[tuple[bytes, Address]]
"""Datagrams to send, each with its destination."""

DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_MAX_HALF_OPEN = 256
DEFAULT_MAX_PEERS = 4096


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """Base class of :class:`DTLSServer` events; ``addr`` is the peer's address."""

    addr: Address


@dataclass(frozen=True, slots=True)
class PeerHandshakeComplete(PeerEvent):
    context: SecurityContext


@dataclass(frozen=True, slots=True)
class PeerDataReceived(PeerEvent):
    data: bytes


@dataclass(frozen=True, slots=True)
class PeerClosed(PeerEvent):
    """The peer sent close_notify (``close_notify`` True), was replaced, or was evicted as
    idle."""

    reason: str = "closed by peer"
    close_notify: bool = False


@dataclass(frozen=True, slots=True)
class PeerFailed(PeerEvent):
    """A handshake failed; ``no_common_parameters`` and the offered ``psk_identity`` (not
    authenticated) as the engine reported them (seed 003 table 35's cause)."""

    reason: str
    no_common_parameters: bool = False
    psk_identity: str | None = None


@dataclass(frozen=True, slots=True)
class PeerPskLookupNeeded(PeerEvent):
    """The handshake with ``addr`` waits for the profile's ``psk_async_resolver``.

    MAF- and GBA-based associations (TS-0003 8.3, 8.5) resolve the psk_identity over the
    network; answer with :meth:`DTLSServer.provide_psk`. Datagrams that arrive meanwhile
    are held by the engine, and the handshake deadline keeps running.
    """

    identity: bytes
    cipher_suite: int | None


@dataclass(slots=True)
class DTLSServerStats:
    """Counters for operators and tests."""

    datagrams_in: int = 0
    dropped: int = 0
    cookies_sent: int = 0
    cookies_verified: int = 0
    refused_full: int = 0
    established: int = 0
    failed: int = 0
    expired: int = 0


@dataclass(slots=True)
class _Peer:
    engine: DTLSEngine
    last_seen: float
    pending: DTLSEngine | None = None
    """A new handshake from the same address (RFC 6347 4.2.8), run beside ``engine``."""

    @property
    def handshaking(self) -> DTLSEngine | None:
        if self.pending is not None:
            return self.pending
        return None if self.engine.handshake_done else self.engine


@dataclass(slots=True)
class _Settings:
    mtu: int
    max_half_open: int
    max_peers: int
    idle_timeout: float
    handshake_timeout: float


class DTLSServer:
    """A DTLS 1.2 responder (Entity B, TS-0003 8.2) for many peers, sans-IO (RFC 6347).

    Call :meth:`datagram_received` for every datagram and send what it returns; run
    :meth:`on_timer` at :meth:`next_timer`; read :class:`PeerEvent` objects from
    :meth:`events`. Per-peer state is created only for a ClientHello whose cookie
    verified (see :class:`CookieJar`); until then the server keeps nothing.
    """

    def __init__(
        self,
        profile: TLSProfile,
        *,
        mtu: int = DEFAULT_MTU,
        max_half_open: int = DEFAULT_MAX_HALF_OPEN,
        max_peers: int = DEFAULT_MAX_PEERS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        cookie_jar: CookieJar | None = None,
        clock: Clock = time.monotonic,
        resumption: bool | ServerSessionCache = True,
    ) -> None:
        if not profile.server_side or profile.transport is not Transport.DTLS:
            raise ConfigurationError("DTLSServer needs a responder profile for Transport.DTLS")
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise ConfigurationError(f"DTLS MTU must be within {MIN_MTU}..{MAX_MTU}, not {mtu}")
        if max_half_open < 1 or max_peers < 1 or idle_timeout <= 0 or handshake_timeout <= 0:
            raise ConfigurationError("DTLS server bounds must be positive")
        self._resumption = resumption
        self.profile = self._prepared(profile)
        self.settings = _Settings(mtu, max_half_open, max_peers, idle_timeout, handshake_timeout)
        self.cookie_jar = cookie_jar or CookieJar(clock=clock)
        self.stats = DTLSServerStats()
        self.clock = clock
        self._clock = clock
        # Least recently active first, so idle expiry stops at the first live peer.
        self._peers: OrderedDict[Address, _Peer] = OrderedDict()
        self._half_open: set[Address] = set()
        self._events: deque[PeerEvent] = deque()
        # Retransmission timers of the half-open handshakes, one per address.
        self._timers = HandshakeTimers()

    def _prepared(self, profile: TLSProfile) -> TLSProfile:
        if not profile.server_side or profile.transport is not Transport.DTLS:
            raise ConfigurationError("DTLSServer needs a responder profile for Transport.DTLS")
        install_cookie_callbacks(profile.ssl_context)
        resumption = self._resumption
        if resumption is not False:
            # Devices that come back resume their session (see m2msec.tls.sessions).
            cache = resumption if isinstance(resumption, ServerSessionCache) else None
            profile = enable_resumption(profile, cache)
        return profile

    def use_profile(self, profile: TLSProfile) -> None:
        """New handshakes use ``profile`` from now on (a reload: new certificates, keys,
        trust anchors); established peers keep their engines and sessions untouched."""
        self.profile = self._prepared(profile)

    # -- introspection -------------------------------------------------------------------
    @property
    def peer_count(self) -> int:
        return len(self._peers)

    @property
    def half_open_count(self) -> int:
        return len(self._half_open)

    def peers(self) -> list[Address]:
        return list(self._peers)

    def engine(self, addr: Address) -> DTLSEngine | None:
        peer = self._peers.get(addr)
        return peer.engine if peer else None

    # -- events --------------------------------------------------------------------------
    def next_event(self) -> PeerEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[PeerEvent]:
        out = list(self._events)
        self._events.clear()
        return out

    # -- input ---------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Address) -> Outgoing:
        """One datagram from ``addr``; returns the datagrams to send in answer."""
        self.stats.datagrams_in += 1
        now = self._clock()
        peer = self._peers.get(addr)
        if peer is None:
            return self._listen(data, addr, now, None)
        if peer.engine.handshake_done and peer.pending is None and is_client_hello(data):
            # A client that lost its state starts over from the same address. The
            # association stays until the new handshake completes: a replayed ClientHello
            # (its cookie is still valid) must not tear down a working association.
            return self._listen(data, addr, now, peer)
        self._touch(addr, peer, now)
        if peer.pending is not None and data[3:5] == b"\0\0":
            # Epoch-0 records belong to the new handshake, not to the established one.
            peer.pending.receive_datagram(data)
            return self._flush(addr, peer, peer.pending)
        peer.engine.receive_datagram(data)
        out = self._flush(addr, peer, peer.engine)
        if peer.pending is not None and self._peers.get(addr) is peer:
            # Records the old keys cannot authenticate are dropped there, and vice versa.
            peer.pending.receive_datagram(data)
            out += self._flush(addr, peer, peer.pending)
        return out

    def provide_psk(
        self,
        addr: Address,
        identity: bytes,
        answer: PskAnswer,
    ) -> Outgoing:
        """The async resolver's answer to a :class:`PeerPskLookupNeeded` for ``addr``.

        Ignored (returns nothing) when that handshake has ended or been replaced meanwhile.
        """
        peer = self._peers.get(addr)
        engine = peer.handshaking if peer is not None else None
        if peer is None or engine is None or not engine.psk_lookups_pending:
            return []
        engine.provide_psk(identity, answer)
        return self._flush(addr, peer, engine)

    def send(self, addr: Address, data: bytes) -> Outgoing:
        """Encrypt one application message for ``addr`` (see :meth:`DTLSEngine.send`)."""
        peer = self._peers.get(addr)
        if peer is None:
            raise HandshakeError(f"no security association with {format_address(addr)}")
        peer.engine.send(data)
        self._touch(addr, peer, self._clock())
        return self._flush(addr, peer, peer.engine)

    def close(self, addr: Address) -> Outgoing:
        """Send close_notify to ``addr`` and forget it (no event is emitted)."""
        peer = self._peers.get(addr)
        if peer is None:
            return []
        peer.engine.close()
        out = [(d, addr) for d in peer.engine.datagrams_to_send()]
        self._forget(addr)
        return out

    def close_all(self) -> Outgoing:
        out: Outgoing = []
        for addr in list(self._peers):
            out += self.close(addr)
        return out

    # -- timers --------------------------------------------------------------------------
    def next_timer(self) -> float | None:
        """When (on this server's clock) :meth:`on_timer` should run next, if ever."""
        due = self._timers.next_due()
        if self._peers:
            oldest = next(iter(self._peers.values()))
            idle_due = oldest.last_seen + self.settings.idle_timeout
            due = idle_due if due is None else min(due, idle_due)
        return due

    def on_timer(self, now: float | None = None) -> Outgoing:
        """Retransmit due flights, fail handshakes past their deadline, evict idle peers."""
        now = self._clock() if now is None else now
        out: Outgoing = []
        # Entries due on this clock go; the engines themselves decide below, as OpenSSL's
        # retransmission timer runs on the wall clock.
        popped = self._timers.pop_due(now)
        for addr in list(self._half_open):
            peer = self._peers.get(addr)
            engine = peer.handshaking if peer is not None else None
            if peer is None or engine is None:
                self._settled(addr)
                continue
            left = engine.timeout(now)
            if left is not None and left <= 0:
                engine.handle_timeout(now)
                out += self._flush(addr, peer, engine)  # re-arms the timer
            elif addr in popped:
                self._arm(addr, engine, now)
        return out + self.expire(now)

    def expire(self, now: float | None = None) -> Outgoing:
        """Evict peers silent for ``idle_timeout`` (established ones get close_notify)."""
        now = self._clock() if now is None else now
        out: Outgoing = []
        while self._peers:
            addr, peer = next(iter(self._peers.items()))
            if now - peer.last_seen < self.settings.idle_timeout:
                break
            self.stats.expired += 1
            if peer.engine.handshake_done:
                out += self.close(addr)
                self._events.append(PeerClosed(addr, "idle timeout"))
            else:
                self._forget(addr)
                self.stats.failed += 1
                self._events.append(PeerFailed(addr, "DTLS handshake timed out"))
        return out

    # -- internals -----------------------------------------------------------------------
    def _arm(self, addr: Address, engine: DTLSEngine, now: float | None = None) -> None:
        """(Re)arm the retransmission timer of the handshake ``engine`` runs for ``addr``."""
        now = self._clock() if now is None else now
        left = engine.timeout(now)
        self._timers.arm(addr, None if left is None else now + left)

    def _settled(self, addr: Address) -> None:
        """``addr`` has no handshake in progress any more: no bound, no timer."""
        self._half_open.discard(addr)
        self._timers.cancel(addr)

    def _touch(self, addr: Address, peer: _Peer, now: float) -> None:
        peer.last_seen = now
        self._peers.move_to_end(addr)

    def _forget(self, addr: Address) -> None:
        self._peers.pop(addr, None)
        self._settled(addr)

    def _drop(self, why: str, addr: Address) -> Outgoing:
        self.stats.dropped += 1
        log.debug("DTLS datagram from %s dropped: %s", format_address(addr), why)
        return []

    def _listen(self, data: bytes, addr: Address, now: float, replacing: _Peer | None) -> Outgoing:
        if not is_client_hello(data):
            return self._drop("not a ClientHello from an unknown address", addr)
        peer_key = address_key(addr)
        cookie = client_hello_cookie(data)
        if cookie is not None and not (cookie and self.cookie_jar.verify(peer_key, cookie)):
            # No cookie (or not one of ours): answer at once, without OpenSSL, as the
            # first ClientHello of every handshake and every flooded one lands here.
            answer = hello_verify_request(data, self.cookie_jar.cookie(peer_key))
            return self._verify_request(answer, data, addr)
        if cookie and self._full(addr, replacing):
            return []  # refused before any per-peer object is built
        # The cookie verified in Python (or the ClientHello did not parse here): the
        # engine's own connection runs DTLSv1_listen, which parses the ClientHello and
        # sets OpenSSL's handshake sequence numbers past the HelloVerifyRequest; the
        # engine is kept only if it accepts the datagram.
        state = PeerState(peer=peer_key, jar=self.cookie_jar, verified=cookie or None)
        engine = DTLSEngine(
            self.profile,
            mtu=self.settings.mtu,
            handshake_timeout=self.settings.handshake_timeout,
            clock=self._clock,
            client_hello_seq=record_seq(data),
            state=state,
        )
        conn = engine.connection
        conn.bio_write(data)
        try:
            conn.DTLSv1_listen()
        except SSL.WantReadError:
            answer = _drain(conn)
            if not answer:
                return self._drop("malformed ClientHello", addr)
            return self._verify_request(answer, data, addr)
        except Exception as exc:  # garbage must never take the server down
            return self._drop(f"DTLSv1_listen: {exc}", addr)
        self.stats.cookies_verified += 1
        if not cookie and self._full(addr, replacing):
            return []
        if replacing is not None:
            peer = replacing
            peer.pending = engine
            self._touch(addr, peer, now)
        else:
            peer = _Peer(engine, now)
            self._peers[addr] = peer
        self._half_open.add(addr)
        engine.screen_client_hello(data)  # before OpenSSL looks the offered session up
        engine.start()  # processes the ClientHello that DTLSv1_listen buffered
        return self._flush(addr, peer, engine)

    def _verify_request(self, answer: bytes, client_hello: bytes, addr: Address) -> Outgoing:
        """Send the HelloVerifyRequest ``answer`` (RFC 6347 4.2.1), if it does not amplify."""
        if len(answer) > len(client_hello):  # never amplify towards an unverified address
            return self._drop("HelloVerifyRequest would exceed the request", addr)
        self.stats.cookies_sent += 1
        return [(answer, addr)]

    def _full(self, addr: Address, replacing: _Peer | None) -> bool:
        """Whether a new handshake from ``addr`` must be refused (counted and logged)."""
        if len(self._half_open) < self.settings.max_half_open and (
            replacing is not None or len(self._peers) < self.settings.max_peers
        ):
            return False
        self.stats.refused_full += 1
        log.info("DTLS handshake from %s refused: server full", format_address(addr))
        return True

    def _flush(self, addr: Address, peer: _Peer, engine: DTLSEngine) -> Outgoing:
        out = [(d, addr) for d in engine.datagrams_to_send()]
        for event in engine.events():
            pending = engine is peer.pending
            if isinstance(event, HandshakeComplete):
                if pending:
                    # The new handshake proved the client (RFC 6347 4.2.8): drop the old one.
                    self._events.append(PeerClosed(addr, "replaced by a new handshake"))
                    peer.engine, peer.pending = engine, None
                self._settled(addr)
                self.stats.established += 1
                self._events.append(PeerHandshakeComplete(addr, event.context))
            elif isinstance(event, DataReceived):
                self._events.append(PeerDataReceived(addr, event.data))
            elif isinstance(event, PskLookupNeeded):
                self._events.append(PeerPskLookupNeeded(addr, event.identity, event.cipher_suite))
            elif isinstance(event, ConnectionClosed | HandshakeFailed):
                if isinstance(event, HandshakeFailed):
                    self.stats.failed += 1
                    ended: PeerEvent = PeerFailed(
                        addr, event.reason, event.no_common_parameters, engine.psk_identity
                    )
                else:
                    ended = PeerClosed(addr, close_notify=event.close_notify)
                if pending:  # the new handshake failed; the old association lives on
                    peer.pending = None
                    self._settled(addr)
                elif peer.pending is not None:  # the old one ended; the new one goes on
                    peer.engine, peer.pending = peer.pending, None
                else:
                    self._forget(addr)
                self._events.append(ended)
        if addr in self._half_open and engine is peer.handshaking:
            self._arm(addr, engine)
        return out


def _drain(conn: SSL.Connection) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunks.append(conn.bio_read(65536))
        except SSL.WantReadError:
            return b"".join(chunks)

