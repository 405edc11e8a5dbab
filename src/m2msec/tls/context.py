"""The result of a finished Security Association Establishment handshake.

TS-0003 clause 8.2: after the Association Security Handshake each entity associates
the (D)TLS session with the peer's identity (IdA at Entity B, IdB at Entity A).
:class:`SecurityContext` is that association as the library hands it to applications.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# PeerKind belongs to the identifiers; a PeerBinding carries one, so it is part of
# this module's interface too.
from m2msec.ids import PeerKind as PeerKind


class Framework(enum.StrEnum):
    """Security Association Establishment Frameworks of TS-0003 clause 8.2."""

    PROVISIONED_PSK = "provisioned-psk"  # 8.2.2.1
    CERTIFICATE = "certificate"  # 8.2.2.2
    MAF = "maf"  # 8.2.2.3
    GBA = "gba"  # seed 000 8.2.3.2 (legacy, docs/readings.md A-10)


@dataclass(frozen=True, slots=True)
class PeerBinding:
    """Who the peer is, as decided by a framework when the handshake finishes."""

    peer_id: str
    kind: PeerKind
    key_id: str | None = None
    valid_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class SecurityContext:
    """An established security association, as seen by one side.

    ``sa_id`` identifies the session (derived from a key exporter, never a key),
    so both sides name the same association alike (docs/readings.md A-24);
    ``key_fingerprint`` tells which key made it without revealing the key.
    """

    framework: Framework
    local_id: str | None
    peer_id: str
    peer_kind: PeerKind
    protocol: str
    cipher_suite: str
    key_id: str | None
    established_at: datetime
    valid_until: datetime | None
    sa_id: str
    server_name: str | None = None
    resumed: bool = False
    """True when the handshake resumed an earlier session (its binding re-validated)."""
    key_fingerprint: str | None = None
    """A one-way tag of the key the session was made with, never the key itself
    (:func:`m2msec.crypto.fingerprint.key_fingerprint` of the PSK: Kpsa, Kc or Ks_NAF, the
    same on both ends), or for a certificate session the SHA-256 fingerprint of the peer's
    certificate (None when the peer sent none). A resumed session keeps its full
    handshake's value. The SA record of seed 003 keeps it (docs/sa.md)."""

    def expired(self, now: datetime | None = None) -> bool:
        """True once the key behind this association has passed its lifetime."""
        if self.valid_until is None:
            return False
        return (now or datetime.now(UTC)) >= self.valid_until


@dataclass(frozen=True, slots=True)
class HandshakeFailure:
    """A handshake that failed or was refused, as a listener reports it to its
    ``on_handshake_failure`` hook: what seed 003 table 35 (SA Establishment Complete with
    Failure) and the Responder's failed SA record need.

    ``reason`` is safe to log. ``no_common_parameters`` is the engine's
    ``HandshakeFailed.no_common_parameters`` (seed 003's "No parameters in common with
    Responder"; every other failure is "Administrative reasons"). ``psk_identity`` is the
    identity the peer offered, printable, if any: a claim the failed handshake did not
    prove. ``transport`` is ``"TLS"`` or ``"DTLS"``.
    """

    peer: tuple[Any, ...] | None
    reason: str
    transport: str
    no_common_parameters: bool = False
    psk_identity: str | None = None
