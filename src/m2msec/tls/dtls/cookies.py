"""DTLS cookie exchange (RFC 6347 4.2.1): stateless HelloVerifyRequest cookies.

Before any per-peer state exists, a ClientHello from an address that has not proved it
can receive there is answered with a HelloVerifyRequest. The cookie is
``HMAC-SHA256(secret, address || window)[:16]`` with a secret that changes every window;
cookies of the current and of the previous window are accepted (:class:`CookieJar`).

:class:`~m2msec.tls.dtls.server.DTLSServer` answers a ClientHello without a valid cookie
in Python, without OpenSSL. One with a valid cookie goes to ``DTLSv1_listen`` on the
connection of the engine that will run the handshake (OpenSSL's server expects
message_seq 0 unless ``DTLSv1_listen`` ran, and the ClientHello's message_seq is in the
Finished hash, so it cannot be rewritten); OpenSSL's own cookie checks, the callbacks
installed here, then compare with the cookie already verified (:class:`PeerState`)
instead of recomputing HMACs. The answer to an unverified address is never larger than
the datagram it answers (no amplification).
"""

from __future__ import annotations

import hmac
import os
import time
from dataclasses import dataclass

from OpenSSL import SSL

from m2msec.errors import ConfigurationError
from m2msec.tls.dtls.records import Address, Clock
from m2msec.tls.state import HandshakeState

__all__ = [
    "COOKIE_LENGTH",
    "DEFAULT_COOKIE_WINDOW",
    "CookieJar",
    "PeerState",
    "address_key",
    "install_cookie_callbacks",
]

DEFAULT_COOKIE_WINDOW = 60.0
COOKIE_LENGTH = 16


def address_key(addr: Address) -> bytes:
    """A canonical byte form of a peer address (host and port), for cookies."""
    return str(addr[0]).encode("utf-8", "surrogateescape") + b"\0" + int(addr[1]).to_bytes(2, "big")



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
class PeerState(HandshakeState):
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
    if not isinstance(state, PeerState) or state.jar is None:
        raise ConfigurationError("DTLS cookie requested outside DTLSServer")
    return state.jar.cookie(state.peer)


def _verify_cookie(conn: SSL.Connection, cookie: bytes) -> bool:
    state = conn.get_app_data()
    if not isinstance(state, PeerState) or state.jar is None:
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

