"""(D)TLS cipher-suite profiles of TS-0003 clause 10.2 and the context factory.

10.2.1: TLS 1.2 / DTLS 1.2 are the baseline; SNI is supported. 10.2.2 (PSK frameworks):
TLS_PSK_WITH_AES_128_CBC_SHA256 for TLS, TLS_PSK_WITH_AES_128_CCM_8 for DTLS. 10.2.3
(certificates): TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256 for TLS,
TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 for DTLS. Infrastructure nodes support all of them, so
every profile offers both mandatory suites of its kind, plus AES-GCM. TLS 1.3 is offered
beside 1.2 (our choice, docs/readings.md A-03); renegotiation is off. Nothing weaker (no NULL, RC4,
3DES, export, CBC-SHA1) is ever listed.

CCM_8 suites carry a 64-bit tag, which OpenSSL 3 rates below its default security level,
so cipher strings that list them end in ``@SECLEVEL=0``. The list itself is explicit, so
the lowered level admits nothing else; certificate key strength is checked by the
certificate framework instead.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from OpenSSL import SSL

from m2msec.tls import _psk
from m2msec.tls.context import Framework, PeerBinding
from m2msec.tls.sessions import ClientSessionCache, ResumptionCheck, ServerSessionCache

# OpenSSL suite names (TLS 1.2 / DTLS 1.2). Order is preference order.
PSK_SUITES_TLS = ("PSK-AES128-GCM-SHA256", "PSK-AES128-CCM8", "PSK-AES128-CBC-SHA256")
PSK_SUITES_DTLS = ("PSK-AES128-CCM8", "PSK-AES128-GCM-SHA256", "PSK-AES128-CBC-SHA256")
CERT_SUITES_TLS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES128-CCM8",
    "ECDHE-ECDSA-AES128-SHA256",
)
CERT_SUITES_DTLS = (
    "ECDHE-ECDSA-AES128-CCM8",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES128-SHA256",
)
# TLS 1.3: OpenSSL's legacy PSK callbacks only serve SHA-256 suites.
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_128_CCM_8_SHA256", "TLS_AES_128_CCM_SHA256")

DTLS1_2_VERSION = 0xFEFD


class Transport(enum.StrEnum):
    TLS = "tls"
    DTLS = "dtls"


def cipher_string(suites: tuple[str, ...]) -> bytes:
    s = ":".join(suites)
    if any("CCM8" in name for name in suites):
        s += ":@SECLEVEL=0"
    return s.encode()


PskResolver = Callable[[bytes], "tuple[bytes, PeerBinding] | None"]
"""Entity B: psk_identity -> (psk, binding of the peer), or None to refuse.

May raise :class:`m2msec.errors.HandshakeError` to refuse with a specific reason."""

AsyncPskResolver = Callable[[bytes, "int | None"], Awaitable["tuple[bytes, PeerBinding] | None"]]
"""Entity B: (psk_identity, IANA id of the negotiated suite or None) -> (psk, binding) or None.

For frameworks whose keys live elsewhere (MAF Key Retrieval, GBA Zn). The engine calls it
before OpenSSL's PSK callback (see :mod:`m2msec.tls.psk_sniff`); the suite (e.g. 0x00AE for
TLS_PSK_WITH_AES_128_CBC_SHA256, which GBA's NAF_Id needs) is known for TLS/DTLS 1.2 (our
ServerHello has gone out) and None for a TLS 1.3 ClientHello. May raise
:class:`m2msec.errors.HandshakeError` to refuse with a specific reason."""

PskOffer = Callable[[bytes | None], "tuple[bytes, bytes, PeerBinding] | None"]
"""Entity A: identity hint -> (psk_identity, psk, binding of the server), or None."""

PskSuiteOffer = Callable[[bytes | None, "int | None"], "tuple[bytes, bytes, PeerBinding] | None"]
"""Entity A: (identity hint, IANA id of the suite in the server's ServerHello, or None) ->
(psk_identity, psk, binding of the server), or None. For GBA, whose NAF_Id holds the
negotiated suite (docs/readings.md A-09); the engine reads the ServerHello to learn it (TLS 1.2)."""


@dataclass(frozen=True, slots=True)
class CertificatePolicy:
    """What a side checks of the peer's certificate beyond the chain (TS-0003 8.1.2.x).

    ``bind`` receives the peer's leaf certificate as DER and returns the binding, or
    raises :class:`m2msec.errors.CertificateError` with a reason safe to log.
    """

    bind: Callable[[bytes], PeerBinding]
    require_peer_certificate: bool = True


@dataclass(frozen=True, slots=True)
class TLSProfile:
    """Everything the engine needs for one side of one framework.

    Built by a framework module (``m2msec.frameworks.*``) and shared by every
    connection of a listener or a client. Frozen: build a variant with
    ``dataclasses.replace``; the engine installs its callbacks on the context
    (:func:`m2msec.tls.callbacks.install`).
    """

    framework: Framework
    transport: Transport
    server_side: bool
    ssl_context: SSL.Context
    local_id: str | None = None
    psk_resolver: PskResolver | None = None
    psk_async_resolver: AsyncPskResolver | None = None
    """Entity B: resolves each identity the client sends before OpenSSL asks for it; the
    synchronous ``psk_resolver``, if any, answers only identities not resolved this way."""
    psk_hint: bytes | None = None
    """Entity B: the identity hint sent in ServerKeyExchange (TLS 1.2 only; GBA)."""
    psk_offer: PskOffer | None = None
    psk_suite_offer: PskSuiteOffer | None = None
    """Entity A: like ``psk_offer`` but also told the negotiated suite; takes precedence."""
    certificate_policy: CertificatePolicy | None = None
    server_name: str | None = None
    """Client side: the SNI to send (docs/readings.md A-11). Server side: unused."""
    require_sni: bool = False
    """Server side strict mode: refuse ClientHellos without server_name."""
    session_cache: ServerSessionCache | None = None
    """Entity B: bindings of resumable sessions; set by
    :func:`m2msec.tls.resumption.enable_resumption` (None: every handshake is a full one)."""
    resumption_check: ResumptionCheck | None = None
    """Entity B: re-validates a binding before its session is resumed (see sessions)."""
    client_sessions: ClientSessionCache | None = None
    """Entity A: sessions to offer again to the same server (see sessions)."""


def new_context(
    transport: Transport,
    *,
    server_side: bool,
    suites: tuple[str, ...],
    tls13: bool = True,
) -> SSL.Context:
    """A hardened OpenSSL context for ``transport`` limited to ``suites``."""
    if transport is Transport.DTLS:
        ctx = SSL.Context(SSL.DTLS_SERVER_METHOD if server_side else SSL.DTLS_CLIENT_METHOD)
        ctx.set_min_proto_version(DTLS1_2_VERSION)
        ctx.set_max_proto_version(DTLS1_2_VERSION)
    else:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD if server_side else SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_3_VERSION if tls13 else SSL.TLS1_2_VERSION)
        ctx.set_tls13_ciphersuites(":".join(TLS13_SUITES).encode())
    ctx.set_cipher_list(cipher_string(suites))
    _psk.restrict_sigalgs(ctx)
    ctx.set_options(
        SSL.OP_NO_COMPRESSION
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        # No RFC 5077 tickets: TLS 1.2 resumes by session ID and TLS 1.3 gets stateful
        # tickets, both found in the server's cache where m2msec.tls.sessions can check
        # them. That cache stays off unless resumption.enable_resumption() turns it on, as a
        # resumed session skips the callbacks that bind the peer's identity.
        | SSL.OP_NO_TICKET
    )
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return ctx


def psk_suites(transport: Transport) -> tuple[str, ...]:
    """The PSK suites of TS-0003 10.2.2 in our order for ``transport`` (CCM_8 first on DTLS)."""
    return PSK_SUITES_DTLS if transport is Transport.DTLS else PSK_SUITES_TLS


def new_profile(
    framework: Framework,
    transport: Transport,
    *,
    server_side: bool,
    suites: tuple[str, ...],
    tls13: bool = True,
    local_id: str | None = None,
) -> TLSProfile:
    """A profile on a fresh :func:`new_context`, with no callables yet: a framework adds
    its own (``psk_resolver``, ``certificate_policy``, ...) with ``dataclasses.replace``."""
    ctx = new_context(transport, server_side=server_side, suites=suites, tls13=tls13)
    return TLSProfile(
        framework=framework,
        transport=transport,
        server_side=server_side,
        ssl_context=ctx,
        local_id=local_id,
    )
