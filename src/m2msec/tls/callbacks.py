"""Per-profile OpenSSL callbacks that bind a handshake to an identity.

The callbacks are installed once on a profile's shared ``SSL.Context`` and find the
per-connection :class:`HandshakeState` through the connection's app data. They record
what the framework decided (the peer binding, or a refusal reason safe to log), so the
engine can build the :class:`~m2msec.tls.context.SecurityContext` or explain a failure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL

from m2msec.errors import CertificateError, CertificateRevoked, HandshakeError, StoreError
from m2msec.tls import _psk
from m2msec.tls.context import PeerBinding

if TYPE_CHECKING:
    from m2msec.tls.profiles import TLSProfile
    from m2msec.tls.sessions import SessionEntry

log = logging.getLogger(__name__)


@dataclass(slots=True)
class HandshakeState:
    """What the callbacks learned during one handshake."""

    psk_identity: str | None = None
    binding: PeerBinding | None = None
    refusal: str | None = None
    #: Answers of the profile's async resolver, by raw identity: (psk, binding), or a
    #: refusal reason. Filled by the engine before OpenSSL's PSK callback runs.
    prefetched: dict[bytes, tuple[bytes, PeerBinding] | str] = field(default_factory=dict)
    #: Client side: IANA id of the suite in the server's ServerHello, when the profile has
    #: a ``psk_suite_offer`` (the engine reads it off the wire before OpenSSL does).
    cipher_suite: int | None = None
    #: Entity B: the raw psk_identity the PSK callback answered (kept with the session).
    raw_psk_identity: bytes | None = None
    #: Entity B: the recorded session the client offers and may resume (see sessions).
    resumption: SessionEntry | None = None
    #: Entity B: the psk identities the client offered, whole, as the engine read them.
    offered_identities: list[bytes] = field(default_factory=list)


def _state(conn: SSL.Connection) -> HandshakeState:
    state = conn.get_app_data()
    assert isinstance(state, HandshakeState)
    return state


def _whole(identity: bytes, offered: list[bytes]) -> bytes:
    """The offered identity that OpenSSL cut at its first NUL into ``identity``.

    OpenSSL passes the legacy PSK callback a C string; a TLS 1.3 ticket (random octets)
    holds a NUL about one time in eight, and must still be recognised as ours.
    """
    if identity in offered:
        return identity
    for whole in offered:
        if whole.split(b"\0", 1)[0] == identity:
            return whole
    return identity


def _printable(identity: bytes) -> str:
    # Identities end up in logs: keep them printable and bounded.
    return identity[:128].decode("utf-8", "backslashreplace")


def install(profile: TLSProfile) -> None:
    ctx = profile.ssl_context
    if profile.psk_resolver is not None or profile.psk_async_resolver is not None:
        resolver = profile.psk_resolver

        def server_lookup(conn: SSL.Connection, identity: bytes) -> bytes | None:
            state = _state(conn)
            if b"\0" in b"".join(state.offered_identities):
                identity = _whole(identity, state.offered_identities)
            if profile.session_cache is not None and identity in profile.session_cache:
                # A TLS 1.3 ticket of ours: OpenSSL finds it in its cache once we decline.
                from m2msec.tls.sessions import screen

                state.resumption = screen(profile, identity) or state.resumption
                return None
            state.psk_identity = _printable(identity)
            answer: tuple[bytes, PeerBinding] | None = None
            prefetched = state.prefetched.get(identity)
            if isinstance(prefetched, str):
                state.refusal = prefetched
                return None
            if prefetched is not None:
                answer = prefetched
            elif resolver is not None:
                try:
                    answer = resolver(identity)
                except HandshakeError as exc:
                    state.refusal = exc.reason
                    return None
                except StoreError:
                    state.refusal = "the psk-lookup-table is unavailable"
                    raise  # the callback answers internal_error
            if answer is None:
                state.refusal = f"unknown or expired psk_identity {state.psk_identity!r}"
                return None
            key, state.binding = answer
            state.raw_psk_identity = identity
            # A TLS 1.3 client may offer a resumption ticket before its external PSK; the
            # ticket's refusal is moot once the PSK resolves.
            state.refusal = None
            return key

        _psk.set_server_callback(ctx, server_lookup, profile.psk_hint)

    if profile.psk_offer is not None or profile.psk_suite_offer is not None:
        offer = profile.psk_offer
        suite_offer = profile.psk_suite_offer

        def client_provide(conn: SSL.Connection, hint: bytes | None) -> tuple[bytes, bytes] | None:
            state = _state(conn)
            if suite_offer is not None:
                try:
                    answer = suite_offer(hint, state.cipher_suite)
                except HandshakeError as exc:
                    state.refusal = exc.reason
                    return None
            else:
                assert offer is not None
                answer = offer(hint)
            if answer is None:
                state.refusal = "no PSK configured for this server"
                return None
            identity, key, state.binding = answer
            state.psk_identity = _printable(identity)
            return identity, key

        _psk.set_client_callback(ctx, client_provide)

    if profile.certificate_policy is not None:
        policy = profile.certificate_policy

        def verify(conn: SSL.Connection, der: bytes, errnum: int, depth: int, ok: int) -> int:
            state = _state(conn)
            if not ok:
                # OpenSSL's error stays: unknown_ca, certificate_expired, ... on the wire.
                state.refusal = f"certificate verify failed at depth {depth}: {_x509_error(errnum)}"
                return errnum
            if depth != 0:
                return 0
            try:
                state.binding = policy.bind(der)
            except CertificateRevoked as exc:
                state.refusal = str(exc)
                return _psk.X509_V_ERR_CERT_REVOKED
            except CertificateError as exc:
                state.refusal = str(exc)
                # bad_certificate: the name or the allowed list refuses it, not the chain.
                return _psk.X509_V_ERR_CERT_REJECTED
            except Exception:
                log.exception("certificate policy failed")
                state.refusal = "certificate policy failed"
                return _psk.X509_V_ERR_CERT_REJECTED
            return 0

        mode = SSL.VERIFY_PEER
        if policy.require_peer_certificate:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        _psk.set_verify_callback(ctx, mode, verify)


def _x509_error(errnum: int) -> str:
    lib: Any = _psk._lib
    ffi: Any = _psk._ffi
    try:
        text: bytes = ffi.string(lib.X509_verify_cert_error_string(errnum))
        return text.decode()
    except AttributeError:  # binding without that symbol
        return f"X.509 error {errnum}"
