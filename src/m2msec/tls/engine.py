"""Sans-IO (D)TLS engine over pyOpenSSL memory BIOs.

The engine never touches a socket, in the manner of h11: feed it the bytes that
arrived with :meth:`TLSEngine.receive_data`, send what :meth:`TLSEngine.data_to_send`
returns, and act on the :class:`Event` objects from :meth:`TLSEngine.next_event`.
Asyncio adapters live in :mod:`m2msec.tls.aio`; tests drive two engines against each
other with no network at all.

A finished handshake yields a :class:`HandshakeComplete` carrying the
:class:`~m2msec.tls.context.SecurityContext`: the TS-0003 8.2 association of the
session with the peer's identity, as decided by the framework's callbacks.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeAlias

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from m2msec.crypto.fingerprint import certificate_fingerprint
from m2msec.errors import HandshakeError
from m2msec.tls import _psk, callbacks, resumption, sessions
from m2msec.tls.context import PeerBinding, SecurityContext
from m2msec.tls.profiles import TLSProfile, Transport
from m2msec.tls.psk_sniff import PskIdentitySniffer
from m2msec.tls.state import HandshakeState

#: RFC 5705 label for the SA record identifier (docs/readings.md A-24): an exporter value
#: both sides compute alike, and never a key.
SA_ID_LABEL = b"EXPORTER-m2msec-SA-identifier"

_READ_CHUNK = 16384 + 2048

log = logging.getLogger(__name__)

PskAnswer: TypeAlias = tuple[bytes, PeerBinding] | HandshakeError | None
"""An async resolver's answer for :meth:`TLSEngine.provide_psk`: the PSK and the binding of
its owner, a refusal, or None for an unknown identity."""


class Event:
    """Base class of engine events."""


@dataclass(frozen=True, slots=True)
class HandshakeComplete(Event):
    context: SecurityContext


@dataclass(frozen=True, slots=True)
class HandshakeFailed(Event):
    """The handshake failed; ``reason`` is safe to log.

    ``no_common_parameters`` is True when OpenSSL found nothing in common with the peer
    (no shared suite, protocol version, group or signature algorithm) and no framework
    callback refused first: seed 003's "No parameters in common with Responder"
    (tables 23 and 25). Every other failure is a refusal for "Administrative reasons"
    (m2msec.sa.outcomes)."""

    reason: str
    no_common_parameters: bool = False


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    data: bytes


@dataclass(frozen=True, slots=True)
class PskLookupNeeded(Event):
    """Entity B: resolve ``identity`` with the profile's async resolver, then call
    :meth:`TLSEngine.provide_psk`. The client's bytes wait until every lookup is answered.

    ``cipher_suite`` is the IANA id of the negotiated suite, read from our ServerHello
    (TLS/DTLS 1.2), or None when the lookup comes first (a TLS 1.3 ClientHello)."""

    identity: bytes
    cipher_suite: int | None


async def resolve_psk(
    profile: TLSProfile, identity: bytes, cipher_suite: int | None
) -> PskAnswer:
    """Ask ``profile.psk_async_resolver`` about ``identity`` (a :class:`PskLookupNeeded`).

    The one lookup the TLS and DTLS adapters run: a MAF or BSF that fails unexpectedly
    becomes a refusal with a reason safe to show (no key, no stack trace to the peer).
    The caller's handshake deadline keeps running meanwhile.
    """
    resolver = profile.psk_async_resolver
    assert resolver is not None
    try:
        return await resolver(identity, cipher_suite)
    except HandshakeError as exc:
        return exc
    except Exception:
        log.exception("asynchronous PSK lookup failed")
        return HandshakeError("psk_identity could not be resolved")


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer sent close_notify (``close_notify`` True), or its transport ended."""

    close_notify: bool = False


class TLSEngine:
    """One side of one (D)TLS connection, with no I/O of its own."""

    def __init__(
        self,
        profile: TLSProfile,
        *,
        server_name: str | None = None,
        mtu: int | None = None,
        session: sessions.ClientSession | None = None,
    ) -> None:
        self.profile = profile
        self._state = HandshakeState(profile)
        callbacks.install(profile)
        conn = SSL.Connection(profile.ssl_context, None)
        conn.set_app_data(self._state)
        if profile.server_side:
            conn.set_accept_state()
        else:
            conn.set_connect_state()
            sni = server_name or profile.server_name
            if sni:
                conn.set_tlsext_host_name(sni.encode("idna"))
        if profile.transport is Transport.DTLS and mtu:
            conn.set_ciphertext_mtu(mtu)
        # Entity A: a session to resume (its binding stands in for the skipped callbacks).
        self._offered = session if not profile.server_side else None
        if self._offered is not None:
            try:
                conn.set_session(self._offered.session)
            except ValueError:  # a session of another profile's context: not offered
                self._offered = None
        # Entity B with resumption on: screen the session the ClientHello offers.
        self._peek: bytearray | None = None
        if profile.server_side and profile.session_cache is not None:
            self._peek = bytearray()
        self._conn = conn
        self._sniffer: PskIdentitySniffer | None = None
        # Entity B reads the client's psk identities itself: for the async resolver, and for
        # TLS 1.3 tickets, which OpenSSL hands the PSK callback cut at their first NUL octet.
        if profile.server_side and (
            profile.psk_async_resolver is not None
            or (profile.session_cache is not None and profile.transport is Transport.TLS)
        ):
            self._sniffer = PskIdentitySniffer(datagram=profile.transport is Transport.DTLS)
        # Client side: a suite-aware PSK offer (GBA's NAF_Id, docs/readings.md A-09) learns the
        # negotiated suite from the server's ServerHello, read here before OpenSSL's callback.
        self._server_hello: PskIdentitySniffer | None = None
        if not profile.server_side and profile.psk_suite_offer is not None:
            self._server_hello = PskIdentitySniffer(datagram=profile.transport is Transport.DTLS)
        self._held: list[bytes] = []
        self._awaiting: set[bytes] = set()
        self._events: deque[Event] = deque()
        self._context: SecurityContext | None = None
        self._failed = False
        self._closed = False
        self._refused: str | None = None

    # -- state ---------------------------------------------------------------------------
    @property
    def context(self) -> SecurityContext | None:
        """The security context once the handshake has completed."""
        return self._context

    @property
    def handshake_done(self) -> bool:
        return self._context is not None

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def refused(self) -> str | None:
        """The reason given to :meth:`refuse`, once the session has been refused."""
        return self._refused

    @property
    def psk_identity(self) -> str | None:
        """The psk_identity seen or sent, printable (for logs and errors)."""
        return self._state.psk_identity

    @property
    def connection(self) -> SSL.Connection:
        """The underlying pyOpenSSL connection (for DTLS timers and tests)."""
        return self._conn

    # -- input ---------------------------------------------------------------------------
    def start(self) -> None:
        """Client side: produce the ClientHello. Harmless on the server side."""
        self._advance()

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means the transport ended."""
        if self._failed or self._closed:
            return
        if not data:
            if not self.handshake_done:
                self._fail("connection closed during the handshake")
            else:
                self._closed = True
                self._events.append(ConnectionClosed())
            return
        if self._peek is not None:
            self._screen(data)
        if self._sniffer is not None and not self.handshake_done:
            if self._awaiting:
                self._held.append(data)
                return
            found = self._sniffer.feed(data)
            self._state.offered_identities.extend(found)
            tickets = self.profile.session_cache or ()
            new = [
                i
                for i in found
                if i not in self._state.prefetched and i not in tickets
            ]
            if new and self.profile.psk_async_resolver is not None:
                self._held.append(data)
                self._awaiting.update(new)
                for identity in new:
                    self._events.append(PskLookupNeeded(identity, self._sniffer.cipher_suite))
                return
        if self._server_hello is not None and self._state.cipher_suite is None:
            self._server_hello.observe_server(data)
            self._state.cipher_suite = self._server_hello.cipher_suite
        self._conn.bio_write(data)
        self._advance()

    @property
    def psk_lookups_pending(self) -> bool:
        """True while the engine waits for :meth:`provide_psk`."""
        return bool(self._awaiting)

    def provide_psk(self, identity: bytes, answer: PskAnswer) -> None:
        """The async resolver's answer for ``identity`` (None: unknown; an error: refused).

        Once every pending identity has an answer, the held bytes go to OpenSSL.
        """
        if identity not in self._awaiting:
            return
        if isinstance(answer, HandshakeError):
            self._state.prefetched[identity] = answer.reason
        elif answer is None:
            self._state.prefetched[identity] = (
                f"unknown or expired psk_identity {_printable(identity)!r}"
            )
        else:
            self._state.prefetched[identity] = answer
        self._awaiting.discard(identity)
        if self._awaiting or self._failed or self._closed:
            return
        # The first held chunk has been through the sniffer; later ones have not.
        held, self._held = self._held, []
        self._conn.bio_write(held[0])
        self._advance()
        for chunk in held[1:]:
            self.receive_data(chunk)

    def send(self, data: bytes) -> None:
        """Encrypt application data for the peer."""
        if not self.handshake_done or self._failed or self._closed:
            raise HandshakeError("no established security association to send on")
        view = memoryview(data)
        while view:
            sent = self._conn.send(view[:16384])
            view = view[sent:]

    def close(self) -> None:
        """Send close_notify (if the session is up)."""
        if self.handshake_done and not self._failed and not self._closed:
            self._closed = True
            with contextlib.suppress(SSL.Error):
                self._conn.shutdown()

    def refuse(self, reason: str) -> None:
        """End a just-established session that the Responder Agent or a policy refused.

        Seed 003 table 24: the Responder Agent may answer Initiate SA Received with
        Failure (Administrative reasons) once the handshake has named the peer and the SA
        identifier. The session is made unresumable first (:meth:`forget_session`), so the
        refused SA cannot come back by resumption, then close_notify is sent; nothing more
        can be sent or received on it. ``reason`` is kept (:attr:`refused`), safe to log.
        """
        if not self.handshake_done:
            raise HandshakeError("refuse() needs an established session")
        self.forget_session()
        self._refused = reason
        if not self._closed:
            self._closed = True
            with contextlib.suppress(SSL.Error):
                self._conn.shutdown()
        self._failed = True

    def forget_session(self) -> None:
        """Make this connection's session unresumable, now and for later tickets.

        For an SA that is removed or refused (seed 003 7.3.6, docs/sa.md): Entity B drops
        every session ID and TLS 1.3 ticket recorded for the connection, and the one it
        resumed, from its session cache (which makes OpenSSL's copies unresumable too) and
        records none from now on; Entity A forgets the session in its client cache. A
        device coming back then runs a full handshake, with every check of its framework.
        """
        state = self._state
        state.unresumable = True
        session = self._conn.get_session() if self.handshake_done else None
        if self.profile.server_side:
            cache = self.profile.session_cache
            if cache is None:
                return
            ids = list(state.recorded_sessions)
            if state.resumption is not None:
                ids.append(state.resumption.session_id)
            if session is not None:
                ids.append(_psk.session_fields(session)[1])
            for sid in ids:
                if sid:
                    cache.discard(sid)
            state.recorded_sessions.clear()
        elif self.profile.client_sessions is not None and session is not None:
            self.profile.client_sessions.discard_session(session)

    def screen_client_hello(self, data: bytes) -> None:
        """Entity B: check the session a ClientHello offers before OpenSSL sees it.

        For connections that took the ClientHello some other way (DTLS cookie exchange).
        A session whose binding no longer holds is made unresumable, so OpenSSL runs a
        full handshake (see :mod:`m2msec.tls.sessions`).
        """
        if self._peek is not None:
            self._screen(data)

    def _screen(self, data: bytes) -> None:
        assert self._peek is not None
        datagram = self.profile.transport is Transport.DTLS
        if datagram:
            chunk = data
        else:
            self._peek += data[: sessions.CLIENT_HELLO_PEEK - len(self._peek)]
            chunk = bytes(self._peek)
        sid = sessions.client_hello_session_id(chunk, datagram=datagram)
        if sid is None and not datagram and len(chunk) < sessions.CLIENT_HELLO_PEEK:
            return  # wait for more of the ClientHello
        self._peek = None
        if sid:
            self._state.resumption = resumption.screen(self.profile, sid)

    @property
    def session(self) -> SSL.Session | None:
        """Entity A: the session of this connection, to offer again later."""
        return self._conn.get_session() if self.handshake_done else None

    @property
    def session_offered(self) -> bool:
        """Entity A: whether this connection offered an earlier session."""
        return self._offered is not None

    # -- output --------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """Everything the engine wants on the wire now (records may be concatenated)."""
        chunks = []
        while True:
            try:
                chunks.append(self._conn.bio_read(_READ_CHUNK))
            except SSL.WantReadError:
                break
        out = b"".join(chunks)
        if self._sniffer is not None and not self.handshake_done:
            self._sniffer.observe_server(out)
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        out = list(self._events)
        self._events.clear()
        return out

    def export_keying_material(
        self, label: bytes, length: int, context: bytes | None = None
    ) -> bytes:
        """RFC 5705 / RFC 8446 7.5 exporter over the established session."""
        if not self.handshake_done:
            raise HandshakeError("key export needs an established session")
        out: bytes = self._conn.export_keying_material(label, length, context)
        return out

    # -- internals -----------------------------------------------------------------------
    def _advance(self) -> None:
        if not self.handshake_done:
            try:
                self._conn.do_handshake()
            except SSL.WantReadError:
                return
            except SSL.Error as exc:
                self._fail(self._reason(exc), no_common_parameters=self._mismatch(exc))
                return
            try:
                self._context = self._build_context()
            except HandshakeError as exc:
                self._fail(exc.reason, send_alert=True)
                return
            self._events.append(HandshakeComplete(self._context))
        self._read_application_data()

    def _read_application_data(self) -> None:
        while True:
            try:
                data = self._conn.recv(_READ_CHUNK)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                if not self._closed:
                    self._closed = True
                    with contextlib.suppress(SSL.Error):
                        self._conn.shutdown()  # answer close_notify
                self._events.append(ConnectionClosed(close_notify=True))
                return
            except SSL.Error as exc:
                self._fail(self._reason(exc))
                return
            if data:
                self._events.append(DataReceived(data))

    def _build_context(self) -> SecurityContext:
        binding = self._state.binding
        # TLS 1.3 external PSK handshakes count as "reused" in OpenSSL; a resumption is a
        # reuse that no identity callback saw.
        resumed = binding is None and _psk.session_reused(self._conn)
        if resumed:
            binding = self._resumed_binding()
        if binding is None:
            raise HandshakeError("handshake finished without an identity binding")
        fingerprint = self._key_fingerprint(resumed)
        self._state.key_fingerprint = fingerprint
        if self.profile.server_side and self.profile.session_cache is not None:
            self._state.binding = binding
            resumption.record(self.profile, self._conn, self._state)
        server_name: str | None
        if self.profile.server_side:
            raw = self._conn.get_servername()
            server_name = raw.decode("ascii", "replace") if raw else None
            if self.profile.require_sni and not server_name:
                raise HandshakeError("client sent no server_name (SNI required)")
        else:
            server_name = self.profile.server_name
        sa_id = self._conn.export_keying_material(SA_ID_LABEL, 16, None).hex()
        return SecurityContext(
            framework=self.profile.framework,
            local_id=self.profile.local_id,
            peer_id=binding.peer_id,
            peer_kind=binding.kind,
            protocol=self._conn.get_protocol_version_name(),
            cipher_suite=self._conn.get_cipher_name() or "",
            key_id=binding.key_id,
            established_at=datetime.now(UTC),
            valid_until=binding.valid_until,
            sa_id=sa_id,
            server_name=server_name,
            resumed=resumed,
            key_fingerprint=fingerprint,
        )

    def _key_fingerprint(self, resumed: bool) -> str | None:
        """The fingerprint of the PSK the callbacks used, a resumed session's recorded one,
        or else the peer certificate's; never the key (docs/sa.md)."""
        if self._state.key_fingerprint is not None:
            return self._state.key_fingerprint
        if resumed:
            if self.profile.server_side and self._state.resumption is not None:
                recorded = self._state.resumption.key_fingerprint
            elif self._offered is not None:
                recorded = self._offered.key_fingerprint
            else:
                recorded = None
            if recorded is not None:
                return recorded
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        if cert is None:
            return None
        return certificate_fingerprint(cert.public_bytes(Encoding.DER))

    def _resumed_binding(self) -> PeerBinding:
        if not self.profile.server_side:
            if self._offered is None:
                raise HandshakeError("server resumed a session that was not offered")
            return self._offered.binding
        cache = self.profile.session_cache
        entry = self._state.resumption
        if entry is None and cache is not None:
            session = self._conn.get_session()
            if session is not None:
                entry = cache.lookup(_psk.session_fields(session)[1])
        if entry is None:
            raise HandshakeError("resumed session has no recorded identity binding")
        try:
            binding = resumption.revalidate(self.profile, entry)
        except HandshakeError:
            if cache is not None:
                cache.refused += 1
                cache.discard(entry.session_id)
            raise
        if cache is not None:
            cache.resumed += 1
        self._state.resumption = entry
        return binding

    def _fail(
        self, reason: str, *, send_alert: bool = False, no_common_parameters: bool = False
    ) -> None:
        self._failed = True
        if send_alert:
            with contextlib.suppress(SSL.Error):
                self._conn.shutdown()
        self._events.append(HandshakeFailed(reason, no_common_parameters))

    def _mismatch(self, exc: SSL.Error) -> bool:
        """True when OpenSSL failed for want of common parameters, not on a refusal."""
        if self._state.refusal or isinstance(exc, SSL.SysCallError):
            return False
        detail = openssl_reason(exc).lower()
        return any(marker in detail for marker in _NO_COMMON_PARAMETERS)

    def _reason(self, exc: SSL.Error) -> str:
        # A refusal recorded by our callbacks is more precise than OpenSSL's text.
        if self._state.refusal:
            return self._state.refusal
        detail = openssl_reason(exc)
        if "bad record mac" in detail or "decrypt" in detail:
            detail += " (wrong PSK?)" if self._state.psk_identity else ""
        return f"handshake failed: {detail}" if not self.handshake_done else detail


def _printable(identity: bytes) -> str:
    return identity[:128].decode("utf-8", "backslashreplace")


#: OpenSSL reason strings meaning the two ends have nothing in common to agree on (seed 003
#: "No parameters in common with Responder"), as the side that found out reports them, and
#: the alerts the other side then receives that say only that.
_NO_COMMON_PARAMETERS = (
    "no shared cipher",
    "no ciphers available",
    "no cipher match",
    "no protocols available",
    "unsupported protocol",
    "wrong version number",
    "version too low",
    "no suitable signature algorithm",
    "no shared signature algorithms",
    "no suitable key share",
    "no shared groups",
    "alert protocol version",
    "alert insufficient security",
)


def openssl_reason(exc: SSL.Error) -> str:
    """The reason strings of an OpenSSL error queue (e.g. "key values mismatch"), which
    never carry key material: for handshake failures and for contexts that cannot be built."""
    reasons: list[str] = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(item, tuple) and len(item) == 3:
            reasons.append(str(item[2]))
    if isinstance(exc, SSL.SysCallError):
        return "transport error"
    return "; ".join(reasons) or exc.__class__.__name__
