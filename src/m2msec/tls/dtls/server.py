"""DTLS 1.2 (RFC 6347) on the sans-IO engine: datagrams, cookies, timers, per-peer state.

TS-0003 10.2.1 makes DTLS 1.2 the security of the CoAP binding and 10.2.2 names
TLS_PSK_WITH_AES_128_CCM_8 its mandatory PSK suite (``PSK_SUITES_DTLS`` lists it first).
Nothing here opens a socket: :class:`DTLSEngine` is one side of one association,
:class:`DTLSServer` is a responder for many peers on one UDP port. The asyncio adapters in
:mod:`m2msec.tls.aio_dtls` only move datagrams and run timers.

Design (RFC 6347 references in brackets):

* Datagrams [4.1.1]: OpenSSL's output is split on record boundaries and packed into
  datagrams of at most ``mtu`` octets (1200 by default, safe on any IPv6 path and on
  IPv4 paths with tunnels); a record is never split. The MTU is also given to OpenSSL
  (with ``OP_NO_QUERY_MTU``, as memory BIOs cannot report one) so that it fragments
  handshake messages to fit [4.2.3]. Application data is never fragmented: a message
  larger than :attr:`DTLSEngine.max_payload` is refused with
  :class:`DatagramTooLargeError`, as DTLS keeps message boundaries and the CoAP layer
  must use block-wise transfer instead.
* Timers [4.2.4]: OpenSSL's retransmission timer (1 s, doubling per timeout, capped at
  60 s) is exposed as :meth:`DTLSEngine.timeout` / :meth:`DTLSEngine.handle_timeout`;
  on top of it every handshake has a total deadline (``handshake_timeout``, 30 s by
  default), after which it fails with "DTLS handshake timed out".
* Cookies [4.2.1]: before any per-peer state exists, a ClientHello from an address that
  has not proved it can receive there is answered with a HelloVerifyRequest. The cookie
  is ``HMAC-SHA256(secret, address || window)[:16]`` with a secret that changes every
  window; cookies of the current and of the previous window are accepted. A ClientHello
  without a valid cookie is answered in Python, without OpenSSL. One with a valid cookie
  goes to ``DTLSv1_listen`` on the connection of the engine that will run the handshake
  (OpenSSL's server expects message_seq 0 unless ``DTLSv1_listen`` ran, and the
  ClientHello's message_seq is in the Finished hash, so it cannot be rewritten); OpenSSL's
  own cookie checks then compare with the cookie already verified instead of recomputing
  HMACs. The answer to an unverified address is never larger than the datagram it
  answers (no amplification).
* Bounds: at most ``max_half_open`` handshakes in progress and ``max_peers`` peers;
  peers idle for ``idle_timeout`` are evicted. Invalid datagrams are dropped silently
  [4.1.2.7] and never cost the server state. Retransmission timers of half-open
  handshakes sit in one heap, so :meth:`DTLSServer.next_timer` costs O(log n), not a
  scan of every handshake per datagram.
* PSK identities resolved over the network (MAF, GBA: the profile's
  ``psk_async_resolver``) surface as :class:`PeerPskLookupNeeded`; the answer goes to
  :meth:`DTLSServer.provide_psk`.
* A verified ClientHello from the address of an established peer (a client that lost
  its state) starts a new handshake beside the association, which it replaces only once
  it completes [4.2.8]; a replayed ClientHello therefore cannot tear an association down.
* A Finished that fails to authenticate is discarded without an alert [4.1.2.7], so a
  wrong PSK surfaces as "DTLS handshake timed out (wrong PSK?)" at the deadline.
* Resumption [4.2.4 of RFC 5246 via 4.1 of RFC 6347]: a device that comes back may
  resume its session by ID (on by default). The binding decided by the full handshake
  is kept in a :class:`~m2msec.tls.sessions.ServerSessionCache` and re-validated before
  the session is resumed; see :mod:`m2msec.tls.sessions`.
"""

from __future__ import annotations

import heapq
import hmac
import itertools
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from OpenSSL import SSL

from m2msec.errors import ConfigurationError, HandshakeError, M2MSecError
from m2msec.tls.context import PeerBinding, SecurityContext
from m2msec.tls.engine import (
    ConnectionClosed,
    DataReceived,
    HandshakeComplete,
    HandshakeFailed,
    PskLookupNeeded,
    TLSEngine,
)
from m2msec.tls.profiles import TLSProfile, Transport
from m2msec.tls.resumption import enable_resumption
from m2msec.tls.sessions import ClientSession, ServerSessionCache
from m2msec.tls.state import HandshakeState

log = logging.getLogger(__name__)

Address: TypeAlias = tuple[Any, ...]
"""A UDP peer address as asyncio reports it: ``(host, port)`` or ``(host, port, flow, scope)``."""

Clock: TypeAlias = Callable[[], float]
Outgoing: TypeAlias = list[tuple[bytes, Address]]
"""Datagrams to send, each with its destination."""

#: Path-MTU-safe default datagram size: fits the IPv6 minimum MTU (1280) less headers.
DEFAULT_MTU = 1200
#: OpenSSL refuses smaller MTUs for DTLS (``dtls1_min_mtu``).
MIN_MTU = 256
#: The largest UDP payload over IPv4.
MAX_MTU = 65507
DEFAULT_HANDSHAKE_TIMEOUT = 30.0
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_MAX_HALF_OPEN = 256
DEFAULT_MAX_PEERS = 4096
DEFAULT_COOKIE_WINDOW = 60.0
COOKIE_LENGTH = 16

RECORD_HEADER_LEN = 13
_CT_HANDSHAKE = 22
_HT_CLIENT_HELLO = 1
_HT_HELLO_VERIFY_REQUEST = 3


class DatagramTooLargeError(M2MSecError, ValueError):
    """Application data that would not fit one record within the MTU."""


# -- records and datagrams -------------------------------------------------------------------
def split_records(data: bytes) -> list[bytes]:
    """Split concatenated DTLS records (header: type, version, epoch, seq, 2-octet length)."""
    records: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < RECORD_HEADER_LEN:
            records.append(data[pos:])  # malformed tail: keep it whole rather than lose it
            break
        end = pos + RECORD_HEADER_LEN + int.from_bytes(data[pos + 11 : pos + 13], "big")
        records.append(data[pos:end])
        pos = end
    return records


def pack_datagrams(records: list[bytes], mtu: int) -> list[bytes]:
    """Pack records, in order and never split, into datagrams of at most ``mtu`` octets.

    A single record larger than ``mtu`` travels alone (the engine prevents that case).
    """
    out: list[bytes] = []
    current = bytearray()
    for record in records:
        if current and len(current) + len(record) > mtu:
            out.append(bytes(current))
            current.clear()
        current += record
    if current:
        out.append(bytes(current))
    return out


def is_client_hello(datagram: bytes) -> bool:
    """Whether ``datagram`` starts with an epoch-0 handshake record holding a ClientHello."""
    return (
        len(datagram) >= RECORD_HEADER_LEN + 12
        and datagram[0] == _CT_HANDSHAKE
        and datagram[1] == 0xFE  # DTLS major version (1's complement of 1)
        and datagram[3:5] == b"\0\0"
        and datagram[RECORD_HEADER_LEN] == _HT_CLIENT_HELLO
    )


def record_seq(record: bytes) -> int:
    """The 48-bit sequence number of the record at the start of ``record``."""
    return int.from_bytes(record[5:11], "big")


def is_hello_verify_request(datagram: bytes) -> bool:
    """Whether ``datagram`` starts with a HelloVerifyRequest (for tests and tracing)."""
    return (
        len(datagram) > RECORD_HEADER_LEN
        and datagram[0] == _CT_HANDSHAKE
        and datagram[RECORD_HEADER_LEN] == _HT_HELLO_VERIFY_REQUEST
    )


def client_hello_cookie(datagram: bytes) -> bytes | None:
    """The cookie of the unfragmented ClientHello starting ``datagram`` (``b""``: none).

    None when the datagram is not such a ClientHello, or is malformed: then OpenSSL's own
    parser decides. Pure parser, never raises.
    """
    if not is_client_hello(datagram):
        return None
    h = RECORD_HEADER_LEN
    record_len = int.from_bytes(datagram[11:13], "big")
    msg_len = int.from_bytes(datagram[h + 1 : h + 4], "big")
    frag_off = int.from_bytes(datagram[h + 6 : h + 9], "big")
    frag_len = int.from_bytes(datagram[h + 9 : h + 12], "big")
    if frag_off or frag_len != msg_len or record_len < 12 + frag_len:
        return None
    body = datagram[h + 12 : h + 12 + frag_len]
    if len(body) != frag_len or len(body) < 2 + 32 + 1 or body[0] != 0xFE:
        return None
    pos = 34
    if body[pos] > 32:
        return None
    pos += 1 + body[pos]
    if pos >= len(body):
        return None
    cookie = body[pos + 1 : pos + 1 + body[pos]]
    pos += 1 + body[pos]
    if len(cookie) != body[pos - len(cookie) - 1] or pos + 2 > len(body):
        return None
    suites = int.from_bytes(body[pos : pos + 2], "big")
    pos += 2 + suites
    if suites < 2 or suites % 2 or pos >= len(body) or pos + 1 + body[pos] > len(body):
        return None
    return bytes(cookie)


def hello_verify_request(client_hello: bytes, cookie: bytes) -> bytes:
    """The HelloVerifyRequest answering ``client_hello`` with ``cookie`` (RFC 6347 4.2.1).

    As OpenSSL's ``DTLSv1_listen`` writes it: DTLS 1.0 version numbers (RFC 6347 4.2.1
    recommends them for this message), message_seq 0, and the record sequence number of
    the ClientHello it answers.
    """
    body = b"\xfe\xff" + bytes([len(cookie)]) + cookie
    n = len(body).to_bytes(3, "big")
    message = bytes([_HT_HELLO_VERIFY_REQUEST]) + n + b"\0\0" + b"\0\0\0" + n + body
    header = bytes([_CT_HANDSHAKE]) + b"\xfe\xff\0\0" + client_hello[5:11]
    return header + len(message).to_bytes(2, "big") + message


def address_key(addr: Address) -> bytes:
    """A canonical byte form of a peer address (host and port), for cookies."""
    return str(addr[0]).encode("utf-8", "surrogateescape") + b"\0" + int(addr[1]).to_bytes(2, "big")


# -- the engine ------------------------------------------------------------------------------
class DTLSEngine(TLSEngine):
    """One side of one DTLS 1.2 association (RFC 6347), sans-IO.

    Feed each received datagram to :meth:`receive_datagram`, send every datagram of
    :meth:`datagrams_to_send`, and call :meth:`handle_timeout` once :meth:`timeout`
    seconds have passed. Events are those of :class:`~m2msec.tls.engine.TLSEngine`.
    TS-0003 10.2.1/10.2.2 profiles come from :func:`m2msec.tls.profiles.new_context`
    with ``Transport.DTLS``.

    ``connection`` adopts a server connection that already passed ``DTLSv1_listen``;
    its app data must be a ``HandshakeState``. Alternatively ``state`` replaces the app
    data of the engine's own connection before ``DTLSv1_listen`` runs on it (what
    :class:`DTLSServer` does). ``client_hello_seq`` is the record sequence number of the
    ClientHello that ``DTLSv1_listen`` verified.
    """

    def __init__(
        self,
        profile: TLSProfile,
        *,
        server_name: str | None = None,
        mtu: int = DEFAULT_MTU,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        clock: Clock = time.monotonic,
        connection: SSL.Connection | None = None,
        client_hello_seq: int | None = None,
        session: ClientSession | None = None,
        state: HandshakeState | None = None,
    ) -> None:
        if profile.transport is not Transport.DTLS:
            raise ConfigurationError("DTLSEngine needs a profile built for Transport.DTLS")
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise ConfigurationError(f"DTLS MTU must be within {MIN_MTU}..{MAX_MTU}, not {mtu}")
        if handshake_timeout <= 0:
            raise ConfigurationError("handshake_timeout must be positive")
        super().__init__(profile, server_name=server_name, session=session)
        if connection is not None:
            adopted = connection.get_app_data()
            if not isinstance(adopted, HandshakeState):
                raise ConfigurationError("an adopted DTLS connection needs a HandshakeState")
            self._conn = connection
            self._state = adopted
        elif state is not None:
            # DTLSServer: the engine's own connection runs DTLSv1_listen, with the cookie
            # state as its app data (no second SSL object per handshake).
            self._state = state
            self._conn.set_app_data(state)
        self._state.profile = profile
        # Memory BIOs cannot report a path MTU: without this flag OpenSSL would replace
        # ours with a guess after repeated timeouts.
        self._conn.set_options(SSL.OP_NO_QUERY_MTU)
        self._conn.set_ciphertext_mtu(mtu)
        self.mtu = mtu
        self.handshake_timeout = handshake_timeout
        self._clock = clock
        self._deadline = clock() + handshake_timeout
        self.last_activity = clock()
        # OpenSSL >= 3.2 starts the server's records at sequence number 1 after
        # DTLSv1_listen, whatever the ClientHello's number was. The HelloVerifyRequest
        # already used the number of the ClientHello it answered (RFC 6347 4.2.1); when
        # that number is among those of the server's first flight (as when the client's
        # first ClientHello was lost), the client's replay window drops those records
        # and the handshake stalls until a retransmission. Epoch-0 records carry no MAC and record
        # headers are not part of the handshake transcript, so renumber them to continue
        # from the verified ClientHello's number, as OpenSSL 1.1 did.
        self._epoch0_floor = client_hello_seq
        self._epoch0_offset: int | None = None

    # -- state ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def max_payload(self) -> int:
        """The largest application message that fits one record within the MTU.

        Meaningful once the handshake is done (it depends on the negotiated suite).
        """
        size: int = self._conn.get_cleartext_mtu()
        return size

    # -- input ---------------------------------------------------------------------------
    def start(self) -> None:
        """Client side: produce the ClientHello and start the handshake deadline."""
        self._deadline = self._clock() + self.handshake_timeout
        super().start()

    def receive_datagram(self, data: bytes) -> None:
        """One UDP datagram from the peer; it may hold several records.

        Records that fail to parse or authenticate are discarded by OpenSSL without
        ending the association (RFC 6347 4.1.2.7). An empty datagram carries nothing
        (unlike ``receive_data(b"")`` on a stream, it does not mean the peer left).
        """
        if not data:
            return
        self.last_activity = self._clock()
        self.receive_data(data)

    def send(self, data: bytes) -> None:
        """Encrypt one application message into one record.

        Raises :class:`DatagramTooLargeError` when it would not fit the MTU: DTLS keeps
        message boundaries, so splitting it here would hand the peer several messages.
        """
        if not self.handshake_done or self._failed or self._closed:
            raise HandshakeError("no established security association to send on")
        limit = self.max_payload
        if len(data) > limit:
            raise DatagramTooLargeError(
                f"{len(data)} octets exceed the {limit}-octet DTLS payload limit at MTU {self.mtu}"
            )
        self.last_activity = self._clock()
        self._conn.send(data)

    # -- output --------------------------------------------------------------------------
    def datagrams_to_send(self) -> list[bytes]:
        """The pending records packed into datagrams of at most :attr:`mtu` octets."""
        data = self.data_to_send()
        if not data:
            return []
        if self._epoch0_floor is None and len(data) <= self.mtu:
            return [data]  # what packing would give: all records in one datagram
        records = split_records(data)
        if self._epoch0_floor is not None:
            records = [self._renumber(r) for r in records]
            if self._epoch0_offset == 0:
                self._epoch0_floor = None  # OpenSSL's numbers already continue the peer's
        return pack_datagrams(records, self.mtu)

    def _renumber(self, record: bytes) -> bytes:
        if len(record) < RECORD_HEADER_LEN or record[3:5] != b"\0\0":
            return record  # protected records keep OpenSSL's numbers (they are MAC'd)
        seq = record_seq(record)
        if self._epoch0_offset is None:
            assert self._epoch0_floor is not None
            self._epoch0_offset = max(0, self._epoch0_floor - seq)
        new = min(seq + self._epoch0_offset, 2**48 - 1)
        return record[:5] + new.to_bytes(6, "big") + record[11:]

    # -- timers --------------------------------------------------------------------------
    def timeout(self, now: float | None = None) -> float | None:
        """Seconds until :meth:`handle_timeout` is due, or ``None`` if no timer runs.

        The retransmission timer is OpenSSL's (on the wall clock); the handshake
        deadline uses this engine's ``clock`` (or ``now``).
        """
        if self._failed or self._closed:
            return None
        ssl_due: float | None = self._conn.DTLSv1_get_timeout()
        if self.handshake_done:
            return ssl_due
        now = self._clock() if now is None else now
        left = max(0.0, self._deadline - now)
        return left if ssl_due is None else min(ssl_due, left)

    def handle_timeout(self, now: float | None = None) -> None:
        """Retransmit the last flight if OpenSSL's timer expired; fail past the deadline."""
        if self._failed or self._closed:
            return
        now = self._clock() if now is None else now
        if not self.handshake_done and now >= self._deadline:
            self._fail(self._timed_out())
            return
        try:
            self._conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            # OpenSSL gives up by itself after 12 timeouts; say so in the same words.
            log.debug("DTLS timeout handling failed: %s", exc)
            self._fail(self._timed_out())

    def _timed_out(self) -> str:
        # DTLS drops a Finished that fails to authenticate without an alert (RFC 6347
        # 4.1.2.7), so a wrong PSK shows up as a timeout after the key exchange.
        if self._state.binding is not None and self._state.psk_identity is not None:
            return "DTLS handshake timed out (wrong PSK?)"
        return "DTLS handshake timed out"


# -- cookies ---------------------------------------------------------------------------------
class CookieJar:
    """Stateless HelloVerifyRequest cookies (RFC 6347 4.2.1).

    ``cookie = HMAC-SHA256(secret_w, address || w)[:16]`` where ``w`` is the number of
    the current time window. A fresh random secret is drawn for every window, so a cookie
    is valid for one to two windows and an old secret never comes back.
    """

    def __init__(
        self,
        *,
        window: float = DEFAULT_COOKIE_WINDOW,
        clock: Clock = time.monotonic,
        length: int = COOKIE_LENGTH,
    ) -> None:
        if window <= 0 or not 8 <= length <= 32:
            raise ConfigurationError("cookie window must be positive and length within 8..32")
        self.window = window
        self.length = length
        self._clock = clock
        self._index = int(clock() // window)
        self._current = os.urandom(32)
        self._previous: bytes | None = None

    def _rotate(self) -> int:
        index = int(self._clock() // self.window)
        if index != self._index:
            self._previous = self._current if index == self._index + 1 else None
            self._current = os.urandom(32)
            self._index = index
        return index

    def _mac(self, secret: bytes, peer: bytes, index: int) -> bytes:
        msg = peer + index.to_bytes(8, "big", signed=True)
        return hmac.digest(secret, msg, "sha256")[: self.length]

    def cookie(self, peer: bytes) -> bytes:
        """The cookie for ``peer`` (see :func:`address_key`) in the current window."""
        index = self._rotate()
        return self._mac(self._current, peer, index)

    def verify(self, peer: bytes, cookie: bytes) -> bool:
        """Whether ``cookie`` was issued to ``peer`` in this window or the previous one."""
        index = self._rotate()
        ok = hmac.compare_digest(cookie, self._mac(self._current, peer, index))
        if self._previous is not None:
            ok |= hmac.compare_digest(cookie, self._mac(self._previous, peer, index - 1))
        return ok


@dataclass(slots=True)
class _PeerState(HandshakeState):
    """Per-connection app data: the PSK/certificate callbacks' state plus the peer.

    OpenSSL checks the cookie twice, in ``DTLSv1_listen`` and again when the handshake
    resumes on the same connection, so the peer must stay reachable from it.
    """

    peer: bytes = b""
    jar: CookieJar | None = None
    verified: bytes | None = None
    """The cookie :class:`DTLSServer` already checked in Python for this ClientHello:
    OpenSSL's checks of the same octets compare against it instead of computing HMACs."""


def _generate_cookie(conn: SSL.Connection) -> bytes:
    state = conn.get_app_data()
    if not isinstance(state, _PeerState) or state.jar is None:
        raise ConfigurationError("DTLS cookie requested outside DTLSServer")
    return state.jar.cookie(state.peer)


def _verify_cookie(conn: SSL.Connection, cookie: bytes) -> bool:
    state = conn.get_app_data()
    if not isinstance(state, _PeerState) or state.jar is None:
        return False
    if state.verified is not None:
        return hmac.compare_digest(cookie, state.verified)
    return state.jar.verify(state.peer, cookie)


def install_cookie_callbacks(ctx: SSL.Context) -> None:
    """Install the cookie callbacks on a responder's context (once; before first use)."""
    if getattr(ctx, "_m2msec_dtls_cookies", False):
        return
    try:
        ctx.set_cookie_generate_callback(_generate_cookie)
        ctx.set_cookie_verify_callback(_verify_cookie)
    except ValueError as exc:  # pyOpenSSL: the context already made a connection
        raise ConfigurationError(
            "a DTLSServer needs a profile whose SSL context has not been used yet"
        ) from exc
    ctx._m2msec_dtls_cookies = True  # type: ignore[attr-defined]


# -- the server ------------------------------------------------------------------------------
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
    """The peer sent close_notify, was replaced, or was evicted as idle."""

    reason: str = "closed by peer"


@dataclass(frozen=True, slots=True)
class PeerFailed(PeerEvent):
    reason: str


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
    timer: int = -1
    """Token of this peer's live entry in the server's timer heap (older ones are stale)."""

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
        install_cookie_callbacks(profile.ssl_context)
        if resumption is not False:
            # Devices that come back resume their session (see m2msec.tls.sessions).
            cache = resumption if isinstance(resumption, ServerSessionCache) else None
            profile = enable_resumption(profile, cache)
        self.profile = profile
        self.settings = _Settings(mtu, max_half_open, max_peers, idle_timeout, handshake_timeout)
        self.cookie_jar = cookie_jar or CookieJar(clock=clock)
        self.stats = DTLSServerStats()
        self.clock = clock
        self._clock = clock
        # Least recently active first, so idle expiry stops at the first live peer.
        self._peers: OrderedDict[Address, _Peer] = OrderedDict()
        self._half_open: set[Address] = set()
        self._events: deque[PeerEvent] = deque()
        # Retransmission timers of half-open handshakes: a heap of (due, token, addr),
        # one live entry per peer (its token), stale ones dropped when they surface.
        self._timers: list[tuple[float, int, Address]] = []
        self._tokens = itertools.count()

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
        answer: tuple[bytes, PeerBinding] | HandshakeError | None,
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
            raise HandshakeError(f"no security association with {_fmt(addr)}")
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
        timers = self._timers
        while timers and not self._live(timers[0]):
            heapq.heappop(timers)
        due: float | None = timers[0][0] if timers else None
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
        popped: set[Address] = set()
        timers = self._timers
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            if self._live(entry):
                popped.add(entry[2])
        for addr in list(self._half_open):
            peer = self._peers.get(addr)
            engine = peer.handshaking if peer is not None else None
            if peer is None or engine is None:
                self._half_open.discard(addr)
                continue
            left = engine.timeout(now)
            if left is not None and left <= 0:
                engine.handle_timeout(now)
                out += self._flush(addr, peer, engine)  # re-arms the timer
            elif addr in popped:
                self._arm(addr, peer, engine, now)
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
    def _live(self, entry: tuple[float, int, Address]) -> bool:
        peer = self._peers.get(entry[2])
        return peer is not None and peer.timer == entry[1] and entry[2] in self._half_open

    def _arm(
        self, addr: Address, peer: _Peer, engine: DTLSEngine, now: float | None = None
    ) -> None:
        """(Re)arm the retransmission timer of the handshake ``engine`` runs for ``addr``."""
        now = self._clock() if now is None else now
        left = engine.timeout(now)
        if left is None:
            peer.timer = -1
            return
        peer.timer = token = next(self._tokens)
        heapq.heappush(self._timers, (now + left, token, addr))
        if len(self._timers) > 4 * len(self._half_open) + 64:  # shed stale entries
            self._timers = [e for e in self._timers if self._live(e)]
            heapq.heapify(self._timers)

    def _touch(self, addr: Address, peer: _Peer, now: float) -> None:
        peer.last_seen = now
        self._peers.move_to_end(addr)

    def _forget(self, addr: Address) -> None:
        self._peers.pop(addr, None)
        self._half_open.discard(addr)

    def _drop(self, why: str, addr: Address) -> Outgoing:
        self.stats.dropped += 1
        log.debug("DTLS datagram from %s dropped: %s", _fmt(addr), why)
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
            if len(answer) > len(data):  # never amplify towards an unverified address
                return self._drop("HelloVerifyRequest would exceed the request", addr)
            self.stats.cookies_sent += 1
            return [(answer, addr)]
        if cookie and self._full(addr, replacing):
            return []  # refused before any per-peer object is built
        # The cookie verified in Python (or the ClientHello did not parse here): the
        # engine's own connection runs DTLSv1_listen, which parses the ClientHello and
        # sets OpenSSL's handshake sequence numbers past the HelloVerifyRequest; the
        # engine is kept only if it accepts the datagram.
        state = _PeerState(peer=peer_key, jar=self.cookie_jar, verified=cookie or None)
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
            if len(answer) > len(data):  # never amplify towards an unverified address
                return self._drop("HelloVerifyRequest would exceed the request", addr)
            self.stats.cookies_sent += 1
            return [(answer, addr)]
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

    def _full(self, addr: Address, replacing: _Peer | None) -> bool:
        """Whether a new handshake from ``addr`` must be refused (counted and logged)."""
        if len(self._half_open) < self.settings.max_half_open and (
            replacing is not None or len(self._peers) < self.settings.max_peers
        ):
            return False
        self.stats.refused_full += 1
        log.info("DTLS handshake from %s refused: server full", _fmt(addr))
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
                self._half_open.discard(addr)
                self.stats.established += 1
                self._events.append(PeerHandshakeComplete(addr, event.context))
            elif isinstance(event, DataReceived):
                self._events.append(PeerDataReceived(addr, event.data))
            elif isinstance(event, PskLookupNeeded):
                self._events.append(PeerPskLookupNeeded(addr, event.identity, event.cipher_suite))
            elif isinstance(event, ConnectionClosed | HandshakeFailed):
                if isinstance(event, HandshakeFailed):
                    self.stats.failed += 1
                    ended: PeerEvent = PeerFailed(addr, event.reason)
                else:
                    ended = PeerClosed(addr)
                if pending:  # the new handshake failed; the old association lives on
                    peer.pending = None
                    self._half_open.discard(addr)
                elif peer.pending is not None:  # the old one ended; the new one goes on
                    peer.engine, peer.pending = peer.pending, None
                else:
                    self._forget(addr)
                self._events.append(ended)
        if addr in self._half_open and engine is peer.handshaking:
            self._arm(addr, peer, engine)
        return out


def _drain(conn: SSL.Connection) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunks.append(conn.bio_read(65536))
        except SSL.WantReadError:
            return b"".join(chunks)


def _fmt(addr: Address) -> str:
    return f"{addr[0]}:{addr[1]}" if len(addr) >= 2 else str(addr)


__all__ = [
    "DEFAULT_MTU",
    "Address",
    "CookieJar",
    "DTLSEngine",
    "DTLSServer",
    "DTLSServerStats",
    "DatagramTooLargeError",
    "PeerClosed",
    "PeerDataReceived",
    "PeerEvent",
    "PeerFailed",
    "PeerHandshakeComplete",
    "PeerPskLookupNeeded",
]
