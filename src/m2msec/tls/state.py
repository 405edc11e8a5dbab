"""Per-connection handshake state shared by the engine and the OpenSSL callbacks.

TS-0003 8.2: the callbacks record what the framework decided for one handshake (the peer
binding of IdA/IdB, or a refusal reason safe to log); the engine reads it to build the
:class:`~m2msec.tls.context.SecurityContext`. One :class:`HandshakeState` is each
connection's OpenSSL app data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from m2msec.tls.context import PeerBinding
from m2msec.tls.profiles import TLSProfile
from m2msec.tls.sessions import SessionEntry


@dataclass(slots=True)
class HandshakeState:
    """What the callbacks learned during one handshake."""

    #: The profile of the engine running this connection; the context's callbacks are
    #: shared by every profile made from one another with ``dataclasses.replace``.
    profile: TLSProfile | None = None

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
    #: The fingerprint of the PSK the callbacks used (never the key; docs/sa.md).
    key_fingerprint: str | None = None
    #: Entity B: the session IDs / TLS 1.3 tickets recorded for this connection, so that a
    #: removed or refused SA's sessions can be made unresumable (:meth:`TLSEngine.forget_session`).
    recorded_sessions: list[bytes] = field(default_factory=list)
    #: Set once the connection's SA was refused or removed: record no more sessions for it.
    unresumable: bool = False
