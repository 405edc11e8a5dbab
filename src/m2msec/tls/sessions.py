"""Safe (D)TLS session resumption for devices that come back (TS-0003 8.2, RFC 5246 7.3).

A resumed handshake (TLS 1.2 / DTLS 1.2 session ID, RFC 5246 7.4.1.2; TLS 1.3 ticket,
RFC 8446 2.2) runs none of the callbacks that bind the peer's identity: no PSK lookup of
the KpsaId/KmId/KcId, no certificate check. So Entity B keeps, beside OpenSSL's own cache,
a :class:`ServerSessionCache` that records the :class:`~m2msec.tls.context.PeerBinding`
the full handshake decided, by session ID (TLS 1.3: by ticket), and re-validates it each
time the session is offered again:

* the binding's ``valid_until`` must not have passed: a session established before the
  Kpsa/Km/Kc expired is not resumed after it (docs/readings.md A-16);
* the profile's ``resumption_check`` (if any) must accept it; otherwise, for the
  provisioned-PSK framework, the psk-lookup-table row must still exist, unexpired and
  bound to the same entity (the synchronous ``psk_resolver`` is asked again).

The check runs when the ClientHello arrives, before OpenSSL looks the session up; a
session that fails it is made unresumable in OpenSSL's cache, so the device falls back to
a full handshake (which then succeeds or fails on its own merits). At the end of every
resumed handshake the binding is checked once more and a resumption with no recorded
binding is refused, so an identity is never taken from a session without a decision.

Entity A keeps sessions in a :class:`ClientSessionCache` (with the binding of the server
decided by the full handshake) and offers them on the next connection to the same
address and server name.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from OpenSSL import SSL

from m2msec.errors import ConfigurationError
from m2msec.tls import _psk
from m2msec.tls.context import Framework, PeerBinding

log = logging.getLogger(__name__)

#: How long a session may be resumed after its full handshake (seconds).
DEFAULT_SESSION_LIFETIME = 3600.0
#: Sessions remembered by a server; the least recently used go first.
DEFAULT_MAX_SESSIONS = 10000
#: Sessions remembered by a client.
DEFAULT_MAX_CLIENT_SESSIONS = 256

WallClock = Callable[[], datetime]
ResumptionCheck = Callable[[PeerBinding], "PeerBinding | None"]
"""Entity B: re-validate a binding before its session is resumed.

Returns the binding to use (possibly refreshed, e.g. a later ``valid_until``) or None to
keep it; raises :class:`~m2msec.errors.HandshakeError` to refuse the resumption."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class _SessionCache(Generic[_K, _V]):
    """What both caches share: at most ``max_sessions`` entries, least recently used first,
    each resumable for ``lifetime`` seconds of ``clock``."""

    def __init__(self, max_sessions: int, lifetime: float, clock: Callable[[], float]) -> None:
        if max_sessions < 1 or lifetime <= 0:
            raise ConfigurationError("session cache size and lifetime must be positive")
        self.max_sessions = max_sessions
        self.lifetime = lifetime
        self._clock = clock
        self._entries: OrderedDict[_K, _V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)


# -- server side -----------------------------------------------------------------------------
@dataclass(slots=True)
class SessionEntry:
    """What Entity B decided about a session when its full handshake ran."""

    session_id: bytes
    """The session ID (TLS 1.2, DTLS 1.2) or stateful ticket (TLS 1.3) naming it."""
    binding: PeerBinding
    framework: Framework
    psk_identity: bytes | None
    """The raw psk_identity of a PSK handshake (for re-validation); None for certificates."""
    expires: float
    """Monotonic time after which the session is not resumed."""
    session: SSL.Session
    """OpenSSL's session object, kept to make it unresumable when the entry goes."""
    key_fingerprint: str | None = None
    """The full handshake's key fingerprint, which a resumption keeps (never the key)."""


class ServerSessionCache(_SessionCache[bytes, SessionEntry]):
    """Bounded, expiring map of session ID (or TLS 1.3 ticket) -> :class:`SessionEntry`.

    Dropping an entry (expiry, eviction, refusal) also makes OpenSSL's copy of the
    session unresumable, so OpenSSL never resumes a session this cache cannot vouch for.
    """

    def __init__(
        self,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        lifetime: float = DEFAULT_SESSION_LIFETIME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_sessions, lifetime, clock)
        self._helper: SSL.Connection | None = None
        self._context: SSL.Context | None = None
        self.resumed = 0
        self.refused = 0
        #: Offered sessions found (``hits``) or not (``misses``, expired ones too), and
        #: sessions dropped to make room (``evictions``): read by the metrics.
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._entries

    def _bind_context(self, ctx: SSL.Context) -> None:
        if self._context is not None and self._context is not ctx:
            raise ConfigurationError("a ServerSessionCache serves one SSL context")
        self._context = ctx

    def store(
        self,
        session_id: bytes,
        session: SSL.Session,
        binding: PeerBinding,
        framework: Framework,
        psk_identity: bytes | None,
        expires: float | None = None,
        key_fingerprint: str | None = None,
    ) -> None:
        """Remember ``binding`` for ``session_id`` (refreshing an existing entry's place).

        ``expires`` (monotonic) defaults to now plus the lifetime; an entry already
        present keeps its expiry, so resuming a session does not prolong it.
        """
        if not session_id:
            return
        old = self._entries.pop(session_id, None)
        if old is not None:
            expires = old.expires
        elif expires is None:
            expires = self._clock() + self.lifetime
        self._entries[session_id] = SessionEntry(
            session_id, binding, framework, psk_identity, expires, session, key_fingerprint
        )
        while len(self._entries) > self.max_sessions:
            _, entry = self._entries.popitem(last=False)
            self.evictions += 1
            self._unresumable(entry)

    def lookup(self, session_id: bytes) -> SessionEntry | None:
        """The live entry for ``session_id``; an expired one is dropped on the way."""
        entry = self._entries.get(session_id)
        if entry is None:
            self.misses += 1
            return None
        if self._clock() >= entry.expires:
            self.misses += 1
            self.discard(session_id)
            return None
        self.hits += 1
        self._entries.move_to_end(session_id)
        return entry

    def discard(self, session_id: bytes) -> None:
        """Forget ``session_id`` and make OpenSSL's copy unresumable."""
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._unresumable(entry)

    def purge(self) -> int:
        """Drop every expired entry; returns how many went."""
        now = self._clock()
        gone = [sid for sid, e in self._entries.items() if now >= e.expires]
        for sid in gone:
            self.discard(sid)
        return len(gone)

    def clear(self) -> None:
        for sid in list(self._entries):
            self.discard(sid)

    def _unresumable(self, entry: SessionEntry) -> None:
        if self._helper is None and self._context is not None:
            # Any connection of the context serves to find SSL_CIPHER objects.
            self._helper = SSL.Connection(self._context, None)
        if self._helper is not None:
            _psk.make_unresumable(entry.session, self._helper)


# -- ClientHello ---------------------------------------------------------------------------
_HANDSHAKE = 22
_CLIENT_HELLO = 1


def client_hello_session_id(data: bytes, *, datagram: bool) -> bytes | None:
    """The legacy session_id of the ClientHello at the start of ``data``.

    ``data`` is a datagram (DTLS) or the first bytes of a stream (TLS). Returns None when
    ``data`` does not start with a ClientHello or is too short to tell; an empty ID as
    ``b""``. Pure parser, never raises.
    """
    header = 13 + 12 if datagram else 5 + 4
    if len(data) < header + 35 or data[0] != _HANDSHAKE:
        return None
    if data[header - (12 if datagram else 4)] != _CLIENT_HELLO:
        return None
    if datagram and data[13 + 6 : 13 + 9] != b"\0\0\0":
        return None  # a later fragment of the ClientHello
    pos = header + 2 + 32
    n = data[pos]
    if n > 32 or len(data) < pos + 1 + n:
        return None
    return bytes(data[pos + 1 : pos + 1 + n])


#: Bytes a stream must have delivered before :func:`client_hello_session_id` can answer.
CLIENT_HELLO_PEEK = 5 + 4 + 2 + 32 + 1 + 32


# -- client side -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClientSession:
    """A session Entity A may offer again, with the binding its full handshake decided."""

    session: SSL.Session
    binding: PeerBinding
    expires: float
    key_fingerprint: str | None = None
    """The full handshake's key fingerprint, which a resumption keeps (never the key)."""


class ClientSessionCache(_SessionCache[Hashable, ClientSession]):
    """Entity A's sessions by destination (e.g. host, port, server name); LRU, expiring.

    Only TLS 1.2 / DTLS 1.2 sessions are kept (TLS 1.3 tickets arrive after the
    handshake and are not offered by our initiators).
    """

    def __init__(
        self,
        *,
        max_sessions: int = DEFAULT_MAX_CLIENT_SESSIONS,
        lifetime: float = DEFAULT_SESSION_LIFETIME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_sessions, lifetime, clock)

    def get(self, key: Hashable, now: datetime | None = None) -> ClientSession | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        until = entry.binding.valid_until
        if self._clock() >= entry.expires or (until is not None and (now or _utcnow()) >= until):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(
        self,
        key: Hashable,
        session: SSL.Session,
        binding: PeerBinding,
        key_fingerprint: str | None = None,
    ) -> None:
        version, sid = _psk.session_fields(session)
        if not sid or version == _psk.TLS1_3_VERSION:
            return
        old = self._entries.pop(key, None)
        if old is not None and old.session is session:
            expires = old.expires  # a resumption does not extend the session's life
        else:
            expires = self._clock() + self.lifetime
        self._entries[key] = ClientSession(session, binding, expires, key_fingerprint)
        while len(self._entries) > self.max_sessions:
            self._entries.popitem(last=False)

    def discard(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def discard_session(self, session: SSL.Session) -> int:
        """Forget every entry holding ``session`` (by its session ID); how many went.

        For an SA removed at Entity A: its session must not be offered again.
        """
        _, sid = _psk.session_fields(session)
        if not sid:
            return 0
        gone = [k for k, e in self._entries.items() if _psk.session_fields(e.session)[1] == sid]
        for k in gone:
            del self._entries[k]
        return len(gone)


__all__ = [
    "ClientSession",
    "ClientSessionCache",
    "ResumptionCheck",
    "ServerSessionCache",
    "SessionEntry",
    "client_hello_session_id",
]
