"""TLS/DTLS-PSK (RFC 4279) callbacks, and other settings pyOpenSSL lacks.

pyOpenSSL has no PSK API, so this module, and only this module, reaches into
``cryptography``'s OpenSSL binding to install ``SSL_CTX_set_psk_server_callback`` and
``SSL_CTX_set_psk_client_callback``. OpenSSL 3 also serves TLS 1.3 external PSKs through
these legacy callbacks (with a SHA-256 suite), so one code path covers 1.2 and 1.3.

The callbacks run inside ``SSL_do_handshake``. They must never raise into C: any
exception is logged (without key material) and turns into a failed lookup, which makes
OpenSSL abort the handshake with an alert.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

from m2msec.errors import StoreError
from m2msec.store.outage import StoreOutage

log = logging.getLogger(__name__)
#: One outage log for PSK lookups that hit a failing store (one line per outage).
_STORE_OUTAGE = StoreOutage("psk-lookup-table (PSK handshake lookup)", logger=log)

_binding = Binding()
_ffi: Any = _binding.ffi
_lib: Any = _binding.lib

#: RFC 4279 limits the identity to 128 octets, which the clients here enforce. Servers
#: read up to OpenSSL's own limit so that the framework can refuse an oversized identity
#: with a precise reason. OpenSSL caps keys at 256 octets.
MAX_IDENTITY_LEN = 128
MAX_RECEIVED_IDENTITY_LEN = 256
MAX_PSK_LEN = 256
#: Returned by the server callback when the store fails: above OpenSSL's PSK_MAX_PSK_LEN.
STORE_UNAVAILABLE = 0x7FFFFFFF

ServerLookup = Callable[[SSL.Connection, bytes], bytes | None]
"""(connection, psk_identity) -> psk, or None to refuse the identity."""

ClientProvider = Callable[[SSL.Connection, bytes | None], tuple[bytes, bytes] | None]
"""(connection, identity hint or None) -> (psk_identity, psk), or None to give up."""


def _connection_of(ssl: Any) -> SSL.Connection | None:
    # pyOpenSSL maps each SSL* back to its Connection for its own callbacks.
    conn: SSL.Connection | None = SSL.Connection._reverse_mapping.get(ssl)
    return conn


def _ctx_ptr(ctx: SSL.Context) -> Any:
    return ctx._context


def set_server_callback(ctx: SSL.Context, lookup: ServerLookup, hint: bytes | None = None) -> None:
    """Make ``ctx`` answer PSK handshakes by calling ``lookup`` with the client's identity."""

    def server_cb(ssl: Any, identity: Any, psk_out: Any, max_len: int) -> int:
        try:
            conn = _connection_of(ssl)
            if conn is None or identity == _ffi.NULL:
                return 0
            ident = _ffi.string(identity, MAX_RECEIVED_IDENTITY_LEN + 1)
            if len(ident) > MAX_RECEIVED_IDENTITY_LEN:
                log.warning("PSK identity longer than %d octets refused", MAX_RECEIVED_IDENTITY_LEN)
                return 0
            key = lookup(conn, ident)
            if key is None:
                return 0
            if not 0 < len(key) <= min(max_len, MAX_PSK_LEN):
                log.error("PSK of unusable length %d refused", len(key))
                return 0
            _ffi.memmove(psk_out, key, len(key))
            return len(key)
        except StoreError as exc:
            # The store is unreachable: a length above PSK_MAX_PSK_LEN makes OpenSSL end
            # the handshake with internal_error (TLS 1.2 and 1.3), so a device can tell
            # "retry later" from the unknown_psk_identity / decrypt_error of a wrong key.
            _STORE_OUTAGE.failed(exc)
            return STORE_UNAVAILABLE
        except Exception:
            log.exception("PSK server lookup failed")
            return 0

    cb = _ffi.callback("unsigned int(SSL *, const char *, unsigned char *, unsigned int)")(
        server_cb
    )
    # The cffi callback must live as long as the context that calls it.
    setattr(ctx, "_m2msec_psk_server_cb", cb)  # noqa: B010 - pyOpenSSL type has no slot for it
    _lib.SSL_CTX_set_psk_server_callback(_ctx_ptr(ctx), cb)
    if hint is not None and _lib.SSL_CTX_use_psk_identity_hint(_ctx_ptr(ctx), hint) != 1:
        raise ValueError("OpenSSL refused the PSK identity hint")


VerifyCallback = Callable[[SSL.Connection, bytes, int, int, int], int]
"""(connection, DER certificate, OpenSSL's error, depth, ok) -> X.509 error to set, 0 to accept."""

#: X.509 verify errors a certificate policy refuses with; OpenSSL turns the error left in
#: the store context into the alert (ssl_x509err2alert): both give ``bad_certificate``.
#: No X.509 error maps to ``access_denied``.
X509_V_ERR_CERT_REJECTED: int = _lib.X509_V_ERR_CERT_REJECTED
X509_V_ERR_HOSTNAME_MISMATCH: int = _lib.X509_V_ERR_HOSTNAME_MISMATCH
X509_V_ERR_CERT_REVOKED: int = _lib.X509_V_ERR_CERT_REVOKED


def set_verify_callback(ctx: SSL.Context, mode: int, verify: VerifyCallback) -> None:
    """Install ``verify`` as ``ctx``'s certificate verify callback (``SSL_CTX_set_verify``).

    pyOpenSSL's own wrapper returns 0 with the store context's error still ``X509_V_OK``,
    which OpenSSL 3 reports as ``internal_error``. Here the callback names the X.509 error
    it refuses with, set through ``X509_STORE_CTX_set_error``, so the peer gets the alert
    that fits (``bad_certificate``, ``unknown_ca``, ``certificate_expired``, ...).
    """
    from OpenSSL import crypto

    def verify_cb(ok: int, store_ctx: Any) -> int:
        try:
            ssl = _lib.X509_STORE_CTX_get_ex_data(
                store_ctx, _lib.SSL_get_ex_data_X509_STORE_CTX_idx()
            )
            conn = _connection_of(ssl)
            x509 = _lib.X509_STORE_CTX_get_current_cert(store_ctx)
            if conn is None or x509 == _ffi.NULL:
                _lib.X509_STORE_CTX_set_error(store_ctx, _lib.X509_V_ERR_APPLICATION_VERIFICATION)
                return 0
            _lib.X509_up_ref(x509)
            cert = crypto.X509._from_raw_x509_ptr(x509)
            der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
            errnum = _lib.X509_STORE_CTX_get_error(store_ctx)
            depth = _lib.X509_STORE_CTX_get_error_depth(store_ctx)
            error = verify(conn, der, errnum, depth, ok)
        except Exception:
            log.exception("certificate verify callback failed")
            _lib.X509_STORE_CTX_set_error(store_ctx, _lib.X509_V_ERR_APPLICATION_VERIFICATION)
            return 0
        if error:
            _lib.X509_STORE_CTX_set_error(store_ctx, error)
            return 0
        if not ok:
            # OpenSSL's own refusal stands: its error stays in the store context.
            return 0
        return 1

    cb = _ffi.callback("int(int, X509_STORE_CTX *)")(verify_cb)
    setattr(ctx, "_m2msec_verify_cb", cb)  # noqa: B010 - pyOpenSSL type has no slot for it
    _lib.SSL_CTX_set_verify(_ctx_ptr(ctx), mode, cb)


def set_client_callback(ctx: SSL.Context, provider: ClientProvider) -> None:
    """Make ``ctx`` offer the PSK that ``provider`` returns for the server's hint."""

    def client_cb(
        ssl: Any,
        hint: Any,
        identity_out: Any,
        max_identity_len: int,
        psk_out: Any,
        max_psk_len: int,
    ) -> int:
        try:
            conn = _connection_of(ssl)
            if conn is None:
                return 0
            hint_bytes = None if hint == _ffi.NULL else _ffi.string(hint)
            answer = provider(conn, hint_bytes)
            if answer is None:
                return 0
            identity, key = answer
            # identity_out must hold the identity plus its NUL terminator.
            if len(identity) > min(MAX_IDENTITY_LEN, max_identity_len - 1) or b"\0" in identity:
                log.error("PSK identity of unusable length %d not sent", len(identity))
                return 0
            if not 0 < len(key) <= min(max_psk_len, MAX_PSK_LEN):
                log.error("PSK of unusable length %d not used", len(key))
                return 0
            _ffi.memmove(identity_out, identity + b"\0", len(identity) + 1)
            _ffi.memmove(psk_out, key, len(key))
            return len(key)
        except Exception:
            log.exception("PSK client provider failed")
            return 0

    cb = _ffi.callback(
        "unsigned int(SSL *, const char *, char *, unsigned int, unsigned char *, unsigned int)"
    )(client_cb)
    setattr(ctx, "_m2msec_psk_client_cb", cb)  # noqa: B010
    _lib.SSL_CTX_set_psk_client_callback(_ctx_ptr(ctx), cb)


#: Handshake signature algorithms: no SHA-1 or MD5, even under @SECLEVEL=0 (which the
#: CCM_8 suites need and which would otherwise admit SHA-1 signatures in TLS 1.2).
SIGALGS = (
    b"ECDSA+SHA256:ECDSA+SHA384:ECDSA+SHA512:"
    b"rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512:"
    b"RSA+SHA256:RSA+SHA384:RSA+SHA512"
)


def restrict_sigalgs(ctx: SSL.Context) -> None:
    """Limit the signature algorithms a context offers and accepts to :data:`SIGALGS`."""
    if _lib.SSL_CTX_set1_sigalgs_list(_ctx_ptr(ctx), SIGALGS) != 1:
        raise ValueError("OpenSSL refused the signature algorithm list")


# -- session resumption (see m2msec.tls.sessions) --------------------------------------------
#: TLS 1.3 suite with a SHA-384 PRF. None of our profiles offers it, so a ticket session
#: re-labelled with it no longer matches the negotiated suite's hash and OpenSSL skips the
#: ticket for the next PSK the client offers (or a full handshake).
_TLS13_SHA384_SUITE = b"\x13\x02"


def session_reused(conn: SSL.Connection) -> bool:
    """Whether OpenSSL resumed a session on ``conn`` (``SSL_session_reused``).

    TLS 1.3 external PSK handshakes count as reused too; callers tell them apart.
    """
    return bool(_lib.SSL_session_reused(conn._ssl))


def _der_tlv(buf: Any, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at ``pos``."""
    if pos + 2 > end:
        raise ValueError("truncated DER")
    tag, length = buf[pos], buf[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if not 0 < n <= 4 or pos + n > end:
            raise ValueError("bad DER length")
        length = 0
        for i in range(n):
            length = length << 8 | buf[pos + i]
        pos += n
    if pos + length > end:
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def session_fields(session: SSL.Session) -> tuple[int, bytes]:
    """(protocol version, session ID) of ``session``; (0, b"") when unreadable.

    The binding has no ``SSL_SESSION_get_id``, so both are read from the session's DER
    encoding (OpenSSL's format: SEQUENCE { version, ssl_version, cipher, session_id,
    master_key, ... }). Only these two fields are copied out; the C buffer, which also
    holds the master secret, is wiped before it is released.
    """
    ptr = session._session
    size = _lib.i2d_SSL_SESSION(ptr, _ffi.NULL)
    if size <= 0:
        return 0, b""
    raw = _ffi.new("unsigned char[]", size)
    out = _ffi.new("unsigned char **", raw)
    try:
        if _lib.i2d_SSL_SESSION(ptr, out) != size:
            return 0, b""
        buf = _ffi.buffer(raw, size)
        tag, pos, end = _der_tlv(raw, 0, size)
        if tag != 0x30:
            return 0, b""
        _, _, pos = _der_tlv(raw, pos, end)  # version of the encoding
        tag, start, pos = _der_tlv(raw, pos, end)
        version = int.from_bytes(buf[start:pos], "big") if tag == 0x02 else 0
        _, _, pos = _der_tlv(raw, pos, end)  # cipher
        tag, start, stop = _der_tlv(raw, pos, end)
        return version, (bytes(buf[start:stop]) if tag == 0x04 else b"")
    except ValueError:
        return 0, b""
    finally:
        _ffi.memmove(raw, b"\0" * size, size)


TLS1_3_VERSION = 0x0304


def make_unresumable(session: SSL.Session, conn: SSL.Connection) -> None:
    """Make OpenSSL's server cache treat ``session`` as a miss from now on.

    The binding lacks ``SSL_CTX_remove_session``; instead the cached session's protocol
    version is set to one no connection negotiates, which ``ssl_get_prev_session`` treats
    as a cache miss, and a full handshake follows. A TLS 1.3 ticket's session is also
    re-labelled with a SHA-384 suite (found through ``conn``, any connection of the same
    context) so that OpenSSL moves on to the next PSK the client offered instead of
    failing; TLS 1.2 sessions keep their suite, as live connections may share them.
    """
    ptr = session._session
    version, _ = session_fields(session)
    _lib.SSL_SESSION_set_protocol_version(ptr, 0)
    if version == TLS1_3_VERSION:
        cipher = _lib.SSL_CIPHER_find(conn._ssl, _TLS13_SHA384_SUITE)
        if cipher != _ffi.NULL:
            _lib.SSL_SESSION_set_cipher(ptr, cipher)
