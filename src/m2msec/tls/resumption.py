"""Resumption decisions for a profile (TS-0003 8.2, RFC 5246 7.3).

What :mod:`m2msec.tls.sessions` describes, bound to a :class:`~m2msec.tls.profiles.TLSProfile`:
re-validating a recorded binding (:func:`revalidate`), screening the session a ClientHello
offers (:func:`screen`), recording a finished handshake's session (:func:`record`), and
turning resumption on for a profile (:func:`enable_resumption`, which returns a new,
frozen profile); on Entity A's side, offering a kept session (:func:`offering_session`).
The caches themselves are in :mod:`m2msec.tls.sessions`, below the profiles; this module
sits above them and below the callbacks that call :func:`screen`.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import Protocol, TypeVar

from OpenSSL import SSL

from m2msec.errors import ConfigurationError, HandshakeError
from m2msec.tls import _psk
from m2msec.tls.context import PeerBinding, SecurityContext
from m2msec.tls.profiles import TLSProfile
from m2msec.tls.sessions import (
    ClientSession,
    ResumptionCheck,
    ServerSessionCache,
    SessionEntry,
    _utcnow,
)
from m2msec.tls.state import HandshakeState

__all__ = [
    "enable_resumption",
    "offering_session",
    "record",
    "revalidate",
    "screen",
    "session_id_context",
]

log = logging.getLogger("m2msec.tls.sessions")

#: The session cache each responder context records into (one per context).
_caches: weakref.WeakKeyDictionary[SSL.Context, ServerSessionCache] = (
    weakref.WeakKeyDictionary()
)


def revalidate(
    profile: TLSProfile, entry: SessionEntry, now: datetime | None = None
) -> PeerBinding:
    """The binding to give a resumed session, or :class:`HandshakeError` to refuse it."""
    binding = entry.binding
    now = now or _utcnow()
    if binding.valid_until is not None and now >= binding.valid_until:
        # docs/readings.md A-16: no resumption of a pre-expiry session after expiry.
        raise HandshakeError(
            f"session of {binding.peer_id} not resumed: its key expired at "
            f"{binding.valid_until.isoformat()}"
        )
    if profile.resumption_check is not None:
        fresh = profile.resumption_check(binding)
        binding = fresh if fresh is not None else binding
    elif entry.psk_identity is not None and profile.psk_resolver is not None:
        # Provisioned PSK: the psk-lookup-table row must still exist and bind the same entity.
        answer = profile.psk_resolver(entry.psk_identity)
        if answer is None:
            raise HandshakeError(
                f"session of {binding.peer_id} not resumed: its psk_identity is no longer known"
            )
        fresh = answer[1]
        if (fresh.peer_id, fresh.kind) != (binding.peer_id, binding.kind):
            raise HandshakeError(
                f"session of {binding.peer_id} not resumed: its psk_identity now binds "
                f"{fresh.peer_id}"
            )
        binding = fresh
    if binding.valid_until is not None and now >= binding.valid_until:
        raise HandshakeError(f"session of {binding.peer_id} not resumed: its key has expired")
    return binding


def screen(profile: TLSProfile, session_id: bytes) -> SessionEntry | None:
    """Check a session a ClientHello offers, before OpenSSL looks it up.

    Returns the entry when the session may be resumed. When it may not, the session is
    dropped and made unresumable, so OpenSSL runs a full handshake; returns None then, and
    also for sessions this cache does not know.
    """
    cache = profile.session_cache
    if cache is None or not session_id:
        return None
    entry = cache.lookup(session_id)
    if entry is None:
        return None
    try:
        entry.binding = revalidate(profile, entry)
    except HandshakeError as exc:
        cache.refused += 1
        log.info("%s; full handshake instead", exc.reason)
        cache.discard(session_id)
        return None
    return entry


def session_id_context(profile: TLSProfile) -> bytes:
    """The SSL session ID context of a responder (at most 32 octets).

    Sessions resume only where they were made: same framework, transport and local
    identity. OpenSSL also requires one whenever client certificates are verified.
    """
    label = f"m2msec|{profile.framework}|{profile.transport}|{profile.local_id or ''}"
    return hashlib.sha256(label.encode()).digest()


def enable_resumption(
    profile: TLSProfile,
    cache: ServerSessionCache | None = None,
    *,
    check: ResumptionCheck | None = None,
) -> TLSProfile:
    """The responder ``profile`` with session resumption on (see :mod:`m2msec.tls.sessions`).

    Turns on OpenSSL's server-side session cache for the profile's context (with the
    cache's lifetime as OpenSSL's session timeout); the returned profile records
    bindings in ``cache`` (a new one by default; its ``session_cache``). ``check``
    overrides the default re-validation of a binding. Idempotent.
    """
    if not profile.server_side:
        raise ConfigurationError("enable_resumption() is for responder profiles")
    ctx = profile.ssl_context
    if cache is None:
        # Idempotent per context: another profile made from this one may have turned it on.
        cache = profile.session_cache or _caches.get(ctx)
    if cache is not None and cache is _caches.get(ctx):
        return replace(
            profile,
            session_cache=cache,
            resumption_check=check if check is not None else profile.resumption_check,
        )
    if cache is None:
        cache = ServerSessionCache()
    _caches[ctx] = cache
    cache._bind_context(ctx)
    ctx.set_session_id(session_id_context(profile))
    ctx.set_timeout(max(1, int(cache.lifetime)))
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    return replace(
        profile,
        session_cache=cache,
        resumption_check=check if check is not None else profile.resumption_check,
    )


def record(profile: TLSProfile, conn: SSL.Connection, state: object) -> None:
    """Store the current session of ``conn`` with the binding its handshake decided."""
    cache = profile.session_cache
    if cache is None or not isinstance(state, HandshakeState) or state.unresumable:
        return
    binding = state.binding
    psk_identity = state.raw_psk_identity
    fingerprint = state.key_fingerprint
    expires: float | None = None
    if state.resumption is not None:
        # Tickets issued on a resumed session live no longer than that session, and keep
        # its psk_identity, so the next resumption still re-checks the psk-lookup-table.
        expires = state.resumption.expires
        if binding is None:
            binding = state.resumption.binding
        if psk_identity is None:
            psk_identity = state.resumption.psk_identity
        if fingerprint is None:
            fingerprint = state.resumption.key_fingerprint
    session = conn.get_session()
    if binding is None or session is None:
        return
    _, sid = _psk.session_fields(session)
    cache.store(sid, session, binding, profile.framework, psk_identity, expires, fingerprint)
    if sid and sid not in state.recorded_sessions:
        state.recorded_sessions.append(sid)


# -- Entity A ------------------------------------------------------------------------------
class _Engine(Protocol):
    @property
    def session(self) -> SSL.Session | None: ...


class _Association(Protocol):
    @property
    def engine(self) -> _Engine: ...

    @property
    def context(self) -> SecurityContext: ...


_A = TypeVar("_A", bound=_Association)


async def offering_session(
    profile: TLSProfile,
    host: str,
    port: int,
    server_name: str | None,
    attempt: Callable[[ClientSession | None], Awaitable[_A]],
) -> _A:
    """Entity A: run ``attempt``, offering the session of the last association with
    ``host``, ``port`` and server name from ``profile.client_sessions``; keep the new one.

    The one resumption policy of the TLS and DTLS initiators: if a resumption attempt
    fails, the session is forgotten and one full handshake follows. ``attempt`` does the
    I/O (None: offer nothing).
    """
    cache = profile.client_sessions
    key = (host, port, server_name or profile.server_name)
    offer = cache.get(key) if cache is not None else None
    try:
        assoc = await attempt(offer)
    except HandshakeError:
        if cache is None or offer is None:
            raise
        cache.discard(key)
        assoc = await attempt(None)
    session = assoc.engine.session
    if cache is not None and session is not None:
        ctx = assoc.context
        binding = PeerBinding(ctx.peer_id, ctx.peer_kind, ctx.key_id, ctx.valid_until)
        cache.put(key, session, binding, ctx.key_fingerprint)
    return assoc
