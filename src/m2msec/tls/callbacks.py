"""Per-profile OpenSSL callbacks that bind a handshake to an identity.

The engine installs the callbacks on a profile's shared ``SSL.Context`` before its first
connection (:func:`install`, once per context), and they find the per-connection
:class:`~m2msec.tls.state.HandshakeState`, and through it the connection's profile, in
the connection's app data. They record
what the framework decided (the peer binding, or a refusal reason safe to log), so the
engine can build the :class:`~m2msec.tls.context.SecurityContext` or explain a failure.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from OpenSSL import SSL

from m2msec.crypto.fingerprint import key_fingerprint
from m2msec.errors import CertificateError, CertificateRevoked, HandshakeError, StoreError
from m2msec.tls import _psk
from m2msec.tls.context import PeerBinding
from m2msec.tls.profiles import TLSProfile, Transport
from m2msec.tls.resumption import record, screen
from m2msec.tls.state import HandshakeState

log = logging.getLogger(__name__)


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


#: Contexts whose callbacks are installed. pyOpenSSL freezes a context once it has made a
#: connection, so this happens once, before the first; the callbacks read the profile of
#: each connection from its HandshakeState.
_installed: weakref.WeakSet[SSL.Context] = weakref.WeakSet()


def _profile(state: HandshakeState) -> TLSProfile:
    assert state.profile is not None, "the engine sets the profile of each connection"
    return state.profile


def install(profile: TLSProfile) -> None:
    """Install the callbacks ``profile`` needs on its context, once per context."""
    ctx = profile.ssl_context
    if ctx in _installed:
        return
    _installed.add(ctx)
    if profile.psk_resolver is not None or profile.psk_async_resolver is not None:
        _psk.set_server_callback(ctx, _server_lookup, profile.psk_hint)
    if profile.psk_offer is not None or profile.psk_suite_offer is not None:
        _psk.set_client_callback(ctx, _client_provide)
    if profile.certificate_policy is not None:
        mode = SSL.VERIFY_PEER
        if profile.certificate_policy.require_peer_certificate:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        _psk.set_verify_callback(ctx, mode, _verify)
    if profile.session_cache is not None and profile.transport is Transport.TLS:
        ctx.set_info_callback(_record_ticket)


def _server_lookup(conn: SSL.Connection, identity: bytes) -> bytes | None:
    state = _state(conn)
    profile = _profile(state)
    if b"\0" in b"".join(state.offered_identities):
        identity = _whole(identity, state.offered_identities)
    if profile.session_cache is not None and identity in profile.session_cache:
        # A TLS 1.3 ticket of ours: OpenSSL finds it in its cache once we decline.
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
    elif profile.psk_resolver is not None:
        try:
            answer = profile.psk_resolver(identity)
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
    state.key_fingerprint = key_fingerprint(key)
    # A TLS 1.3 client may offer a resumption ticket before its external PSK; the
    # ticket's refusal is moot once the PSK resolves.
    state.refusal = None
    return key


def _client_provide(conn: SSL.Connection, hint: bytes | None) -> tuple[bytes, bytes] | None:
    state = _state(conn)
    profile = _profile(state)
    if profile.psk_suite_offer is not None:
        try:
            answer = profile.psk_suite_offer(hint, state.cipher_suite)
        except HandshakeError as exc:
            state.refusal = exc.reason
            return None
    else:
        assert profile.psk_offer is not None
        answer = profile.psk_offer(hint)
    if answer is None:
        state.refusal = "no PSK configured for this server"
        return None
    identity, key, state.binding = answer
    state.psk_identity = _printable(identity)
    state.key_fingerprint = key_fingerprint(key)
    return identity, key


def _verify(conn: SSL.Connection, der: bytes, errnum: int, depth: int, ok: int) -> int:
    state = _state(conn)
    if not ok:
        # OpenSSL's error stays: unknown_ca, certificate_expired, ... on the wire.
        state.refusal = f"certificate verify failed at depth {depth}: {_x509_error(errnum)}"
        return errnum
    if depth != 0:
        return 0
    policy = _profile(state).certificate_policy
    assert policy is not None
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


def _record_ticket(conn: SSL.Connection, where: int, ret: int) -> None:
    """TLS 1.3: record the binding of each NewSessionTicket the server sends.

    OpenSSL (with ``OP_NO_TICKET``) issues stateful tickets: each names a session in its
    cache by a fresh ID, made after the handshake's identity was decided. The info
    callback sees each of them as the state machine leaves the ticket state.
    """
    if not where & SSL.SSL_CB_LOOP:
        return
    try:
        if b"session ticket" not in conn.get_state_string():
            return
        state = conn.get_app_data()
        if isinstance(state, HandshakeState) and state.profile is not None:
            record(state.profile, conn, state)
    except Exception:  # never raise into OpenSSL
        log.exception("recording a TLS 1.3 ticket failed")


def _x509_error(errnum: int) -> str:
    lib: Any = _psk._lib
    ffi: Any = _psk._ffi
    try:
        text: bytes = ffi.string(lib.X509_verify_cert_error_string(errnum))
        return text.decode()
    except AttributeError:  # binding without that symbol
        return f"X.509 error {errnum}"
